"""The settings of ``ipt-train``'s commands, one dataclass per component, defaults stated here once.

These dataclasses import neither torch nor click: the CLI builds its options' defaults from them
at start-up (``ipt-train --help`` in 0.1 s rather than the 2.3 s torch takes to import), and the
functions that run the commands take them. A command's defaults that differ from a component's
(fine-tuning's batch and learning rate) are a small function returning that component's config
(:func:`pretrain_training`, :func:`finetune_training`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ipt_data import UserError
from ipt_train.schedule import LRSchedule
from ipt_train.stream.cache import check_limit_text
from ipt_train.tilegrid import TileConfig

SUPCON_WEIGHT = 0.1  # λ of the contrastive term (docs/training.md)
FINETUNE_LR = 2e-5  # the paper's fine-tuning learning rate, constant
RESTORE_DEVICE = "cpu"  # where `ipt-train restore` runs the model unless told
LOSS_WINDOW = 20  # training steps averaged per point of `ipt-train plot`'s loss curves


@dataclass(frozen=True)
class LoaderConfig:
    """How a rank's training stream reads and batches its samples (ipt_train.stream)."""

    micro_batch: int = 8  # samples per unit (per rank, per forward pass)
    workers: int = 2  # DataLoader worker processes per rank (0: in the training process)
    # Samples shuffled together: each epoch permutes the shards, cuts them into blocks of at
    # least this many samples and permutes each block's samples (about 8 ImageNet shards).
    shuffle_block: int = 65536
    augment: bool = True  # random flips and 90° rotations, the same for input and target
    prefetch: int = 2  # units prepared ahead per worker
    cache: str | None = None  # the node's shard cache folder; None: default_cache_folder()
    cache_limit: str | None = None  # "200G", "40%" of the free disk; None: half the free disk
    fetch_attempts: int = 5  # tries at a remote shard while the storage fails
    fetch_timeout: float = 60.0  # seconds without a byte (or a connection) before a try fails
    read_ahead: int = 2  # threads per worker fetching the shards of the next shuffle block

    def __post_init__(self) -> None:
        if self.micro_batch < 1 or self.workers < 0 or self.shuffle_block < 1:
            raise UserError("--micro-batch and --shuffle-block must be >= 1, --workers >= 0")
        if self.fetch_attempts < 1 or self.fetch_timeout <= 0 or self.read_ahead < 0:
            raise UserError(
                "--fetch-attempts must be >= 1, --fetch-timeout > 0 and --read-ahead >= 0"
            )
        if self.cache_limit is not None:
            check_limit_text(self.cache_limit)  # a typo fails here, not in a loader worker


def default_cache_folder() -> str:
    """``$IPT_CACHE``, else ``$XDG_CACHE_HOME/ipt-toolkit/shards``, else
    ``~/.cache/ipt-toolkit/shards``: one folder a node's runs share."""
    if os.environ.get("IPT_CACHE"):
        return os.environ["IPT_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ipt-toolkit", "shards")


@dataclass(frozen=True)
class TrainConfig:
    """What every training run shares (pretraining and fine-tuning); the defaults are the
    paper's pretraining (:func:`pretrain_training`)."""

    out: str
    steps: int = 1000
    batch: int = 256  # global samples per step (paper: 256)
    schedule: LRSchedule = field(default_factory=LRSchedule)
    supcon_weight: float = SUPCON_WEIGHT
    # SupCon negatives from every rank's micro-batch (docs/training.md: the other images of
    # the batch); False: this rank's micro-batch only, whose cost per rank does not grow with
    # the ranks.
    supcon_across_ranks: bool = True
    compile: bool = False  # torch.compile the forward pass: one graph per task slot trained
    seed: int = 0
    checkpoint_every: int = 500
    device: str = "auto"  # auto: cuda:LOCAL_RANK where a GPU exists, else cpu
    threads: int = 0  # torch CPU threads per process; 0: distributed.thread_budget's share
    resume: bool = False
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.checkpoint_every < 1 or self.batch < 1:
            raise UserError("--steps, --batch and --checkpoint-every must be at least 1")


def pretrain_training(out: str = "") -> TrainConfig:
    """Pretraining's run settings: the paper's schedule, batch 256, λ 0.1."""
    return TrainConfig(out)


def finetune_training(out: str = "") -> TrainConfig:
    """Fine-tuning's run settings: lr 2e-5 throughout, batch 64, no contrastive term."""
    return TrainConfig(
        out, batch=64, schedule=LRSchedule(FINETUNE_LR, FINETUNE_LR), supcon_weight=0.0
    )


@dataclass(frozen=True)
class PretrainConfig:
    """What pretraining adds: the shard set, the model preset, the tasks and their weights."""

    shards: str
    preset: str = "ipt-tiny"
    tasks: str = "all"
    task_weights: str | None = None  # "sr_x2=2,derain=1"; unnamed tasks weigh 1
    loader: LoaderConfig = field(default_factory=LoaderConfig)


@dataclass(frozen=True)
class FinetuneConfig:
    """What fine-tuning adds: where the model starts and the one task's training data."""

    init: str | None  # checkpoint to start from (6-task pretrained, or single-task); None:
    task: str  # a randomly initialised `preset` model (the from-scratch arm of an ablation)
    shards: str | None = None  # exactly one of shards / clean / pairs
    clean: str | None = None
    pairs: str | None = None
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    preset: str = "ipt-tiny"  # the model of a run without init


@dataclass(frozen=True)
class EvalConfig:
    """How ``ipt-train eval`` runs a model over a benchmark folder."""

    tiles: TileConfig = field(default_factory=TileConfig)
    device: str = "cpu"
    noise_seed: int = 0  # seeds the denoising inputs (per image: with its name)
    progress: bool = True


@dataclass(frozen=True)
class TablesConfig:
    """What ``ipt-train tables`` evaluates: the benchmark sets under ``bench`` and the models
    of the model rows (docs/evaluation.md#ipt-train-tables)."""

    bench: str  # the folder holding Set5/, Set14/, B100/, Urban100/, CBSD68/, Rain100L/
    checkpoint: str | None = None  # a 6-task checkpoint, for every task
    checkpoint_for: tuple[str, ...] = ()  # "TASK=CKPT": one task's checkpoint, over `checkpoint`
    baseline: bool = False  # the input rows only (bicubic, noisy, rainy)
    sets: str | None = None  # comma-separated set names; None: every set found under bench
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    json: str | None = None  # also write the results here, as JSON


AMPS = ("none", "bf16", "fp16")  # autocast dtypes ipt-train bench knows


@dataclass(frozen=True)
class BenchConfig:
    """What ``ipt-train bench`` times: a preset's model at a task layout, on a device."""

    preset: str = "ipt-full"
    scales: str = "2+3+4+1+1+1"  # task layout, the official --scale syntax
    batch: int = 4
    slot: int = 0  # task slot the steps run
    device: str = "cpu"
    steps: int = 5  # timed steps per measurement (median reported)
    warmup: int = 1
    amp: str = "none"  # autocast dtype, one of AMPS
    compile: bool = False  # torch.compile our model
    official_dir: Path | None = None  # a checkout of the official code, to time it too
    tiled_size: int = 256  # side of the input image for the tiled-inference figure (0: skip)
    tile_batch: int = TileConfig.batch
    overlap: int = TileConfig.overlap
    threads: int = 0  # torch CPU threads; 0 keeps torch's default

    def __post_init__(self) -> None:
        """Bad settings are one UserError here, before any model is built or timed."""
        if self.amp not in AMPS:
            raise UserError(f"unknown --amp {self.amp!r}; choose one of {', '.join(AMPS)}")
        for name, least in (("batch", 1), ("steps", 1), ("warmup", 0), ("threads", 0)):
            if getattr(self, name) < least:
                raise UserError(f"--{name} must be at least {least}, got {getattr(self, name)}")
        if self.tiled_size < 0:
            raise UserError(
                f"--tiled-size must be 0 (skip) or a side in pixels, not {self.tiled_size}"
            )
