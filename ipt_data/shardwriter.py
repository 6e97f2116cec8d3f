"""The write stage: deterministic WebDataset tar shards.

A shard's bytes depend only on the samples written to it, in order: every tar header field that
tarfile would take from the clock or the user (mtime, uid, gid, user and group names, mode) is
fixed, and PNGs are encoded by :func:`ipt_data.png.encode_png`, whose bytes depend only on the
pixels and its pinned encoder (docs/png.md). Members of a sample are written as
``<key>.input.png``, ``<key>.target.png``, ``<key>.json``, which is the WebDataset layout
(the key is everything before the first dot, so keys contain none).

The shard is written under a temporary name and renamed into place on :meth:`ShardWriter.close`,
so a shard path holds a complete tar or nothing; its sha256 and size are computed while writing.
It is written through :mod:`ipt_data.remote`, to a folder or any writable fsspec URL.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass

from ipt_data.remote import SetLocation, discard, open_write_partial, publish

# 2000-01-01T00:00:00Z: a fixed, plausible member time (0 makes some tools warn).
FIXED_MTIME = 946_684_800


def sample_json(fields: dict) -> bytes:
    """The canonical JSON bytes of a sample's metadata (sorted keys, no spaces)."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ShardInfo:
    path: str  # relative to the set's root
    samples: int
    bytes: int
    sha256: str


class _HashingFile:
    """A write-only file wrapper that hashes and counts what passes through it."""

    def __init__(self, file) -> None:
        self._file = file
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self._file.write(data)

    def tell(self) -> int:
        return self.size


class ShardWriter:
    """Append samples to the shard ``relative`` of the set at ``location``; ``close()`` renames
    it into place and returns its info.

    Use as a context manager: leaving the block by an exception removes the temporary file and
    leaves any existing shard at ``relative`` untouched.
    """

    def __init__(self, location: SetLocation, relative: str) -> None:
        self._location, self._relative = location, relative
        # A fresh temporary name per writer: a retried task never writes into a stale attempt's.
        self._file, self._partial = open_write_partial(location, relative)
        self._hashing = _HashingFile(self._file)
        self._tar = tarfile.open(  # noqa: SIM115 (closed in close)
            fileobj=self._hashing, mode="w", format=tarfile.PAX_FORMAT
        )
        self.samples = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """Write one sample: ``members`` maps extension (``input.png``) -> bytes, in order."""
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must contain no dot or slash")
        for extension, data in members.items():
            self._tar.addfile(_member_header(f"{key}.{extension}", len(data)), io.BytesIO(data))
        self.samples += 1

    def close(self) -> ShardInfo:
        self._tar.close()
        self._file.close()  # an object store uploads (the rest of) the shard here
        publish(self._location, self._partial, self._relative)
        return ShardInfo(
            self._relative, self.samples, self._hashing.size, self._hashing.sha256.hexdigest()
        )

    def abort(self) -> None:
        """Drop the temporary file; called while an error propagates, so a second error from
        closing it (a full disk fails the close's flush too) must not keep it on the disk."""
        try:
            with contextlib.suppress(Exception):  # the error being raised is the one to report
                self._file.close()
        finally:
            discard(self._location, self._partial)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None:
            self.abort()


def _member_header(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = FIXED_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info
