"""The rounding model of tests/numerics.py against the real arithmetic: the bounds it gives hold
for ipt-tiny's float32 output against float64, and are not so loose that nothing could fail."""

from __future__ import annotations

import copy

import pytest
import torch
from numerics import (
    ENSEMBLE_TERMS,
    assert_within,
    ipt_terms,
    max_sigmas,
    rounding_bound,
    tolerance,
    unit_roundoff,
)

from ipt_train.model import IPT, ipt_tiny

pytestmark = pytest.mark.numerics


def test_the_bound_holds_for_ipt_tiny_in_float32_against_float64():
    """Every slot of a random ipt-tiny, 2 images: the float64 forward pass is the exact value
    to float32's scale (its own rounding is 2^-29 times smaller), so the float32 output's error
    must stay within the one-computation bound. It does, by a factor of 20 to 40 on the CPU
    kernels tried (benchmarks/results/numerics_xeon2c_2026-12-07.md: the model counts every
    term at the output's scale); a bound over 100 times the largest error would make the
    derived tolerances blankets, and fails here."""
    torch.manual_seed(0)
    model = IPT(ipt_tiny()).eval()
    exact = copy.deepcopy(model).double()
    x = torch.randint(0, 256, (2, 3, 48, 48), generator=torch.Generator().manual_seed(1)).float()
    ratios = []
    for slot in range(model.cfg.n_tasks):
        with torch.no_grad():
            got, want = model(x, slot), exact(x.double(), slot)
        bound = rounding_bound(ipt_terms(model.cfg, slot), want.abs().max().item(), want.numel())
        ratios.append(assert_within(got, want, bound) / bound)
    assert max(ratios) > 0.01, ratios


def test_short_sums_use_the_deterministic_bound():
    """The mean of 8 float32 values (self-ensemble) in two orders: the worst case 2·8·u·s is
    smaller than the probabilistic bound there, and random values stay within it."""
    generator = torch.Generator().manual_seed(2)
    values = torch.rand(8, 100_000, generator=generator) * 300
    forward = sum(values[i] for i in range(8)) / 8
    backward = sum(values[i] for i in reversed(range(8))) / 8
    limit = tolerance(ENSEMBLE_TERMS, values.abs().max().item(), 100_000)
    assert limit == 2 * 8 * unit_roundoff() * values.abs().max().item()
    assert 0 < (forward - backward).abs().max().item() <= limit


def test_the_maximum_over_more_values_reaches_further():
    assert 4.8 < max_sigmas(1) < 5.0 and 6.4 < max_sigmas(20_000) < 6.7
    assert tolerance(10_000, 255, 20_000) == pytest.approx(
        2**0.5 * 100 * 2**-24 * 255 * max_sigmas(20_000)
    )
    assert unit_roundoff(torch.float64) == 2**-53
