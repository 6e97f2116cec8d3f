"""Tiled inference: run the 48x48-input IPT over an image of any size.

The image is cut into ``tile`` x ``tile`` input tiles that overlap by ``overlap`` pixels (the
last tile of a row or column is moved back to end at the border), the tiles go through the model
``batch`` at a time, and the ``tile*scale`` output tiles are blended where they overlap:

* ``uniform``: the plain average of every output tile covering a pixel (the official
  ``forward_chop`` averages uniformly too, with a fixed 12 px stride and each tile's outer 12 px
  dropped away from the image border);
* ``distance``: a weighted average whose weight falls linearly towards each tile's edges (a tent,
  1 at the edge pixel, tile*scale/2 in the middle), so that pixels are taken mostly from the tiles
  that saw them with the most context.

Images smaller than a tile are padded symmetrically (mirror, edge pixel repeated, as MATLAB's
'symmetric') at the bottom and right, and the output is cropped back. Memory is the image-sized
float64 accumulators plus one batch of tiles. Blending accumulates in float64, so an image that
is exactly one tile comes out bit-identical to a single forward pass with either blend.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ipt_data.errors import UserError

BLENDS = ("uniform", "distance")


@dataclass(frozen=True)
class TileConfig:
    tile: int = 48  # input tile side; the model's patch_size
    overlap: int = 24  # input pixels shared by neighbouring tiles
    blend: str = "uniform"  # one of BLENDS
    batch: int = 64  # tiles per forward pass: bounds memory
    self_ensemble: bool = False  # average over the 8 flips/rotations (8x the compute)

    def __post_init__(self) -> None:
        if self.blend not in BLENDS:
            raise UserError(f"unknown blend {self.blend!r}; choose one of {', '.join(BLENDS)}")
        if not 0 <= self.overlap < self.tile:
            raise UserError(f"overlap must be in 0..{self.tile - 1}, got {self.overlap}")
        if self.batch < 1:
            raise UserError(f"tile batch must be at least 1, got {self.batch}")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the tiles along one axis of ``length`` >= ``tile`` pixels."""
    starts = list(range(0, length - tile + 1, tile - overlap))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def symmetric_pad(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[C, H, W] -> [C, max(H, height), max(W, width)], mirrored at the bottom and right edges
    (edge pixel repeated); works for any amount, unlike reflect padding."""

    def mirrored(n: int, size: int) -> torch.Tensor:
        period = torch.arange(max(n, size), device=image.device) % (2 * n)
        return torch.where(period < n, period, 2 * n - 1 - period)

    _, h, w = image.shape
    return image[:, mirrored(h, height)][:, :, mirrored(w, width)]


def blend_weights(size: int, blend: str, device: torch.device) -> torch.Tensor:
    """[size, size] float64 weights of one output tile: all 1 (uniform) or a tent (distance)."""
    if blend == "uniform":
        return torch.ones(size, size, dtype=torch.float64, device=device)
    ramp = torch.arange(size, dtype=torch.float64, device=device)
    tent = torch.minimum(ramp + 1, size - ramp)  # integers: products with float32 stay exact
    return tent[:, None] * tent[None, :]


@torch.no_grad()
def restore_tiled(
    model: torch.nn.Module, image: torch.Tensor, slot: int, scale: int, tiles: TileConfig
) -> torch.Tensor:
    """``image`` [3, H, W] float 0..255 on the model's device -> [3, sH, sW] float32 output."""
    _, height, width = image.shape
    padded = symmetric_pad(image, tiles.tile, tiles.tile)
    _, ph, pw = padded.shape
    out_tile = tiles.tile * scale
    weights = blend_weights(out_tile, tiles.blend, image.device)
    total = torch.zeros(3, ph * scale, pw * scale, dtype=torch.float64, device=image.device)
    weight_sum = torch.zeros(1, ph * scale, pw * scale, dtype=torch.float64, device=image.device)
    for boxes in _batches(ph, pw, tiles):
        batch = torch.stack([padded[:, y : y + tiles.tile, x : x + tiles.tile] for y, x in boxes])
        restored = _forward(model, batch, slot, tiles.self_ensemble)  # [n, 3, sT, sT]
        for (y, x), tile_out in zip(boxes, restored, strict=True):
            window = (slice(None), slice(y * scale, y * scale + out_tile))
            window += (slice(x * scale, x * scale + out_tile),)
            total[window] += tile_out.double() * weights
            weight_sum[window] += weights
    return (total / weight_sum).float()[:, : height * scale, : width * scale]


def _batches(height: int, width: int, tiles: TileConfig) -> Iterator[list[tuple[int, int]]]:
    """Top-left corners of all tiles, ``tiles.batch`` at a time, row by row."""
    boxes = [
        (y, x)
        for y in tile_starts(height, tiles.tile, tiles.overlap)
        for x in tile_starts(width, tiles.tile, tiles.overlap)
    ]
    for first in range(0, len(boxes), tiles.batch):
        yield boxes[first : first + tiles.batch]


def _forward(model: torch.nn.Module, batch: torch.Tensor, slot: int, ensemble: bool):
    """[n, 3, T, T] -> [n, 3, sT, sT], optionally averaged over the 8 dihedral transforms."""
    if not ensemble:
        return model(batch, slot).float()
    total = None
    for turns in range(4):
        for flip in (False, True):
            x = torch.rot90(batch, turns, dims=(2, 3))
            y = model(x.flip(3) if flip else x, slot).float()
            y = torch.rot90(y.flip(3) if flip else y, -turns, dims=(2, 3))
            total = y if total is None else total + y
    return total / 8
