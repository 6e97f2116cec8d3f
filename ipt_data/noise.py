"""Gaussian noise: the ``denoise_30`` and ``denoise_50`` corruptions (docs/corruptions.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ipt_data.errors import UserError


@dataclass(frozen=True)
class GaussianNoise:
    """``clip(B + N(0, sigma²))`` i.i.d. per pixel and channel, sigma on the 0..255 scale,
    rounded to uint8 (which adds variance 1/12, negligible next to sigma²)."""

    sigma: float
    scale: ClassVar[int] = 1
    # Acts on each pixel independently, so it may be applied to a cut patch (cheaper than the
    # whole image, same distribution).
    pointwise: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not np.isfinite(self.sigma) or self.sigma < 0:
            raise UserError(f"noise sigma must be a finite number >= 0, got {self.sigma}")

    def __call__(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``clean``: any-shape uint8 -> same shape uint8."""
        if clean.dtype != np.uint8:
            raise UserError(f"GaussianNoise expects uint8 images, got {clean.dtype}")
        noisy = rng.standard_normal(clean.shape, dtype=np.float32)  # one buffer, all in place
        noisy *= np.float32(self.sigma)
        noisy += clean  # the float32 sum clean + sigma * noise
        np.clip(noisy, 0, 255, out=noisy)
        return np.rint(noisy, out=noisy).astype(np.uint8)

    def params(self) -> dict:
        return {"kind": "gaussian_noise", "sigma": float(self.sigma)}
