"""Shards checked before use and read by position: from a local set where they lie, from a remote
one through the node's cache (:mod:`ipt_train.stream.cache`).

A shard is usable once it has been read whole through :func:`ipt_data.read_shard` (the member
and PNG gates, its size, sha256 and sample count against the manifest) and indexed on the way:
for each sample, where its two PNGs lie in the file. No sample of a shard is read before that.
The index is written beside the cache and records the file it describes (size, modification
time, inode): a file changed since (edited, a flipped byte) is checked again before its next
use, and a cached copy that fails that check is fetched again, said on stderr. Every process of
a node finds a shard checked once by any of them.

A remote shard is fetched whole into the cache, ``attempts`` times at most while the storage
fails (a reset, a time-out, a 5xx), with backoff; an attempt compares the bytes it shares with
the one before and refuses a shard that changed between them.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from ipt_data import SetLocation, UserError, open_set_location, read_shard, retried, storage_errors
from ipt_train.stream.cache import ShardCache, touch

INDEXES_KEPT = 64  # shard indexes a process keeps in memory (~0.5 MB each at 8,000 samples)


@dataclass(frozen=True)
class ShardIndex:
    """Where each sample of a checked shard file lies, and which file that was."""

    spans: np.ndarray  # [samples, 4] int64: input.png offset, size, target.png offset, size
    keys: tuple[str, ...]
    stat: tuple[int, int, int]  # (size, mtime_ns, inode) of the file when it was checked

    def to_json(self) -> bytes:
        content = {"spans": self.spans.tolist(), "keys": list(self.keys), "stat": self.stat}
        return json.dumps(content, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ShardIndex:
        content = json.loads(data)
        spans = np.asarray(content["spans"], dtype=np.int64).reshape(-1, 4)
        return cls(spans, tuple(content["keys"]), tuple(content["stat"]))


def file_stat(path: Path | str | int) -> tuple[int, int, int]:
    """(size, mtime_ns, inode) of a path or an open descriptor."""
    stat = os.fstat(path) if isinstance(path, int) else os.stat(path)
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


def index_of(samples, stat: tuple[int, int, int]) -> ShardIndex:
    """The index of a shard read whole by ``read_shard(..., offsets=True)``."""
    spans, keys = [], []
    for sample in samples:
        offsets = sample["__offsets__"]
        spans.append([*offsets["input.png"], *offsets["target.png"]])
        keys.append(sample["__key__"])
    return ShardIndex(np.asarray(spans, dtype=np.int64).reshape(-1, 4), tuple(keys), stat)


class SameBytes:
    """The ``copy_to`` of a retried fetch into ``handle``: each attempt starts at byte 0, and
    the bytes it shares with an earlier attempt must be the same (a store that serves a shard
    changed half-way through a run is refused, not mixed)."""

    def __init__(self, handle: IO[bytes], name: str) -> None:
        self.handle, self.name = handle, name
        self.written = 0  # the most bytes any attempt got
        self.position = 0

    def restart(self) -> None:
        self.position = 0

    def write(self, data: bytes) -> None:
        shared = max(0, min(len(data), self.written - self.position))
        if shared:
            self.handle.seek(self.position)
            if self.handle.read(shared) != data[:shared]:
                raise UserError(
                    f"{self.name}: its bytes differ between two attempts to fetch it; refused"
                )
        if shared < len(data):
            self.handle.seek(self.position + shared)
            self.handle.write(data[shared:])
        self.position += len(data)
        self.written = max(self.written, self.position)


class ShardStore:
    """The checked shards of the set at ``location``: :meth:`read` gives samples by index."""

    def __init__(self, location: SetLocation, cache: ShardCache, attempts: int) -> None:
        self.location, self.cache, self.attempts = location, cache, attempts
        self._indexes: OrderedDict[str, ShardIndex] = OrderedDict()
        self._lock = threading.Lock()  # the read-ahead threads share the indexes

    def open(self, entry: dict, wait: bool = True) -> OpenShard:
        """The shard ``entry`` (its manifest entry) opened for reading by sample, checked first
        if it was not; a cached copy stays pinned (not evicted) until closed."""
        for _ in range(5):  # a copy evicted or replaced between check and open: again
            path, index = self.ready(entry, wait)
            try:
                descriptor = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            if self._is_copy(path):
                fcntl.flock(descriptor, fcntl.LOCK_SH)  # pinned: eviction needs LOCK_EX
            if file_stat(descriptor) == index.stat:
                return OpenShard(descriptor, index)
            os.close(descriptor)
            self._forget(entry["sha256"])
        raise UserError(f"{self.describe(entry)}: the file keeps changing while it is read")

    def read(self, entry: dict, samples: list[int]) -> list[tuple[bytes, bytes, str]]:
        """(input.png, target.png, key) of the samples at ``samples`` of the shard ``entry``."""
        shard = self.open(entry)
        try:
            return shard.read(samples)
        finally:
            shard.close()

    def ready(self, entry: dict, wait: bool = True) -> tuple[Path, ShardIndex]:
        """The shard's checked file and its index: at once when known and unchanged; else
        checked (a local set) or fetched (a remote one) by this process, or by another of the
        node while this one waits for it. Without ``wait``, a fetch that would have to wait
        for room in the cache is not made (:class:`NoRoom`): how read-ahead asks."""
        sha, path = entry["sha256"], self.file_of(entry)
        index = self._known(sha, path)
        if index is None:
            with self.cache.shard_lock(sha):
                index = self._known(sha, path) or self._check_or_fetch(entry, path, wait)
        if self._is_copy(path):
            touch(path)
        return path, index

    def file_of(self, entry: dict) -> Path:
        if self.location.is_local:
            return Path(self.location.path(entry["path"]))
        return self.cache.copy_path(entry["sha256"])

    def describe(self, entry: dict) -> str:
        return self.location.describe(entry["path"])

    def _is_copy(self, path: Path) -> bool:
        return path.parent == self.cache.copies

    def _known(self, sha: str, path: Path) -> ShardIndex | None:
        """The index of ``path`` if it still describes the file there."""
        try:
            now = file_stat(path)
        except FileNotFoundError:
            return None
        with self._lock:
            index = self._indexes.get(sha)
        if index is None or index.stat != now:
            index = self._stored_index(sha, now)
        if index is not None:
            with self._lock:
                self._indexes[sha] = index
                self._indexes.move_to_end(sha)
                while len(self._indexes) > INDEXES_KEPT:
                    self._indexes.popitem(last=False)
        return index

    def _stored_index(self, sha: str, now: tuple[int, int, int]) -> ShardIndex | None:
        try:
            index = ShardIndex.from_json(self._index_path(sha).read_bytes())
        except (FileNotFoundError, ValueError, KeyError):
            return None
        return index if index.stat == now else None

    def _forget(self, sha: str) -> None:
        with self._lock:
            self._indexes.pop(sha, None)

    def _index_path(self, sha: str) -> Path:
        return self.cache.index_path(sha, local=self.location.is_local)

    def _check_or_fetch(self, entry: dict, path: Path, wait: bool) -> ShardIndex:
        if self.location.is_local:
            return self._save(entry["sha256"], self._check(self.location, entry, path))
        if path.exists():  # a cached copy that changed since it was checked
            copy = {**entry, "path": path.name}
            try:
                return self._save(entry["sha256"], self._check(self._copies(), copy, path))
            except UserError as error:
                print(
                    f"{self.describe(entry)}: the cached copy {path} no longer matches the "
                    f"manifest ({error}); fetching it again",
                    file=sys.stderr,
                    flush=True,
                )
                self.cache.remove(entry["sha256"])
        return self._save(entry["sha256"], self._fetch(entry, wait))

    def _check(self, location: SetLocation, entry: dict, path: Path) -> ShardIndex:
        where = location.describe(entry["path"])
        try:
            stat = file_stat(path)
            with storage_errors(where):
                return index_of(read_shard(location, entry, offsets=True), stat)
        except OSError as error:  # a shard the manifest lists that is gone or unreadable
            raise UserError(f"{where}: cannot read the shard ({error.strerror or error})") from None

    def _copies(self) -> SetLocation:
        return open_set_location(self.cache.copies)

    def _fetch(self, entry: dict, wait: bool) -> ShardIndex:
        name, sha = self.describe(entry), entry["sha256"]
        with self.cache.new_copy(sha, entry["bytes"], wait) as part, open(part, "r+b") as handle:
            writer = SameBytes(handle, name)

            def attempt() -> ShardIndex:
                writer.restart()
                return index_of(read_shard(self.location, entry, copy_to=writer, offsets=True), ())

            with storage_errors(name):
                index = retried(name, attempt, self.attempts)
            handle.flush()
            os.fsync(handle.fileno())  # the copy's bytes on disk before its name says "done"
            self.cache.publish(part, sha)
        stat = file_stat(self.cache.copy_path(sha))
        return ShardIndex(index.spans, index.keys, stat)

    def _save(self, sha: str, index: ShardIndex) -> ShardIndex:
        path = self._index_path(sha)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        temporary.write_bytes(index.to_json())
        os.replace(temporary, path)
        return index


@dataclass
class OpenShard:
    """A checked shard file open for reading by sample (pinned while open, if a cached copy)."""

    descriptor: int
    index: ShardIndex

    def read(self, samples: list[int]) -> list[tuple[bytes, bytes, str]]:
        """(input.png, target.png, key) of each sample index."""
        return [self._read(sample) for sample in samples]

    def _read(self, sample: int) -> tuple[bytes, bytes, str]:
        start, size, target_start, target_size = (int(v) for v in self.index.spans[sample])
        return (
            os.pread(self.descriptor, size, start),
            os.pread(self.descriptor, target_size, target_start),
            self.index.keys[sample],
        )

    def close(self) -> None:
        os.close(self.descriptor)
