"""pipelines/gpu-figures, dry-run on the CPU with a tiny model: the script a GPU session runs
must work end to end before any GPU time is spent on it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "pipelines" / "gpu-figures"
DRY_RUN = {
    "PRESET": "ipt-tiny",
    "DEVICE": "cpu",
    "AMP": "none",
    "COMPILE": "0",
    "BATCH": "2",
    "STEPS": "5",
    "WORKERS": "1",
    "LOADER_BATCHES": "2",
    "SUPCON": "1x2",
}


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SCRIPT, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )


def test_prepare_then_run_prints_every_figure(tmp_path):
    prepared = _run("prepare", str(tmp_path / "gpu"))
    assert prepared.returncode == 0, prepared.stderr
    assert "no official-code figures" in prepared.stderr
    assert (tmp_path / "gpu" / "shards" / "manifest.json").is_file()
    assert not (tmp_path / "gpu" / "photos").exists()  # only the shards travel

    figures = tmp_path / "figures.jsonl"
    ran = _run("run", str(tmp_path / "gpu"), FIGURES=str(figures), **DRY_RUN)
    assert ran.returncode == 0, ran.stderr
    lines = [json.loads(line) for line in figures.read_text().splitlines()]
    model, supcon, loaders, pretrain = lines[0], lines[1], lines[2:8], lines[8:]
    assert model["n_params"] > 0 and model["train_samples_per_s"] > 0 and model["batch"] == 2
    assert (supcon["supcon_images"], supcon["supcon_ranks"]) == (1, 2)
    assert supcon["supcon_step_s_highest"] > 0
    assert sorted(r["task"] for r in loaders) == sorted(
        ["sr_x2", "sr_x3", "sr_x4", "derain", "denoise_30", "denoise_50"]
    )
    assert all(r["samples_per_s"] > 0 for r in loaders)
    assert [r["pretrain_workers"] for r in pretrain] == [1]
    assert pretrain[0]["steps_timed"] == 2  # 5 steps, the first 3 are warm-up
    assert pretrain[0]["samples_per_s"] > 0 and 0 <= pretrain[0]["data_wait_fraction"] <= 1
    assert pretrain[0]["peak_memory_gib"] > 0


def test_run_without_prepare_is_one_clear_error(tmp_path):
    ran = _run("run", str(tmp_path / "nothing"), **DRY_RUN)
    assert ran.returncode == 2
    assert "run 'prepare' first" in ran.stderr and "Traceback" not in ran.stderr
