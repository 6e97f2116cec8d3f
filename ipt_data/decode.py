"""Decode any image file to RGB uint8: the one decode function the build, the tools and
``ipt_train`` use.

Odd inputs are converted, not rejected: grayscale, palette, RGBA (alpha dropped), CMYK, 16-bit
(scaled to 8 bits) and files whose extension lies (a PNG named ``.JPEG``) all come out as
``HxWx3 uint8``. Files that cannot be decoded raise :class:`UnreadableImage` with a short
``reason`` the build counts by (``empty``, ``not_an_image``, ``truncated``, ``too_large``,
``corrupt``). The format is read from the content, never from the file name.

EXIF orientation is ignored, as in the usual PIL-based ImageNet pipelines, so that a build sees
the stored pixel grid.
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import Image

from ipt_data.errors import UnreadableImage

# Larger images are refused rather than decoded: a decompression bomb must not take a worker down.
MAX_PIXELS = 100_000_000

_JPEG_END = b"\xff\xd9"


def decode_image(data: bytes, source: str) -> np.ndarray:
    """Decode the bytes of an image file to an ``HxWx3`` uint8 RGB array.

    ``source`` names the file in error messages. Raises :class:`UnreadableImage`.
    """
    if not data:
        raise UnreadableImage(source, "empty")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))  # reads the header only
        except Image.UnidentifiedImageError:
            raise UnreadableImage(source, "not_an_image") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise UnreadableImage(source, "too_large", str(error)) from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise UnreadableImage(source, "too_large", f"{width}x{height} pixels")
    if _is_plain_rgb_jpeg(image, data):
        return _decode_jpeg_fast(data, source)
    return _decode_with_pil(image, source)


def _is_plain_rgb_jpeg(image: Image.Image, data: bytes) -> bool:
    """True for a complete 3-channel JPEG: the common case, decoded by OpenCV (3x faster than
    PIL here). A JPEG without its end marker may be truncated: PIL detects that reliably."""
    return image.format == "JPEG" and image.mode == "RGB" and data.rstrip(b"\0").endswith(_JPEG_END)


def _decode_jpeg_fast(data: bytes, source: str) -> np.ndarray:
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if bgr is None:
        raise UnreadableImage(source, "corrupt", "OpenCV could not decode the JPEG data")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _decode_with_pil(image: Image.Image, source: str) -> np.ndarray:
    try:
        image.load()
    except OSError as error:
        reason = "truncated" if "truncated" in str(error) else "corrupt"
        raise UnreadableImage(source, reason, str(error)) from None
    except (SyntaxError, ValueError) as error:  # PIL's plugins raise these for malformed data
        raise UnreadableImage(source, "corrupt", str(error)) from None
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _high_depth_to_rgb8(image)
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def _high_depth_to_rgb8(image: Image.Image) -> np.ndarray:
    """16-bit (or 32-bit) single-channel images: keep the high byte of the 0..65535 range, as
    PIL does for 16-bit RGB and OpenCV for both, so that every 16-bit input maps alike."""
    values = np.asarray(image)
    if image.mode == "F":
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    else:
        gray = np.clip(values.astype(np.int64) >> 8, 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)
