"""A node's disk cache of verified shards, shared by all its training processes and loader workers.

Layout under the cache folder (content-addressed: a shard's file is named by its sha256, so two
sets that share a shard share its copy, and a name says what its bytes must hash to)::

    shards/<sha256>.tar            a complete copy, checked against the manifest when fetched
    shards/.<sha256>.<hex>.part    a copy being fetched, created at the shard's full size
    indexes/<sha256>.index         a copy's sample index (ipt_train.stream.store), written after
                                   the check; it records the copy's size, mtime and inode
    local/<sha256>.index           the index of a shard of a local set (read where it lies)
    locks/<sha256>.lock            held by the one process fetching or checking that shard
    cache.lock                     held while room is made for a new copy

The size limit counts every file under ``shards/`` at its apparent size, parts at the size
they will have (the indexes, about 0.3% of that, are not counted): room is made (least recently
used copies removed) *before* a fetch starts, under ``cache.lock``, so the limit holds at every
moment, whatever the number of processes. A copy being read is pinned: its readers hold a
shared ``flock`` on it, and eviction only removes a copy it can lock exclusively. Last use is
the copy's access time, set explicitly on each use (mounts with ``noatime`` do not stop that).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from ipt_data import UserError

ROOM_WAIT_SECONDS = 120.0  # how long a fetch waits for pinned copies to be released
DEFAULT_FREE_FRACTION = 0.5  # default limit: what is cached now plus half the free space


class ShardCache:
    """The cache folder ``root`` (created if need be), holding at most ``limit`` bytes."""

    def __init__(self, root: str | Path, limit: int | str | None = None) -> None:
        self.root = Path(root)
        try:
            for folder in ("shards", "indexes", "local", "locks"):
                (self.root / folder).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"--cache {root}: cannot make the cache folder ({error})") from None
        self.copies = self.root / "shards"
        self.limit = parse_limit(limit, self.root, self.usage())

    def copy_path(self, sha256: str) -> Path:
        return self.copies / f"{sha256}.tar"

    def index_path(self, sha256: str, local: bool = False) -> Path:
        return self.root / ("local" if local else "indexes") / f"{sha256}.index"

    @contextlib.contextmanager
    def shard_lock(self, sha256: str) -> Iterator[None]:
        """Held by the one process (or thread) that fetches or checks this shard."""
        with open(self.root / "locks" / f"{sha256}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    @contextlib.contextmanager
    def new_copy(self, sha256: str, size: int, wait: bool = True) -> Iterator[Path]:
        """A ``.part`` file of ``size`` bytes for a fetch, room made for it first (without
        ``wait``, :class:`NoRoom` where that means waiting for pinned copies). The caller
        moves it to :meth:`copy_path` when complete (:meth:`publish`); whatever is left of it
        when the block ends is removed. The part is locked while the block runs, so that no
        eviction takes it for the leftover of a killed fetch."""
        part = self.copies / f".{sha256}.{uuid.uuid4().hex[:12]}.part"
        with contextlib.ExitStack() as stack:
            with self._room(size, wait):
                handle = stack.enter_context(open(part, "wb"))
                fcntl.flock(handle, fcntl.LOCK_EX)
                handle.truncate(size)
            try:
                yield part
            finally:
                part.unlink(missing_ok=True)

    def publish(self, part: Path, sha256: str) -> None:
        os.replace(part, self.copy_path(sha256))

    def remove(self, sha256: str) -> None:
        """Drop a copy (one that no longer matches its sha256) and its index."""
        self.copy_path(sha256).unlink(missing_ok=True)
        self.index_path(sha256).unlink(missing_ok=True)

    def usage(self) -> int:
        """Bytes under ``shards/`` (apparent sizes; parts at their final size)."""
        total = 0
        for entry in os.scandir(self.copies):
            with contextlib.suppress(FileNotFoundError):
                total += entry.stat().st_size
        return total

    @contextlib.contextmanager
    def _room(self, size: int, wait: bool) -> Iterator[None]:
        """Holds ``cache.lock`` with ``size`` more bytes fitting under the limit, least recently
        used unpinned copies evicted for them: what the block creates takes that room before
        any other process can."""
        if size > self.limit:
            raise UserError(
                f"--cache-limit {self.limit:,} bytes is smaller than one shard ({size:,} bytes)"
            )
        deadline = time.monotonic() + ROOM_WAIT_SECONDS
        with open(self.root / "cache.lock", "a") as lock:
            while True:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if self._evict(self.usage() + size - self.limit):
                    try:
                        yield
                    finally:
                        fcntl.flock(lock, fcntl.LOCK_UN)
                    return
                fcntl.flock(lock, fcntl.LOCK_UN)
                if not wait:
                    raise NoRoom(f"{self.root}: no room for {size:,} bytes without waiting")
                if time.monotonic() > deadline:
                    raise UserError(
                        f"{self.root}: the cache limit ({self.limit:,} bytes) cannot hold the "
                        f"shards being read now and one more of {size:,} bytes; raise "
                        "--cache-limit, or lower --shuffle-block or --workers"
                    )
                time.sleep(0.5)  # copies pinned by readers: wait for them to move on

    def _evict(self, excess: int) -> bool:
        """Remove unpinned copies, least recently used first, until ``excess`` bytes are gone
        (and stale parts of killed fetches); True when that was possible."""
        for path in self._stale_parts():
            excess -= _remove_if_unlocked(path)
        if excess <= 0:
            return True
        for path in sorted(self.copies.glob("*.tar"), key=_last_use):
            freed = _remove_if_unlocked(path)
            if freed:
                self.index_path(path.stem).unlink(missing_ok=True)
                excess -= freed
                if excess <= 0:
                    return True
        return False

    def _stale_parts(self) -> list[Path]:
        return list(self.copies.glob(".*.part"))


class NoRoom(UserError):
    """The cache has no room for another copy until readers release the ones they pin."""


def touch(path: Path) -> None:
    """Mark a copy as used now (its access time; its modification time is kept, since the
    index's record of the copy includes it)."""
    with contextlib.suppress(FileNotFoundError):  # evicted meanwhile: its reader tries again
        os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns))


def _last_use(path: Path) -> float:
    try:
        return path.stat().st_atime
    except FileNotFoundError:
        return 0.0


def _remove_if_unlocked(path: Path) -> int:
    """Remove ``path`` unless another process holds a lock on it (a reader of a copy, the
    writer of a part); the bytes freed."""
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0
        size = os.fstat(handle.fileno()).st_size
        path.unlink(missing_ok=True)
        return size
    return 0


LIMIT_TEXT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT%]?)\s*$", re.IGNORECASE)


def parse_limit(limit: int | str | None, root: Path, cached: int) -> int:
    """Bytes from ``limit``: an int, ``"500G"``-style text (K, M, G, T: powers of 1024),
    ``"40%"`` of the free disk plus what is cached already, or None for
    :data:`DEFAULT_FREE_FRACTION` of it."""
    free = shutil.disk_usage(root).free
    if limit is None:
        return cached + int(free * DEFAULT_FREE_FRACTION)
    if isinstance(limit, int):
        return limit
    number, unit = check_limit_text(limit)
    if unit == "%":
        return cached + int(free * number / 100)
    return int(number * 1024 ** ("_KMGT".index(unit) if unit else 0))


def check_limit_text(limit: str) -> tuple[float, str]:
    """(number, unit) of a --cache-limit text, the unit "", "K", "M", "G", "T" or "%"; else
    the one UserError that says what is expected."""
    match = LIMIT_TEXT.match(limit)
    if not match:
        raise UserError(
            f"--cache-limit {limit!r}: give bytes (200G, 1.5T, 500M) or a share of the free "
            "disk (40%)"
        )
    return float(match.group(1)), match.group(2).upper()
