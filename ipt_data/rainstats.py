"""Statistics of rain streak layers (docs/corruptions.md), for real rainy/clean pairs and for
our synthesis.

The streak layer of a pair is ``S = rainy - clean`` per pixel, averaged over R, G and B and
clipped at 0 (gray, as the model adds it). Per image we measure:

- ``psnr_y``, ``ssim_y``: rainy vs clean on the Y channel (docs/evaluation.md);
- ``touched``: fraction of pixels with S >= 1; ``strong``: fraction with S >= 30;
- ``median_touched``, ``p99_touched``: median and 99th percentile of S over the touched pixels;
- ``rms``: root mean square of S over all pixels;
- ``tilt_deg``: the dominant streak direction from vertical (positive: top-left to bottom-right),
  the direction of the longest correlation in the 2-D autocorrelation of S;
- ``width_px``: full width at half maximum of the autocorrelation of S across the streaks,
  divided by sqrt(2) (for a Gaussian streak profile, the profile's own FWHM);
- ``half_length_px``: lag along the streaks at which the autocorrelation falls to one half
  (half the length of a streak of constant brightness).

Over a set of images, :func:`summarize` takes the mean of PSNR, SSIM and the fractions, the
median of the S levels and of the shape figures, and the standard deviation of the tilt.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from ipt_data.benchsets import image_files, rain_images, read_image, read_pair
from ipt_data.errors import UserError
from ipt_data.metrics import psnr_y, ssim_y
from ipt_data.rain import Rain

MAX_LAG_PX = 64  # longest autocorrelation lag searched for the half maximum

MEAN_KEYS = ("psnr_y", "ssim_y", "touched", "strong")
MEDIAN_KEYS = ("median_touched", "p99_touched", "rms", "width_px", "half_length_px")


def layer_from_pair(clean: np.ndarray, rainy: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 pair -> the gray streak layer ``S``, float32 HxW, ``S >= 0``."""
    if clean.shape != rainy.shape:
        raise UserError(f"rainy and clean images differ in size: {rainy.shape} vs {clean.shape}")
    difference = rainy.astype(np.float32) - clean.astype(np.float32)
    return np.maximum(difference.mean(axis=2), 0.0)


def level_statistics(layer: np.ndarray) -> dict[str, float]:
    """Pixel-level figures of a streak layer: touched/strong fractions, median and 99th
    percentile over the touched pixels, RMS over all pixels."""
    touched = layer[layer >= 1.0]
    median, p99 = np.percentile(touched, (50, 99)) if touched.size else (0.0, 0.0)
    return {
        "touched": touched.size / layer.size,
        "strong": float(np.count_nonzero(layer >= 30.0)) / layer.size,
        "median_touched": float(median),
        "p99_touched": float(p99),
        "rms": float(np.sqrt(np.mean(np.square(layer, dtype=np.float64)))),
    }


def streak_tilt(acf: np.ndarray) -> float:
    """Dominant streak direction in degrees from vertical, positive when the streaks run from
    top-left to bottom-right (y down): the direction in which the autocorrelation of S stays
    highest at lags of 6-24 px, searched over ±60° in 0.5° steps, then refined to 0.05°.

    (The structure tensor of thin streaks is biased towards the pixel axes by the staircase of
    their rendering; long lags average the staircase out.)"""
    coarse = _best_direction(acf, np.arange(-60.0, 60.25, 0.5))
    return _best_direction(acf, np.arange(coarse - 0.5, coarse + 0.5001, 0.05))


def _best_direction(acf: np.ndarray, angles_deg: np.ndarray) -> float:
    radians = np.radians(angles_deg).reshape(-1, 1)
    radii = np.arange(6.0, 25.0).reshape(1, -1)
    map_x = (MAX_LAG_PX + radii * np.sin(radians)).astype(np.float32)
    map_y = (MAX_LAG_PX + radii * np.cos(radians)).astype(np.float32)
    along = cv2.remap(acf, map_x, map_y, cv2.INTER_LINEAR).sum(axis=1)
    return float(angles_deg[int(np.argmax(along))])


def autocorrelation(layer: np.ndarray) -> np.ndarray:
    """Normalised autocorrelation of ``S - mean(S)`` for lags up to :data:`MAX_LAG_PX`, zero lag
    at the centre: float32 ``(2L+1) x (2L+1)``."""
    centred = layer.astype(np.float64) - layer.mean()
    shape = (layer.shape[0] + MAX_LAG_PX, layer.shape[1] + MAX_LAG_PX)  # no wrap-around
    spectrum = np.fft.rfft2(centred, s=shape)
    acf = np.fft.irfft2(np.abs(spectrum) ** 2, s=shape)
    acf = np.fft.fftshift(acf)
    cy, cx = shape[0] // 2, shape[1] // 2
    window = acf[cy - MAX_LAG_PX : cy + MAX_LAG_PX + 1, cx - MAX_LAG_PX : cx + MAX_LAG_PX + 1]
    zero = window[MAX_LAG_PX, MAX_LAG_PX]
    return (window / zero if zero > 0 else window).astype(np.float32)


def half_maximum_lag(acf: np.ndarray, direction: tuple[float, float], step: float = 0.25) -> float:
    """The lag (pixels) along ``direction`` (unit (dx, dy)) where the autocorrelation first
    falls to 0.5, linearly interpolated; :data:`MAX_LAG_PX` when it never does."""
    lags = np.arange(0.0, MAX_LAG_PX, step, dtype=np.float32)
    map_x = (MAX_LAG_PX + lags * direction[0]).reshape(1, -1)
    map_y = (MAX_LAG_PX + lags * direction[1]).reshape(1, -1)
    profile = cv2.remap(acf, map_x, map_y, cv2.INTER_LINEAR)[0]
    below = np.flatnonzero(profile <= 0.5)
    if below.size == 0:
        return float(MAX_LAG_PX)
    i = int(below[0])
    if i == 0:
        return 0.0
    fraction = (profile[i - 1] - 0.5) / (profile[i - 1] - profile[i])
    return float(lags[i - 1] + fraction * step)


def shape_statistics(layer: np.ndarray) -> dict[str, float]:
    """Streak direction, width and correlation half-length of one layer."""
    acf = autocorrelation(layer)
    tilt = streak_tilt(acf)
    angle = math.radians(tilt)
    along = (math.sin(angle), math.cos(angle))
    across = (math.cos(angle), -math.sin(angle))
    return {
        "tilt_deg": tilt,
        "width_px": 2.0 * half_maximum_lag(acf, across) / math.sqrt(2.0),
        "half_length_px": half_maximum_lag(acf, along),
    }


def pair_statistics(clean: np.ndarray, rainy: np.ndarray) -> dict[str, float]:
    """All per-image figures of a clean/rainy pair (see the module docstring)."""
    layer = layer_from_pair(clean, rainy)
    return {
        "psnr_y": float(psnr_y(rainy, clean)),
        "ssim_y": float(ssim_y(rainy, clean)),
        **level_statistics(layer),
        **shape_statistics(layer),
    }


def summarize(per_image: list[dict[str, float]]) -> dict[str, float]:
    """Figures over a set of images: means of PSNR, SSIM and fractions, medians of the S levels
    and shapes, standard deviation (and largest magnitude) of the tilt, and the image count."""
    if not per_image:
        raise UserError("no images to measure")
    summary: dict[str, float] = {"images": len(per_image)}
    for key in MEAN_KEYS:
        summary[key] = float(np.mean([figures[key] for figures in per_image]))
    for key in MEDIAN_KEYS:
        summary[key] = float(np.median([figures[key] for figures in per_image]))
    tilts = np.array([figures["tilt_deg"] for figures in per_image])
    summary["tilt_std_deg"] = float(np.std(tilts))
    summary["tilt_max_abs_deg"] = float(np.max(np.abs(tilts)))
    return summary


def synthesized_pairs(
    folder: str | Path, rain: Rain, seed: int
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(relative path, clean, rainy)`` for every image under ``folder``, the rain drawn from
    the same per-image stream a build with ``seed`` uses for the ``derain`` task."""
    from ipt_data.seeding import image_rng

    root = Path(folder)
    for path in image_files(folder):
        name = path.relative_to(root).as_posix()
        clean = read_image(path)
        yield name, clean, rain(clean, image_rng(seed, name, "derain")[0])


def rain_statistics(
    folder: str | Path, *, pairs: bool, heavy: bool, seed: int, draws: int
) -> dict[str, float]:
    """Summary figures of the real ``rain-N`` / ``norain-N`` pairs under ``folder``
    (``pairs``; :func:`ipt_data.benchsets.rain_images`, the pairs ``ipt-train eval`` reads), or
    of our rain synthesised over every clean image under it, ``draws`` times per image (seeds
    ``seed``, ``seed + 1``, ...)."""
    if pairs:
        measured = [
            pair_statistics(clean, rainy) for rainy, clean in map(read_pair, rain_images(folder))
        ]
    else:
        if draws < 1:
            raise UserError(f"draws must be at least 1, got {draws}")
        rain = Rain(heavy=heavy)
        measured = [
            pair_statistics(clean, rainy)
            for draw in range(draws)
            for _, clean, rainy in synthesized_pairs(folder, rain, seed + draw)
        ]
    return summarize(measured)


_LABELS = {
    "images": "images",
    "psnr_y": "PSNR_Y dB (mean)",
    "ssim_y": "SSIM_Y (mean)",
    "touched": "fraction S >= 1 (mean)",
    "strong": "fraction S >= 30 (mean)",
    "median_touched": "median S over S >= 1 (median)",
    "p99_touched": "99th percentile S over S >= 1 (median)",
    "rms": "RMS(S) (median)",
    "tilt_std_deg": "tilt std over images, degrees",
    "tilt_max_abs_deg": "largest |tilt|, degrees",
    "width_px": "streak width px (median)",
    "half_length_px": "correlation half-length px (median)",
}


def format_summary(summary: dict[str, float]) -> str:
    """The summary as aligned ``label  value`` lines."""
    return "\n".join(f"{_LABELS[key]:42s} {summary[key]:8.3f}" for key in _LABELS)
