"""MATLAB-exact bicubic resizing, the degradation of every super-resolution benchmark.

``imresize(img, 1/s)`` reproduces MATLAB's ``imresize(img, 1/s, 'bicubic')`` (SPEC §3): a separable
resize with the cubic kernel a = -0.5, widened by the factor when downscaling (antialiasing),
symmetric borders, float64 arithmetic, and uint8 results rounded half away from zero. MATLAB
resizes the dimension with the smaller scale first; with one scale for both that is height, then
width, and so do we.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from ipt_data.errors import UserError

_KERNEL_WIDTH = 4.0  # support of the cubic kernel, in input pixels at scale 1


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``), support [-2, 2]."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    inner = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    outer = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return inner + outer


@lru_cache(maxsize=256)
def contributions(in_length: int, out_length: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB's ``contributions``: weights [out, taps] (float64) and 0-based input indices.

    Output pixel x (1-based) samples input position u = x/scale + 0.5(1 - 1/scale); the taps are
    floor(u - width/2) + 0..ceil(width)+1, weighted by the (widened) kernel and normalised to sum 1.
    Indices past either border are mirrored symmetrically (period 2·in_length); tap columns whose
    weight is zero for every output pixel are dropped, as MATLAB does. The arrays are cached and
    read-only.
    """
    antialias = scale < 1
    width = _KERNEL_WIDTH / scale if antialias else _KERNEL_WIDTH
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = math.ceil(width) + 2
    positions = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based
    distance = u[:, None] - positions
    weights = scale * cubic(scale * distance) if antialias else cubic(distance)
    weights /= weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length)[::-1]])
    indices = mirror[np.mod(positions.astype(np.int64) - 1, 2 * in_length)]
    used = np.any(weights != 0, axis=0)
    weights, indices = weights[:, used], indices[:, used]
    weights.flags.writeable = False
    indices.flags.writeable = False
    return weights, indices


def _resize_axis(image: np.ndarray, axis: int, out_length: int, scale: float) -> np.ndarray:
    """Resize float64 ``image`` along ``axis`` (0 = height, 1 = width) to ``out_length``."""
    weights, indices = contributions(image.shape[axis], out_length, scale)
    out_shape = list(image.shape)
    out_shape[axis] = out_length
    out = np.zeros(out_shape, dtype=np.float64)
    shape = [1] * image.ndim
    shape[axis] = out_length
    for tap in range(weights.shape[1]):
        out += weights[:, tap].reshape(shape) * np.take(image, indices[:, tap], axis=axis)
    return out


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray):
        raise UserError(f"imresize: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
        raise UserError(f"imresize: image dtype must be uint8 or floating, got {image.dtype}")
    if image.ndim not in (2, 3):
        raise UserError(f"imresize: image must be HxW or HxWxC, got shape {image.shape}")
    if image.ndim == 3 and image.shape[2] not in (1, 3, 4):
        raise UserError(f"imresize: image must have 1, 3 or 4 channels, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise UserError(f"imresize: image is empty (shape {image.shape})")


def round_to_uint8(values: np.ndarray) -> np.ndarray:
    """Round half away from zero (MATLAB's uint8 conversion) and clip to 0..255."""
    return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)


def imresize(image: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB ``imresize(image, scale, 'bicubic')``: scale 0.5 halves, 3 triples.

    ``image`` is HxW or HxWxC, uint8 or floating; the output is ceil(H·scale) x ceil(W·scale),
    uint8 (rounded half away from zero, clipped) for uint8 input, float64 (unrounded) otherwise.
    """
    _check_image(image)
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise UserError(f"imresize: scale must be a positive number, got {scale!r}")
    out_h = math.ceil(image.shape[0] * scale)
    out_w = math.ceil(image.shape[1] * scale)
    result = _resize_axis(image.astype(np.float64), 0, out_h, float(scale))
    result = _resize_axis(result, 1, out_w, float(scale))
    return round_to_uint8(result) if image.dtype == np.uint8 else result


def _check_factor(factor: int) -> int:
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise UserError(f"resize factor must be an integer >= 1, got {factor!r}")
    return int(factor)


def downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """MATLAB bicubic downscale by an integer factor: ``imresize(image, 1/factor)``."""
    return imresize(image, 1 / _check_factor(factor))


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """MATLAB bicubic upscale by an integer factor: ``imresize(image, factor)``."""
    return imresize(image, float(_check_factor(factor)))


def mod_crop(image: np.ndarray, factor: int) -> np.ndarray:
    """Crop height and width down to multiples of ``factor`` (keeping the top left), as SR does."""
    factor = _check_factor(factor)
    height = image.shape[0] - image.shape[0] % factor
    width = image.shape[1] - image.shape[1] % factor
    if height == 0 or width == 0:
        raise UserError(f"mod_crop: image {image.shape[:2]} is smaller than the factor {factor}")
    return image[:height, :width]
