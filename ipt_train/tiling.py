"""Tiled inference: run the 48x48-input IPT over an image of any size.

The image is cut into ``tile`` x ``tile`` input tiles, the tiles go through the model ``batch`` at
a time, and the ``tile*scale`` output tiles are blended where they overlap (docs/evaluation.md):

* ``uniform``: tiles ``overlap`` pixels apart (the last one of a row or column moved back to end
  at the border), each output pixel the plain average of every tile covering it;
* ``distance``: the same tiles, each weighted by a tent that falls linearly towards its edges
  (1 at the edge pixel, tile*scale/2 in the middle), so that pixels are taken mostly from the
  tiles that saw them with the most context;
* ``official``: the official code's ``forward_chop`` (huawei-noah/Pretrained-IPT), which the
  published numbers of the released checkpoints come from: tiles ``tile/4`` apart, each
  interior pixel the average of the tiles' centres only (their outer ``tile/4`` pixels
  dropped), the borders from strips of tiles along each edge (``overlap`` is not used).

Images smaller than a tile are padded symmetrically (mirror, edge pixel repeated, as MATLAB's
'symmetric') at the bottom and right, and the output is cropped back. Memory is a few
image-sized float64 accumulators plus one batch of tiles. Blending accumulates in float64, so an
image that is exactly one tile comes out bit-identical to a single forward pass (``uniform``,
``distance``; ``official`` runs that tile four times in one batch, equal to float rounding).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from ipt_train.tilegrid import (
    TileConfig,
    official_band,
    official_starts,
    official_used,
    tile_starts,
)

# [n, 3, T, T] input tiles -> [n, 3, sT, sT] output tiles (float32), at most the tile batch at once
TileRunner = Callable[[torch.Tensor], torch.Tensor]


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
    # The grid blends' grid is the same whatever the transform: self-ensemble runs per tile
    per_tile_ensemble = tiles.self_ensemble and tiles.blend != "official"
    run = _runner(model, slot, tiles.batch, per_tile_ensemble)
    if tiles.blend != "official":
        out = _grid_blend(run, padded, scale, tiles)
    elif not tiles.self_ensemble:
        out = official_chop(run, padded, scale, tiles.tile, tiles.batch)
    else:  # as the official code: each of the 8 transformed whole images through the chop
        out = _dihedral_mean(
            padded, lambda x: official_chop(run, x, scale, tiles.tile, tiles.batch)
        )
    return out[:, : height * scale, : width * scale]


def _runner(model: torch.nn.Module, slot: int, batch: int, ensemble: bool) -> TileRunner:
    """The model's slot as a TileRunner, ``batch`` tiles per forward pass."""

    def run(x: torch.Tensor) -> torch.Tensor:
        parts = [x[first : first + batch] for first in range(0, len(x), batch)]
        if not ensemble:
            return torch.cat([model(part, slot).float() for part in parts])
        return torch.cat([_dihedral_mean(part, lambda t: model(t, slot).float()) for part in parts])

    return run


def _dihedral_mean(x: torch.Tensor, function: Callable[[torch.Tensor], torch.Tensor]):
    """The mean of ``function`` over the 8 flips/rotations of ``x`` (last two axes), each output
    transformed back: x8 self-ensemble."""
    total = None
    for turns in range(4):
        for flip in (False, True):
            turned = torch.rot90(x, turns, dims=(-2, -1))
            y = function(turned.flip(-1) if flip else turned)
            y = torch.rot90(y.flip(-1) if flip else y, -turns, dims=(-2, -1))
            total = y if total is None else total + y
    return total / 8


class _Accumulator:
    """A weighted sum of output tiles over a [3, height, width] region, in float64."""

    def __init__(self, height: int, width: int, device: torch.device) -> None:
        self.total = torch.zeros(3, height, width, dtype=torch.float64, device=device)
        self.weight = torch.zeros(1, height, width, dtype=torch.float64, device=device)

    def add(self, tile_out: torch.Tensor, y: int, x: int, weights: torch.Tensor) -> None:
        """Add ``tile_out`` [3, h, w] with ``weights`` [h, w] at output pixel (y, x)."""
        h, w = weights.shape
        self.total[:, y : y + h, x : x + w] += tile_out.double() * weights
        self.weight[:, y : y + h, x : x + w] += weights

    def mean(self) -> torch.Tensor:
        """[3, height, width]: the weighted mean where any tile has weight, 0 elsewhere."""
        return self.total / self.weight.clamp(min=torch.finfo(torch.float64).tiny)


def _grid_blend(run: TileRunner, image: torch.Tensor, scale: int, tiles: TileConfig):
    """``uniform`` / ``distance``: [3, H, W] (at least one tile) -> [3, sH, sW] float32."""
    _, height, width = image.shape
    weights = blend_weights(tiles.tile * scale, tiles.blend, image.device)
    canvas = _Accumulator(height * scale, width * scale, image.device)
    corners = [
        (y, x)
        for y in tile_starts(height, tiles.tile, tiles.overlap)
        for x in tile_starts(width, tiles.tile, tiles.overlap)
    ]
    for boxes in _chunks(corners, tiles.batch):
        outputs = run(_cut(image, boxes, tiles.tile))  # [n, 3, sT, sT]
        for (y, x), tile_out in zip(boxes, outputs, strict=True):
            canvas.add(tile_out, y * scale, x * scale, weights)
    return canvas.mean().float()


def _cut(image: torch.Tensor, boxes: list[tuple[int, int]], tile: int) -> torch.Tensor:
    """[n, 3, tile, tile]: the input tiles whose top-left corners are ``boxes``."""
    return torch.stack([image[:, y : y + tile, x : x + tile] for y, x in boxes])


def _chunks(items: list, size: int) -> Iterator[list]:
    for first in range(0, len(items), size):
        yield items[first : first + size]


def official_chop(
    run: TileRunner, image: torch.Tensor, scale: int, tile: int = 48, batch: int = 64
) -> torch.Tensor:
    """[3, H, W] (H, W >= tile) -> [3, sH, sW] float32, as the official ``forward_chop`` blends.

    Tiles start every ``m = tile/4`` pixels over the part of the image that grid covers
    (``H' = H - (H - tile) % m`` rows, likewise columns). Inside, a pixel is the mean of the
    tiles' centres (each tile's outer ``m`` pixels dropped). The first ``m`` rows and columns
    come from strips: the first row of tiles, and the first column, each blended along its
    length only (centres averaged, its two end tiles keeping their outer margin). The bottom
    and right bands come from such strips of tiles laid along the last ``tile`` rows and
    columns, and the corner from one tile there; each band replaces about half the width the
    grid leaves over (docs/evaluation.md)."""
    _, height, width = image.shape
    used = (official_used(height, tile), official_used(width, tile))
    parts = _OfficialParts(tuple(n * scale for n in used), tile * scale, image.device)
    jobs = _official_jobs(parts, height, width, tile, scale)
    for chunk in _chunks(jobs, batch):
        outputs = run(_cut(image, [corner for corner, _ in chunk], tile))
        for (_, targets), tile_out in zip(chunk, outputs, strict=True):
            for accumulator, (y, x), weights in targets:
                accumulator.add(tile_out, y, x, weights)
    return parts.assemble(
        official_band(tile, height - used[0], scale), official_band(tile, width - used[1], scale)
    )


class _OfficialParts:
    """The official blend's accumulators: the stride grid's centres (``interior``), its first
    row and column of tiles (``top``, ``left``), the strips along the last rows and columns
    (``bottom``, ``right``) and the bottom-right ``corner`` tile."""

    def __init__(self, grid: tuple[int, int], out_tile: int, device: torch.device) -> None:
        (grid_h, grid_w), self.out_tile = grid, out_tile
        self.interior = _Accumulator(grid_h, grid_w, device)
        self.top, self.bottom = (_Accumulator(out_tile, grid_w, device) for _ in range(2))
        self.left, self.right = (_Accumulator(grid_h, out_tile, device) for _ in range(2))
        self.corner = _Accumulator(out_tile, out_tile, device)

    def grid(self, margin: int) -> torch.Tensor:
        """The stride grid's part of the output: the first rows from the top strip, the first
        columns from the left strip (laid over it), the centres' mean inside."""
        grid = self.interior.mean()
        _, grid_h, grid_w = grid.shape
        inside = (slice(None), slice(margin, grid_h - margin), slice(margin, grid_w - margin))
        centres = grid[inside].clone()
        grid[:, : self.out_tile, :] = self.top.mean()
        grid[:, :, : self.out_tile] = self.left.mean()
        grid[inside] = centres
        return grid

    def assemble(self, band_h: tuple[int, int], band_w: tuple[int, int]) -> torch.Tensor:
        """[3, sH, sW] float32: the grid, its bottom and right bands replaced by the strips'."""
        grid = self.grid(self.out_tile // 4)
        keep_h = grid.shape[1] - band_h[0]
        left = torch.cat([grid[:, :keep_h], self.bottom.mean()[:, band_h[1] :]], dim=1)
        right = torch.cat([self.right.mean()[:, :keep_h], self.corner.mean()[:, band_h[1] :]], 1)
        keep_w = grid.shape[2] - band_w[0]
        return torch.cat([left[:, :, :keep_w], right[:, :, band_w[1] :]], dim=2).float()


def _official_jobs(parts: _OfficialParts, height: int, width: int, tile: int, scale: int) -> list:
    """[(input corner, [(accumulator, output corner, weights)])] of every tile the official
    blend runs: the stride grid, then the right strip, the bottom strip and the corner."""
    mask = _Masks(tile * scale, tile // 4 * scale, parts.interior.total.device)
    rows, cols = official_starts(height, tile), official_starts(width, tile)
    jobs = []
    for i, y in enumerate(rows):
        along_y = mask.strip(i, len(rows), vertical=True)
        for j, x in enumerate(cols):
            along_x = mask.strip(j, len(cols), vertical=False)
            targets = [(parts.interior, (y * scale, x * scale), mask.centre_2d)]
            targets += [(parts.top, (0, x * scale), along_x)] if i == 0 else []
            targets += [(parts.left, (y * scale, 0), along_y)] if j == 0 else []
            jobs.append(((y, x), targets))
        jobs.append(((y, width - tile), [(parts.right, (y * scale, 0), along_y)]))
    for j, x in enumerate(cols):
        along_x = mask.strip(j, len(cols), vertical=False)
        jobs.append(((height - tile, x), [(parts.bottom, (0, x * scale), along_x)]))
    whole = mask.strip(0, 1, vertical=False)
    jobs.append(((height - tile, width - tile), [(parts.corner, (0, 0), whole)]))
    return jobs


class _Masks:
    """0/1 float64 weights of the official blend for output tiles of side ``size``, whose outer
    ``margin`` pixels count only at the ends of a row or column of tiles. There are few
    distinct ones, each made once: a job list holds no weights per tile."""

    def __init__(self, size: int, margin: int, device: torch.device) -> None:
        self.size, self.margin, self.device = size, margin, device
        self.full = torch.ones(size, dtype=torch.float64, device=device)
        centre = self.along(1, 3)
        self.centre_2d = self.outer(centre, centre)
        self._strips: dict[tuple[bool, bool, bool], torch.Tensor] = {}

    def strip(self, index: int, count: int, vertical: bool) -> torch.Tensor:
        """[size, size]: the weights of tile ``index`` of a strip of ``count`` tiles, blended
        along the strip only (down it if ``vertical``, else across)."""
        key = (index == 0, index == count - 1, vertical)
        if key not in self._strips:
            kept = self.along(index, count)
            self._strips[key] = (
                self.outer(kept, self.full) if vertical else self.outer(self.full, kept)
            )
        return self._strips[key]

    def along(self, index: int, count: int) -> torch.Tensor:
        """[size]: the part of tile ``index`` of ``count`` (along one axis) that counts."""
        kept = torch.zeros(self.size, dtype=torch.float64, device=self.device)
        first = 0 if index == 0 else self.margin
        last = self.size if index == count - 1 else self.size - self.margin
        kept[first:last] = 1
        return kept

    @staticmethod
    def outer(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return rows[:, None] * cols[None, :]
