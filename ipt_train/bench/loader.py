"""What one training-loader worker delivers: samples/s per task (benchmarks/loader prints it)."""

from __future__ import annotations

import time
from pathlib import Path

from ipt_data import Task
from ipt_train.configs import LoaderConfig
from ipt_train.data import ShardSet


def loader_throughput(shards: str | Path, task: Task, batches: int, micro_batch: int = 32) -> dict:
    """Samples/s of one reader in this process (read + member checks + shuffle + PNG decode +
    flips + collate): what one loader worker delivers for ``task``; the shuffle buffer is
    filled before the clock starts."""
    config = LoaderConfig(micro_batch=micro_batch, workers=0, shuffle_buffer=256)
    batcher = ShardSet.open(shards).stream(task, (0, 0), 0, 1, config)
    batcher.batch()  # fills the buffer
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        batcher.batch()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    samples = batches * micro_batch
    return {
        "task": task.name,
        "samples_per_s": samples / seconds,
        "cpu_ms_per_sample": 1000 * cpu_seconds / samples,
    }
