"""What it costs the training stream to find where a resumed run stands.

An ImageNet-sized six-task set (1,281 shards of 8,000 samples per task, a manifest made here:
no shard exists) resumed at step 1,500,000 with the global batch 256: the task draws of the steps
before, then the shard and sample of each of the step's 256 positions, for each task (six times
what one resume needs). Prints the seconds, and the peak memory traced by tracemalloc and the
process's peak RSS growth. Usage: benchmarks/stream_resume.py [--step N] [--batch N] [--repeat N]
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np

from ipt_data import TASKS, cpu_model, parse_tasks
from ipt_train.configs import LoaderConfig
from ipt_train.schedule import TaskMix
from ipt_train.stream.order import TaskOrder

SHARDS, SAMPLES = 1281, 8000


def find_position(step: int, batch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (shard, sample) of each position of step ``step``'s global batch, were it of each
    task: what a resumed run computes before it reads anything."""
    mix = TaskMix.uniform(parse_tasks("all"))
    before = mix.steps_before(0, step)
    located = []
    for slot, task in enumerate(mix.tasks):
        counts = [SAMPLES] * SHARDS
        order = TaskOrder(counts, 0, TASKS[task.name].index, LoaderConfig().shuffle_block)
        first = int(before[slot]) * batch
        located.append(order.locate(np.arange(first, first + batch)))
    return located


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", type=int, default=1_500_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"cpu: {cpu_model()}")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for round_ in range(args.repeat):
        tracemalloc.start()
        start = time.perf_counter()
        find_position(args.step, args.batch)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"round {round_ + 1}: {seconds:.3f} s, peak traced memory {peak / 2**20:.1f} MiB")
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    print(f"peak RSS growth over the rounds: {grown / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
