"""Small file helpers shared by the commands: reading inputs with clear errors, atomic writes.

One whole-file read (:func:`read_whole`) and one atomic-write mechanism serve local files and
shard sets on any fsspec filesystem. A write goes to a fresh temporary name beside the final one,
then is renamed into place (locally; elsewhere a move, which for an object store is a copy of the
complete upload), or deleted on failure. A file appears under its final name complete or not at
all; the temporary names end in :data:`ipt_data.layout.PARTIAL_SUFFIX`, so leftovers of killed
writers can be found and removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

import cv2
import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from ipt_data.errors import UserError
from ipt_data.layout import partial_name


def read_bytes(path: str | Path) -> bytes:
    """The bytes of a local input file; a missing or unreadable file is a :class:`UserError`."""
    return read_whole(LocalFileSystem(), Path(path).absolute().as_posix(), str(path))


def _strerror(error: OSError) -> str:
    return error.strerror or str(error)


def read_whole(
    fs: fsspec.AbstractFileSystem,
    path: str,
    shown: str,
    missing: str = "no such file",
    explain: Callable[[OSError], str] = _strerror,
    limit: int | None = None,
) -> bytes:
    """The whole file ``path`` on ``fs``. A missing file (``<shown>: <missing>``), a folder, or
    a file that cannot be read (``<shown>: cannot read (<explain(error)>)``) is a
    :class:`UserError` naming ``shown``; so is, with ``limit``, a file of more than ``limit``
    bytes, of which only the first ``limit + 1`` are asked for (a byte range: that is all that
    comes where the store honours ranges, a file or S3; a web server that ignores them sends
    the whole body, refused all the same)."""
    try:
        data = fs.cat_file(path) if limit is None else fs.cat_file(path, start=0, end=limit + 1)
    except FileNotFoundError:
        raise UserError(f"{shown}: {missing}") from None
    except IsADirectoryError:
        raise UserError(f"{shown}: is a folder, expected a file") from None
    except OSError as error:
        raise UserError(f"{shown}: cannot read ({explain(error)})") from None
    if limit is not None and len(data) > limit:
        raise UserError(f"{shown}: larger than {limit:,} bytes, the most ipt-data reads here")
    return data


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to the local file ``path`` (folders created) so that ``path`` is either
    absent or complete, never half-written; a path that cannot be written is a UserError."""
    blocking = file_in_the_way(Path(path).absolute().parent)
    if blocking is not None:
        raise UserError(f"{path}: cannot write: {blocking} is a file, not a folder")
    try:
        write_whole(LocalFileSystem(), Path(path).absolute().as_posix(), data)
    except OSError as error:
        raise UserError(f"{path}: cannot write ({error.strerror or error})") from None


def file_in_the_way(folder: Path) -> Path | None:
    """The first existing non-folder among ``folder`` and its parents (where a folder must be
    made or entered), or None."""
    for candidate in (folder, *folder.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def open_partial(fs: fsspec.AbstractFileSystem, final: str) -> tuple[IO[bytes], str]:
    """A writable stream to a fresh temporary name beside ``final`` (a full path on ``fs``; its
    folder is created where ``fs`` has folders), and that name. Publish it with
    :func:`publish_partial` or drop it with :func:`discard_partial`."""
    partial = partial_name(final)
    if isinstance(fs, LocalFileSystem):
        fs.makedirs(final.rpartition("/")[0], exist_ok=True)
    return fs.open(partial, "wb"), partial


def publish_partial(fs: fsspec.AbstractFileSystem, partial: str, final: str) -> None:
    """Move a complete temporary file to its final name (replacing what was there)."""
    if isinstance(fs, LocalFileSystem):
        os.replace(partial, final)
    else:
        fs.mv(partial, final)


def discard_partial(fs: fsspec.AbstractFileSystem, partial: str) -> None:
    """Remove a temporary file; it may never have been created."""
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(partial)


def write_whole(fs: fsspec.AbstractFileSystem, final: str, data: bytes) -> None:
    """Write a whole file atomically: :func:`open_partial`, then :func:`publish_partial`, the
    temporary file removed on any failure (which is raised as it is)."""
    stream, partial = open_partial(fs, final)
    try:
        with stream:  # an object store may upload, and fail, only here
            stream.write(data)
        publish_partial(fs, partial, final)
    except BaseException:
        discard_partial(fs, partial)
        raise


def encode_image(image: np.ndarray, extension: str, params: tuple[int, ...] = ()) -> bytes:
    """RGB (or gray) uint8 array -> encoded bytes for ``extension`` (".png", ".jpg")."""
    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, encoded = cv2.imencode(extension, pixels, list(params))
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode a {image.shape} image as {extension}")
    return encoded.tobytes()


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (memory does not grow with the file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
