"""PSNR and SSIM as the published restoration tables compute them (docs/evaluation.md).

SR and deraining tables (IPT among them) score the luma channel
Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 of outputs rounded to 0..255, after shaving
``scale`` pixels at each border for SR; DnCNN-style denoising tables score RGB. SSIM is the
original ``ssim_index``: an 11x11 Gaussian window with sigma 1.5, K = (0.01, 0.03), L = 255,
statistics over 'valid' windows only, averaged over the SSIM map.
"""

from __future__ import annotations

import cv2
import numpy as np

from ipt_data.errors import UserError

PEAK = 255.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """Luma of an HxWx3 RGB image on the 0..255 scale, as float64 in [16, 235]."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise UserError(f"rgb_to_y: expected an HxWx3 RGB image, got shape {image.shape}")
    return image.astype(np.float64) @ _Y_WEIGHTS + 16.0


def _pair(a: np.ndarray, b: np.ndarray, shave: int) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 with ``shave`` pixels cut from every border; shapes must agree."""
    if a.shape != b.shape:
        raise UserError(f"cannot compare images of different shapes {a.shape} and {b.shape}")
    if shave < 0 or a.ndim < 2 or a.shape[0] <= 2 * shave or a.shape[1] <= 2 * shave:
        raise UserError(f"cannot shave {shave} px from each border of an image of shape {a.shape}")
    if shave:
        a, b = a[shave:-shave, shave:-shave], b[shave:-shave, shave:-shave]
    return a.astype(np.float64), b.astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray, shave: int = 0) -> float:
    """PSNR in dB for a peak of 255 over all values of ``a`` and ``b``; inf when they are equal."""
    a, b = _pair(a, b, shave)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(PEAK**2 / mse)


def _gaussian_window() -> np.ndarray:
    radius = SSIM_WINDOW // 2
    g = np.exp(-(np.arange(-radius, radius + 1, dtype=np.float64) ** 2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def _filter_valid(image: np.ndarray) -> np.ndarray:
    """Gaussian-weighted local mean over every full 11x11 window ('valid' filtering)."""
    g = _gaussian_window()
    full = cv2.sepFilter2D(image, cv2.CV_64F, g, g, borderType=cv2.BORDER_REFLECT)
    r = SSIM_WINDOW // 2
    return full[r:-r, r:-r]


def ssim(a: np.ndarray, b: np.ndarray, shave: int = 0) -> float:
    """Mean SSIM of two single-channel (HxW) images on the 0..255 scale."""
    a, b = _pair(a, b, shave)
    if a.ndim != 2:
        raise UserError(f"ssim: expected single-channel HxW images, got shape {a.shape}")
    if min(a.shape) < SSIM_WINDOW:
        raise UserError(f"ssim: images of shape {a.shape} are smaller than the 11x11 window")
    c1, c2 = (SSIM_K1 * PEAK) ** 2, (SSIM_K2 * PEAK) ** 2
    mu_a, mu_b = _filter_valid(a), _filter_valid(b)
    var_a = _filter_valid(a * a) - mu_a**2
    var_b = _filter_valid(b * b) - mu_b**2
    cov = _filter_valid(a * b) - mu_a * mu_b
    numerator = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    denominator = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float(np.mean(numerator / denominator))


def _as_rgb_0_255(image: np.ndarray) -> np.ndarray:
    """An HxWx3 image as float64 whole numbers in 0..255 (float inputs rounded and clipped)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise UserError(f"expected an HxWx3 RGB image, got shape {image.shape}")
    if np.issubdtype(image.dtype, np.floating):
        return np.clip(np.round(image), 0, 255)
    return image.astype(np.float64)


def psnr_y(a: np.ndarray, b: np.ndarray, shave: int = 0) -> float:
    """PSNR on the Y channel of two RGB images (float inputs rounded to 0..255 first)."""
    _pair(a, b, shave)  # shape check before any conversion, naming the original shapes
    return psnr(rgb_to_y(_as_rgb_0_255(a)), rgb_to_y(_as_rgb_0_255(b)), shave)


def ssim_y(a: np.ndarray, b: np.ndarray, shave: int = 0) -> float:
    """SSIM on the Y channel of two RGB images (float inputs rounded to 0..255 first)."""
    _pair(a, b, shave)
    return ssim(rgb_to_y(_as_rgb_0_255(a)), rgb_to_y(_as_rgb_0_255(b)), shave)


def psnr_rgb(a: np.ndarray, b: np.ndarray, shave: int = 0) -> float:
    """PSNR over all R, G and B values (one MSE over the channels), as DnCNN-style tables."""
    _pair(a, b, shave)
    return psnr(_as_rgb_0_255(a), _as_rgb_0_255(b), shave)


def ssim_rgb(a: np.ndarray, b: np.ndarray, shave: int = 0) -> float:
    """Mean over R, G and B of the per-channel SSIM, as DnCNN-style tables."""
    _pair(a, b, shave)
    a, b = _as_rgb_0_255(a), _as_rgb_0_255(b)
    return float(np.mean([ssim(a[..., c], b[..., c], shave) for c in range(3)]))
