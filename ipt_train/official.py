"""The official IPT implementation behind our call signature, for comparisons (tests, ``bench``).

The official ``model/`` package is imported from the user's checkout of huawei-noah/Pretrained-IPT
at run time, never vendored (docs/model.md).
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import torch

from ipt_data import UserError
from ipt_train.model import IPTConfig


class OfficialIPT(torch.nn.Module):
    """The official ``model/ipt.py`` from a user's checkout, behind our call signature."""

    def __init__(self, official_dir: Path, cfg: IPTConfig) -> None:
        super().__init__()
        module = import_official(official_dir)
        args = types.SimpleNamespace(
            n_feats=cfg.n_feats, scale=list(cfg.scales), patch_size=cfg.patch_size,
            patch_dim=cfg.patch_dim, num_heads=cfg.num_heads, num_layers=cfg.num_layers,
            num_queries=cfg.n_tasks, dropout_rate=0.0, no_mlp=False, pos_every=False,
            no_pos=False, no_norm=False, rgb_range=int(cfg.rgb_range), n_colors=cfg.n_colors,
        )  # fmt: skip
        self.inner = module.ipt(args)

    def forward(self, x: torch.Tensor, slot: int) -> torch.Tensor:
        self.inner.set_scale(slot)
        return self.inner(x)


def import_official(official_dir: Path):
    if not (Path(official_dir) / "model" / "ipt.py").is_file():
        raise UserError(f"{official_dir}: no model/ipt.py here; point --official at a checkout")
    sys.path.insert(0, str(Path(official_dir).resolve()))
    try:
        return importlib.import_module("model.ipt")
    except ImportError as error:
        raise UserError(f"cannot import the official model from {official_dir}: {error}") from None
    finally:
        sys.path.pop(0)
