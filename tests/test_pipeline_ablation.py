"""pipelines/ablation, run end to end at smoke scale through its knobs (a few steps per arm, the
small Set5 x4 inputs as evaluation images), its up-front knob checks, and the helpers of
ipt_train.ablation it calls."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from ipt_data import GaussianNoise, UserError, encode_png, file_sha256
from ipt_train.ablation import equal_steps_section, fraction_shards, results_table, write_pairs
from ipt_train.checkpoint import load_weights_only

ROOT = Path(__file__).resolve().parents[1]
ABLATION = ROOT / "pipelines" / "ablation"
ARMS = {
    "scratch": "from scratch",
    "l0.1-d100": "pretrained (λ 0.1, all shards)",
    "l0-d100": "pretrained (λ 0, all shards)",
    "l0.1-d50": "pretrained (λ 0.1, 50 %: 3 of 6 shards, 50% of the samples)",
}
TASKS = ("sr_x2", "derain", "denoise_70")


def _smoke_env(tmp_path: Path, refdata: Path, **knobs: str) -> dict[str, str]:
    small = str(refdata / "Set5" / "LR_bicubic" / "X4")  # 5 real images of 64-128 px
    smoke = {
        "OUT": str(tmp_path / "out"),
        "SET5": small,  # a plain folder of HR images: the LR inputs are made by bicubic
        "CLEAN_SET": small,
        "PATCHES": "2",
        "PRETRAIN_STEPS": "2",
        "FINETUNE_STEPS": "1 2",
        "WORKERS": "0",
        "TASKS": "sr_x2 derain",
        "UNSEEN_IMAGES": "2",
        "UNSEEN_COPIES": "1",
        "LAMBDAS": "0.1 0",
        "FRACTIONS": "50",
    }
    return {**os.environ, **smoke, **knobs}


def _psnr(path: Path) -> float:
    return json.loads(path.read_text())["psnr_y"]


def test_ablation_pipeline_runs_end_to_end_and_reruns_as_a_no_op(tmp_path, refdata):
    env = _smoke_env(tmp_path, refdata)
    run = subprocess.run([ABLATION], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "out"

    # the data arms: 3 of the 6 one-image shards of each task; the unseen task's pairs
    subset = json.loads((out / "shards-d50" / "manifest.json").read_text())
    assert {len(task["shards"]) for task in subset["tasks"].values()} == {3}
    assert len(list((out / "data" / "noise70-train").glob("rain-*.png"))) == 2
    assert len(list((out / "data" / "rain-eval").glob("norain-*.png"))) == 5
    # the SupCon arms: the term is logged in the λ 0.1 pretraining only
    for arm, weighted in (("l0.1-d100", True), ("l0-d100", False)):
        supcon = [line.split(",")[4] for line in (out / "pretrain" / arm / "log.csv").open()]
        assert any(float(value) for value in supcon[1:]) == weighted
    # both arms of a curve: the same task, steps and data; one random, one pretrained start
    scratch = load_weights_only(out / "finetune" / "scratch" / "sr_x2" / "checkpoint.pt")
    pretrained = load_weights_only(out / "finetune" / "l0.1-d100" / "sr_x2" / "checkpoint.pt")
    assert scratch["step"] == pretrained["step"] == 2
    assert scratch["run"]["init"] == "random ipt-tiny"
    model = out / "pretrain" / "l0.1-d100" / "model.pt"
    assert pretrained["run"]["init_sha256"] == file_sha256(model)
    unseen = load_weights_only(out / "finetune" / "scratch" / "denoise_70" / "checkpoint.pt")
    assert unseen["run"]["task"] == "denoise_50"  # trained on the sigma 70 pairs

    table = (out / "results.md").read_text()
    assert table in run.stdout
    for task in TASKS:
        scratch_row = re.search(rf"^\| {task} \|.*\| from scratch \| (.*) \|$", table, re.M)
        assert scratch_row, task
        values = [float(cell) for cell in scratch_row[1].split(" | ")]
        expected = [_psnr(out / "eval" / "scratch" / task / f"{s}.json") for s in (1, 2)]
        assert values == pytest.approx(expected, abs=0.006)  # the table's 2 decimals: ±0.005
        last = _psnr(out / "eval" / "l0.1-d100" / task / "2.json")
        assert f"{last:.2f} ({last - expected[1]:+.2f}) |\n" in table
        image = cv2.imread(str(out / "plots" / f"{task}.png"))
        assert image is not None and image.shape[0] > 100
    ablation = table.split("## Pretraining ablations")[1]
    scratch_last = _psnr(out / "eval" / "scratch" / "sr_x2" / "2.json")
    for arm, label in ARMS.items():
        value = _psnr(out / "eval" / arm / "sr_x2" / "2.json")
        delta = " |" if arm == "scratch" else f" {value - scratch_last:+.2f} |"
        assert f"| {label} | {value:.2f} |{delta}\n" in ablation

    again = subprocess.run([ABLATION], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "== fine-tune" not in again.stdout and "== shard set" not in again.stdout
    assert (out / "results.md").read_text() == table

    # a count below one already evaluated cannot be had from the run any more: said, not faked
    (out / "eval" / "scratch" / "sr_x2" / "1.json").unlink()
    stale = subprocess.run([ABLATION], env=env, capture_output=True, text=True, timeout=300)
    assert stale.returncode == 2 and "Traceback" not in stale.stderr
    assert stale.stderr.strip().splitlines()[-1] == (
        f"Error: pipelines/ablation: {out}/finetune/scratch/sr_x2 is already past step 1 "
        f"(FINETUNE_STEPS changed?): delete {out}/finetune/scratch/sr_x2 and "
        f"{out}/eval/scratch/sr_x2 to train it again"
    )


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"FINETUNE_STEPS": "2 1"}, "FINETUNE_STEPS='2 1': expected ascending positive integers"),
        ({"ABLATION_TASK": "sr_x4"}, "ABLATION_TASK=sr_x4 is not one of TASKS (sr_x2 derain)"),
        ({"FRACTIONS": "100"}, "FRACTIONS: '100' is not a percentage 1..99"),
    ],
)
def test_ablation_pipeline_bad_knob_is_one_error_line_before_anything(
    tmp_path, refdata, knobs, message
):
    env = _smoke_env(tmp_path, refdata, **knobs)
    run = subprocess.run([ABLATION], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip() == f"Error: pipelines/ablation: {message}"
    assert not (tmp_path / "out").exists()


def test_write_pairs_corrupts_each_copy_and_writes_a_new_folder_whole(tmp_path):
    (tmp_path / "src" / "a").mkdir(parents=True)
    for name in ("one", "two"):
        gray = np.full((64, 80, 3), 128, np.uint8)
        (tmp_path / "src" / "a" / f"{name}.png").write_bytes(encode_png(gray))
    count = write_pairs(tmp_path / "src", tmp_path / "pairs", GaussianNoise(20.0), copies=2)
    assert count == 4 and not (tmp_path / "pairs.part").exists()
    assert sorted(path.name for path in (tmp_path / "pairs").iterdir()) == sorted(
        f"{kind}-{n}.png" for kind in ("rain", "norain") for n in range(1, 5)
    )
    read = lambda name: cv2.imread(str(tmp_path / "pairs" / name)).astype(float)  # noqa: E731
    noise = [read(f"rain-{n}.png") - read(f"norain-{n}.png") for n in range(1, 5)]
    assert all(np.all(read(f"norain-{n}.png") == 128) for n in range(1, 5))
    # a statistical band, not rounding: the std of 15,360 draws of sigma 20 (rounded to whole
    # grey levels) is within 5% but with a probability far below 1e-9
    assert all(np.std(n) == pytest.approx(20.0, rel=0.05) for n in noise)
    assert not np.array_equal(noise[0], noise[1])  # each copy its own draw
    with pytest.raises(UserError, match="exists"):
        write_pairs(tmp_path / "src", tmp_path / "pairs", GaussianNoise(20.0))


def test_fraction_shards_rounds_to_whole_shards_and_keeps_one():
    manifest = {"tasks": {"sr_x2": {"shards": [{}] * 6}, "derain": {"shards": [{}] * 7}}}
    assert [fraction_shards(manifest, p) for p in (1, 20, 60, 100)] == [1, 1, 4, 6]
    with pytest.raises(UserError, match="percentage"):
        fraction_shards(manifest, 0)


def test_results_table_names_a_missing_evaluation(tmp_path):
    with pytest.raises(UserError, match=r"eval/scratch/sr_x2/1\.json: no such evaluation"):
        results_table(tmp_path, [1], {"sr_x2": "Set5"}, "l0.1-d100", [], "sr_x2")


def test_equal_steps_section_pairs_pretrained_s_with_scratch_s_plus_pretraining(tmp_path):
    # A made-up folder of evaluations: scratch and pretrained at 25, 100, 200 and 300 steps.
    scores = {("scratch", 100): 30.0, ("scratch", 300): 31.5, ("l0.1-d100", 100): 31.2}
    for arm in ("scratch", "l0.1-d100"):
        for step in (25, 100, 200, 300):
            path = tmp_path / "eval" / arm / "sr_x2" / f"{step}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"psnr_y": scores.get((arm, step), 20.0)}))
    steps, tasks = [25, 100, 200, 300], {"sr_x2": "Set5"}
    lines = equal_steps_section(tmp_path, steps, tasks, "l0.1-d100", 200)
    assert lines[1] == "## Equal training steps: pretrained (200 pretraining steps) vs from scratch"
    assert lines[-1] == "| sr_x2 | 100 | 31.20 | 31.50 | -0.30 |"  # 100 + 200 = 300; 25: no 225
    assert [line for line in lines if line.startswith("| sr_x2")] == [lines[-1]]
    assert equal_steps_section(tmp_path, steps, tasks, "l0.1-d100", 150) == []
    assert equal_steps_section(tmp_path, steps, tasks, "l0.1-d100", None) == []
