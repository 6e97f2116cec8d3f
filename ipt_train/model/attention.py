"""Multi-head attention with the official packed-projection parameters, computed by SDPA.

The official model uses ``nn.MultiheadAttention(bias=False)``: one packed ``in_proj_weight``
[3E, E] (rows: q, k, v) and ``out_proj.weight`` [E, E], no biases. This module keeps exactly those
parameters (so checkpoints load unchanged) but is batch-first and runs
``F.scaled_dot_product_attention``, which fuses scale, softmax and the value product and never
materialises the averaged attention weights the official call returns and discards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.out_proj = nn.Linear(dim, dim, bias=False)
        nn.init.xavier_uniform_(self.in_proj_weight)  # what nn.MultiheadAttention does

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """[B, Nq, E], [B, Nk, E], [B, Nk, E] -> [B, Nq, E].

        Inputs that are the same tensor share one projection matmul (self-attention without
        position terms projects q, k and v at once; cross-attention projects k and v at once).
        """
        q, k, v = self._project(query, key, value)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, Nq, E/H]
        batch, heads, tokens, head_dim = out.shape
        out = out.transpose(1, 2).reshape(batch, tokens, heads * head_dim)
        return self.out_proj(out)

    def _project(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
        dim = self.in_proj_weight.shape[1]
        # One split of the packed weight: its backward is a single concatenation of the pieces'
        # gradients (indexing would zero-fill a full-size gradient per piece and add them up).
        if query is key and key is value:
            q, k, v = F.linear(query, self.in_proj_weight).chunk(3, dim=-1)
        elif query is key:
            w_qk, w_v = self.in_proj_weight.split([2 * dim, dim])
            q, k = F.linear(query, w_qk).chunk(2, dim=-1)
            v = F.linear(value, w_v)
        elif key is value:
            w_q, w_kv = self.in_proj_weight.split([dim, 2 * dim])
            q = F.linear(query, w_q)
            k, v = F.linear(key, w_kv).chunk(2, dim=-1)
        else:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
            q, k, v = F.linear(query, w_q), F.linear(key, w_k), F.linear(value, w_v)
        return self._split_heads(q), self._split_heads(k), self._split_heads(v)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, E] -> [B, H, N, E/H]."""
        batch, tokens, dim = x.shape
        return x.view(batch, tokens, self.num_heads, dim // self.num_heads).transpose(1, 2)
