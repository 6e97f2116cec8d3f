"""pipelines/paper, run end to end at smoke scale through its knobs only: the sample photographs
-> a verified six-task shard set (local Ray) -> ipt-tiny pretraining under torchrun with two gloo
processes -> the six fine-tunings (two processes each) -> evaluation on Set5 (SR), small Set5
images as clean images (denoising) and synthetic rain pairs made here (deraining; there is no
Rain100L here)."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
from loopback_servers import free_port

from ipt_data.decode import decode_image
from ipt_data.fileio import read_bytes
from ipt_data.png import encode_png
from ipt_data.rain import Rain
from ipt_data.sample import write_sample_tree
from ipt_train.checkpoint import load_model, load_weights_only

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "pipelines" / "paper"
TASKS = ("sr_x2", "sr_x3", "sr_x4", "derain", "denoise_30", "denoise_50")
SCALES = {"sr_x2": 2, "sr_x3": 3, "sr_x4": 4}


def _smoke_env(tmp_path: Path, **knobs: str) -> dict[str, str]:
    """The smoke-run knobs (ipt-tiny, one node of two CPU processes, two steps a stage)."""
    smoke = {
        "OUT": str(tmp_path / "out"),
        "IMAGENET": str(tmp_path / "photos"),
        "PATCHES": "2",
        "IMAGES_PER_SHARD": "4",
        "PRESET": "ipt-tiny",
        "NNODES": "1",
        "NPROC_PER_NODE": "2",
        "MASTER_PORT": str(free_port()),
        "DEVICE": "cpu",
        "STEPS": "2",
        "BATCH": "4",
        "MICRO_BATCH": "2",
        "WORKERS": "0",
        "FINETUNE_STEPS": "2",
        "FINETUNE_BATCH": "2",
    }
    return {**os.environ, **smoke, **knobs}


def _rain_pairs(clean_dir: Path, out: Path) -> Path:
    """rain-N.png / norain-N.png pairs: our synthetic light rain over the images of clean_dir."""
    out.mkdir()
    for number, path in enumerate(sorted(clean_dir.glob("*.png")), start=1):
        clean = decode_image(read_bytes(path), str(path))
        rainy = Rain()(clean, np.random.default_rng(number))
        (out / f"norain-{number}.png").write_bytes(encode_png(clean))
        (out / f"rain-{number}.png").write_bytes(encode_png(rainy))
    return out


def test_paper_pipeline_runs_end_to_end_at_smoke_scale(tmp_path, refdata):
    write_sample_tree(tmp_path / "photos")
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "Set5").symlink_to(refdata / "Set5")
    small = refdata / "Set5" / "LR_bicubic" / "X4"  # 5 real images of 64-128 px: fast to score
    _rain_pairs(small, bench / "rain_synthetic")
    env = _smoke_env(
        tmp_path,
        BENCH=str(bench),
        SR_SETS="Set5",
        DENOISE_SETS=str(small),  # an absolute path works as well as a folder under BENCH
        DERAIN_SETS="rain_synthetic",
    )
    run = subprocess.run([PAPER, "all"], env=env, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "out"

    assert "OK: 12 shards, 72 samples" in run.stdout  # ipt-data verify of the built set
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    assert {name: task["samples"] for name, task in manifest["tasks"].items()} == dict.fromkeys(
        TASKS, 12
    )

    pretrained = load_model(out / "pretrain" / "model.pt").cfg  # ipt-tiny, six task slots
    assert pretrained.scales == (2, 3, 4, 1, 1, 1) and pretrained.n_feats == 16
    log = (out / "pretrain" / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["0", "1"]
    for task in TASKS:
        assert load_model(out / "finetune" / task / "model.pt").cfg.scales == (SCALES.get(task, 1),)
        state = load_weights_only(out / "finetune" / task / "checkpoint.pt")
        # FINETUNE_BATCH 2 over 2 processes: one sample per process and step
        assert state["step"] == 2 and state["run"]["micro_batch"] == 1

    reports = {p.name: json.loads(p.read_text()) for p in (out / "eval").glob("*.json")}
    small_name = str(small).lstrip("/").replace("/", "_")
    expected = {f"{t}-Set5.json" for t in ("sr_x2", "sr_x3", "sr_x4")}
    expected |= {f"{t}-{small_name}.json" for t in ("denoise_30", "denoise_50")}
    expected |= {"derain-rain_synthetic.json"}
    assert set(reports) == expected
    for name, report in reports.items():
        assert report["task"] == name.split("-")[0] and len(report["images"]) == 5
        assert math.isfinite(report["psnr_y"]) and 0 < report["psnr_y"] < 60
        assert f"{report['task']}/" in run.stdout  # the printed table line
    assert "psnr_rgb" in reports[f"denoise_30-{small_name}.json"]
    assert not list((out / "eval").glob("*.part"))


def test_paper_pipeline_missing_benchmark_folder_is_one_clear_error(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    env = _smoke_env(tmp_path, BENCH=str(bench), SR_SETS="Set5", DENOISE_SETS="", DERAIN_SETS="")
    run = subprocess.run([PAPER, "all"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert f"benchmark folder {bench / 'Set5'}" in run.stderr and "SR_SETS" in run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # checked before the build started


def test_paper_pipeline_empty_set_list_skips_that_evaluation_loudly(tmp_path):
    env = _smoke_env(tmp_path, TASKS="derain", DERAIN_SETS="")
    run = subprocess.run([PAPER, "eval"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "derain is NOT evaluated (DERAIN_SETS is empty)" in run.stderr


def test_paper_pipeline_checks_the_batches_before_the_build(tmp_path):
    # 6 samples cannot be split into micro-batches of 2 over 2 processes
    env = _smoke_env(tmp_path, BATCH="6", SR_SETS="", DENOISE_SETS="", DERAIN_SETS="")
    run = subprocess.run([PAPER, "all"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and not (tmp_path / "out").exists()
    assert run.stderr.strip() == (
        "pipelines/paper: BATCH=6 is not a multiple of MICRO_BATCH x NNODES x NPROC_PER_NODE"
        " = 2 x 1 x 2"
    )
