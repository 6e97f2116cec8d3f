"""Multi-task pretraining (docs/training.md): a 6-task IPT from a shard set, every step one task
drawn from the mix, L1 + λ·SupCon."""

from __future__ import annotations

import torch

from ipt_data import TASKS, parse_tasks
from ipt_train.configs import PretrainConfig, TrainConfig
from ipt_train.distributed import distributed, thread_budget
from ipt_train.model import IPT, preset_config
from ipt_train.schedule import TaskMix, parse_task_weights
from ipt_train.stream.shardset import ShardSet
from ipt_train.train import TrainResult, run_identity, stream_job, train_and_export


def pretrain(config: TrainConfig, setup: PretrainConfig) -> TrainResult:
    """Multi-task pretraining of a 6-task IPT from a shard set; writes ``OUT/checkpoint.pt``
    (resumable) and ``OUT/model.pt`` (official layout) at the end."""
    model_config = preset_config(setup.preset)
    tasks = parse_tasks(setup.tasks)
    mix = TaskMix(tuple(tasks), parse_task_weights(tasks, setup.task_weights))
    shard_set = ShardSet.open(setup.shards, setup.loader.fetch_timeout)
    for task in mix.tasks:
        shard_set.check(task)  # before anything is written
    identity = run_identity(
        preset=setup.preset,
        tasks=[task.name for task in mix.tasks],
        weights=mix.weights,
        data=shard_set.fingerprint(mix.tasks),
    )
    threads = thread_budget(config.threads, setup.loader.workers)
    with distributed(config.device, threads) as env:
        torch.manual_seed(config.seed)
        model = IPT(model_config).to(env.device)
        slot = lambda name: TASKS[name].index  # noqa: E731
        notes = {"micro_batch": setup.loader.micro_batch}  # recorded; a resume may change it
        job = stream_job(
            model, mix, slot, shard_set, setup.loader, config.seed, env, identity, notes
        )
        return train_and_export(config, job, env)
