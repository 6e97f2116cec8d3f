"""Super-resolution inputs: MATLAB bicubic downscaling (docs/corruptions.md), the ``sr_x2/3/4``
corruptions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ipt_data.errors import UserError
from ipt_data.imresize import downscale


@dataclass(frozen=True)
class BicubicDownscale:
    """MATLAB ``imresize(img, 1/factor, 'bicubic')`` of the whole (mod-factor cropped) image."""

    factor: int
    # Not per-pixel: the kernel reaches across patch borders, so it must see the whole image.
    pointwise: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not isinstance(self.factor, int) or self.factor < 1:
            raise UserError(f"super-resolution factor must be an integer >= 1, got {self.factor}")

    @property
    def scale(self) -> int:
        return self.factor

    def __call__(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``clean``: HxWx3 uint8 with H, W multiples of ``factor`` -> (H/f)x(W/f)x3 uint8."""
        return downscale(clean, self.factor)

    def params(self) -> dict:
        return {"kind": "matlab_bicubic_downscale", "factor": self.factor}
