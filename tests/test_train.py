"""Pretraining on a real shard set: 2-process DDP over gloo via torchrun, and kill-and-resume."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train_support import build_train_shards

from ipt_data.errors import UserError
from ipt_data.tasks import parse_tasks
from ipt_train.configs import TrainConfig
from ipt_train.model import IPT, ipt_tiny
from ipt_train.schedule import TaskMix
from ipt_train.trainstate import load_train_state

BIN = Path(sys.executable).parent
STATE = "checkpoint.pt"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores
DDP_SCRIPT = """
import json, os, sys, torch
from ipt_train.configs import LoaderConfig, PretrainConfig, TrainConfig
from ipt_train.pretrain import pretrain

# The guard matters: loader workers start from a forkserver, which imports this module again.
if __name__ == "__main__":
    out, shards = sys.argv[1], sys.argv[2]
    config = TrainConfig(out=out, steps=4, batch=4, checkpoint_every=2, seed=3, progress=False)
    loader = LoaderConfig(micro_batch=2, workers=1, shuffle_block=16)
    setup = PretrainConfig(shards, "ipt-tiny", "sr_x2,sr_x4,denoise_30", None, loader)
    result = pretrain(config, setup)
    rank = os.environ["RANK"]
    with open(f"{out}/rank{rank}.json", "w") as handle:
        json.dump(result.trained, handle)
    torch.save(result.model.state_dict(), f"{out}/rank{rank}.pt")
"""


@pytest.fixture(scope="session")
def train_shards(tmp_path_factory):
    return build_train_shards(tmp_path_factory)


def pretrain_command(shards: Path, out: Path, *extra: str) -> list:
    command = [BIN / "ipt-train", "pretrain", "--shards", shards, "--out", out]
    command += ["--tasks", "sr_x2,denoise_30", "--steps", "6", "--batch", "4"]
    command += ["--micro-batch", "2", "--checkpoint-every", "2", "--workers", "1"]
    return [*command, "--shuffle-block", "16", "--no-progress", "--seed", "1", *extra]


def read_log(run: Path) -> list[dict]:
    with (run / "log.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, theirs, ...), from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def test_killed_run_resumes_to_exactly_the_uninterrupted_result(train_shards, tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(pretrain_command(train_shards, reference), check=True, env=ENV)
    killed = tmp_path / "killed"
    process = subprocess.Popen(pretrain_command(train_shards, killed), env=ENV)
    while not (killed / "checkpoint.pt").exists() and process.poll() is None:
        time.sleep(0.02)
    helpers = descendants(process.pid)  # its forkserver and loader worker
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{pid}").exists() for pid in helpers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert helpers and not any(Path(f"/proc/{pid}").exists() for pid in helpers)
    saved_step = load_train_state(killed / "checkpoint.pt").step
    assert 2 <= saved_step < 6, "the run ended before it could be killed"
    with pytest.raises(subprocess.CalledProcessError):  # no silent overwrite of a run
        subprocess.run(pretrain_command(train_shards, killed), check=True, env=ENV)
    subprocess.run(pretrain_command(train_shards, killed, "--resume"), check=True, env=ENV)

    done, again = load_train_state(reference / STATE), load_train_state(killed / STATE)
    assert done.step == again.step == 6
    assert again.optimizer["param_groups"][0]["fused"]  # resumed as it started: fused Adam
    # Bit-identical by construction (docs/training.md): the same kernels on the same data,
    # one thread per process, the same micro-batch shapes; only the process differs.
    for key, value in done.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key]), key
    for slot, state in done.optimizer["state"].items():
        for name, value in state.items():
            assert torch.equal(value, again.optimizer["state"][slot][name]), (slot, name)
    assert [row["step"] for row in read_log(killed)] == [str(s) for s in range(6)]
    assert read_log(killed)[5]["loss"] == read_log(reference)[5]["loss"]
    assert all(0 <= float(row["data_wait"]) <= 1 for row in read_log(killed))
    official = torch.load(killed / "model.pt", weights_only=True)  # a plain state_dict
    IPT(ipt_tiny()).load_state_dict(official, strict=True)
    assert all(torch.equal(v, official[k]) for k, v in again.model.state_dict().items())
    finished = subprocess.run(  # resuming a finished run trains nothing and says so
        pretrain_command(train_shards, reference, "--resume"), capture_output=True, text=True
    )
    assert finished.returncode == 0, finished.stderr
    assert "step 6: already trained to its last step, nothing to do" in finished.stdout
    assert load_train_state(reference / STATE).step == 6


def test_compiled_training_matches_eager(train_shards, tmp_path):
    """--compile changes speed, not training: same losses and weights as the eager run."""
    runs = {"eager": (), "compiled": ("--compile",)}
    for name, extra in runs.items():
        command = pretrain_command(train_shards, tmp_path / name, "--tasks", "sr_x2", *extra)
        kernels = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"{name}-inductor")}
        subprocess.run([*command, "--steps", "2"], check=True, env={**ENV, **kernels}, timeout=300)
    generated = {name: list((tmp_path / f"{name}-inductor").rglob("*.py")) for name in runs}
    assert generated["compiled"] and not generated["eager"]  # inductor wrote kernels: compiled
    eager, compiled = (read_log(tmp_path / name) for name in runs)
    assert [row["task"] for row in compiled] == ["sr_x2", "sr_x2"]
    for a, b in zip(eager, compiled, strict=True):
        # Two float32 computations of the loss: its L1 is a mean of 2·3·96² = 55,296 terms
        # per micro-batch, which summed in other orders may differ by sqrt(2·55,296)·4.9·2^-24
        # = 1e-4 of it (tests/numerics.py); the outputs' own differences average out over
        # those terms (2e-7 of it). Observed 4e-8.
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=1e-4)
    weights = [load_train_state(tmp_path / name / STATE).model.state_dict() for name in runs]
    # Adam's first steps move each weight by about ±lr whatever its gradient's size, so a
    # gradient near 0 whose sign differs in the last bits between the eager and the compiled
    # kernels can move a weight up to 2·lr apart per step: 2 steps at 5e-5 allow 2e-4. The
    # weights' own float32 rounding (a few 2^-24·|w|, |w| < 120) is far below it (observed
    # 1.4e-6 with no sign flipped).
    for key, value in weights[0].items():
        torch.testing.assert_close(weights[1][key], value, atol=2e-4, rtol=0)


def test_resume_refuses_other_settings(train_shards, tmp_path):
    run = tmp_path / "run"
    subprocess.run(pretrain_command(train_shards, run), check=True, env=ENV)
    result = subprocess.run(
        [*pretrain_command(train_shards, run, "--resume"), "--seed", "2", "--steps", "8"],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert result.returncode == 1 and "started differently" in result.stderr
    assert "seed was 1, now 2" in result.stderr and "Traceback" not in result.stderr
    fewer = tmp_path / "fewer"  # the same set less one shard: other data, the same settings
    shutil.copytree(train_shards, fewer)
    manifest = json.loads((fewer / "manifest.json").read_text())
    entry = manifest["tasks"]["sr_x2"]
    dropped = entry["shards"].pop()
    entry["samples"] -= dropped["samples"]
    entry["bytes"] -= dropped["bytes"]
    (fewer / "manifest.json").write_text(json.dumps(manifest))
    result = subprocess.run(
        [*pretrain_command(fewer, run, "--resume"), "--steps", "8"],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert result.returncode == 1 and "the training data differ" in result.stderr, result.stderr
    reordered = subprocess.run(  # another shuffle is another data order: refused
        [*pretrain_command(train_shards, run, "--resume"), "--shuffle-block", "8"],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert reordered.returncode == 1 and "shuffle_block" in reordered.stderr, reordered.stderr
    other = ("--steps", "7", "--workers", "0", "--checkpoint-every", "3")
    moved = subprocess.run(  # other loader workers or checkpoint steps: the same data order
        pretrain_command(train_shards, run, "--resume", *other),
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert moved.returncode == 0 and "data order" not in moved.stderr, moved.stderr


def test_two_process_ddp_same_task_same_parameters_uneven_shards(train_shards, tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", "29517", script, out, train_shards]
    subprocess.run(command, check=True, env=ENV, timeout=300)
    trained = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    mix = TaskMix.uniform(parse_tasks("sr_x2,sr_x4,denoise_30"))
    assert trained[0] == trained[1] == [[s, mix.task_at(3, s).name] for s in range(4)]
    states = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    # bit-identical by construction: the same all-reduced gradients, the same updates
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key
    saved = load_train_state(out / STATE)
    assert saved.step == 4
    assert next(p.name for p in (out / "tb").iterdir()).startswith("events.out.tfevents")
    for key, value in saved.model.state_dict().items():
        assert torch.equal(value, states[0][key].cpu()), key


def test_train_config_refuses_no_steps():
    with pytest.raises(UserError):
        TrainConfig(out="x", steps=0)


def test_user_errors_are_one_line_and_write_nothing(train_shards, tmp_path):
    cases = [
        (["--tasks", "derain"], "no derain samples"),
        (["--tasks", "sr_x2", "--batch", "6", "--micro-batch", "4"], "not a multiple"),
        (["--tasks", "sr_x2", "--preset", "ipt-huge"], "unknown model preset"),
    ]
    for extra, message in cases:
        out = tmp_path / "run"
        command = [BIN / "ipt-train", "pretrain", "--shards", train_shards, "--out", out, *extra]
        result = subprocess.run(command, capture_output=True, text=True, env=ENV)
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and not out.exists()


def test_corrupt_shard_in_a_loader_worker_is_one_error_line(train_shards, tmp_path):
    """A shard whose PNG data is damaged (headers intact, so it passes the member checks, and
    listed with its new sha256 by a manifest as careless as the shard) fails in a worker's
    decode: the run stops with one Error line, not the worker's traceback."""
    copy = tmp_path / "set"
    shutil.copytree(train_shards, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for entry in manifest["tasks"]["sr_x2"]["shards"]:
        path = copy / entry["path"]
        data = bytearray(path.read_bytes())
        at = data.find(b"IDAT")
        while at >= 0:
            data[at + 8 : at + 60] = bytes(b ^ 0x5A for b in data[at + 8 : at + 60])
            at = data.find(b"IDAT", at + 60)
        path.write_bytes(bytes(data))
        entry["sha256"] = hashlib.sha256(data).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "run"
    command = pretrain_command(copy, out, "--tasks", "sr_x2", "--shuffle-block", "16")
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and "is not a 48x48 RGB PNG" in last, result.stderr
    assert not out.exists()  # failed before its first step: no run folder left behind
