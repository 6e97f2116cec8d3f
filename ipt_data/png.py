"""PNG members: a short, deterministic PNG writer over libdeflate, and a fast reader for its files.

Every PNG written here is a standard one: 8-bit RGB (colour type 2), not interlaced, chunks
``IHDR``, one ``IDAT``, ``IEND``; every scanline uses filter type 2 (Up), and the scanlines are
compressed at level 1 into a zlib stream by one of two deflate libraries, the *PNG encoder*:

- ``"libdeflate"`` (the default, through the ``deflate`` package): the bytes depend only on the
  pixels and on the libdeflate version, not on the CPU, since libdeflate's compressor is portable
  C whose choices involve no CPU-specific code.
- ``"isal"`` (ISA-L, through the optional ``isal`` package): about twice as fast, but its bytes
  also depend on the CPU class (x86-64 with SSE4.2, x86-64 without it, aarch64), since ISA-L
  hashes with the CRC32C instruction where there is one. Its identity's probe digest differs
  between those classes, so a set is still only ever continued with the same bytes.

Why these and not OpenCV's writer, zlib-ng or fpng, the measurements and the pinning rule: see
docs/png.md.

:func:`decode_png` reads PNGs in this layout with libdeflate and NumPy (undoing Up is a cumulative
sum down the columns), about twice as fast as libpng on the same files; any other PNG goes to
OpenCV, so it reads every PNG that ``cv2.imdecode`` reads, with the same pixels.
"""

from __future__ import annotations

import functools
import hashlib
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import deflate
import numpy as np

from ipt_data.configs import DEFAULT_PNG_ENCODER, check_png_encoder
from ipt_data.errors import UserError
from ipt_data.safety import MAX_PNG_SIDE

# Bump when the layout written here changes (filter, level, chunks): the identity changes with it.
WRITER_REVISION = 1
# Level 1 of either library. It is libdeflate's fastest; its level 2 makes patches about 2.5%
# smaller for about 1.4x the time (benchmarks/results/png-codecs_xeon2c_2026-11-27.md). ISA-L's
# level 0 takes 0.8x the time of its level 1 but writes 1.29x the bytes (measured on the build's
# patches of the six sample photographs: 9.21 MB against 7.15 MB; libdeflate 1: 7.01 MB).
DEFLATE_LEVEL = 1
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_UP = 2  # PNG filter type 2: each byte minus the byte above it, modulo 256
_IHDR = struct.Struct(">IIBBBBB")  # width, height, bit depth, colour type, compression, ...
_RGB8 = (8, 2, 0, 0, 0)  # 8 bits, colour type 2 (RGB), deflate, adaptive filtering, no interlace
_LENGTH = struct.Struct(">I")


class PngError(ValueError):
    """Bytes that are not a PNG that :func:`decode_png` can decode."""


@dataclass(frozen=True)
class _Deflate:
    """A deflate library as the writer uses it."""

    described: str  # as the encoder identity states it: library, level, package version
    compress: Callable[[np.ndarray], bytes | bytearray]  # scanlines -> zlib stream


@functools.cache
def _deflate(encoder: str) -> _Deflate:
    """The deflate library of the PNG encoder ``encoder`` (one of PNG_ENCODERS). A missing
    optional library is a UserError naming the package to install, never another encoder."""
    if check_png_encoder(encoder) == "libdeflate":
        compress = functools.partial(deflate.zlib_compress, compresslevel=DEFLATE_LEVEL)
        return _Deflate(
            f"libdeflate level {DEFLATE_LEVEL}, deflate {deflate.__version__}", compress
        )
    try:
        import isal
        from isal import isal_zlib
    except ImportError:
        raise UserError(
            "the PNG encoder 'isal' needs the isal package: pip install isal (or ipt-toolkit[isal])"
        ) from None
    compress = functools.partial(isal_zlib.compress, level=DEFLATE_LEVEL)
    return _Deflate(f"ISA-L level {DEFLATE_LEVEL}, isal {isal.__version__}", compress)


def encode_png(pixels: np.ndarray, encoder: str = DEFAULT_PNG_ENCODER) -> bytes:
    """HxWx3 uint8 RGB -> PNG bytes (see the module doc). The same pixels give the same bytes on
    every machine with the same :func:`encoder_identity`. ``encoder`` is one of PNG_ENCODERS
    (an unknown one, or ``"isal"`` without its package, is a UserError). Any memory layout is
    accepted (a view into a larger image encodes as its copy does); other shapes or dtypes are
    a ValueError."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3 or not pixels.size:
        raise ValueError(
            f"encode_png takes an HxWx3 uint8 RGB array, not {pixels.dtype} {pixels.shape}"
        )
    height, width = pixels.shape[:2]
    return assemble_png(height, width, _deflate(encoder).compress(up_filtered(pixels)))


def up_filtered(pixels: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> the H x (1 + 3W) PNG scanlines, each its filter byte (Up) and the row minus
    the row above it, modulo 256; the first row is kept as it is (the row above it counts as
    zeros)."""
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, width * 3)
    scanlines = np.empty((height, width * 3 + 1), np.uint8)
    scanlines[:, 0] = _FILTER_UP
    scanlines[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=scanlines[1:, 1:])  # uint8 arithmetic wraps: modulo 256
    return scanlines


def assemble_png(height: int, width: int, idat: bytes | bytearray) -> bytes:
    """A whole 8-bit RGB PNG around ``idat``, the zlib stream of its filtered scanlines."""
    idat_crc = _LENGTH.pack(deflate.crc32(idat, _IDAT_CRC))
    head = _signature_and_header(height, width)
    return b"".join((head, _LENGTH.pack(len(idat)), b"IDAT", idat, idat_crc, _IEND))


@functools.lru_cache(maxsize=64)
def _signature_and_header(height: int, width: int) -> bytes:
    """The bytes before the IDAT chunk, the same for every PNG of one size: a build writes
    patches of a handful of sizes, and framing each anew was a tenth of the encoding time."""
    return PNG_SIGNATURE + _chunk(b"IHDR", _IHDR.pack(width, height, *_RGB8))


def _chunk(kind: bytes, data: bytes | bytearray) -> bytes:
    crc = deflate.crc32(data, deflate.crc32(kind))
    return b"".join((_LENGTH.pack(len(data)), kind, data, _LENGTH.pack(crc)))


_IDAT_CRC = deflate.crc32(b"IDAT")  # a chunk's CRC covers its type, then its data
_IEND = _chunk(b"IEND", b"")


@functools.cache
def encoder_identity(encoder: str = DEFAULT_PNG_ENCODER) -> str:
    """The PNG encoder as a shard set's manifest records it: this writer's revision and
    settings, the deflate library, its level and package version, and the start of the sha256
    of the encoding of a fixed probe image. Two installations with the same identity write the
    same bytes for the same pixels; the probe tells apart installations whose version strings
    agree but whose bytes do not (``deflate`` built against a system libdeflate; ISA-L on
    another CPU class)."""
    probe = hashlib.sha256(encode_png(_probe_image(), encoder)).hexdigest()[:12]
    return f"ipt-png {WRITER_REVISION} (Up filter, {_deflate(encoder).described}, probe {probe})"


def _probe_image() -> np.ndarray:
    """A fixed 96x96 RGB image, from integer arithmetic only (no random generator, whose stream
    could change), with ramps, repeats and fine texture, so that matches, literals and Huffman
    codes all shape its deflate stream."""
    y, x = np.mgrid[0:96, 0:96]
    channels = ((2 * x + y) % 256, (x * y) % 251, ((x ^ y) * 37) % 256)
    return np.stack(channels, axis=-1).astype(np.uint8)


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> HxWx3 uint8 RGB, the pixels ``cv2.imdecode(..., cv2.IMREAD_COLOR)`` gives
    (in RGB order). PNGs in this module's layout (8-bit RGB, sides up to MAX_PNG_SIDE, chunks
    IHDR, IDAT..., IEND, every scanline Up) are decoded here, checking each chunk's CRC and the
    zlib checksum; any other PNG is decoded by OpenCV. Raises :class:`PngError` for bytes that
    are not a decodable PNG (an image in another format included)."""
    if data[:8] != PNG_SIGNATURE:
        raise PngError("not a PNG: no PNG signature")
    parsed = _parse_own_layout(data)
    if parsed is None or not _starts_with_up(parsed[2]):
        return _decode_with_opencv(data)
    height, width, idat = parsed
    size = height * (width * 3 + 1)
    try:
        raw = deflate.zlib_decompress(idat, size)
    except deflate.DeflateError:
        raise PngError("corrupt PNG: its IDAT stream does not inflate") from None
    if len(raw) != size:
        raise PngError(f"corrupt PNG: its IDAT holds {len(raw)} bytes, {size} expected")
    scanlines = np.frombuffer(raw, np.uint8).reshape(height, width * 3 + 1)
    if not (scanlines[:, 0] == _FILTER_UP).all():
        return _decode_with_opencv(data)  # another writer's filters: libpng undoes them
    # Undo Up: each row is the sum, modulo 256, of its filtered row and all those above it.
    rows = np.cumsum(scanlines[:, 1:], axis=0, dtype=np.uint8)
    return rows.reshape(height, width, 3)


def _parse_own_layout(data: bytes) -> tuple[int, int, bytes] | None:
    """(height, width, the IDAT data joined) for a PNG whose header and chunk sequence are this
    module's layout; None for any other PNG. A layout chunk with a bad CRC, or chunks running
    past the end, are a PngError."""
    if data[12:16] != b"IHDR" or len(data) < 33:
        return None
    width, height, *settings = _IHDR.unpack_from(data, 16)
    if tuple(settings) != _RGB8 or not (0 < width <= MAX_PNG_SIDE and 0 < height <= MAX_PNG_SIDE):
        return None
    idat, offset = [], 8
    while offset + 12 <= len(data):
        (length,) = _LENGTH.unpack_from(data, offset)
        kind, body_end = data[offset + 4 : offset + 8], offset + 8 + length
        if offset > 8 and kind not in (b"IDAT", b"IEND"):
            return None  # an ancillary chunk (colour space, transparency): OpenCV decides
        name = kind.decode("latin-1")
        if body_end + 4 > len(data):
            raise PngError(f"corrupt PNG: its {name} chunk runs past the end")
        body = data[offset + 8 : body_end]
        if deflate.crc32(body, deflate.crc32(kind)) != _LENGTH.unpack_from(data, body_end)[0]:
            raise PngError(f"corrupt PNG: CRC mismatch in its {name} chunk")
        if kind == b"IDAT":
            idat.append(body)
        if kind == b"IEND":
            return (height, width, b"".join(idat)) if idat else None
        offset = body_end + 4
    raise PngError("corrupt PNG: it ends before its IEND chunk")


def _starts_with_up(idat: bytes) -> bool:
    """Whether the first scanline's filter byte is Up, inflating only that byte (microseconds).
    Inflating a whole stream only to find another writer's filters would add about a third to
    OpenCV's decoding of it; libpng's adaptive filtering does not start with Up (on the first
    row Up equals None, which it tries first), and a file that does is still checked in full."""
    try:
        return zlib.decompressobj().decompress(idat, 1) == bytes((_FILTER_UP,))
    except zlib.error:
        raise PngError("corrupt PNG: its IDAT stream does not inflate") from None


def _decode_with_opencv(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise PngError("not a PNG that OpenCV can decode")
    return image[:, :, ::-1]  # BGR -> RGB
