"""The IPT model: ``IPT(cfg)`` built from an ``IPTConfig`` (presets ``ipt_full``, ``ipt_tiny``)."""

from ipt_train.model.config import (
    PRESETS,
    PRETRAIN_SCALES,
    IPTConfig,
    ipt_full,
    ipt_tiny,
    preset_config,
)
from ipt_train.model.ipt import IPT

__all__ = [
    "IPT",
    "PRESETS",
    "PRETRAIN_SCALES",
    "IPTConfig",
    "ipt_full",
    "ipt_tiny",
    "preset_config",
]
