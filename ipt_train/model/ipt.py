"""The Image Processing Transformer (Chen et al., CVPR 2021), checkpoint-exact with the official
release: the ``state_dict`` keys and shapes are those of ``IPT_pretrain.pt``, ``IPT_sr2.pt``, ...

    x [B, 3, 48, 48] (0..255) -> sub_mean -> head[task] -> f [B, 64, 48, 48]
    -> body(f, task) + f -> tail[task] -> add_mean -> [B, 3, 48s, 48s]
"""

from __future__ import annotations

import torch
from torch import nn

from ipt_train.model.config import IPTConfig
from ipt_train.model.layers import MeanShift, make_head, make_tail
from ipt_train.model.transformer import Body


class IPT(nn.Module):
    def __init__(self, cfg: IPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.sub_mean = MeanShift(cfg.rgb_range, sign=-1)
        self.add_mean = MeanShift(cfg.rgb_range, sign=1)
        self.head = nn.ModuleList([make_head(cfg) for _ in cfg.scales])
        self.body = Body(cfg)
        self.tail = nn.ModuleList([make_tail(cfg, scale) for scale in cfg.scales])

    def forward(self, x: torch.Tensor, task: int, return_features: bool = False):
        """``x`` [B, 3, P, P] in 0..255, ``task`` a slot 0..n_tasks-1 -> [B, 3, sP, sP].

        With ``return_features`` also returns the body's tokens after ``mlp_head``, before the
        fold: [B, N, E] (256 x 576 for ipt-full), the per-patch features of the SupCon loss.
        """
        if not 0 <= task < self.cfg.n_tasks:
            raise IndexError(f"task slot {task} out of range for {self.cfg.n_tasks} tasks")
        feats = self.head[task](self.sub_mean(x))
        body, tokens = self.body(feats, task)
        out = self.add_mean(self.tail[task](body + feats))
        return (out, tokens) if return_features else out
