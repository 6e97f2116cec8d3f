"""The IPT body (docs/model.md): a pre-norm transformer encoder-decoder over 3x3 feature patches.

[B, C, 48, 48] --unfold 3x3/3--> [B, 256, 9C] tokens (channel-major: c*9 + ky*3 + kx)
-> linear_encoding + skip -> + learned position -> 12 encoder layers
-> 12 decoder layers conditioned on the task embedding -> mlp_head + skip -> fold back.
Parameter names follow the official checkpoint (``body.encoder.layers.0.self_attn...``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ipt_train.model.attention import Attention
from ipt_train.model.config import IPTConfig


class EncoderLayer(nn.Module):
    """Pre-norm: x + attn(n1(x)) then x + mlp(n2(x)); [B, N, E] -> [B, N, E]."""

    def __init__(self, cfg: IPTConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg.embed_dim, cfg.num_heads)
        self.linear1 = nn.Linear(cfg.embed_dim, cfg.mlp_dim)
        self.linear2 = nn.Linear(cfg.mlp_dim, cfg.embed_dim)
        self.norm1 = nn.LayerNorm(cfg.embed_dim)
        self.norm2 = nn.LayerNorm(cfg.embed_dim)
        # The official encoder re-initialises its packed projection like an nn.Linear weight.
        nn.init.kaiming_uniform_(self.self_attn.in_proj_weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.self_attn(h, h, h)
        return x + self.linear2(F.relu(self.linear1(self.norm2(x))))


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer; ``task`` [1, N, E] is added to queries and keys of the
    self-attention and to the queries of the cross-attention, whose keys and values are the raw
    encoder output ``memory``. [B, N, E] -> [B, N, E]."""

    def __init__(self, cfg: IPTConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg.embed_dim, cfg.num_heads)
        self.multihead_attn = Attention(cfg.embed_dim, cfg.num_heads)
        self.linear1 = nn.Linear(cfg.embed_dim, cfg.mlp_dim)
        self.linear2 = nn.Linear(cfg.mlp_dim, cfg.embed_dim)
        self.norm1 = nn.LayerNorm(cfg.embed_dim)
        self.norm2 = nn.LayerNorm(cfg.embed_dim)
        self.norm3 = nn.LayerNorm(cfg.embed_dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        qk = h + task
        x = x + self.self_attn(qk, qk, h)
        x = x + self.multihead_attn(self.norm2(x) + task, memory, memory)
        return x + self.linear2(F.relu(self.linear1(self.norm3(x))))


class Layers(nn.Module):
    """Holds ``layers`` so that keys read ``encoder.layers.i`` / ``decoder.layers.i``."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class PositionEncoding(nn.Module):
    """Learned position embedding ``pe`` plus the ``position_ids`` buffer the checkpoints store."""

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.pe = nn.Embedding(num_tokens, dim)
        self.register_buffer("position_ids", torch.arange(num_tokens).expand(1, -1))

    def forward(self) -> torch.Tensor:
        """-> [1, N, E]."""
        return self.pe(self.position_ids)


class Body(nn.Module):
    def __init__(self, cfg: IPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.linear_encoding = nn.Linear(dim, dim)
        # Indices 0 and 3 as in the official Sequential(Linear, Dropout, ReLU, Linear, Dropout).
        self.mlp_head = nn.Sequential(
            nn.Linear(dim, cfg.mlp_dim), nn.Identity(), nn.ReLU(), nn.Linear(cfg.mlp_dim, dim)
        )
        self.query_embed = nn.Embedding(cfg.n_tasks, dim * cfg.num_tokens)  # one row per task
        self.encoder = Layers([EncoderLayer(cfg) for _ in range(cfg.num_layers)])
        self.decoder = Layers([DecoderLayer(cfg) for _ in range(cfg.num_layers)])
        self.position_encoding = PositionEncoding(cfg.num_tokens, dim)

    def forward(self, x: torch.Tensor, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, C, P, P] features, task slot -> ([B, C, P, P], tokens [B, N, E] before fold)."""
        p = self.cfg.patch_dim
        tokens = F.unfold(x, p, stride=p).transpose(1, 2)  # [B, N, E], E = C*p*p channel-major
        tokens = self.linear_encoding(tokens) + tokens
        tokens = tokens + self.position_encoding()
        for layer in self.encoder.layers:
            tokens = layer(tokens)
        task_embed = self.query_embed.weight[task].view(1, self.cfg.num_tokens, -1)  # [1, N, E]
        memory = tokens
        for layer in self.decoder.layers:
            tokens = layer(tokens, memory, task_embed)
        tokens = self.mlp_head(tokens) + tokens
        out = F.fold(tokens.transpose(1, 2), self.cfg.patch_size, p, stride=p)  # [B, C, P, P]
        return out, tokens
