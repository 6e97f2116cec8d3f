"""How far two floating-point computations of the same values may differ: the tolerances of the
suite's comparisons, derived from the arithmetic (no tests here; see CONTRIBUTING.md).

The model. A format's unit roundoff is ``u`` (2^-24 for float32, half its ``torch.finfo`` eps):
every addition or product is exact times (1 + d) with |d| <= u. A value accumulated from ``n``
terms, of magnitude ``s`` (the result's scale; partial sums no larger), is then off by

- at most about n·u·s, whatever the order of the sums (the deterministic bound, Higham,
  *Accuracy and Stability of Numerical Algorithms*, §4.2): sharp for short sums (means,
  blends of a few tiles), hopeless for long ones;
- with a standard deviation of about sqrt(n)·u·s when the rounding errors are independent and
  of mean zero (Higham & Mary, "A new approach to probabilistic rounding error analysis", SIAM
  J. Sci. Comput. 41(5), 2019), as they are in the dot products and convolutions of a network.

A network is a chain of such reductions: its output's error is the sum of the errors each layer
makes along the path from input to output, so ``n`` is the number of terms accumulated along
that path (:func:`ipt_terms` counts them from the model's config) and ``s`` the output's scale
(0..255 images, up to about 360 for random weights).

Two computations of the same values whose kernels order the sums differently (another batch
size, tile batch, thread count, CPU kernel, process layout or implementation) carry independent
errors: their difference has sqrt(2) times one error's deviation (and at most twice its worst
case). Over ``M`` compared values the largest difference is what bounds a test: a Gaussian's
maximum over M draws stays below ``max_sigmas(M)`` deviations (about sqrt(2 ln M) plus a
margin) except with probability ``FAILURE_PROBABILITY``.

``tests/test_numerics.py`` checks the model against the real arithmetic: ipt-tiny's float32
output against the same weights in float64 stays within :func:`rounding_bound`, and not far
below it. Where two computations are the same kernels on the same inputs in one process (or in
processes of the same settings), they are bit-identical by construction and the tests use
``torch.equal``.
"""

from __future__ import annotations

import json
import math
import os
from statistics import NormalDist

import numpy as np
import torch

from ipt_train.model import IPTConfig

# A comparison of M values fails by rounding alone with at most this probability: the margin.
FAILURE_PROBABILITY = 1e-6


def unit_roundoff(dtype: torch.dtype | type = torch.float32) -> float:
    """u: half the gap between 1 and the next value of ``dtype``, a torch or NumPy float type
    (2^-24 for float32, 2^-53 for float64)."""
    finfo = torch.finfo(dtype) if isinstance(dtype, torch.dtype) else np.finfo(dtype)
    return float(finfo.eps) / 2


def max_sigmas(elements: int) -> float:
    """How many standard deviations the largest of ``elements`` independent Gaussian errors
    stays within, except with probability FAILURE_PROBABILITY (a union bound over both tails):
    about sqrt(2 ln M) plus a margin, 4.9 for one value, 6.5 for 20,000."""
    tail = FAILURE_PROBABILITY / (2 * max(elements, 1))
    return NormalDist().inv_cdf(1 - tail)


def rounding_bound(
    terms: int, scale: float, elements: int = 1, dtype: torch.dtype | type = torch.float32
) -> float:
    """The largest error of ONE computation of ``elements`` values, each accumulated from
    ``terms`` terms and of magnitude ``scale``, against the exact values: the smaller of the
    deterministic bound n·u·s and the probabilistic sqrt(n)·u·s times ``max_sigmas``."""
    spread = min(terms, math.sqrt(terms) * max_sigmas(elements))
    return spread * unit_roundoff(dtype) * scale


def tolerance(
    terms: int, scale: float, elements: int = 1, dtype: torch.dtype | type = torch.float32
) -> float:
    """The largest difference of TWO computations of the same values whose sums are ordered
    independently (as :func:`rounding_bound`): twice the deterministic bound, or sqrt(2) times
    the probabilistic deviation, whichever is smaller."""
    spread = min(2 * terms, math.sqrt(2 * terms) * max_sigmas(elements))
    return spread * unit_roundoff(dtype) * scale


def tolerance_of(
    reference: torch.Tensor | np.ndarray, terms: int, dtype: torch.dtype | type | None = None
) -> float:
    """:func:`tolerance` for comparing values with ``reference`` (a tensor or an array): its
    scale is the reference's largest magnitude, its element count the reference's, its format
    ``dtype`` or else the reference's."""
    reference = torch.as_tensor(reference)
    dtype = dtype or reference.dtype
    return tolerance(terms, reference.abs().max().item(), reference.numel(), dtype)


def attention_terms(width: int, heads: int, keys: int) -> int:
    """One attention block: the q/k/v projections (width terms each output), q·k over a head's
    width, the softmax's sum and the weighted sum of values over the keys, the output
    projection."""
    return width + width // heads + keys + keys + width


def ipt_terms(cfg: IPTConfig, slot: int) -> int:
    """Terms accumulated along the path from IPT's input to its output in task ``slot``
    (docs/model.md), layer by layer: 1x1 mean shifts, the head's 3x3 conv and two ResBlocks of
    two 5x5 convs, the body's transformer (each LayerNorm a reduction over the token width,
    attention as :func:`attention_terms`, MLPs of width and hidden width terms), the tail's 3x3
    convs (one per x2/x3 upsampling step, two for x4) and its last conv."""
    width, hidden, tokens = cfg.embed_dim, cfg.mlp_dim, cfg.num_tokens
    attention = attention_terms(width, cfg.num_heads, tokens)
    mlp = width + hidden
    head = cfg.n_colors + 9 * cfg.n_colors + 4 * 25 * cfg.n_feats
    encoder = width + attention + width + mlp  # norm1, self-attention, norm2, MLP
    decoder = width + attention + width + attention + width + mlp
    body = width + cfg.num_layers * (encoder + decoder) + mlp  # linear_encoding ... mlp_head
    upsampling_steps = {1: 0, 2: 1, 3: 1, 4: 2}[cfg.scales[slot]]
    tail = (upsampling_steps + 1) * 9 * cfg.n_feats + cfg.n_colors
    return head + body + tail


# Tiled inference adds to a forward pass: the float64 blend of a few tiles (rounding 2^-53:
# nothing at float32's scale) and its cast back to float32 (one rounding); self-ensemble's mean
# of 8 float32 outputs (8 terms).
BLEND_TERMS = 1
ENSEMBLE_TERMS = 8


def supcon_terms(width: int, keys: int, anchors: int, tokens: int) -> int:
    """SupCon's value (ipt_train.losses) for ``anchors`` rows against ``keys`` rows of
    ``width``, images of ``tokens`` rows: each feature's norm (width terms), the similarities
    (width), the log-softmax over the keys, then one sum of every anchor's tokens - 1 positive
    log-probabilities (and the chunks' partial sums, fewer)."""
    return width + width + keys + anchors * (tokens - 1)


def supcon_gradient_terms(width: int, keys: int) -> int:
    """SupCon's gradient with respect to its features: the forward's norm, similarities and
    log-softmax (width + width + keys), the products of the softmax weights with the keys
    (keys), and the normalisation's backward (width)."""
    return width + width + keys + keys + width


def assert_within(
    actual: torch.Tensor | float, expected: torch.Tensor | float, limit: float
) -> float:
    """Assert that ``actual`` and ``expected`` (same shape, or two numbers) differ by at most
    ``limit`` anywhere; returns the largest difference. With IPT_NUMERICS_LOG naming a file, each
    call appends one JSON line (the test, the largest difference, the limit, CPU settings): the
    numerics record (benchmarks/results/) tabulates them under several CPU kernel settings."""
    actual, expected = _as_tensor(actual), _as_tensor(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    largest = (actual.double() - expected.double()).abs().max().item()
    log = os.environ.get("IPT_NUMERICS_LOG")
    if log:
        settings = {name: os.environ[name] for name in KERNEL_SETTINGS if name in os.environ}
        entry = {"test": os.environ.get("PYTEST_CURRENT_TEST", "").removesuffix(" (call)")}
        entry |= {"largest": largest, "limit": limit, "settings": settings}
        with open(log, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
    assert largest <= limit, f"largest difference {largest:.3g} > {limit:.3g} allowed"
    return largest


def _as_tensor(values: torch.Tensor | np.ndarray | float) -> torch.Tensor:
    """A tensor as it is; numbers and arrays as float64 (a Python float is one)."""
    if isinstance(values, torch.Tensor):
        return values.detach()
    return torch.from_numpy(np.asarray(values, dtype=np.float64))


# The environment variables that choose other CPU kernels (.ci/run reruns the numerics tests
# under some of them).
KERNEL_SETTINGS = (
    "ATEN_CPU_CAPABILITY",
    "DNNL_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
    "NPY_DISABLE_CPU_FEATURES",
)
