"""Fine-tuning (docs/training.md): one task from a pretrained IPT, lr 2e-5, the other
heads/tails dropped.

The model is the task's slot of the initial checkpoint moved to slot 0 (the layout of the
official single-task checkpoints ``IPT_sr2.pt`` ...); a single-task checkpoint of the task's
scale is taken as it is. Training data comes from one of three sources, all read through the
same unit stream as pretraining (:class:`ipt_train.data.PretrainStream`):

* a shard set (the task's shards);
* a folder of clean images, corrupted on the fly by the task's own ``ipt_data`` corruption
  (:func:`ipt_data.patches.cut_pairs`), so the pairs are made exactly as in a shard build;
* paired folders for deraining: ``rain-N.png`` / ``norain-N.png``, aligned random 48x48 crops.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from ipt_data.decode import decode_image
from ipt_data.errors import UserError
from ipt_data.fileio import file_sha256, read_bytes
from ipt_data.patches import ImageTooSmall, cut_pairs
from ipt_data.sources import walk_sources
from ipt_data.tasks import INPUT_SIZE, Task, get_task
from ipt_train.checkpoint import build_model, read_checkpoint, to_single_task
from ipt_train.configs import FinetuneConfig, TrainConfig
from ipt_train.data import (
    PairBatcher,
    ShardSet,
    fingerprint,
    shard_sequence,
    shuffled,
)
from ipt_train.distributed import distributed, thread_budget
from ipt_train.evaluate import rain_pairs
from ipt_train.model import IPT, PRETRAIN_SCALES, preset_config
from ipt_train.schedule import TaskMix
from ipt_train.train import TrainResult, run_identity, stream_job, train_and_export

PATCHES_PER_IMAGE = 8  # pairs cut from a clean image each time it comes round


def starting_model(setup: FinetuneConfig, task: Task, seed: int) -> tuple[IPT, dict]:
    """The model fine-tuning starts from, and what identifies it in the run's identity: the
    initial checkpoint's task slot, or a ``setup.preset`` model initialised from ``seed``."""
    if setup.init:
        return initial_model(setup.init, task), {"init_sha256": file_sha256(setup.init)}
    torch.manual_seed(seed)
    model = IPT(preset_config(setup.preset, scales=(task.scale,)))
    return model, {"init": f"random {setup.preset}"}


def initial_model(path: str | Path, task: Task) -> IPT:
    """The single-task model for ``task`` from the checkpoint at ``path``."""
    state, config = read_checkpoint(path)
    model = build_model(state, config)
    if model.cfg.scales == PRETRAIN_SCALES:
        return build_model(to_single_task(state, task.index), config)
    if model.cfg.scales == (task.scale,):
        return model
    raise UserError(
        f"{path}: a model with task scales {model.cfg.scales} cannot start {task.name} "
        f"fine-tuning (needs the 6-task layout or a single-task x{task.scale} one)"
    )


class CleanFolder:
    """Clean images corrupted on the fly: each reader walks its share of the images."""

    def __init__(self, folder: str | Path) -> None:
        self.sources = walk_sources(folder)
        if not self.sources.ids:
            raise UserError(f"{folder}: no images here")

    def check(self, task: Task) -> None:
        pass

    def fingerprint(self, tasks) -> str:
        return fingerprint(list(self.sources.ids))  # the images' names

    def stream(self, task: Task, seed, reader: int, readers: int, config, position=0):
        """Like :meth:`ShardSet.stream`; ``position`` // PATCHES_PER_IMAGE images skipped."""
        rng = np.random.default_rng([*seed, task.index, 2, reader])
        names = shard_sequence(list(self.sources.ids), (seed[0], task.index, 3), reader, readers)
        names = islice(names, position // PATCHES_PER_IMAGE, None)
        pairs = shuffled(self._pairs(names, task, rng), config.shuffle_buffer, rng)
        return PairBatcher(pairs, rng, config)

    def _pairs(self, names: Iterable[str], task: Task, rng) -> Iterator[tuple]:
        too_small: set[str] = set()  # skipped from then on; all of them: nothing to train on
        for name in names:
            if name in too_small:
                continue
            path = self.sources.root / name
            try:
                image = decode_image(read_bytes(path), str(path))
                yield from (
                    (p.input, p.target) for p in cut_pairs(image, task, rng, PATCHES_PER_IMAGE)
                )
            except ImageTooSmall as error:
                too_small.add(name)
                if len(too_small) == len(self.sources.ids):
                    raise UserError(
                        f"{self.sources.root}: every image is too small for {task.name} "
                        f"(the last: {error})"
                    ) from None


class PairedFolder:
    """Rain100L-style ``rain-N.png`` / ``norain-N.png`` pairs, held in memory (small sets)."""

    def __init__(self, folder: str | Path) -> None:
        pairs = list(rain_pairs(Path(folder)))
        for pair in pairs:
            if min(pair.input.shape[:2]) < INPUT_SIZE:
                height, width = pair.input.shape[:2]
                raise UserError(
                    f"{folder}: {pair.name}.png is {width}x{height}, smaller than the "
                    f"{INPUT_SIZE}x{INPUT_SIZE} training crop"
                )
        self.names = [p.name for p in pairs]
        self.pairs = [(p.input, p.target) for p in pairs]

    def fingerprint(self, tasks) -> str:
        return fingerprint(self.names)

    def check(self, task: Task) -> None:
        if task.scale != 1:
            raise UserError(f"--pairs trains same-size tasks only, not {task.name}")

    def stream(self, task: Task, seed, reader: int, readers: int, config, position=0):
        """Random aligned crops of random pairs (``position`` is irrelevant: no order)."""
        rng = np.random.default_rng([*seed, task.index, 4, reader])
        return PairBatcher(self._crops(rng), rng, config)

    def _crops(self, rng) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while True:
            rainy, clean = self.pairs[int(rng.integers(len(self.pairs)))]
            top = int(rng.integers(rainy.shape[0] - INPUT_SIZE + 1))
            left = int(rng.integers(rainy.shape[1] - INPUT_SIZE + 1))
            window = np.s_[top : top + INPUT_SIZE, left : left + INPUT_SIZE]
            yield np.ascontiguousarray(rainy[window]), np.ascontiguousarray(clean[window])


def training_source(setup: FinetuneConfig):
    given = [s for s in (setup.shards, setup.clean, setup.pairs) if s]
    if len(given) != 1:
        raise UserError("give exactly one of --shards, --clean and --pairs")
    if setup.shards:
        return ShardSet.open(setup.shards)
    return CleanFolder(setup.clean) if setup.clean else PairedFolder(setup.pairs)


def finetune(config: TrainConfig, setup: FinetuneConfig) -> TrainResult:
    """Fine-tune ``setup.task``; writes ``OUT/checkpoint.pt`` and ``OUT/model.pt`` (the
    official single-task layout)."""
    task = get_task(setup.task)
    source = training_source(setup)
    source.check(task)
    mix = TaskMix.uniform([task])
    model, start = starting_model(setup, task, config.seed)  # a bad checkpoint fails here
    identity = run_identity(
        task=task.name,
        **start,
        data=source.fingerprint([task]),
        micro_batch=setup.loader.micro_batch,
    )
    notes = {"init": os.path.abspath(setup.init)} if setup.init else {}
    threads = thread_budget(config.threads, setup.loader.workers)
    with distributed(config.device, threads) as env:
        model = model.to(env.device)
        job = stream_job(
            model, mix, lambda _: 0, source, setup.loader, config.seed, env, identity, notes
        )
        return train_and_export(config, job, env)
