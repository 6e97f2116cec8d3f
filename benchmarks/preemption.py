"""How long a training run takes to stop on SIGTERM, and what the checkpoint write costs.

Runs ``ipt-train pretrain`` of ipt-tiny on this CPU (one process, and two gloo processes under
``ipt-train launch``), sends SIGTERM once ``--after`` steps are logged, at a random point of
the step under way, and times the signal to rank 0's last line (the checkpoint is written by
then) and to the exit; prints each run's figures and its step time from log.csv. Then times
``save_train_state`` (the checkpoint of a stop: model, Adam state, RNG) of ipt-tiny and ipt-full
into the same folder and prints their sizes and write speeds: what the formula of
docs/training.md#stopping-and-preemption needs.

Usage: benchmarks/preemption.py [--shards SET] [--rounds 3] [--after 7] [--work DIR]
(without --shards it builds a small set of the sample photographs first).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ipt_data import cpu_model
from ipt_train.model import IPT, preset_config
from ipt_train.train import make_optimizer
from ipt_train.trainstate import save_train_state

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def build_set(work: Path) -> Path:
    subprocess.run([BIN / "ipt-data", "sample", work / "photos"], check=True, capture_output=True)
    shards = work / "shards"
    command = [BIN / "ipt-data", "build", "--src", work / "photos", "--out", shards]
    command += ["--tasks", "sr_x2,denoise_30", "--images-per-shard", "2", "--no-progress"]
    subprocess.run(command, check=True, capture_output=True)
    return shards


def logged(run: Path) -> list[dict]:
    try:
        with (run / "log.csv").open(newline="") as handle:
            return list(csv.DictReader(handle))
    except FileNotFoundError:
        return []


def stop_once(shards: Path, run: Path, processes: int, after: int, port: int) -> dict:
    """One run stopped by SIGTERM during step ``after``: its figures."""
    arguments = ["pretrain", "--shards", shards, "--out", run, "--tasks", "sr_x2,denoise_30"]
    arguments += ["--steps", "1000", "--batch", "4", "--micro-batch", "2", "--workers", "1"]
    arguments += ["--shuffle-block", "16", "--no-progress", "--seed", "1"]
    command = [BIN / "ipt-train", *arguments]
    if processes > 1:
        launch = ["launch", "--nproc-per-node", str(processes), "--master-port", str(port)]
        command = [BIN / "ipt-train", *launch, *arguments]
    process = subprocess.Popen(command, env=ENV, stderr=subprocess.PIPE, text=True)
    while len(logged(run)) < after:
        if process.poll() is not None:
            raise SystemExit(f"the run ended early: {process.stderr.read()}")
        time.sleep(0.005)
    rows = logged(run)
    seconds = [float(row["seconds"]) for row in rows]
    step = statistics.median(b - a for a, b in itertools.pairwise(seconds[1:]))  # no warm-up
    time.sleep(random.uniform(0, step))  # anywhere in the step under way
    sent = time.perf_counter()
    process.send_signal(signal.SIGTERM)
    lines, said = [], None
    for line in process.stderr:  # rank 0's last line comes once the checkpoint is written
        lines.append(line.strip())
        said = time.perf_counter() - sent if line.startswith("Error:") else said
    process.wait()
    took = time.perf_counter() - sent
    saved = torch.load(run / "checkpoint.pt", weights_only=True, map_location="cpu")["step"]
    return {
        "exit": process.returncode,
        "seconds": took,
        "said_s": said,
        "step_s": step,
        "saved_step": saved,
        "checkpoint_mb": (run / "checkpoint.pt").stat().st_size / 1e6,
        "last_line": lines[-1],
    }


def time_save(preset: str, folder: Path, rounds: int) -> tuple[float, float]:
    """(MB, median seconds) of save_train_state of ``preset`` with a full Adam state."""
    model = IPT(preset_config(preset))
    optimizer = make_optimizer(model.parameters(), 1e-4)
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()  # Adam's state for every tensor (a run has none for untrained tasks' slots)
    path = folder / f"{preset}.pt"
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        save_train_state(path, model, optimizer, 1, {"preset": preset})
        times.append(time.perf_counter() - start)
    size = path.stat().st_size / 1e6
    path.unlink()
    return size, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--after", type=int, default=7, help="Steps logged before the signal.")
    parser.add_argument("--work", type=Path, help="Folder for the runs [a temporary one].")
    args = parser.parse_args()
    print(f"cpu: {cpu_model()}")
    with tempfile.TemporaryDirectory(dir=args.work) as temporary:
        work = Path(temporary)
        shards = args.shards or build_set(work)
        for processes in (1, 2):
            figures = []
            for round_ in range(args.rounds):
                run = work / f"run-{processes}-{round_}"
                found = stop_once(shards, run, processes, args.after, 29500 + 7 * round_)
                figures.append(found)
                print(
                    f"{processes} process(es), round {round_ + 1}: SIGTERM -> saved and said in "
                    f"{found['said_s']:.2f} s, exit {found['exit']} in {found['seconds']:.2f} s "
                    f"(step {found['step_s']:.2f} s; "
                    f"saved step {found['saved_step']}; checkpoint "
                    f"{found['checkpoint_mb']:.1f} MB)\n  {found['last_line']}"
                )
            took = [found["seconds"] for found in figures]
            print(
                f"{processes} process(es): signal to exit {min(took):.2f}-{max(took):.2f} s, "
                f"median {statistics.median(took):.2f} s"
            )
        for preset in ("ipt-tiny", "ipt-full"):
            size, seconds = time_save(preset, work, args.rounds)
            print(
                f"save_train_state {preset}: {size:.1f} MB in {seconds:.2f} s "
                f"({size / seconds:.0f} MB/s, serialising included)"
            )


if __name__ == "__main__":
    main()
