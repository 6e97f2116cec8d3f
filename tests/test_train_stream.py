"""Training runs and the stream together: the global batch of every step (log.csv's
batch_digest) is the same on any shape, through checkpoints, a kill -9 and a resume on another
shape; a shard that stays unreachable saves the steps done and ``--resume`` finishes the run."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from loopback_servers import free_port, http_server
from test_train_support import build_train_shards

from ipt_data.tasks import TASKS
from ipt_train.configs import LoaderConfig
from ipt_train.stream.order import TaskOrder
from ipt_train.stream.shardset import ShardSet
from ipt_train.trainstate import load_train_state

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # up to two processes on two cores
STEPS = 31


@pytest.fixture(scope="module")
def train_shards(tmp_path_factory):
    return build_train_shards(tmp_path_factory)


def pretrain(shards, out: Path, *extra, processes: int = 1) -> list:
    """The command of a run of ipt-tiny on two tasks, 4 samples a step."""
    arguments = ["pretrain", "--shards", shards, "--out", out, "--tasks", "sr_x2,denoise_30"]
    arguments += ["--steps", str(STEPS), "--batch", "4", "--no-progress", "--seed", "7"]
    arguments += ["--shuffle-block", "24", *extra]
    if processes == 1:
        return [BIN / "ipt-train", *arguments]
    launch = [BIN / "ipt-train", "launch", "--nproc-per-node", str(processes)]
    return [*launch, "--master-port", str(free_port()), *arguments]


def batch_digests(run: Path) -> list[tuple[str, str]]:
    with (run / "log.csv").open(newline="") as handle:
        return [(row["step"], row["batch_digest"]) for row in csv.DictReader(handle)]


def test_every_step_trains_the_same_global_batch_on_every_shape(train_shards, tmp_path):
    shapes = {
        "1 process, 2 workers": (1, "--workers", "2", "--micro-batch", "4"),
        "2 processes, 1 worker": (2, "--workers", "1", "--micro-batch", "2"),
        "1 process, no worker, checkpoints every 3": (
            1,
            *("--workers", "0", "--micro-batch", "2", "--checkpoint-every", "3"),
        ),
    }
    runs = {}
    for name, (processes, *extra) in shapes.items():
        runs[name] = tmp_path / name.replace(" ", "_").replace(",", "")
        command = pretrain(train_shards, runs[name], *extra, processes=processes)
        subprocess.run(command, check=True, env=ENV, timeout=600, capture_output=True)
    reference = batch_digests(runs["1 process, 2 workers"])
    assert [step for step, _ in reference] == [str(s) for s in range(STEPS)]
    assert len({digest for _, digest in reference}) == STEPS  # no two batches alike
    for name, run in runs.items():
        assert batch_digests(run) == reference, name

    killed = tmp_path / "killed"  # 1 process, 1 worker, killed after step 7 ...
    process = subprocess.Popen(
        pretrain(
            train_shards, killed, "--workers", "1", "--micro-batch", "2", "--checkpoint-every", "2"
        ),
        env=ENV,
        stderr=subprocess.DEVNULL,
    )
    while process.poll() is None and len(_rows(killed)) < 8:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = load_train_state(killed / "checkpoint.pt").step
    assert 2 <= saved < STEPS, "the run ended before it could be killed"
    resume = pretrain(train_shards, killed, "--resume", "--workers", "0", processes=2)
    resume += ["--micro-batch", "1", "--checkpoint-every", "5"]  # ... resumed on another shape
    subprocess.run(resume, check=True, env=ENV, timeout=600, capture_output=True)
    assert batch_digests(killed) == reference


def _rows(run: Path) -> list:
    try:
        return (run / "log.csv").read_text().splitlines()[1:]
    except FileNotFoundError:
        return []


def test_a_shard_that_stays_unreachable_keeps_the_steps_done(train_shards, tmp_path):
    """sr_x2 over HTTP, one epoch (12 steps of 4); the shard the order reaches last fails
    every attempt. The run stops at the step that needs it with one Error line naming it, the
    steps before saved; once the store serves it again, --resume ends with the model of a run
    that never failed (read from the folder)."""
    shard_set = ShardSet.open(train_shards)
    entries = shard_set.entries(TASKS["sr_x2"])
    order = TaskOrder([e["samples"] for e in entries], 7, TASKS["sr_x2"].index, 16)
    last = entries[int(order.epoch_blocks(0).order[-1])]["path"]
    run = ("--tasks", "sr_x2", "--steps", "12", "--micro-batch", "4", "--shuffle-block", "16")
    run += ("--fetch-attempts", "2")
    reference = tmp_path / "reference"
    subprocess.run(pretrain(train_shards, reference, *run), check=True, env=ENV, timeout=600)
    failed = tmp_path / "failed"
    with http_server(train_shards) as server:
        server.drops[f"/{last}"] = 1000
        result = subprocess.run(
            pretrain(server.url, failed, *run, "--workers", "1", "--cache", tmp_path / "cache"),
            capture_output=True,
            text=True,
            env=ENV,
            timeout=600,
        )
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and f"{server.url}/{last}: transfer failed after 2" in errors[0]
        saved = load_train_state(failed / "checkpoint.pt").step
        assert saved == 8 and f"steps to 8 are saved in {failed}" in errors[0]
        assert "--resume continues" in errors[0]
        server.drops.clear()
        resume = pretrain(server.url, failed, *run, "--resume", "--cache", tmp_path / "cache")
        subprocess.run(resume, check=True, env=ENV, timeout=600, capture_output=True)
    done, again = (load_train_state(r / "checkpoint.pt") for r in (reference, failed))
    assert done.step == again.step == 12
    for key, value in done.model.state_dict().items():  # same process, same kernels
        assert torch.equal(value, again.model.state_dict()[key]), key
    assert batch_digests(failed) == batch_digests(reference)
    assert LoaderConfig().fetch_attempts == 5  # the default the docs state


def test_the_old_shuffle_buffer_option_still_runs_with_a_note(train_shards, tmp_path):
    """--shuffle-buffer (the per-reader buffer before the global order) is accepted, said to be
    deprecated and ignored, so that scripts passing it keep working."""
    command = pretrain(train_shards, tmp_path / "run", "--steps", "1", "--shuffle-buffer", "512")
    command += ["--workers", "0", "--micro-batch", "4"]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "note: --shuffle-buffer is deprecated and ignored" in result.stderr
