"""ipt-train eval: an ipt-tiny checkpoint end to end, and the baselines of every layout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_train_support import tiny_checkpoint

from ipt_data.imresize import downscale, mod_crop
from ipt_data.metrics import psnr_rgb, psnr_y, ssim_y
from ipt_train.checkpoint import load_model
from ipt_train.configs import EvalConfig
from ipt_train.evaluate import evaluate
from ipt_train.restore import restore_image
from ipt_train.tilegrid import TileConfig

BIN = Path(sys.executable).parent


def write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), rgb[:, :, ::-1])


def ipt_eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "ipt-train", "eval", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory, "tiny_ckpt")


@pytest.mark.numerics
def test_checkpoint_scores_equal_the_metrics_computed_directly(tiny_ckpt, sample_photos, tmp_path):
    # two small HR images without LR files: the LR comes from MATLAB bicubic of the mod-crop
    hr = {
        "coffee": sample_photos["coffee"][50:171, 60:161],
        "chelsea": sample_photos["chelsea"][:90, :75],
    }
    for name, image in hr.items():
        write_png(tmp_path / "bench" / "HR" / f"{name}.png", image)
    result = ipt_eval(
        "--ckpt", str(tiny_ckpt), "--task", "sr_x2", "--data", str(tmp_path / "bench"), "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    model = load_model(tiny_ckpt)
    expected = []
    for name in sorted(hr):
        target = mod_crop(hr[name], 2)
        output = restore_image(model, downscale(target, 2), 0, 2, TileConfig())
        expected.append((name, psnr_y(output, target, 2), ssim_y(output, target, 2)))
    assert [row["name"] for row in report["images"]] == [e[0] for e in expected]
    got = [(row["psnr_y"], row["ssim_y"]) for row in report["images"]]
    # Bit-identical by construction: `ipt-train eval` runs in a child with this process's
    # environment and torch's default threads, so the same kernels restore the same inputs;
    # the uint8 outputs and their float64 metrics are then equal, through JSON (exact for
    # floats). rtol 1e-9 only absorbs the 2-term means below, off by 1e-16.
    assert np.allclose(got, [e[1:] for e in expected], rtol=1e-9)
    assert report["psnr_y"] == pytest.approx(np.mean([e[1] for e in expected]), rel=1e-9)
    assert report["ssim_y"] == pytest.approx(np.mean([e[2] for e in expected]), rel=1e-9)
    assert 5 < report["psnr_y"] < 40  # an untrained model: a real, finite, unremarkable score


def test_set5_bicubic_baseline_is_the_published_row(refdata):
    published = {"sr_x2": 33.66, "sr_x3": 30.39, "sr_x4": 28.42}
    for task, psnr in published.items():
        report = evaluate(None, task, refdata / "Set5", EvalConfig(progress=False))
        # not rounding: 2-decimal published figures and MATLAB's .5 ties (test_imresize.py)
        assert report["psnr_y"] == pytest.approx(psnr, abs=0.03), task
        assert len(report["images"]) == 5


def test_denoising_noise_is_seeded_and_scored_on_y_and_rgb(refdata):
    config = EvalConfig(progress=False, noise_seed=4)
    first = evaluate(None, "denoise_50", refdata / "Set5" / "HR", config)
    again = evaluate(None, "denoise_50", refdata / "Set5" / "HR", config)
    other = evaluate(None, "denoise_50", refdata / "Set5" / "HR", EvalConfig(progress=False))
    assert first == again and first["psnr_rgb"] != other["psnr_rgb"]
    # sigma 50 noise, clipped: PSNR a little above 20 log10(255 / 50) = 14.15 dB
    assert 14.1 < first["psnr_rgb"] < 15.5 and first["psnr_y"] > first["psnr_rgb"]


def test_an_images_denoising_noise_does_not_depend_on_the_rest_of_its_folder(refdata, tmp_path):
    # Seeded by the image's name, not its place: a folder without one of Set5's images gives
    # the others exactly the noise (so the scores) they get in the whole folder.
    config = EvalConfig(progress=False)
    whole = evaluate(None, "denoise_30", refdata / "Set5" / "HR", config)
    shutil.copytree(refdata / "Set5" / "HR", tmp_path / "four")
    first = sorted((tmp_path / "four").iterdir())[0]
    first.unlink()
    fewer = evaluate(None, "denoise_30", tmp_path / "four", config)
    assert len(fewer["images"]) == 4
    assert fewer["images"] == [row for row in whole["images"] if row["name"] != first.stem]


def test_rain_pairs_and_one_line_errors(sample_photos, tmp_path):
    clean = sample_photos["astronaut"][:64, :80]
    rainy = np.clip(clean.astype(int) + 40 * (np.arange(80)[:, None] % 9 == 0), 0, 255).astype(
        np.uint8
    )
    write_png(tmp_path / "rain" / "rain-1.png", rainy)
    write_png(tmp_path / "rain" / "norain-1.png", clean)
    report = evaluate(None, "derain", tmp_path / "rain", EvalConfig(progress=False))
    assert report["psnr_y"] == psnr_y(rainy, clean)  # the same function on the same pixels
    assert "psnr_rgb" not in report and psnr_rgb(rainy, clean) < 40
    (tmp_path / "rain" / "norain-1.png").unlink()
    write_png(tmp_path / "wrong_lr" / "HR" / "a.png", clean)  # 64x80: LR x2 must be 32x40
    write_png(tmp_path / "wrong_lr" / "LR_bicubic" / "X2" / "ax2.png", clean[:30, :40])
    for args in (
        ["--baseline", "--task", "derain", "--data", str(tmp_path / "rain")],
        ["--baseline", "--task", "sr_x2", "--data", str(tmp_path / "missing")],
        ["--baseline", "--task", "sr_x5", "--data", str(tmp_path)],
        ["--task", "sr_x2", "--data", str(tmp_path)],
        ["--baseline", "--task", "sr_x2", "--data", str(tmp_path / "rain" / "rain-1.png")],
        ["--baseline", "--task", "sr_x2", "--data", str(tmp_path / "wrong_lr")],
        ["--ckpt", str(tmp_path), "--task", "sr_x2", "--data", str(tmp_path / "wrong_lr")],
    ):
        result = ipt_eval(*args)
        assert result.returncode != 0 and result.stderr.startswith("Error:"), (args, result.stderr)
        assert "Traceback" not in result.stderr
