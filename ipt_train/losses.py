"""Pretraining losses (SPEC §7): L1 on the output plus λ·SupCon on the body's per-patch features.

SupCon (Khosla et al. 2020) over the B·N body tokens of a batch, N = 256 tokens per image: a
token's positives are the other tokens of its own image, every other token of the batch is in its
denominator (so the tokens of the other images are its negatives). For anchor i with positives
P(i) and similarities s_ij = z_i·z_j / τ of L2-normalised features z:

    L_i = -1/|P(i)| · Σ_{p∈P(i)} [ s_ip - log Σ_{a≠i} exp(s_ia) ],     loss = mean_i L_i

The (B·N)² similarity matrix is never built whole: rows are processed ``chunk_rows`` anchors at a
time, in the forward pass and again in the backward pass (recomputed, not saved), so memory is
O(chunk_rows · B·N) whatever the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SUPCON_WEIGHT = 0.1  # λ
SUPCON_TEMPERATURE = 0.07  # τ
DEFAULT_CHUNK_ROWS = 1024


def pretrain_loss(
    output: torch.Tensor, target: torch.Tensor, feats: torch.Tensor, weight: float = SUPCON_WEIGHT
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, l1, supcon): L1(output, target) + ``weight``·SupCon(feats), feats [B, N, E]."""
    l1 = F.l1_loss(output.float(), target.float())
    if weight == 0:
        zero = l1.new_zeros(())
        return l1, l1.detach(), zero
    contrastive = supcon_loss(feats)
    return l1 + weight * contrastive, l1.detach(), contrastive.detach()


def supcon_loss(
    feats: torch.Tensor,
    temperature: float = SUPCON_TEMPERATURE,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> torch.Tensor:
    """SupCon of feats [B, N, E] (positives: same image), computed in float32 in row chunks."""
    tokens = feats.shape[1]
    if tokens < 2:
        raise ValueError("SupCon needs at least two tokens per image (positives)")
    z = F.normalize(feats.float().flatten(0, 1), dim=1)  # [B·N, E]
    return _ChunkedSupCon.apply(z, tokens, temperature, chunk_rows)


def _chunk_terms(z: torch.Tensor, rows: slice, tokens: int, temperature: float):
    """For anchors ``rows``: (similarities [c, M], log-softmax over a≠i [c, M], positive mask)."""
    sims = z[rows] @ z.T / temperature  # [c, M]
    anchor = torch.arange(rows.start, rows.stop, device=z.device)
    others = torch.arange(z.shape[0], device=z.device)
    is_self = anchor[:, None] == others[None, :]
    positive = (anchor[:, None] // tokens == others[None, :] // tokens) & ~is_self
    log_prob = sims.masked_fill(is_self, float("-inf")).log_softmax(dim=1)
    return log_prob, positive


class _ChunkedSupCon(torch.autograd.Function):
    """Loss and gradient chunk by chunk; saves only z [M, E] for the backward pass."""

    @staticmethod
    def forward(ctx, z, tokens, temperature, chunk_rows):
        total = z.new_zeros(())
        for start in range(0, z.shape[0], chunk_rows):
            rows = slice(start, min(start + chunk_rows, z.shape[0]))
            log_prob, positive = _chunk_terms(z, rows, tokens, temperature)
            total -= log_prob.masked_fill(~positive, 0).sum() / (tokens - 1)
        ctx.save_for_backward(z)
        ctx.params = (tokens, temperature, chunk_rows)
        return total / z.shape[0]

    @staticmethod
    def backward(ctx, grad_out):
        (z,) = ctx.saved_tensors
        tokens, temperature, chunk_rows = ctx.params
        grad = torch.zeros_like(z)
        scale = grad_out / (z.shape[0] * temperature)
        for start in range(0, z.shape[0], chunk_rows):
            rows = slice(start, min(start + chunk_rows, z.shape[0]))
            log_prob, positive = _chunk_terms(z, rows, tokens, temperature)
            # d loss / d s_ij = (softmax_ij - [j ∈ P(i)] / |P(i)|) / M  (0 on the diagonal)
            g = log_prob.exp() - positive.to(z.dtype) / (tokens - 1)  # [c, M]
            grad[rows] += g @ z
            grad += g.T @ z[rows]
        return grad * scale, None, None, None
