"""The settings of ``ipt-data``'s build and transfers, defaults stated here once.

This module imports only the standard library and :mod:`ipt_data.errors`: the CLI builds its
options' defaults from it at start-up, and ``ipt-data --help`` stays at 0.05 s instead of the
0.2-0.3 s that OpenCV, NumPy and fsspec (what the build and transfer modules import) would add.
The functions that run the commands take these configs (:func:`ipt_data.build.build_shards`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ipt_data.errors import UserError

if TYPE_CHECKING:
    from ipt_data.tasks import Task

# Shard bytes per image and task at 8 pairs, measured by `ipt-data bench --build` (record in
# benchmarks/results/build_xeon2c_2026-11-27.md):
# 82 kB (derain) .. 102 kB (denoise) .. 172 / 321 / 529 kB (sr_x2 / x3 / x4). 1000 images per
# shard gives shards of 82-529 MB, 1282 shards per task for ImageNet-1k train.
DEFAULT_IMAGES_PER_SHARD = 1000

# Shards copied at once by pull and push. Measured with benchmarks/transfer.py (50 ms per
# request; record in benchmarks/results/transfer_xeon2c_2026-11-27.md):
# the pull time falls about in proportion up to here; threads mostly wait, so 2 cores suffice.
DEFAULT_JOBS = 8


# The PNG encoders (ipt_data.png, docs/png.md): libdeflate writes the same bytes on every CPU;
# ISA-L (the optional isal package) is about twice as fast but its bytes depend on the CPU class.
PNG_ENCODERS = ("libdeflate", "isal")
DEFAULT_PNG_ENCODER = "libdeflate"


def check_png_encoder(name: str) -> str:
    """``name`` if it is one of PNG_ENCODERS, else a UserError listing them."""
    if name not in PNG_ENCODERS:
        raise UserError(f"unknown PNG encoder {name!r}; known: {', '.join(PNG_ENCODERS)}")
    return name


@dataclass(frozen=True)
class RayConfig:
    """How the build runs its chunks on Ray; nothing here changes the shard set's bytes."""

    # Tasks at once; default: this machine's cores (local) or the cluster's CPUs (--address).
    workers: int | None = None
    address: str | None = None  # join this Ray cluster instead of starting a local instance
    retries: int = 2  # extra attempts of a failed or crashed task
    progress: bool = True  # bar on stderr (live on a terminal, a line per 30 s in a log)

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise UserError(f"--workers must be at least 1, got {self.workers}")


def _every_task() -> tuple[Task, ...]:
    # Imported when a config is made, not with this module: the task table needs OpenCV.
    from ipt_data.tasks import TASKS

    return tuple(TASKS.values())


@dataclass(frozen=True)
class BuildConfig:
    """What to build; the five fields before ``ray`` fix the shard set's bytes."""

    tasks: tuple[Task, ...] = field(default_factory=_every_task)
    patches_per_image: int = 8
    seed: int = 0
    images_per_shard: int = DEFAULT_IMAGES_PER_SHARD
    png_encoder: str = DEFAULT_PNG_ENCODER  # one of PNG_ENCODERS
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        if self.patches_per_image < 1:
            raise UserError(f"--patches-per-image must be at least 1, got {self.patches_per_image}")
        if self.images_per_shard < 1:
            raise UserError(f"--images-per-shard must be at least 1, got {self.images_per_shard}")
        if not self.tasks:
            raise UserError("no task to build")
        if not -(2**63) <= self.seed < 2**63:  # every sample's JSON holds it, in Arrow's int64
            raise UserError(f"--seed must be a 64-bit integer (-2**63 .. 2**63-1), got {self.seed}")
        check_png_encoder(self.png_encoder)
