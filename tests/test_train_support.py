"""Shared by the training tests (no tests here): one small real shard set per session, built by
``ipt-data build`` on a real local Ray instance from the sample photographs.

The build runs in a child process: Ray's threads in the test process would make the forked
DataLoader workers of the tests that follow deadlock.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TRAIN_TASKS = "sr_x2,sr_x4,denoise_30"
IMAGES_PER_SHARD = 2  # 6 photographs -> 3 shards per task: uneven over 2 ranks
BIN = Path(sys.executable).parent


def build_train_shards(tmp_path_factory) -> Path:
    """A shard set of 3 tasks x 3 shards x 16 samples (8 patches of 2 images per shard), built
    once per session (several modules ask for it)."""
    root = tmp_path_factory.getbasetemp() / "train-shards"
    if (root / "shards" / "manifest.json").is_file():
        return root / "shards"
    subprocess.run([BIN / "ipt-data", "sample", root / "photos"], check=True, capture_output=True)
    build = [BIN / "ipt-data", "build", "--src", root / "photos", "--out", root / "shards"]
    build += ["--tasks", TRAIN_TASKS, "--images-per-shard", str(IMAGES_PER_SHARD)]
    subprocess.run([*build, "--workers", "2", "--no-progress"], check=True, capture_output=True)
    return root / "shards"


def tiny_checkpoint(tmp_path_factory, name: str) -> Path:
    """A freshly initialised (seed 0) 6-task ipt-tiny saved in our checkpoint format."""
    import torch

    from ipt_train.checkpoint import save_checkpoint
    from ipt_train.model import IPT, ipt_tiny

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(name) / "tiny.pt"
    save_checkpoint(path, IPT(ipt_tiny()))
    return path
