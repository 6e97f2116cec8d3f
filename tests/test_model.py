"""The IPT model's layouts, shapes and interface (docs/model.md)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
from numerics import assert_within, ipt_terms, tolerance, tolerance_of

from ipt_train.model import IPT, IPTConfig, ipt_full, ipt_tiny

# docs/model.md: parameter counts of the official checkpoints' layouts.
OFFICIAL_COUNTS = {
    (2, 3, 4, 1, 1, 1): 118_892_394,
    (2,): 115_460_443,
    (3,): 115_645_083,
    (4,): 115_608_155,
    (1,): 115_312_731,
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("scales", list(OFFICIAL_COUNTS))
def test_full_layouts_have_the_official_parameter_counts(scales):
    with torch.device("meta"):  # shapes only: no 450 MB of random init per layout
        model = IPT(ipt_full(scales))
    assert n_params(model) == OFFICIAL_COUNTS[scales]


def test_full_layout_buffers_and_frozen_mean_shift():
    with torch.device("meta"):
        model = IPT(ipt_full())
    state = model.state_dict()
    assert state["body.position_encoding.position_ids"].shape == (1, 256)
    assert state["body.encoder.layers.11.self_attn.in_proj_weight"].shape == (1728, 576)
    assert state["body.query_embed.weight"].shape == (6, 256 * 576)
    assert "body.encoder.layers.0.self_attn.in_proj_bias" not in state
    assert not model.sub_mean.weight.requires_grad and not model.add_mean.bias.requires_grad


@pytest.mark.numerics
def test_mean_shift_subtracts_and_adds_the_rgb_mean():
    model = IPT(ipt_tiny())
    x = torch.full((1, 3, 4, 4), 100.0)
    shifted = model.sub_mean(x)
    # a 1x1 conv: 3 terms (two of them times 0) and the bias, against float32 arithmetic
    limit = tolerance(3, 255)
    expected = 100 - 255 * torch.tensor([0.4488, 0.4371, 0.4040])
    assert_within(shifted[0, :, 0, 0], expected, limit)
    assert_within(model.add_mean(shifted), x, limit)


@pytest.mark.parametrize("slot, scale", list(enumerate((2, 3, 4, 1, 1, 1))))
def test_tiny_forward_shapes_for_every_slot(slot, scale):
    torch.manual_seed(0)
    cfg = ipt_tiny()
    model = IPT(cfg).eval()
    x = torch.rand(2, 3, 48, 48) * 255
    with torch.no_grad():
        out, feats = model(x, slot, return_features=True)
    assert out.shape == (2, 3, 48 * scale, 48 * scale)
    assert feats.shape == (2, cfg.num_tokens, cfg.embed_dim) == (2, 256, 144)
    assert torch.isfinite(out).all()


@pytest.mark.numerics
def test_samples_in_a_batch_do_not_mix():
    torch.manual_seed(0)
    model = IPT(ipt_tiny()).eval()
    x = torch.rand(3, 3, 48, 48) * 255
    with torch.no_grad():
        batched = model(x, 0)
        single = model(x[1:2], 0)
    # batches of 3 and 1: the kernels may split the sums otherwise, two float32 computations
    limit = tolerance_of(single, ipt_terms(model.cfg, 0))
    assert_within(batched[1:2], single, limit)
    assert (batched[0:1] - single).abs().max() > 100 * limit  # a mixed-up sample is far out


def test_task_slot_out_of_range_is_an_error():
    model = IPT(ipt_tiny(scales=(2,)))
    with pytest.raises(IndexError):
        model(torch.zeros(1, 3, 48, 48), 1)


def test_config_rejects_inconsistent_values():
    with pytest.raises(ValueError):
        IPTConfig(scales=(5,))
    with pytest.raises(ValueError):
        IPTConfig(num_heads=7)
    assert ipt_full().single_task(1).scales == (3,)


@pytest.mark.numerics
def test_compiled_model_matches_eager(monkeypatch):
    """``torch.compile`` (bench --compile) changes speed, not results: a one-layer model compiled
    by inductor on the CPU gives the eager output in every slot kind, to the tolerance of two
    float32 computations (inductor's kernels fuse and order the sums their own way)."""
    # A kernel cache per ATEN_CPU_CAPABILITY: torch 2.13's inductor keys its on-disk kernels
    # without the vector ISA that setting picks, and loads another setting's (NaN outputs, a
    # C++ compile error or a crash, as .ci/run's reruns under other kernels found).
    capability = os.environ.get("ATEN_CPU_CAPABILITY", "native")
    cache = Path(tempfile.gettempdir()) / f"ipt-tests-inductor-{capability}"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    torch.manual_seed(0)
    model = IPT(IPTConfig(scales=(2, 1), n_feats=8, num_heads=2, num_layers=1)).eval()
    compiled = torch.compile(model)
    x = torch.rand(2, 3, 48, 48) * 255
    with torch.no_grad():
        for slot, side in ((0, 96), (1, 48)):
            eager = model(x, slot)
            assert eager.shape == (2, 3, side, side)
            limit = tolerance_of(eager, ipt_terms(model.cfg, slot))
            assert_within(compiled(x, slot), eager, limit)
            mirrored = model(x.flip(-1), slot).flip(-1)  # another input's output: far outside
            assert (mirrored - eager).abs().max() > 100 * limit
