"""Our IPT against the official implementation: the fixture in tests/fixtures was produced once by
the official code (see tests/fixtures/README.md); these tests need only our code.

The two implementations (and the fixture's CPU kernels against this machine's) are two float32
computations of the same values that sum in other orders: they may differ by the tolerance of
tests/numerics.py for the model's path, nothing more.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from numerics import assert_within, attention_terms, ipt_terms, tolerance_of, unit_roundoff

from ipt_train.checkpoint import build_model, config_from_state_dict
from ipt_train.model import IPT, IPTConfig, ipt_full, ipt_tiny
from ipt_train.model.attention import Attention
from ipt_train.official import OfficialIPT

FIXTURES = Path(__file__).parent / "fixtures"
# Of the outputs rounded to 0..255, at least this share must be equal: a value within the
# tolerance (< 0.02) of a .5 boundary may round the other way, about 2·tolerance of them (4%
# at worst, 0.1% at the differences seen, 1e-4 to 3e-4); a wrong layer changes most of them.
SAME_ROUNDED = 0.999


@pytest.fixture(scope="module")
def official_small():
    content = torch.load(FIXTURES / "official_small.pt", weights_only=True)
    state = {k: v.float() if v.is_floating_point() else v for k, v in content["state_dict"].items()}
    return content["config"], state, content["input"].float(), content["outputs"]


@pytest.mark.numerics
def test_official_small_weights_load_strict_and_reproduce_every_slot(official_small):
    config, state, x, expected = official_small
    cfg = IPTConfig(
        scales=tuple(config["scales"]),
        n_feats=config["n_feats"],
        patch_size=config["patch_size"],
        num_heads=config["num_heads"],
        num_layers=config["num_layers"],
    )
    model = IPT(cfg).eval()
    model.load_state_dict(state, strict=True)
    for slot, want in enumerate(expected):
        with torch.no_grad():
            got = model(x, slot)
        assert_within(got, want, tolerance_of(want, ipt_terms(cfg, slot)))
        same = (got.round().clamp(0, 255) == want.round().clamp(0, 255)).float().mean().item()
        assert same >= SAME_ROUNDED, slot


def test_layout_is_read_back_from_the_official_weights(official_small):
    config, state, _, _ = official_small
    cfg = config_from_state_dict(state, num_heads=config["num_heads"])
    assert cfg.scales == (2, 3, 4, 1, 1, 1)
    assert (cfg.n_feats, cfg.patch_size, cfg.num_layers) == (4, 12, 2)
    build_model(state, num_heads=3)  # strict load


def test_full_state_dict_keys_shapes_and_order_are_the_official_ones():
    layout = json.loads((FIXTURES / "official_full_layout.json").read_text())
    with torch.device("meta"):
        state = IPT(ipt_full()).state_dict()
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in state.items()]
    assert ours == layout


def test_a_state_dict_in_the_official_layout_loads_strict():
    layout = json.loads((FIXTURES / "official_full_layout.json").read_text())
    # Single-task x2 layout: keep slot 0, as IPT_sr2.pt does.
    state = {}
    for key, shape, dtype in layout:
        if key.startswith(("head.", "tail.")) and not key.startswith(("head.0.", "tail.0.")):
            continue
        if key == "body.query_embed.weight":
            shape = [1, shape[1]]
        state[key] = torch.zeros(shape, dtype=getattr(torch, dtype))
    with torch.device("meta"):
        model = IPT(ipt_full(scales=(2,)))
    model.load_state_dict(state, strict=True, assign=True)


def reference_attention(attn: Attention, query, key, value):
    """The official layout's computation: nn.MultiheadAttention on [N, B, E], sharing weights."""
    dim = attn.in_proj_weight.shape[1]
    mha = torch.nn.MultiheadAttention(dim, attn.num_heads, bias=False)
    mha.load_state_dict(attn.state_dict())
    out, _ = mha(query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1))
    return out.transpose(0, 1)


@pytest.mark.numerics
@pytest.mark.parametrize("sharing", ["qkv", "qk", "kv", "none"])
def test_sdpa_attention_equals_the_packed_multihead_attention(sharing):
    torch.manual_seed(0)
    attn = Attention(72, 6)
    a, b, c = (torch.randn(2, 16, 72) * 3 for _ in range(3))
    query, key, value = {"qkv": (a, a, a), "qk": (a, a, b), "kv": (a, b, b), "none": (a, b, c)}[
        sharing
    ]
    with torch.no_grad():
        want = reference_attention(attn, query, key, value)
        limit = tolerance_of(want, attention_terms(72, 6, 16))  # SDPA and MHA: two computations
        assert_within(attn(query, key, value), want, limit)
    assert set(attn.state_dict()) == {"in_proj_weight", "out_proj.weight"}
    assert attn.in_proj_weight.shape == (216, 72)


@pytest.mark.numerics
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_runs_forward_and_backward_on_cpu(official_small, dtype):
    config, state, x, expected = official_small
    model = build_model(state, num_heads=config["num_heads"])
    with torch.autocast("cpu", dtype=dtype):
        out = model(x, 0)
    assert out.dtype == dtype
    # Autocast rounds both operands of every conv and matmul to 16 bits (their sums stay
    # float32), each off by a uniform share of ±u (u = 2^-8 for bf16, 2^-11 for fp16; std
    # u/sqrt(3)). Slot 0's path has 12 + 16·layers products: the mean shifts, the head's conv
    # and 4 ResBlock convs, linear_encoding, mlp_head's 2, the x2 upsampler's and the tail's
    # convs; per encoder layer 4 in attention (projection, two products, output projection) and
    # 2 in the MLP; per decoder layer twice the attention's and the MLP's. With the output's own
    # rounding that is k = 2·products + 1 roundings: std sqrt(k/3)·u·|v|, whose absolute value
    # averages sqrt(2/pi) of that, the limit (1.9 for bf16 on these outputs, 0.24 for fp16;
    # measured 0.28 and 0.033 to 0.036 on the CPU kernels tried).
    products = 12 + 16 * config["num_layers"]
    spread = math.sqrt(2 / math.pi) * math.sqrt((2 * products + 1) / 3) * unit_roundoff(dtype)
    limit = spread * expected[0].abs().mean().item()
    assert F.l1_loss(out.float(), expected[0]).item() < limit
    out.float().mean().backward()
    grad = model.body.encoder.layers[0].self_attn.in_proj_weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.numerics
@pytest.mark.skipif(
    not os.environ.get("IPT_OFFICIAL_DIR"),
    reason="set IPT_OFFICIAL_DIR to a checkout of huawei-noah/Pretrained-IPT (needs einops)",
)
def test_every_slot_equals_the_live_official_code():
    """The fixture's check, redone against the official code itself at ipt-tiny's size: its own
    random init (large activations) loaded strictly into ours, every task slot."""
    torch.manual_seed(0)
    official = OfficialIPT(Path(os.environ["IPT_OFFICIAL_DIR"]), ipt_tiny()).eval()
    ours = IPT(ipt_tiny()).eval()
    ours.load_state_dict(official.inner.state_dict(), strict=True)
    x = torch.randint(0, 256, (2, 3, 48, 48)).float()
    for slot in range(6):
        with torch.no_grad():
            want, got = official(x.clone(), slot), ours(x, slot)
        assert_within(got, want, tolerance_of(want, ipt_terms(ours.cfg, slot)))
        same = (got.round().clamp(0, 255) == want.round().clamp(0, 255)).float().mean().item()
        assert same >= SAME_ROUNDED, slot
