"""``ipt-train bench``: the figures it prints, through the function and the real CLI."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import cv2
import pytest
import torch
from click.testing import CliRunner

from ipt_data import cpu_model
from ipt_data.errors import UserError
from ipt_train.bench.model import parse_scales, run_bench
from ipt_train.checkpoint import save_checkpoint
from ipt_train.cli import main
from ipt_train.configs import BenchConfig
from ipt_train.model import IPT, ipt_tiny
from ipt_train.tilegrid import BLENDS


def test_bench_reports_timings_flops_and_tiled_speed():
    bench = BenchConfig(preset="ipt-tiny", batch=2, steps=2, warmup=1, tiled_size=64, slot=1)
    figures = run_bench(bench)
    assert figures["n_params"] == sum(p.numel() for p in IPT(ipt_tiny()).parameters())
    for key in ("forward_s_per_sample", "train_step_s", "train_step_cpu_s", "tiles_per_s"):
        assert figures[key] > 0, key
    # the same float64 division as the bench's: isclose's rel 1e-9 is far above its rounding
    assert math.isclose(figures["train_samples_per_s"], 2 / figures["train_step_s"])
    assert figures["tiles"] == 4  # 64 px with 48 px tiles overlapping by 24: starts 0 and 16
    # Training ~ 3x the forward FLOPs; the tiny model's forward is ~0.1 GFLOP per 48x48 sample.
    assert 0.1e-3 < figures["train_step_tflop"] < 10e-3
    assert figures["mfu"] is None  # no peak figure for a CPU


def test_bench_cli_prints_one_json_object():
    args = ["bench", "--preset", "ipt-tiny", "--scales", "2", "--batch", "1", "--steps", "1"]
    result = CliRunner().invoke(main, [*args, "--tiled-size", "20", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["cpu"] == cpu_model()  # the machine, for the record
    assert figures["scales"] == [2] and figures["train_step_s"] > 0
    assert figures["tiles"] == 1 and figures["tiles_per_s"] > 0  # smaller than a tile: padded
    assert "official_train_step_s" not in figures


@pytest.mark.parametrize(
    "args, message",
    [
        (["--official", "/nonexistent"], "no model/ipt.py here"),
        (["--scales", "2+x"], "'+'-joined integers"),
        (["--scales", "5"], "scales must be"),
        (["--slot", "3", "--scales", "2"], "--slot 3 out of range"),
        (["--compare-blends", "."], "needs --ckpt"),
        (["--compare-blends", ".", "--ckpt", "x.pt", "--task", "derain"], "scores SR tasks"),
        (["--preset", "ipt-huge"], "unknown model preset 'ipt-huge'"),
        (["--task", "sr_x5"], "unknown task 'sr_x5'"),
        (["--amp", "fp32"], "unknown --amp 'fp32'"),
        (["--batch", "0"], "--batch must be at least 1"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--threads", "-1"], "--threads must be at least 0"),
        (["--tiled-size", "-5"], "--tiled-size must be 0"),
        (["--overlap", "48"], "overlap must be in 0..47"),
        (["--device", "gpu0"], "unknown device 'gpu0'"),
        (["--official", __file__], "no model/ipt.py here"),
    ],
)
def test_bench_user_errors(args, message):
    """One `Error:` line, exit 1, before any model is built or timed."""
    result = CliRunner().invoke(main, ["bench", "--preset", "ipt-tiny", "--steps", "1", *args])
    assert result.exit_code == 1 and message in result.output, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output


def test_parse_scales():
    assert parse_scales("2+3+4+1+1+1") == (2, 3, 4, 1, 1, 1)
    with pytest.raises(UserError):
        parse_scales("")


def test_compare_blends_prints_every_blend_s_figures(refdata, tmp_path):
    # Random weights: the figures show the command works, not which blend is better. An HR-only
    # folder (LR made by MATLAB-exact bicubic, as eval does) of two real crops keeps it short.
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "tiny.pt", IPT(ipt_tiny()))
    (tmp_path / "set" / "HR").mkdir(parents=True)
    for name in ("bird", "head"):
        hr = cv2.imread(str(refdata / "Set5" / "HR" / f"{name}.png"))[:130, :110]
        cv2.imwrite(str(tmp_path / "set" / "HR" / f"{name}.png"), hr)
    args = ["bench", "--compare-blends", str(tmp_path / "set"), "--ckpt", str(tmp_path / "tiny.pt")]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures.pop("cpu") == cpu_model()
    names = ("psnr_y", "ssim_y", "seam_index", "passes_per_megapixel")
    assert set(figures) == {f"{blend}_{name}" for blend in BLENDS for name in names}
    assert all(math.isfinite(v) for v in figures.values())
    assert figures["uniform_psnr_y"] != figures["distance_psnr_y"]
    # 65x55 LR images: 2x2 tiles each at overlap 24; official: a 2x1 grid, strips of 2 and 1,
    # the corner
    pixels = 2 * 65 * 55 / 1e6  # ratios of whole numbers: a few float64 roundings, ≪ 1e-6
    assert figures["distance_passes_per_megapixel"] == pytest.approx(2 * 4 / pixels)
    assert figures["official_passes_per_megapixel"] == pytest.approx(2 * (2 + 2 + 1 + 1) / pixels)


@pytest.mark.skipif(
    not os.environ.get("IPT_OFFICIAL_DIR"),
    reason="set IPT_OFFICIAL_DIR to a checkout of huawei-noah/Pretrained-IPT (needs einops)",
)
def test_bench_against_the_official_code():
    official = Path(os.environ["IPT_OFFICIAL_DIR"])
    bench = BenchConfig(preset="ipt-tiny", batch=2, steps=1, tiled_size=0, official_dir=official)
    figures = run_bench(bench)
    assert figures["official_max_abs_diff"] <= 0.05
    assert figures["official_train_step_s"] > 0 and figures["train_step_ratio"] > 0
    assert len(figures["official_train_step_rounds_s"]) == 1
    assert (figures["adam"], figures["official_adam"]) == ("fused", "default")  # each trainer's
