"""Fine-tuning (docs/training.md): one task from a pretrained IPT, lr 2e-5, the other
heads/tails dropped.

The model is the task's slot of the initial checkpoint moved to slot 0 (the layout of the
official single-task checkpoints ``IPT_sr2.pt`` ...); a single-task checkpoint of the task's
scale is taken as it is. Training data comes from one of three sources
(:class:`ipt_train.stream.folders.TrainingSource`), all read through the same training stream
as pretraining (:mod:`ipt_train.stream`): a shard set (the task's shards), a folder of clean
images corrupted on the fly (:class:`ipt_train.stream.folders.CleanFolder`), or rain pairs
(:class:`ipt_train.stream.folders.PairedFolder`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ipt_data import Task, UserError, file_sha256, get_task
from ipt_train.checkpoint import build_model, read_checkpoint, to_single_task
from ipt_train.configs import FinetuneConfig, TrainConfig
from ipt_train.distributed import distributed, thread_budget
from ipt_train.model import IPT, PRETRAIN_SCALES, preset_config
from ipt_train.schedule import TaskMix
from ipt_train.stream.folders import CleanFolder, PairedFolder, TrainingSource
from ipt_train.stream.shardset import ShardSet
from ipt_train.train import TrainResult, run_identity, stream_job, train_and_export


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


def training_source(setup: FinetuneConfig) -> TrainingSource:
    """The one data source ``setup`` names: a shard set, clean images or rain pairs."""
    given = [s for s in (setup.shards, setup.clean, setup.pairs) if s]
    if len(given) != 1:
        raise UserError("give exactly one of --shards, --clean and --pairs")
    if setup.shards:
        return ShardSet.open(setup.shards, setup.loader.fetch_timeout)
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
    )
    notes = {"init": os.path.abspath(setup.init)} if setup.init else {}
    notes["micro_batch"] = setup.loader.micro_batch  # recorded; a resume may change it
    threads = thread_budget(config.threads, setup.loader.workers)
    with distributed(config.device, threads) as env:
        model = model.to(env.device)
        job = stream_job(
            model, mix, lambda _: 0, source, setup.loader, config.seed, env, identity, notes
        )
        return train_and_export(config, job, env)
