"""The IPT model's configuration: one frozen dataclass and the named presets.

``ipt_full()`` is the paper's model (docs/model.md): 64 features, 3x3 token patches of 48x48 inputs
(256 tokens of 576 values), 12 encoder + 12 decoder layers, 12 heads. Its default layout is the
official 6-task pretraining checkpoint (``--scale 2+3+4+1+1+1``); ``ipt_full(scales=(3,))`` is the
single-task x3 layout. ``ipt_tiny()`` keeps the structure at a size that trains on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ipt_data import UserError

# Slot order of the official 6-task checkpoint: sr_x2, sr_x3, sr_x4, derain, denoise_30, denoise_50.
PRETRAIN_SCALES = (2, 3, 4, 1, 1, 1)
RGB_MEAN = (0.4488, 0.4371, 0.4040)  # the DIV2K mean the official MeanShift convs remove


@dataclass(frozen=True)
class IPTConfig:
    scales: tuple[int, ...] = PRETRAIN_SCALES  # one head, tail and task embedding per entry
    n_feats: int = 64  # channels of the CNN heads and tails
    patch_size: int = 48  # side of the model's input (the body folds back to this size)
    patch_dim: int = 3  # side of the square patch that becomes one token
    num_heads: int = 12
    num_layers: int = 12  # encoder layers; the decoder has as many
    mlp_ratio: int = 4  # hidden width of every MLP / token width
    n_colors: int = 3
    rgb_range: float = 255.0

    def __post_init__(self) -> None:
        if not self.scales or any(s not in (1, 2, 3, 4) for s in self.scales):
            raise ValueError(f"scales must be a non-empty tuple of 1, 2, 3 or 4, got {self.scales}")
        if self.patch_size % self.patch_dim:
            raise ValueError(f"patch_size {self.patch_size} is not a multiple of {self.patch_dim}")
        if self.num_heads < 1 or self.embed_dim % self.num_heads:
            raise ValueError(
                f"token width {self.embed_dim} not divisible by {self.num_heads} heads"
            )
        object.__setattr__(self, "scales", tuple(int(s) for s in self.scales))

    @property
    def n_tasks(self) -> int:
        return len(self.scales)

    @property
    def embed_dim(self) -> int:
        """Token width: the n_feats x patch_dim x patch_dim values of one unfolded patch."""
        return self.n_feats * self.patch_dim**2

    @property
    def num_tokens(self) -> int:
        return (self.patch_size // self.patch_dim) ** 2

    @property
    def mlp_dim(self) -> int:
        return self.embed_dim * self.mlp_ratio

    def single_task(self, slot: int) -> IPTConfig:
        """The layout of a model fine-tuned on slot ``slot`` of this one (that slot moved to 0)."""
        return replace(self, scales=(self.scales[slot],))


def ipt_full(scales: tuple[int, ...] = PRETRAIN_SCALES) -> IPTConfig:
    """The paper's IPT, 115-119M parameters: 6-task by default, ``scales=(2,)`` single-task."""
    return IPTConfig(scales=tuple(scales))


def ipt_tiny(scales: tuple[int, ...] = PRETRAIN_SCALES) -> IPTConfig:
    """Same structure and 48x48 inputs, 1.82M parameters (6-task): for CPU tests and demos.
    12 heads (of width 12), as ipt-full, so that its plain state_dict (``model.pt``), which does
    not record the heads, loads back as the model that was trained."""
    return IPTConfig(scales=tuple(scales), n_feats=16, num_heads=12, num_layers=2)


PRESETS = {"ipt-full": ipt_full, "ipt-tiny": ipt_tiny}


def preset_config(name: str, **overrides) -> IPTConfig:
    """The config of preset ``name`` (``overrides``, e.g. scales, passed to it); an unknown name
    is a UserError listing the presets."""
    if name not in PRESETS:
        raise UserError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name](**overrides)
