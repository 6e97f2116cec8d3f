"""The CNN parts of IPT (docs/model.md): mean shift, per-task heads and tails.

Module and parameter names follow the official checkpoint layout (``head.i.0``, ``head.i.1.body.0``,
``tail.i.0.0``, ``tail.i.1``, ``sub_mean``), so ``state_dict`` keys match it one to one.
"""

from __future__ import annotations

import torch
from torch import nn

from ipt_train.model.config import RGB_MEAN, IPTConfig


def conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv2d:
    """'Same' convolution with bias, the only kind IPT uses."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)


class MeanShift(nn.Conv2d):
    """Adds ``sign * rgb_range * mean`` per channel, as a frozen 1x1 conv (identity weight).

    A conv rather than a buffer because the official checkpoints store it as one.
    """

    def __init__(self, rgb_range: float, sign: int) -> None:
        super().__init__(3, 3, kernel_size=1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(RGB_MEAN))
        self.requires_grad_(False)


class ResBlock(nn.Module):
    """x + conv(relu(conv(x))), 5x5 convs: [B, C, H, W] -> [B, C, H, W]."""

    def __init__(self, n_feats: int, kernel_size: int = 5) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv(n_feats, n_feats, kernel_size),
            nn.ReLU(inplace=True),
            conv(n_feats, n_feats, kernel_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        out += x  # in place: the conv's backward does not need its output; saves a buffer
        return out


class Upsampler(nn.Sequential):
    """EDSR sub-pixel upsampler: [B, C, H, W] -> [B, C, sH, sW].

    x2: conv C->4C + PixelShuffle(2); x4: that twice; x3: conv C->9C + PixelShuffle(3);
    x1: empty (the identity).
    """

    def __init__(self, scale: int, n_feats: int) -> None:
        steps = {1: [], 2: [2], 3: [3], 4: [2, 2]}[scale]
        layers: list[nn.Module] = []
        for factor in steps:
            layers += [conv(n_feats, factor * factor * n_feats, 3), nn.PixelShuffle(factor)]
        super().__init__(*layers)


def make_head(cfg: IPTConfig) -> nn.Sequential:
    """[B, 3, H, W] -> [B, n_feats, H, W]: conv3x3 then two 5x5 ResBlocks."""
    return nn.Sequential(
        conv(cfg.n_colors, cfg.n_feats, 3), ResBlock(cfg.n_feats), ResBlock(cfg.n_feats)
    )


def make_tail(cfg: IPTConfig, scale: int) -> nn.Sequential:
    """[B, n_feats, H, W] -> [B, 3, sH, sW]: upsampler then conv3x3."""
    return nn.Sequential(Upsampler(scale, cfg.n_feats), conv(cfg.n_feats, cfg.n_colors, 3))
