"""Small file helpers shared by the commands: reading inputs with clear errors, atomic writes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from ipt_data.errors import UserError


def read_bytes(path: str | Path) -> bytes:
    """The bytes of an input file; a missing or unreadable file is a :class:`UserError`."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, expected a file") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error.strerror})") from None


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename, so
    that ``path`` is either absent or complete, never half-written."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"{path.parent}: cannot create folder ({error.strerror})") from None
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
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
