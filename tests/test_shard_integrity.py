"""Training on a shard whose bytes differ from its manifest entry by one byte inside a PNG (the
size kept, so only the sha256 tells): no sample of it is read, and the run ends with one Error
line naming the shard, read from a loopback HTTP server or from a folder, found by a loader
worker or by the training process itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from loopback_servers import http_server
from test_train_support import build_train_shards

from ipt_data.errors import UserError
from ipt_train.configs import LoaderConfig
from ipt_train.stream.shardset import ShardSet

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
DAMAGED = "sr_x2/sr_x2-000001.tar"


@pytest.fixture(scope="module")
def damaged_set(tmp_path_factory) -> Path:
    """A copy of the training set with one byte of ``DAMAGED`` changed, inside the target PNG
    of its last sample."""
    copy = tmp_path_factory.mktemp("damaged") / "set"
    shutil.copytree(build_train_shards(tmp_path_factory), copy)
    shard = copy / DAMAGED
    with tarfile.open(shard) as tar:
        last = [member for member in tar.getmembers() if member.name.endswith(".target.png")][-1]
    data = bytearray(shard.read_bytes())
    data[last.offset_data + last.size // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    return copy


def test_no_sample_of_a_damaged_shard_is_read(damaged_set, tmp_path):
    """The first sample is asked for, the whole shard is checked first, and refused: its
    samples never reach the decoder (docs/training.md#integrity)."""
    reader = ShardSet.open(damaged_set).reader(0, LoaderConfig(cache=str(tmp_path)))
    entry = next(
        e for e in reader.shard_set.manifest["tasks"]["sr_x2"]["shards"] if e["path"] == DAMAGED
    )
    with pytest.raises(UserError) as refused:
        reader.store.read(entry, [0])
    assert str(refused.value) == (
        f"{damaged_set}/{DAMAGED}: sha256 differs from the manifest; refused"
    )


@pytest.mark.parametrize(("place", "workers"), [("http", "1"), ("folder", "0")])
def test_pretraining_on_a_damaged_shard_ends_with_one_error_line(
    damaged_set, tmp_path, place, workers
):
    """Over HTTP the mismatch is found in a loader worker (--workers 1), from a folder in the
    training process (--workers 0); either way one Error line naming the shard, exit 1."""
    if place == "http":
        with http_server(damaged_set) as server:
            result = _pretrain(server.url, tmp_path / "run", workers)
        shard = f"{server.url}/{DAMAGED}"
    else:
        result = _pretrain(str(damaged_set), tmp_path / "run", workers)
        shard = f"{damaged_set}/{DAMAGED}"
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"Error: {shard}: sha256 differs from the manifest; refused")
    assert result.stderr.strip().splitlines()[-1] == errors[0]


def _pretrain(shards: str, out: Path, workers: str) -> subprocess.CompletedProcess:
    """ipt-tiny on sr_x2 alone, for more steps than an epoch of its three shards takes (4
    samples a step, 16 samples a shard), so the damaged one is reached whatever the order."""
    command = [BIN / "ipt-train", "pretrain", "--shards", shards, "--out", out]
    command += ["--tasks", "sr_x2", "--steps", "16", "--batch", "4", "--micro-batch", "4"]
    command += ["--workers", workers, "--shuffle-block", "16", "--no-progress", "--seed", "1"]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
