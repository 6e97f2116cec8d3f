"""Pretraining losses (docs/training.md): L1 on the output plus λ·SupCon on the body's
per-patch features.

SupCon (Khosla et al. 2020) over the body tokens of a batch, N = 256 tokens per image: a token's
positives are the other tokens of its own image, every other token of the batch is in its
denominator (so the tokens of the other images are its negatives). For anchor i with positives
P(i) and similarities s_ij = z_i·z_j / τ of L2-normalised features z:

    L_i = -1/|P(i)| · Σ_{p∈P(i)} [ s_ip - log Σ_{a≠i} exp(s_ia) ],     loss = mean_i L_i

On several ranks (``across_ranks``) the batch is the global one: every rank's tokens are gathered
as the keys (positives and denominators), each rank takes the mean over its own anchors, and the
mean of the ranks' values is the loss of the concatenated batch. The gather's backward sums each
rank's gradient for a rank's keys back to that rank, so the ranks' parameter gradients, averaged
as the trainer averages them, are those of the concatenated batch.

The similarity matrix is never built whole: rows are processed ``chunk_rows`` anchors at a time, in
the forward pass and again in the backward pass (recomputed, not saved), so memory is
O(chunk_rows · keys) whatever the batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ipt_train.configs import SUPCON_WEIGHT

SUPCON_TEMPERATURE = 0.07  # τ
# Cost at the paper's global batch of 256 images (65,536 tokens of 576): each micro-step gathers
# 151 MB of float32 keys on every rank (and all-reduces that much in the backward pass); a chunk of
# 1024 anchors against 65,536 keys is a 268 MB float32 matrix, a few of them alive at once.
DEFAULT_CHUNK_ROWS = 1024


def pretrain_loss(
    output: torch.Tensor,
    target: torch.Tensor,
    feats: torch.Tensor,
    weight: float = SUPCON_WEIGHT,
    across_ranks: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, l1, supcon): L1(output, target) + ``weight``·SupCon(feats), feats [b, N, E].

    ``across_ranks``: SupCon's keys are all ranks' tokens (see ``supcon_loss``); every rank of the
    default process group must call it with the same shapes."""
    l1 = F.l1_loss(output.float(), target.float())
    if weight == 0:
        zero = l1.new_zeros(())
        return l1, l1.detach(), zero
    contrastive = supcon_loss(feats, across_ranks=across_ranks)
    return l1 + weight * contrastive, l1.detach(), contrastive.detach()


def supcon_loss(
    feats: torch.Tensor,
    temperature: float = SUPCON_TEMPERATURE,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    across_ranks: bool = False,
) -> torch.Tensor:
    """SupCon of feats [b, N, E] (positives: same image), computed in float32 in row chunks.

    Alone, the batch is feats. With ``across_ranks`` the keys are the tokens of every rank of the
    default process group, [W·b·N, E] in rank order, and the value is the mean over this rank's
    b·N anchors: the mean over ranks is SupCon of the W·b images, with exact gradients."""
    tokens = feats.shape[1]
    if tokens < 2:
        raise ValueError("SupCon needs at least two tokens per image (positives)")
    z = F.normalize(feats.float().flatten(0, 1), dim=1)  # [b·N, E]
    keys, offset = _gather_keys(z) if across_ranks else (z, 0)
    return supcon_of_anchors(z, keys, offset, tokens, temperature, chunk_rows)


def supcon_of_anchors(
    anchors: torch.Tensor,
    keys: torch.Tensor,
    offset: int,
    tokens: int,
    temperature: float = SUPCON_TEMPERATURE,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> torch.Tensor:
    """Mean SupCon of the L2-normalised anchors [m, E], which are rows offset..offset+m of the
    L2-normalised keys [M, E] (images of ``tokens`` consecutive rows), against all keys; exact
    gradients for both, in row chunks. Cost: 4·m·M·E multiply-adds (one product forward,
    three backward)."""
    return _ChunkedSupCon.apply(anchors, keys, offset, tokens, temperature, chunk_rows)


def _gather_keys(z: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(every rank's z stacked in rank order [W·m, E], index of this rank's first row in it).

    Differentiable: the backward sums all ranks' gradients of rank r's rows into rank r's z."""
    return _GatherRows.apply(z), dist.get_rank() * z.shape[0]


class _GatherRows(torch.autograd.Function):
    """Every rank's rows [m, E] stacked in rank order [W·m, E] (all ranks pass the same m).

    Written out rather than torch.distributed.nn.functional.all_gather, which torch deprecates
    (a FutureWarning on every rank and step) for functions that older torch lacks. Backward
    all-reduces the whole gradient and keeps this rank's rows: about twice the traffic of a
    reduce-scatter, but an op every backend (gloo included) has in every torch release."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, rows.contiguous())
        ctx.rows = slice(dist.get_rank() * rows.shape[0], (dist.get_rank() + 1) * rows.shape[0])
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        summed = grad.clone(memory_format=torch.contiguous_format)  # all_reduce works in place
        dist.all_reduce(summed)
        return summed[ctx.rows]


def _row_chunks(rows: int, chunk_rows: int) -> list[slice]:
    return [slice(start, min(start + chunk_rows, rows)) for start in range(0, rows, chunk_rows)]


def _chunk_terms(anchors, keys, rows: slice, offset: int, tokens: int, temperature: float):
    """For anchors ``rows`` (global rows offset+rows of keys): log-softmax over a≠i [c, M] and
    the positive mask [c, M]."""
    sims = anchors[rows] @ keys.T / temperature  # [c, M]
    anchor = torch.arange(rows.start + offset, rows.stop + offset, device=keys.device)
    others = torch.arange(keys.shape[0], device=keys.device)
    is_self = anchor[:, None] == others[None, :]
    positive = (anchor[:, None] // tokens == others[None, :] // tokens) & ~is_self
    log_prob = sims.masked_fill(is_self, float("-inf")).log_softmax(dim=1)
    return log_prob, positive


class _ChunkedSupCon(torch.autograd.Function):
    """Mean SupCon of anchors [m, E], which are rows offset..offset+m of keys [M, E], against
    all keys; gradients for both, chunk by chunk. Saves only anchors and keys."""

    @staticmethod
    def forward(ctx, anchors, keys, offset, tokens, temperature, chunk_rows):
        total = anchors.new_zeros(())
        for rows in _row_chunks(anchors.shape[0], chunk_rows):
            log_prob, positive = _chunk_terms(anchors, keys, rows, offset, tokens, temperature)
            total -= log_prob.masked_fill(~positive, 0).sum() / (tokens - 1)
        ctx.save_for_backward(anchors, keys)
        ctx.params = (offset, tokens, temperature, chunk_rows)
        return total / anchors.shape[0]

    @staticmethod
    def backward(ctx, grad_out):
        anchors, keys = ctx.saved_tensors
        offset, tokens, temperature, chunk_rows = ctx.params
        grad_anchors, grad_keys = torch.zeros_like(anchors), torch.zeros_like(keys)
        for rows in _row_chunks(anchors.shape[0], chunk_rows):
            log_prob, positive = _chunk_terms(anchors, keys, rows, offset, tokens, temperature)
            # d loss / d s_ij = (softmax_ij - [j ∈ P(i)] / |P(i)|) / m  (0 on the diagonal)
            g = log_prob.exp() - positive.to(keys.dtype) / (tokens - 1)  # [c, M]
            grad_anchors[rows] = g @ keys
            grad_keys += g.T @ anchors[rows]
        scale = grad_out / (anchors.shape[0] * temperature)
        return grad_anchors * scale, grad_keys * scale, None, None, None, None
