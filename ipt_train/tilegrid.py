"""Where tiled inference puts its tiles (docs/evaluation.md), without torch: the settings
(:class:`TileConfig`), the tile grid of each blend, how many forward passes an image takes and
along which output lines tiles begin or end. :mod:`ipt_train.tiling` runs the model over them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ipt_data import UserError

BLENDS = ("uniform", "distance", "official")


@dataclass(frozen=True)
class TileConfig:
    """How an image is tiled and blended. The default blend, ``distance``, is the one without
    seams and with the best PSNR measured on Set5 and Set14 (docs/evaluation.md); ``official``
    reproduces the published numbers of the released checkpoints."""

    tile: int = 48  # input tile side; the model's patch_size
    overlap: int = 24  # input pixels shared by neighbouring tiles (uniform, distance)
    blend: str = "distance"  # one of BLENDS
    batch: int = 64  # tiles per forward pass: bounds memory
    self_ensemble: bool = False  # average over the 8 flips/rotations (8x the compute)

    def __post_init__(self) -> None:
        if self.blend not in BLENDS:
            raise UserError(f"unknown blend {self.blend!r}; choose one of {', '.join(BLENDS)}")
        if not 0 <= self.overlap < self.tile:
            raise UserError(f"overlap must be in 0..{self.tile - 1}, got {self.overlap}")
        if self.batch < 1:
            raise UserError(f"tile batch must be at least 1, got {self.batch}")
        if self.blend == "official" and self.tile % 4:
            raise UserError(f"the official blend needs a tile side divisible by 4, not {self.tile}")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the tiles along one axis of ``length`` >= ``tile`` pixels."""
    starts = list(range(0, length - tile + 1, tile - overlap))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def grid_stride(tiles: TileConfig) -> int:
    """Input pixels between neighbouring tiles of the blend's grid: tile/4 for ``official``."""
    return tiles.tile // 4 if tiles.blend == "official" else tiles.tile - tiles.overlap


def tile_count(tiles: TileConfig, height: int, width: int) -> int:
    """Forward passes of one tile that restoring an H x W image takes (x8 with self-ensemble)."""
    height, width = max(height, tiles.tile), max(width, tiles.tile)  # small images are padded
    if tiles.blend == "official":
        rows, cols = (len(official_starts(n, tiles.tile)) for n in (height, width))
        count = rows * cols + rows + cols + 1  # the grid, the two edge strips, the corner
    else:
        count = len(tile_starts(height, tiles.tile, tiles.overlap))
        count *= len(tile_starts(width, tiles.tile, tiles.overlap))
    return count * (8 if tiles.self_ensemble else 1)


def tile_lines(tiles: TileConfig, length: int, scale: int) -> list[int]:
    """Output positions p along an axis of ``length`` input pixels where a tile begins or ends
    its contribution (a seam would lie between output pixels p-1 and p)."""
    padded = max(length, tiles.tile)
    if tiles.blend == "official":
        used, step = official_used(padded, tiles.tile), grid_stride(tiles) * scale
        band = used * scale - official_band(tiles.tile, padded - used, scale)[0]
        lines = {*range(step, band, step), band}
    else:
        starts = tile_starts(padded, tiles.tile, tiles.overlap)
        lines = {edge * scale for start in starts for edge in (start, start + tiles.tile)}
    return sorted(p for p in lines if 0 < p < length * scale)


def official_used(length: int, tile: int) -> int:
    """The part of an axis the official stride grid covers: the whole steps of tile/4."""
    return length - (length - tile) % (tile // 4)


def official_starts(length: int, tile: int) -> range:
    """Tile starts of the official stride grid along an axis: every tile/4 pixels, over the
    part of the axis that whole steps reach."""
    return range(0, official_used(length, tile) - tile + 1, tile // 4)


def official_band(tile: int, left_over: int, scale: int) -> tuple[int, int]:
    """(output rows dropped from the grid's end, rows skipped at the start of the edge strip):
    the strip along the last ``tile`` input rows replaces the grid's last (tile - left_over)/2
    rows (rounded down), and starts that far in (rounded up), so the two add up."""
    span = (tile - left_over) * scale
    return span // 2, (span + 1) // 2
