"""Rain streaks after Yang et al. (JORDER / Rain100L): the ``derain`` corruption
(docs/corruptions.md).

``O = clip(B + S, 0, 255)`` with ``S >= 0`` one gray layer added equally to R, G and B. ``S`` is
made procedurally, after the image-editor recipe behind synthetic rain sets: sparse seeds of
random brightness, a motion blur along one direction (an oriented line kernel), a small Gaussian
blur that sets the streak width, and an intensity scale. The layer is generated over the whole
image, so streaks run across the borders of the patches cut from it.

To stay cheap (a few ms for a 500x375 image on one core), the seeds are placed on a canvas whose
columns already run along the streak direction: the line kernel is then a vertical box filter,
and one affine warp (bilinear) turns the canvas into the image frame.

The constants below are calibrated (``ipt-data rain-stats``; see docs/corruptions.md) so that
light rain on scikit-image's colour photographs matches the real Rain100L layers tiled over them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np

from ipt_data.decode import decode_image
from ipt_data.errors import UserError
from ipt_data.fileio import read_bytes


@dataclasses.dataclass(frozen=True)
class StreakStyle:
    """One family of parallel streaks: how many, how long, how wide and how bright."""

    cell_px: int  # seeds are stratified: at most one per cell_px x cell_px cell of the canvas
    seed_probability: float  # chance that a cell holds a seed
    brightness_power: float  # seed brightness U(0,1) ** power: most streaks faint, few bright
    bright_fraction: float  # ... except this fraction of the seeds (near drops), which get
    bright_level: float  # this brightness, above the range [0, 1) of the others
    length: int  # streak length in pixels (the line kernel)
    width_sigma: float  # Gaussian sigma across the streak, pixels
    gain: float  # S along a lone streak from a seed of brightness 1, before the width blur


# Rain100L: one family of thin light streaks; calibrated with `ipt-data rain-stats`
# (docs/corruptions.md).
# With one brightness law (U**2, bounded, or with a power-law tail) the brightest 1% of streak
# pixels stayed at 73-80 where Rain100L's reach ~100: lifting them that way moved energy out of
# the mid-bright streaks that make SSIM 0.80 at the PSNR target, and SSIM rose. So the
# seeds come in two populations, as near and far drops would: 6% at 2.1x the far ones' maximum
# (peaks 80-120 after the width blur and the warp) make the brightest 1% of the pixels without
# a long tail far above 100 that would cost energy; the far ones' U**1.4 (flatter than U**2, as
# the near drops take over the bright end) keeps the median S at 8; seed_probability and gain
# then restore the touched fraction (0.37) and the PSNR (26.4 dB). The values are the
# calibration in benchmarks/results/rain-stats_xeon2c_2026-11-27.md.
LIGHT = StreakStyle(
    cell_px=16,
    seed_probability=0.73,
    brightness_power=1.4,
    bright_fraction=0.06,
    bright_level=2.1,
    length=41,
    width_sigma=0.65,
    gain=94.0,
)
# Rain100H: several overlapping families of denser, wider, brighter streaks (one population).
HEAVY = StreakStyle(
    cell_px=8,
    seed_probability=0.5,
    brightness_power=1.0,
    bright_fraction=0.0,
    bright_level=1.0,
    length=45,
    width_sigma=1.0,
    gain=80.0,
)
HEAVY_LAYERS = 4
HEAVY_LAYER_SPREAD_DEG = 6.0  # tilt of each heavy family around the image's common tilt

TILT_SIGMA_DEG = 13.6  # tilt from vertical ~ N(0, 13.6°) ...
TILT_LIMIT_DEG = 27.0  # ... redrawn until within ±27° (docs/corruptions.md; measured on Rain100L)


def draw_tilt(rng: np.random.Generator) -> float:
    """Streak tilt from vertical in degrees: N(0, 13.6°) truncated to ±27° by redrawing."""
    while True:
        tilt = TILT_SIGMA_DEG * float(rng.standard_normal())
        if abs(tilt) <= TILT_LIMIT_DEG:
            return tilt


def streak_layer(
    height: int, width: int, rng: np.random.Generator, tilt_deg: float, style: StreakStyle
) -> np.ndarray:
    """One family of parallel streaks tilted ``tilt_deg`` from vertical (positive: the streaks
    run from top-left to bottom-right). Returns float32 ``height x width``, values >= 0."""
    angle = math.radians(tilt_deg)
    cos, sin = abs(math.cos(angle)), abs(math.sin(angle))
    # Canvas in the streak frame: covers the rotated image plus one streak length of margin,
    # so that streaks entering the image from outside are complete.
    margin = style.length
    canvas_w = math.ceil(width * cos + height * sin) + 2 * 4
    canvas_h = math.ceil(width * sin + height * cos) + 2 * margin
    seeds = _seeds(canvas_h, canvas_w, rng, style)
    streaks = cv2.blur(seeds, (1, style.length))  # the line kernel: the canvas's columns
    # Width: a Gaussian across the streaks only (along them it would change nothing visible).
    across = 2 * math.ceil(3 * style.width_sigma) + 1
    streaks = cv2.GaussianBlur(streaks, (across, 1), style.width_sigma)
    streaks *= np.float32(style.gain * style.length)
    return _canvas_to_image(streaks, height, width, tilt_deg)


def _seeds(height: int, width: int, rng: np.random.Generator, style: StreakStyle) -> np.ndarray:
    """Sparse seed image, float32 ``height x width``: one point of brightness >= 0 at a
    uniform random place in each cell that holds a seed. Stratified seeds (rather than a
    Poisson scatter) spread the streaks more evenly, which brings SSIM at a given PSNR closer
    to the real layers'; they are also cheaper than a noise value per pixel."""
    cell = style.cell_px
    rows, cols = -(-height // cell), -(-width // cell)
    ys = (np.arange(rows)[:, None] * cell + rng.integers(0, cell, (rows, cols))).ravel()
    xs = (np.arange(cols)[None, :] * cell + rng.integers(0, cell, (rows, cols))).ravel()
    draw = rng.random(rows * cols)
    keep = (draw < style.seed_probability) & (ys < height) & (xs < width)
    uniform = draw[keep] / style.seed_probability  # U(0, 1), from the draw that placed the seed
    far = 1.0 - style.bright_fraction
    brightness = np.where(
        uniform >= far, style.bright_level, (uniform / far) ** style.brightness_power
    )
    seeds = np.zeros((height, width), np.float32)
    seeds[ys[keep], xs[keep]] = brightness
    return seeds


def _canvas_to_image(canvas: np.ndarray, height: int, width: int, tilt_deg: float) -> np.ndarray:
    """Rotate the streak-frame canvas (streaks vertical) into the image frame, centres aligned."""
    canvas_h, canvas_w = canvas.shape
    # Image pixel offset (dx, dy) from the image centre -> canvas offset from the canvas centre
    # (cos*dx - sin*dy, sin*dx + cos*dy): the canvas's columns become the image direction
    # (sin, cos), i.e. a positive tilt moves the streak's lower end to the right (y down).
    angle = math.radians(tilt_deg)
    cos, sin = math.cos(angle), math.sin(angle)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    kx, ky = (canvas_w - 1) / 2.0, (canvas_h - 1) / 2.0
    matrix = np.array(
        [
            [cos, -sin, kx - cos * cx + sin * cy],
            [sin, cos, ky - sin * cx - cos * cy],
        ],
        dtype=np.float64,
    )
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(canvas, matrix, (width, height), flags=flags)


def rain_layer(
    height: int, width: int, rng: np.random.Generator, heavy: bool = False
) -> np.ndarray:
    """The gray additive rain layer ``S`` for one image: float32 ``height x width``, ``S >= 0``.

    Light rain (the default) is one family of streaks with one direction per image; heavy rain
    sums several denser families whose directions spread a few degrees around a common tilt.
    Deterministic given ``rng``.
    """
    tilt = draw_tilt(rng)
    if not heavy:
        return streak_layer(height, width, rng, tilt, LIGHT)
    layer = np.zeros((height, width), np.float32)
    for _ in range(HEAVY_LAYERS):
        layer_tilt = tilt + HEAVY_LAYER_SPREAD_DEG * float(rng.standard_normal())
        layer += streak_layer(height, width, rng, layer_tilt, HEAVY)
    return layer


def add_rain(clean: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """``clip(B + round(S), 0, 255)`` with the gray layer added equally to R, G and B."""
    gray = np.clip(np.rint(layer), 0, 255).astype(np.uint8)
    return cv2.add(clean, cv2.merge([gray, gray, gray]))  # saturating uint8 add


@functools.lru_cache(maxsize=8)
def streak_files(streaks_dir: str) -> tuple[Path, ...]:
    """The ``rainstreak-*.png`` files of a folder of real streak layers, sorted by name (listed
    once per process: a build calls this for every image)."""
    folder = Path(streaks_dir)
    if not folder.is_dir():
        raise UserError(f"rain streaks folder {streaks_dir} does not exist or is not a folder")
    files = tuple(sorted(folder.glob("rainstreak-*.png")))
    if not files:
        raise UserError(f"rain streaks folder {streaks_dir} has no rainstreak-*.png files")
    return files


def real_streak_layer(
    files: tuple[Path, ...], height: int, width: int, rng: np.random.Generator
) -> np.ndarray:
    """A real streak layer picked with ``rng``, gray (mean of R, G, B), tiled to cover the image
    and cropped at a random offset. float32 ``height x width``."""
    path = files[int(rng.integers(len(files)))]
    gray = decode_image(read_bytes(path), str(path)).astype(np.float32).mean(axis=2)
    tile_h, tile_w = gray.shape
    dy, dx = int(rng.integers(tile_h)), int(rng.integers(tile_w))
    reps = (math.ceil((height + dy) / tile_h), math.ceil((width + dx) / tile_w))
    return np.ascontiguousarray(np.tile(gray, reps)[dy : dy + height, dx : dx + width])


@dataclasses.dataclass(frozen=True)
class Rain:
    """The ``derain`` corruption: ``clip(B + S, 0, 255)``, S a gray streak layer made over the
    whole image (synthesised, or a real ``rainstreak-*.png`` layer from ``streaks_dir``)."""

    heavy: bool = False  # Rain100H-like: several overlapping near-vertical layers
    streaks_dir: str | None = None  # folder of real streak layers used instead of synthesis
    scale: ClassVar[int] = 1
    # Streaks span many pixels: apply to the whole image before cutting patches.
    pointwise: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.streaks_dir is not None:
            if self.heavy:
                raise UserError("heavy rain is synthetic: give either heavy or streaks_dir")
            streak_files(self.streaks_dir)  # fail at configuration time, not in a worker

    def __call__(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``clean``: HxWx3 uint8 -> HxWx3 uint8."""
        if clean.dtype != np.uint8 or clean.ndim != 3 or clean.shape[2] != 3:
            raise UserError(f"Rain expects HxWx3 uint8 images, got {clean.dtype} {clean.shape}")
        height, width = clean.shape[:2]
        if self.streaks_dir is None:
            layer = rain_layer(height, width, rng, self.heavy)
        else:
            layer = real_streak_layer(streak_files(self.streaks_dir), height, width, rng)
        return add_rain(clean, layer)

    def params(self) -> dict:
        """The options and, for synthesis, the model constants: a build made with other
        constants is a different data set, and its manifest must say so."""
        if self.streaks_dir is not None:
            return {"kind": "rain", "model": "real_streaks", "streaks_dir": self.streaks_dir}
        params = {"kind": "rain", "model": "yang2017_procedural", "heavy": self.heavy}
        params["style"] = dataclasses.asdict(HEAVY if self.heavy else LIGHT)
        params["tilt_deg"] = {"sigma": TILT_SIGMA_DEG, "limit": TILT_LIMIT_DEG}
        if self.heavy:
            params["layers"] = {"count": HEAVY_LAYERS, "spread_deg": HEAVY_LAYER_SPREAD_DEG}
        return params
