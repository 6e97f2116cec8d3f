"""What one training-loader worker delivers: samples/s per task (benchmarks/loader prints it)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from ipt_data import Task
from ipt_train.configs import LoaderConfig
from ipt_train.stream.loader import make_unit
from ipt_train.stream.shardset import ShardSet


def loader_throughput(
    shards: str | Path, task: Task, batches: int, micro_batch: int = 32, cache: str | None = None
) -> dict:
    """Samples/s of one reader in this process (samples read by position from checked shards,
    PNG decode, flips, collate, pixel digest): what one loader worker delivers for ``task`` in
    a run's steady state. The task's shards are checked and indexed first, once per node in a
    run (``check_mb_per_s``); the clock then runs over ``batches`` micro-batches of the task's
    global order from position 0."""
    with tempfile.TemporaryDirectory() as scratch:
        config = LoaderConfig(micro_batch=micro_batch, workers=0, cache=cache or scratch)
        reader = ShardSet.open(shards).reader(0, config)
        entries = reader.order(task)[1]
        clock = time.perf_counter()
        for entry in entries:
            reader.store.ready(entry)
        checked = sum(entry["bytes"] for entry in entries) / (time.perf_counter() - clock)
        start, cpu = time.perf_counter(), time.process_time()
        for batch in range(batches):
            positions = np.arange(batch * micro_batch, (batch + 1) * micro_batch)
            make_unit(0, task, reader.pairs(task, positions), positions, 0, True)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    samples = batches * micro_batch
    return {
        "task": task.name,
        "samples_per_s": samples / seconds,
        "cpu_ms_per_sample": 1000 * cpu_seconds / samples,
        "check_mb_per_s": checked / 1e6,
    }
