"""``ipt-train launch``: torchrun's launcher in-process, with real gloo processes on real shards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from loopback_servers import free_port
from test_train_support import build_train_shards

from ipt_data.errors import UserError
from ipt_train.launch import LaunchConfig, torchrun_arguments

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores


def pretrain_arguments(shards: Path, out: Path) -> list:
    arguments = ["pretrain", "--shards", shards, "--out", out, "--tasks", "sr_x2,denoise_30"]
    arguments += ["--steps", "2", "--batch", "4", "--micro-batch", "2", "--workers", "1"]
    return [*arguments, "--shuffle-block", "16", "--no-progress", "--seed", "5"]


def test_launch_trains_as_torchrun_does(tmp_path_factory, tmp_path):
    shards = build_train_shards(tmp_path_factory)
    launched, torchran = tmp_path / "launched", tmp_path / "torchrun"
    launch = [BIN / "ipt-train", "launch", "--nproc-per-node", "2"]
    launch += ["--master-port", str(free_port()), *pretrain_arguments(shards, launched)]
    subprocess.run(launch, check=True, env=ENV, timeout=300)
    torchrun = [BIN / "torchrun", "--nproc-per-node", "2", "--master-port", str(free_port())]
    torchrun += [BIN / "ipt-train", *pretrain_arguments(shards, torchran)]
    subprocess.run(torchrun, check=True, env=ENV, timeout=300, capture_output=True)
    ours, theirs = (torch.load(run / "model.pt", weights_only=True) for run in (launched, torchran))
    assert ours.keys() == theirs.keys()
    # two gloo ranks, same seed: the same training, bit-identical by construction (the same
    # kernels on the same data, one thread per process)
    for key, value in ours.items():
        assert torch.equal(value, theirs[key]), key


def test_failed_process_ends_in_one_error_line_not_a_traceback(tmp_path):
    launch = [BIN / "ipt-train", "launch", "--nproc-per-node", "2", "--master-port"]
    launch += [str(free_port()), "pretrain", "--shards", tmp_path / "missing", "--out", tmp_path]
    failed = subprocess.run(launch, env=ENV, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr and "FAILED" not in failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert sum("missing/manifest.json: no manifest" in line for line in lines) == 2  # each rank
    assert lines[-1].startswith("Error: ipt-train pretrain: the process of rank ")
    assert lines[-1].endswith(" (of 2) failed first, with exit code 1")
    assert not list(tmp_path.iterdir())  # nothing written


def test_launch_refuses_what_it_cannot_run():
    with pytest.raises(UserError, match="launch runs pretrain or finetune, not eval"):
        torchrun_arguments(LaunchConfig(2), ["eval", "--task", "sr_x2"])
    with pytest.raises(UserError, match=r"--node-rank 2 is not in 0\.\.1"):
        LaunchConfig(8, nnodes=2, node_rank=2)
    with pytest.raises(UserError, match="at least 1"):
        LaunchConfig(0)
    arguments = torchrun_arguments(LaunchConfig(8, 4, 3, "node0", 29400), ["finetune", "--x"])
    assert arguments == [
        *("--nnodes", "4", "--nproc-per-node", "8", "--node-rank", "3"),
        *("--master-addr", "node0", "--master-port", "29400"),
        *("--module", "ipt_train", "finetune", "--x"),
    ]
