"""Shard sets at a location: a local folder, ``http(s)://…`` or any fsspec URL (``s3://…``).

A :class:`SetLocation` is the root of one shard set and the fsspec filesystem that reaches it.
Everything below the root is named by a manifest-relative path (``sr_x2/sr_x2-000000.tar``),
which passes one gate, :func:`ipt_data.safety.safe_relative_path`, before it is joined to the
root: a manifest from someone else must not make us read or write outside the set (``..``,
absolute paths, other hosts). Object stores get credentials and endpoints the usual way for
their fsspec backend (for S3: ``AWS_*`` variables such as ``AWS_ENDPOINT_URL``), or
``storage_options``.

Writes are atomic per file: a file appears under its final name complete or not at all. Locally
that is a temporary name and a rename; elsewhere a temporary key and a move (object stores make
an upload visible only once it is complete, and a move of a complete object is a copy of it).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ipt_data.errors import UserError
from ipt_data.manifest import MANIFEST_NAME, _validate
from ipt_data.safety import check_manifest_entries, safe_relative_path

PARTIAL_SUFFIX = ".part"


def is_url(location: str | Path) -> bool:
    """True for ``scheme://…`` (http, s3, gs, …); False for a local path."""
    return isinstance(location, str) and "://" in location and not location.startswith("file://")


@dataclass(frozen=True)
class SetLocation:
    """The root of a shard set: ``fs`` reaches it, ``root`` is its path there (no trailing /)."""

    url: str  # as the user gave it, for messages
    fs: fsspec.AbstractFileSystem
    root: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, relative: str) -> str:
        """The full path of a set-relative name, which must stay inside the set."""
        return f"{self.root}/{safe_relative_path(relative)}"

    def describe(self, relative: str) -> str:
        return f"{self.url.rstrip('/')}/{relative}"


def open_location(location: str | Path, storage_options: dict | None = None) -> SetLocation:
    """The :class:`SetLocation` of a folder or URL; unknown schemes are one clear error."""
    text = str(location)
    try:
        fs, root = fsspec.core.url_to_fs(text, **(storage_options or {}))
    except (ImportError, ValueError) as error:
        raise UserError(f"{text}: cannot open this location ({error})") from None
    return SetLocation(text, fs, root.rstrip("/") or root)


def read_bytes(location: SetLocation, relative: str) -> bytes:
    """The whole file ``relative`` of the set; a missing or unreachable one is a UserError."""
    try:
        return location.fs.cat_file(location.path(relative))
    except FileNotFoundError:
        raise UserError(f"{location.describe(relative)}: not found") from None
    except OSError as error:
        raise UserError(f"{location.describe(relative)}: cannot read ({error})") from None


def open_read(location: SetLocation, relative: str) -> IO[bytes]:
    """A binary stream of ``relative``, read front to back without fetching it whole first."""
    options = {"block_size": 0} if location.url.startswith(("http://", "https://")) else {}
    # block_size 0: one streamed GET; the default would issue range requests, which plain
    # servers (python -m http.server) do not support.
    return location.fs.open(location.path(relative), "rb", **options)


def open_write_partial(location: SetLocation, relative: str) -> tuple[IO[bytes], str]:
    """A writable stream to a fresh temporary name beside ``relative``, and that name.

    Publish it with :func:`publish` or drop it with :func:`discard`.
    """
    final = location.path(relative)
    folder, _, name = final.rpartition("/")
    partial = f"{folder}/.{name}.{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}"
    if location.is_local:
        location.fs.makedirs(folder, exist_ok=True)
    try:
        return location.fs.open(partial, "wb"), partial
    except (FileNotFoundError, PermissionError) as error:
        raise UserError(f"{location.describe(relative)}: cannot write ({error})") from None


def publish(location: SetLocation, partial: str, relative: str) -> None:
    """Move a complete temporary file to its final name ``relative``."""
    final = location.path(relative)
    if location.is_local:
        os.replace(partial, final)
    else:
        location.fs.mv(partial, final)


def discard(location: SetLocation, partial: str) -> None:
    """Remove a temporary file; it may never have been created."""
    with contextlib.suppress(FileNotFoundError):
        location.fs.rm_file(partial)


def write_bytes(location: SetLocation, relative: str, data: bytes) -> None:
    """Write a whole file atomically (temporary name, then :func:`publish`)."""
    stream, partial = open_write_partial(location, relative)
    try:
        with stream:  # an object store may upload, and fail, only here
            stream.write(data)
        publish(location, partial, relative)
    except (FileNotFoundError, PermissionError) as error:
        discard(location, partial)
        raise UserError(f"{location.describe(relative)}: cannot write ({error})") from None
    except BaseException:
        discard(location, partial)
        raise


def file_size(location: SetLocation, relative: str) -> int | None:
    """The size of ``relative`` in bytes, or None where it does not exist."""
    try:
        return location.fs.size(location.path(relative))
    except FileNotFoundError:
        return None


def remove_partials(location: SetLocation, folder: str) -> int:
    """Delete temporary files left in ``folder`` (set-relative) by interrupted writes."""
    base = location.path(folder)
    try:
        names = location.fs.ls(base, detail=False)
    except FileNotFoundError:
        return 0
    stale = [name for name in names if name.rsplit("/", 1)[-1].endswith(PARTIAL_SUFFIX)]
    for name in stale:
        discard(location, name)
    return len(stale)


def read_set_manifest(location: SetLocation) -> tuple[dict, bytes]:
    """The checked manifest of the set at ``location`` and its exact bytes.

    A malformed manifest, or one whose shard entries are unsafe (paths leaving the set,
    duplicate paths, a sha256 that is not 64 hex digits, negative sizes), is one UserError.
    """
    where = location.describe(MANIFEST_NAME)
    try:
        data = location.fs.cat_file(location.path(MANIFEST_NAME))
    except FileNotFoundError:
        raise UserError(f"{where}: no manifest (is this an ipt-data shard set?)") from None
    except OSError as error:
        raise UserError(f"{where}: cannot read ({error})") from None
    try:
        manifest = json.loads(data)
    except ValueError as error:
        raise UserError(f"{where}: bad manifest: not JSON ({error})") from None
    _validate(manifest, where)
    check_manifest_entries(manifest, where)
    return manifest, data
