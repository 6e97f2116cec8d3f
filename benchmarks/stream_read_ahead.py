"""How much of a training step waits for data when shards come from a distant store, with and
without the stream's read-ahead, in one run.

    .venv/bin/python benchmarks/stream_read_ahead.py SHARD_SET [--tasks sr_x2] [--latency 0.3]
        [--step-ms 50] [--steps 120] [--workers 1] [--read-ahead 0,2] [--shuffle-block 32]
        [--cache-shards 2]

SHARD_SET (a folder) is served by a loopback HTTP server that answers each request
``--latency`` seconds late (a distant object store's time to first byte; benchmarks/transfer.py's
server). For each --read-ahead value, a fresh cache and the training stream of --steps steps of
8 samples of --tasks, through a DataLoader with --workers processes; each step "trains" for
--step-ms (a sleep standing in for the model). The cache holds --cache-shards of the largest
shard, so that shards are fetched again each epoch, as when a set is much larger than its cache.
Prints the fraction of the time spent waiting for the next unit after the first, and the
seconds in all.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from transfer import slow_http_server

from ipt_data import cpu_model, parse_tasks
from ipt_train.configs import LoaderConfig
from ipt_train.schedule import TaskMix
from ipt_train.stream.loader import StepStream, make_loader
from ipt_train.stream.shardset import ShardSet


def data_wait(url: str, tasks: str, steps: int, step_seconds: float, config: LoaderConfig):
    """(fraction of the time spent waiting for units, seconds in all) of one stream."""
    shard_set = ShardSet.open(url)
    mix = TaskMix.uniform(parse_tasks(tasks))
    units = iter(make_loader(StepStream(shard_set, mix, 0, range(steps), 8, 0, 1, config)))
    next(units)  # the clock starts once the workers run and the first shard is in
    waited, start = 0.0, time.perf_counter()
    for _ in range(steps * 8 // config.micro_batch - 1):
        clock = time.perf_counter()
        next(units)
        waited += time.perf_counter() - clock
        time.sleep(step_seconds * config.micro_batch / 8)
    total = time.perf_counter() - start
    return waited / total, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards", type=Path)
    parser.add_argument("--tasks", default="sr_x2")
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--step-ms", type=float, default=50.0)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--read-ahead", default="0,2")
    parser.add_argument("--shuffle-block", type=int, default=32)
    parser.add_argument("--cache-shards", type=int, default=2)
    args = parser.parse_args()
    read = [p for task in args.tasks.split(",") for p in args.shards.glob(f"{task}/*.tar")]
    largest = max(path.stat().st_size for path in read)
    print(f"cpu: {cpu_model()}; latency {args.latency} s per request, {args.step_ms} ms a step")
    with slow_http_server(args.shards, args.latency) as url:
        for threads in (int(n) for n in args.read_ahead.split(",")):
            with tempfile.TemporaryDirectory() as cache:
                config = LoaderConfig(
                    micro_batch=8,
                    workers=args.workers,
                    shuffle_block=args.shuffle_block,
                    cache=cache,
                    cache_limit=str(args.cache_shards * largest),
                    read_ahead=threads,
                )
                step = args.step_ms / 1000
                wait, seconds = data_wait(url, args.tasks, args.steps, step, config)
            print(f"read-ahead {threads}: {100 * wait:.1f}% of the time waiting, {seconds:.1f} s")


if __name__ == "__main__":
    main()
