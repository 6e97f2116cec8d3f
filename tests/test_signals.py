"""Stopping a training run with a signal (docs/training.md#stopping-and-preemption), as a
scheduler or a person does: one process and two gloo processes under ``ipt-train launch``.

SIGTERM part-way saves the steps done, says so in one line and exits 143; ``--resume`` then ends
bit-identical to the uninterrupted run; no process of the run is left. SIGINT twice in quick
succession is one stop; a second signal a second or more after the first exits at once and
leaves the previous checkpoint as it was. A signal to every process of the run (as SLURM sends
it) stops it the same way, and so does the end of the launcher (``kill -9``).
"""

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
from loopback_servers import free_port
from test_train import descendants
from test_train_support import build_train_shards

from ipt_train.trainstate import load_train_state

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # up to two processes on two cores
STEPS = 10


@pytest.fixture(scope="module")
def train_shards(tmp_path_factory):
    return build_train_shards(tmp_path_factory)


def pretrain(shards: Path, out: Path, *extra, processes: int = 1, batch: int = 4) -> list:
    """A run of ipt-tiny on two tasks that checkpoints only at its end (the default 500 steps
    apart), so that a stop's checkpoint is the only one before it."""
    arguments = ["pretrain", "--shards", shards, "--out", out, "--tasks", "sr_x2,denoise_30"]
    arguments += ["--steps", str(STEPS), "--batch", str(batch), "--micro-batch", "2"]
    arguments += ["--workers", "1", "--shuffle-block", "16", "--no-progress", "--seed", "3"]
    arguments = [*arguments, *extra]
    if processes == 1:
        return [BIN / "ipt-train", *arguments]
    launch = [BIN / "ipt-train", "launch", "--nproc-per-node", str(processes)]
    return [*launch, "--master-port", str(free_port()), *arguments]


def logged_steps(run: Path) -> int:
    try:
        with (run / "log.csv").open(newline="") as handle:
            return len(list(csv.DictReader(handle)))
    except FileNotFoundError:
        return 0


def start(command: list, log: Path) -> subprocess.Popen:
    with open(log, "wb") as output:
        return subprocess.Popen(command, stdout=output, stderr=output, env=ENV)


def wait_for_steps(process: subprocess.Popen, run: Path, steps: int) -> None:
    deadline = time.monotonic() + 300
    while logged_steps(run) < steps:
        assert process.poll() is None, "the run ended before it could be stopped"
        assert time.monotonic() < deadline, f"no {steps} steps in 300 s"
        time.sleep(0.01)


def gone(pids: list[int], within: float = 30) -> list[int]:
    """The processes of ``pids`` still running after waiting up to ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        if not alive:
            return []
        time.sleep(0.2)
    return alive


def assert_same_training(reference: Path, run: Path) -> None:
    done, again = (
        load_train_state(reference / "checkpoint.pt"),
        load_train_state(run / "checkpoint.pt"),
    )
    assert done.step == again.step == STEPS
    for key, value in done.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key]), key
    for slot, state in done.optimizer["state"].items():
        for name, value in state.items():
            assert torch.equal(value, again.optimizer["state"][slot][name]), (slot, name)


@pytest.mark.parametrize("processes", [1, 2], ids=["one process", "launch, 2 gloo processes"])
def test_sigterm_saves_the_step_reached_and_resume_ends_as_the_uninterrupted_run(
    train_shards, tmp_path, processes
):
    reference, run = tmp_path / "reference", tmp_path / "run"
    command = pretrain(train_shards, reference, processes=processes)
    subprocess.run(command, check=True, env=ENV, capture_output=True, timeout=300)
    process = start(pretrain(train_shards, run, processes=processes), tmp_path / "run.log")
    wait_for_steps(process, run, 7)
    helpers = descendants(process.pid)  # the ranks, their forkservers and loader workers
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    lines = (tmp_path / "run.log").read_text().strip().splitlines()
    saved = load_train_state(run / "checkpoint.pt").step
    assert saved == logged_steps(run) and 7 <= saved < STEPS  # the step under way finished
    assert lines[-1] == (
        f"Error: stopped by SIGTERM after {saved} of {STEPS} steps: saved "
        f"{run / 'checkpoint.pt'}; --resume continues"
    )
    assert lines[0].startswith("ipt-train: SIGTERM: stopping after the step under way")
    assert len(lines) == 2, lines  # rank 1 exits without a word; no traceback
    assert helpers and not gone(helpers)
    assert sorted(path.name for path in run.iterdir()) == ["checkpoint.pt", "log.csv", "tb"]

    command = pretrain(train_shards, run, "--resume", processes=processes)
    subprocess.run(command, check=True, env=ENV, capture_output=True, timeout=300)
    assert_same_training(reference, run)


def test_sigint_twice_in_quick_succession_is_one_stop(train_shards, tmp_path):
    """A scheduler's signal reaches every process while the launcher forwards it too, and a
    person presses Ctrl-C twice: two signals 50 ms apart stop the run once, saved."""
    run = tmp_path / "run"
    process = start(pretrain(train_shards, run), tmp_path / "run.log")
    wait_for_steps(process, run, 3)
    process.send_signal(signal.SIGINT)
    time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    last = (tmp_path / "run.log").read_text().strip().splitlines()[-1]
    saved = load_train_state(run / "checkpoint.pt").step  # loads: a complete checkpoint
    assert saved == logged_steps(run) >= 3
    assert last.startswith(f"Error: stopped by SIGINT after {saved} of {STEPS} steps: saved ")


def test_a_second_signal_exits_at_once_and_the_previous_checkpoint_stays(train_shards, tmp_path):
    """Steps of ~5 s (a batch of 64 on one thread): the first SIGINT comes during step 1, the
    second 1.3 s later, while that step is still being finished. The process exits at once
    with 130; the checkpoint of step 1 still loads and no temporary file is left. (The second
    signal may as well come during the save: the checkpoint is replaced by a rename only once
    complete, and the exit removes the unfinished file.)"""
    run = tmp_path / "run"
    command = pretrain(train_shards, run, "--checkpoint-every", "1", "--threads", "1", batch=64)
    process = start(command, tmp_path / "run.log")
    wait_for_steps(process, run, 1)
    helpers = descendants(process.pid)
    time.sleep(0.8)  # step 1's data are taken: it computes
    process.send_signal(signal.SIGINT)
    time.sleep(1.3)
    assert process.poll() is None, "step 1 ended sooner than the test allows for"
    stopped = time.monotonic()
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    assert time.monotonic() - stopped < 5
    last = (tmp_path / "run.log").read_text().strip().splitlines()[-1]
    assert last == (
        f"Error: SIGINT again: exited at once, without saving; {run / 'checkpoint.pt'} still "
        "holds step 1: --resume continues from it"
    )
    assert load_train_state(run / "checkpoint.pt").step == 1 == logged_steps(run)
    assert sorted(path.name for path in run.iterdir()) == ["checkpoint.pt", "log.csv", "tb"]
    assert helpers and not gone(helpers)


def test_a_signal_to_every_process_of_a_launch_stops_it_once(train_shards, tmp_path):
    """SLURM's ``--signal=USR1@...`` reaches every process of the job, the launcher, the ranks
    and their loader processes alike, and the launcher passes it on too: the run stops once,
    saved, exit 138, and no process is left (loader processes and forkservers ignore it)."""
    run = tmp_path / "run"
    process = start(pretrain(train_shards, run, processes=2), tmp_path / "run.log")
    wait_for_steps(process, run, 3)
    everyone = descendants(process.pid)
    for pid in [process.pid, *everyone]:
        os.kill(pid, signal.SIGUSR1)
    assert process.wait(timeout=120) == 138
    lines = (tmp_path / "run.log").read_text().strip().splitlines()
    saved = load_train_state(run / "checkpoint.pt").step
    assert lines[-1].startswith(f"Error: stopped by SIGUSR1 after {saved} of {STEPS} steps")
    assert len(lines) == 2 and saved == logged_steps(run), lines
    assert not gone(everyone)


def test_ranks_whose_launcher_is_killed_save_and_end(train_shards, tmp_path):
    """``kill -9`` of ``ipt-train launch``: its ranks left training on (and would have written
    the run folder beside a resumed run); now each notices within a second, the steps done are
    saved, and they and their loader processes end."""
    run = tmp_path / "run"
    process = start(pretrain(train_shards, run, processes=2), tmp_path / "run.log")
    wait_for_steps(process, run, 3)
    ranks = descendants(process.pid)
    process.kill()
    process.wait()
    assert not gone(ranks, within=60)
    last = (tmp_path / "run.log").read_text().strip().splitlines()[-1]
    saved = load_train_state(run / "checkpoint.pt").step
    assert saved == logged_steps(run) < STEPS
    assert last.startswith(f"Error: stopped by the end of its launcher (process {process.pid})")
    assert last.endswith(
        f"after {saved} of {STEPS} steps: saved {run / 'checkpoint.pt'}; --resume continues"
    )
