"""Tiled inference: geometry, blending, padding, self-ensemble, batching.

Float comparisons (tests/numerics.py): ``torch.equal`` where the same kernels run on the same
inputs in this process and the float64 blend is exact; elsewhere the tolerance of two float32
computations whose sums are ordered differently, from the terms they accumulate.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from numerics import BLEND_TERMS, ENSEMBLE_TERMS, assert_within, ipt_terms, tolerance_of

from ipt_data.errors import UserError
from ipt_train.checkpoint import build_model
from ipt_train.model import IPT, ipt_tiny
from ipt_train.tilegrid import BLENDS, TileConfig, tile_starts
from ipt_train.tiling import restore_tiled, symmetric_pad

FIXTURES = Path(__file__).parent / "fixtures"


class NearestUpscale(torch.nn.Module):
    """A translation-equivariant stand-in with the model's call signature: every output pixel
    depends on its own input pixel only, so tiling must not change its result at all."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor, slot: int) -> torch.Tensor:
        y = x.repeat_interleave(self.scale, 2).repeat_interleave(self.scale, 3)
        return y * 0.5 + slot


@pytest.fixture(scope="module")
def tiny() -> IPT:
    torch.manual_seed(0)
    return IPT(ipt_tiny()).eval()


def image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), generator=generator).float()


def test_tile_starts_cover_the_axis_and_end_at_the_border():
    assert tile_starts(48, 48, 24) == [0]
    assert tile_starts(100, 48, 24) == [0, 24, 48, 52]
    assert tile_starts(96, 48, 0) == [0, 48]
    for length in range(48, 200, 7):
        starts = tile_starts(length, 48, 12)
        assert starts[0] == 0 and starts[-1] == length - 48
        assert all(0 < b - a <= 36 for a, b in itertools.pairwise(starts))


@pytest.mark.numerics
@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("slot", [0, 3])
def test_one_tile_image_equals_a_forward_pass(tiny, blend, slot):
    x = image(48, 48)
    with torch.no_grad():
        whole = tiny(x[None], slot)[0]
    tiled = restore_tiled(tiny, x, slot, tiny.cfg.scales[slot], TileConfig(blend=blend))
    if blend == "official":  # runs the tile 4 times (grid, two strips, corner) in one batch of
        # 4, whose kernels may split the sums otherwise than for a batch of 1
        limit = tolerance_of(whole, ipt_terms(tiny.cfg, slot) + BLEND_TERMS)
        assert_within(tiled, whole, limit)
        with torch.no_grad():  # a tile mirrored by mistake would be far outside the limit
            mirrored = tiny(x.flip(-1)[None], slot)[0].flip(-1)
        assert (mirrored - whole).abs().max() > 100 * limit
    else:  # bit-identical by construction: one tile in a batch of 1, the same kernels on the
        # same input; its float64 blend (integer weights) is exact
        assert torch.equal(tiled, whole)


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("size", [(30, 17), (48, 130), (101, 77)])
def test_blending_is_exact_for_a_pixelwise_operator(blend, size):
    """Exact arithmetic, so bit-identical: the operator's values are halves below 2^9, the
    blends' weights integers (or 0/1), so every float64 product, sum and the division by the
    summed weights is exact; self-ensemble's float32 sum of 8 equal such values is too."""
    x = image(*size)
    op = NearestUpscale(3)
    tiled = restore_tiled(op, x, 2, 3, TileConfig(overlap=20, blend=blend, batch=5))
    assert torch.equal(tiled, op(x[None], 2)[0])
    ensemble = restore_tiled(op, x, 2, 3, TileConfig(blend=blend, self_ensemble=True))
    assert torch.equal(ensemble, op(x[None], 2)[0])


@pytest.mark.numerics
def test_small_image_is_padded_symmetrically_then_cropped(tiny):
    x = image(20, 33)
    tiled = restore_tiled(tiny, x, 0, 2, TileConfig())
    assert tiled.shape == (3, 40, 66)
    with torch.no_grad():
        padded = tiny(symmetric_pad(x, 48, 48)[None], 0)[0]
    # bit-identical by construction: one padded tile in a batch of 1, the same kernels
    assert torch.equal(tiled, padded[:, :40, :66])


def test_symmetric_pad_matches_numpy_for_any_amount():
    x = image(5, 7)
    got = symmetric_pad(x, 48, 20).numpy()
    want = np.pad(x.numpy(), ((0, 0), (0, 43), (0, 13)), mode="symmetric")
    np.testing.assert_array_equal(got, want)


@pytest.mark.numerics
def test_tile_batch_size_does_not_change_the_result(tiny):
    x = image(70, 100, seed=3)
    small = restore_tiled(tiny, x, 4, 1, TileConfig(batch=1, blend="distance"))
    large = restore_tiled(tiny, x, 4, 1, TileConfig(batch=64, blend="distance"))
    assert small.shape == (3, 70, 100)
    # Batches of 1 and of 6 tiles: the kernels may split the sums differently (issue #24: 1.1e-3
    # on an AMD EPYC, 7.5e-4 here), so the tolerance of two float32 computations
    limit = tolerance_of(large, ipt_terms(tiny.cfg, 4) + BLEND_TERMS)
    assert_within(small, large, limit)
    uniform = restore_tiled(tiny, x, 4, 1, TileConfig(batch=64, blend="uniform"))
    assert (uniform - large).abs().max() > 100 * limit  # a blend's mistake is far outside it


@pytest.mark.numerics
def test_blends_differ_only_where_tiles_overlap(tiny):
    x = image(48, 60, seed=4)
    uniform = restore_tiled(tiny, x, 0, 2, TileConfig(overlap=24, blend="uniform"))
    distance = restore_tiled(tiny, x, 0, 2, TileConfig(overlap=24, blend="distance"))
    # Tiles start at x = 0 and 12: columns 0..11 and 48..59 are seen by one tile only, the same
    # tile in the same batch for both blends, its float64 weighting exact: bit-identical.
    assert torch.equal(uniform[:, :, :24], distance[:, :, :24])
    assert torch.equal(uniform[:, :, 96:], distance[:, :, 96:])
    assert not torch.equal(uniform[:, :, 24:96], distance[:, :, 24:96])


# The 61x61 official case runs 8 chops of 9 tiles: 20 s under ATEN_CPU_CAPABILITY=default for
# what the 48x48 case checks as well (the model's kernels only decide the shared forward passes)
@pytest.mark.parametrize(
    ("blend", "size"),
    [pytest.param("uniform", 48, marks=pytest.mark.numerics), ("official", 61)],
)
def test_self_ensemble_commutes_with_transposition(tiny, blend, size):
    """The 8 transforms of the transposed image are the 8 of the image: the same forward passes
    of the same tiles in the same batches (bit-identical), summed in another order. Only that
    8-term float32 sum may differ."""
    x = image(size, size, seed=5)
    tiles = TileConfig(self_ensemble=True, blend=blend)
    direct = restore_tiled(tiny, x, 1, 3, tiles)
    transposed = restore_tiled(tiny, x.transpose(1, 2).contiguous(), 1, 3, tiles)
    limit = tolerance_of(direct, ENSEMBLE_TERMS)
    assert_within(transposed.transpose(1, 2), direct, limit)
    plain = restore_tiled(tiny, x, 1, 3, TileConfig(blend=blend))
    assert (direct - plain).abs().max() > 100 * limit  # the ensemble does change the result


def test_bad_tile_settings_are_user_errors():
    with pytest.raises(UserError, match="blend"):
        TileConfig(blend="max")
    with pytest.raises(UserError, match="overlap"):
        TileConfig(overlap=48)
    with pytest.raises(UserError, match="divisible by 4"):
        TileConfig(tile=50, blend="official")


class BatchRecorder(NearestUpscale):
    """Records the number of tiles in every forward call."""

    def __init__(self, scale: int) -> None:
        super().__init__(scale)
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor, slot: int) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        return super().forward(x, slot)


@pytest.mark.parametrize("ensemble", [False, True])
def test_model_never_sees_more_than_the_tile_batch(ensemble):
    """The model's memory is bounded by the tile batch, whatever the image size: 130x101 at
    overlap 24 is 5x4 = 20 tiles, run as 7 + 7 + 6 (each 8 times over with self-ensemble)."""
    op = BatchRecorder(2)
    restore_tiled(op, image(101, 130), 0, 2, TileConfig(batch=7, self_ensemble=ensemble))
    assert op.sizes == [7] * (8 if ensemble else 1) * 2 + [6] * (8 if ensemble else 1)


@pytest.mark.parametrize("ensemble", [False, True])
def test_official_blend_never_runs_more_than_the_tile_batch(ensemble):
    """61x149 is 2 x 9 stride-12 tiles, plus a right strip of 2, a bottom strip of 9 and the
    corner: 30 tiles, run 8 at a time (and 8 times over, once per transform, with x8)."""
    op = BatchRecorder(2)
    tiles = TileConfig(batch=8, blend="official", self_ensemble=ensemble)
    restore_tiled(op, image(61, 149), 0, 2, tiles)
    assert op.sizes == ([8, 8, 8, 6] if not ensemble else [8, 8, 8, 6] * 8)


def test_official_blend_fills_a_tile_batch_larger_than_its_default():
    """160x160 is a 10 x 10 stride-12 grid, strips of 10 and 10 and the corner: 121 tiles, run
    as 100 + 21 when the tile batch is 100 (the chop once cut them into passes of 64)."""
    op = BatchRecorder(2)
    restore_tiled(op, image(160, 160), 0, 2, TileConfig(batch=100, blend="official"))
    assert op.sizes == [100, 21]


@pytest.fixture(scope="module")
def official_chop() -> dict:
    """Outputs of the official code's forward_chop (and forward_x8 around it) with a small
    official IPT, made by tests/fixtures/make_official_chop.py (see tests/fixtures/README.md)."""
    return torch.load(FIXTURES / "official_chop.pt", weights_only=True)


@pytest.mark.parametrize("case", range(4))
@pytest.mark.numerics
def test_official_blend_reproduces_the_official_forward_chop(official_chop, case):
    state = {
        k: v.float() if v.is_floating_point() else v for k, v in official_chop["state_dict"].items()
    }
    model = build_model(state, num_heads=official_chop["config"]["num_heads"]).eval()
    expected = official_chop["cases"][case]
    slot, x = expected["slot"], expected["input"].float()
    tiles = TileConfig(blend="official", self_ensemble=expected["self_ensemble"], batch=5)
    got = restore_tiled(model, x, slot, model.cfg.scales[slot], tiles)
    assert got.shape == expected["output"].shape
    # Two float32 implementations (and the fixture's CPU kernels against this machine's) sum
    # in other orders: the tolerance of two computations of the model, the blend and x8's mean
    terms = ipt_terms(model.cfg, slot) + BLEND_TERMS
    terms += ENSEMBLE_TERMS if expected["self_ensemble"] else 0
    assert_within(got, expected["output"], tolerance_of(expected["output"], terms))
    uniform = restore_tiled(model, x, slot, model.cfg.scales[slot], TileConfig())
    assert (uniform - expected["output"]).abs().max() > 10  # the check can tell blends apart
