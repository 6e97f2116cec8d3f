"""SupCon in row chunks against a direct full-matrix computation; schedule and task draw."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from numerics import (
    assert_within,
    rounding_bound,
    supcon_gradient_terms,
    supcon_terms,
    tolerance,
    tolerance_of,
)
from torch.utils.flop_counter import FlopCounterMode

from ipt_data.tasks import TASKS
from ipt_train.bench.supcon import bench_supcon
from ipt_train.losses import pretrain_loss, supcon_loss, supcon_of_anchors
from ipt_train.schedule import LRSchedule, TaskMix, parse_task_weights


def direct_supcon(feats: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Textbook SupCon with the whole similarity matrix: positives are the same image's tokens."""
    batch, tokens, _ = feats.shape
    z = F.normalize(feats.flatten(0, 1), dim=1)
    labels = torch.arange(batch).repeat_interleave(tokens)
    sims = z @ z.T / temperature
    eye = torch.eye(len(z), dtype=torch.bool)
    log_prob = sims - torch.logsumexp(sims.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & ~eye
    per_anchor = -(log_prob * positive).sum(1) / positive.sum(1)
    return per_anchor.mean()


@pytest.mark.numerics
@pytest.mark.parametrize("chunk_rows", [7, 64, 4096])
def test_chunked_supcon_matches_direct_value_and_gradient(chunk_rows):
    torch.manual_seed(0)
    feats = torch.randn(3, 20, 12, dtype=torch.float64)
    feats[1] += 2 * feats[0]  # correlated images: the loss is not near its random value
    a = feats.clone().requires_grad_()
    b = feats.clone().requires_grad_()
    chunked = supcon_loss(a, chunk_rows=chunk_rows)
    direct = direct_supcon(b)
    # supcon_loss works in float32, the reference in float64 (exact at float32's scale): one
    # float32 computation's error
    terms = supcon_terms(12, 60, 60, 20)
    assert_within(chunked.item(), direct.item(), rounding_bound(terms, direct.item()))
    weights = torch.tensor(1.7, dtype=torch.float64)
    (chunked * weights).backward()
    (direct * weights).backward()
    scale = b.grad.abs().max().item()
    limit = rounding_bound(supcon_gradient_terms(12, 60), scale, b.grad.numel())
    assert_within(a.grad, b.grad, limit)


def test_supcon_prefers_images_whose_tokens_agree():
    torch.manual_seed(1)
    spread = torch.randn(4, 16, 8)
    clustered = torch.randn(4, 1, 8) + 0.05 * torch.randn(4, 16, 8)
    assert supcon_loss(clustered) < supcon_loss(spread) - 1


def test_supcon_gradcheck_anchors_and_keys():
    """Anchors are rows 4..8 of the keys (two images of 5 tokens in a batch of 15 tokens)."""
    torch.manual_seed(2)
    keys = F.normalize(torch.randn(15, 5, dtype=torch.float64), dim=1).requires_grad_()
    anchors = keys[4:8].detach().clone().requires_grad_()
    from ipt_train.losses import _ChunkedSupCon

    def loss(a, k):
        return _ChunkedSupCon.apply(a, k, 4, 5, 0.5, 3)

    assert torch.autograd.gradcheck(loss, (anchors, keys))


@pytest.mark.numerics
def test_mean_over_row_blocks_is_the_whole_batch_loss():
    """What each rank computes (its anchors against all keys), done here block by block."""
    torch.manual_seed(4)
    feats = torch.randn(4, 6, 8)
    feats[2] += 1.5 * feats[0]
    from ipt_train.losses import _ChunkedSupCon

    z = F.normalize(feats.flatten(0, 1), dim=1)
    blocks = [_ChunkedSupCon.apply(z[r * 12 : (r + 1) * 12], z, r * 12, 6, 0.07, 5) for r in (0, 1)]
    whole = supcon_loss(feats)
    # two float32 computations (blocks of 12 rows, and 24 rows in chunks of 4096)
    limit = tolerance(supcon_terms(8, 24, 24, 6), whole.item())
    assert_within(torch.stack(blocks).mean(), whole, limit)
    assert abs(blocks[0].item() - blocks[1].item()) > 0.01  # the blocks differ; their mean agrees


def test_supcon_cost_is_four_products_of_anchors_by_keys():
    """The FLOP count bench_supcon reports (4·m·M·E multiply-adds) is what the dispatcher sees:
    one anchors x keys product forward, three backward, whatever the chunking."""
    keys = F.normalize(torch.randn(1024, 72), dim=1).requires_grad_()
    anchors = keys[256:768].detach().clone().requires_grad_()
    counter = FlopCounterMode(display=False)
    with counter:
        supcon_of_anchors(anchors, keys, 256, 256, chunk_rows=100).backward()
    assert counter.get_total_flops() == 4 * 2 * 512 * 1024 * 72
    figures = bench_supcon(images=1, ranks=2, steps=1)
    assert figures["supcon_tflop"] == 4 * 2 * 256 * 512 * 576 / 1e12
    assert figures["supcon_step_s_highest"] > 0


@pytest.mark.numerics
def test_pretrain_loss_is_l1_plus_weighted_supcon():
    torch.manual_seed(3)
    out, target, feats = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8), torch.randn(2, 9, 4)
    total, l1, contrastive = pretrain_loss(out, target, feats, weight=0.1)
    # F.l1_loss and this expression: two float32 means of 384 terms
    assert_within(l1, (out - target).abs().mean(), tolerance_of(l1, out.numel()))
    # float32 against float64 arithmetic: 3 roundings (the weight's, the product's, the sum's)
    expected = l1.item() + 0.1 * contrastive.item()
    assert_within(total.item(), expected, rounding_bound(3, expected))
    assert abs(total.item() - l1.item()) > 0.1  # the SupCon term is in it


def test_paper_lr_schedule():
    schedule = LRSchedule()
    assert [schedule.at(s, 300) for s in (0, 199, 200, 299)] == [5e-5, 5e-5, 2e-5, 2e-5]


def test_task_draw_depends_on_seed_and_step_only():
    mix = TaskMix.uniform(list(TASKS.values()))
    draws = [mix.task_at(7, step).name for step in range(600)]
    assert draws == [TaskMix.uniform(list(TASKS.values())).task_at(7, s).name for s in range(600)]
    assert draws != [mix.task_at(8, step).name for step in range(600)]
    counts = {name: draws.count(name) for name in TASKS}
    assert all(60 < count < 140 for count in counts.values()), counts
    weighted = TaskMix(
        tuple(TASKS.values())[:2], parse_task_weights(list(TASKS.values())[:2], "sr_x3=0")
    )
    assert {weighted.task_at(0, s).name for s in range(50)} == {"sr_x2"}
