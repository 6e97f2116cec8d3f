"""Tile seams: the seam index is 1 without tiles, sees the seams of whole-tile averaging, and the
default blend stays under its threshold on an image several tiles wide."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numerics import tolerance

from ipt_data.imresize import upscale
from ipt_train.blends import seam_index
from ipt_train.tilegrid import TileConfig
from ipt_train.tiling import restore_tiled

SEAM_THRESHOLD = 1.05  # docs/evaluation.md: the default blend's bound on Set5 and Set14


def ratio_limit(photo: np.ndarray, scale: int) -> float:
    """How far from 1 the seam index of a seam-free restoration may be: its two energies sum the
    same float64 squared differences (at most every output pixel's) in other orders."""
    return tolerance(photo.size * scale**2, 1.0, dtype=np.float64)


class EdgeErrorUpscale(torch.nn.Module):
    """A stand-in for a trained model, with the call signature of IPT: nearest-neighbour
    upscaling plus an error that only tiles have, largest at a tile's edges and fading over a few
    pixels inwards (a model sees less context there), its size set by the tile's content (so
    neighbouring tiles disagree, as they do with a real model)."""

    def __init__(self, scale: int, tile: int = 48) -> None:
        super().__init__()
        self.scale = scale
        ramp = torch.arange(tile * scale)
        to_edge = torch.minimum(ramp, tile * scale - 1 - ramp)
        to_edge = torch.minimum(to_edge[:, None], to_edge[None, :]).float()
        self.profile = torch.exp(-to_edge / (2 * scale))

    def forward(self, x: torch.Tensor, slot: int) -> torch.Tensor:
        y = x.repeat_interleave(self.scale, 2).repeat_interleave(self.scale, 3)
        return y + 0.3 * (x.mean(dim=(2, 3), keepdim=True) - 128) * self.profile


def tiled(model: torch.nn.Module, tiles: TileConfig, scale: int):
    def restore(image: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
        y = restore_tiled(model, x, 0, scale, tiles)
        return y.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()

    return restore


@pytest.fixture(scope="module")
def photo(sample_photos) -> np.ndarray:
    return sample_photos["astronaut"][100:250, 150:350]  # 150x200: 6x8 tiles at overlap 24


@pytest.mark.parametrize("blend", ["uniform", "official"])
def test_without_tiles_the_index_is_one(photo, blend):
    """An untiled restoration (MATLAB bicubic) has the same energy across every line."""
    assert seam_index(lambda image: upscale(image, 2), photo, TileConfig(blend=blend), 2) == (
        pytest.approx(1.0, abs=ratio_limit(photo, 2))
    )


def test_the_default_blend_hides_tile_edges_that_whole_tile_averaging_shows(photo):
    model = EdgeErrorUpscale(2)
    default = TileConfig()
    assert default.blend == "distance"
    restore = tiled(model, default, 2)
    index = seam_index(restore, photo, default, 2)
    assert index <= SEAM_THRESHOLD
    assert seam_index(restore, photo, default, 2, restored=restore(photo)) == index
    official = TileConfig(blend="official")
    assert seam_index(tiled(model, official, 2), photo, official, 2) <= SEAM_THRESHOLD
    uniform = TileConfig(blend="uniform")
    assert seam_index(tiled(model, uniform, 2), photo, uniform, 2) > 1.3  # the seams it had


def test_a_model_without_edge_error_has_no_seams_whatever_the_blend(photo):
    """Tiles of a pixelwise operator agree everywhere: no blend can make seams of them."""
    model = EdgeErrorUpscale(3)
    model.profile.zero_()
    for blend in ("uniform", "distance", "official"):
        tiles = TileConfig(blend=blend)
        index = seam_index(tiled(model, tiles, 3), photo, tiles, 3)
        assert index == pytest.approx(1.0, abs=ratio_limit(photo, 3))
