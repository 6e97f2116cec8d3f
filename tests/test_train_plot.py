"""ipt-train plot: loss curves from a run's log.csv and the bicubic-vs-model grid."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ipt_data.errors import UserError
from ipt_data.imresize import downscale, upscale
from ipt_train.checkpoint import save_checkpoint
from ipt_train.model import IPT, ipt_tiny
from ipt_train.plot import PANEL_GAP, TITLE_HEIGHT, comparison_grid, plot_losses, read_log, smooth
from ipt_train.runlog import LOG_FIELDS

BIN = Path(sys.executable).parent


def test_smooth_is_a_trailing_mean():
    values = np.array([1.0, 3.0, 5.0, 7.0])
    assert smooth(values, 2).tolist() == [1.0, 2.0, 4.0, 6.0]
    assert smooth(values, 10).tolist() == [1.0, 2.0, 3.0, 4.0]


def test_loss_plot_from_a_log_and_errors(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with (run / "log.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, LOG_FIELDS)
        writer.writeheader()
        for step in range(30):
            task = ("sr_x2", "derain")[step % 2]
            writer.writerow(
                {
                    "step": step,
                    "task": task,
                    "loss": 9,
                    "l1": 30 - step / 2,
                    "supcon": 8.0,
                    "lr": 5e-5,
                    "samples_per_s": 1,
                    "seconds": step,
                }
            )
    result = subprocess.run([BIN / "ipt-train", "plot", run], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    image = cv2.imread(str(run / "loss.png"))
    assert image is not None and image.shape[1] > 800 and image.std() > 10
    with pytest.raises(UserError, match="no training log"):
        plot_losses(tmp_path)
    with (run / "log.csv").open("a") as handle:  # a run killed while writing a row
        handle.write("30,sr_x2,9,1")
    assert len(read_log(run)) == 30
    (run / "log.csv").write_text("time,value\n1,2\n")
    with pytest.raises(UserError, match="not an ipt-train log"):
        plot_losses(run)


def test_comparison_grid_rows_and_scores(refdata, tmp_path):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "tiny.pt", IPT(ipt_tiny()))
    hr = cv2.imread(str(refdata / "Set5" / "HR" / "bird.png"))[:61, :70]
    cv2.imwrite(str(tmp_path / "bird.png"), hr)
    images = [tmp_path / "bird.png"] * 2
    scores = comparison_grid(tmp_path / "tiny.pt", "sr_x2", images, tmp_path / "g.png")
    grid = cv2.imread(str(tmp_path / "g.png"))
    # two rows of three 60x70 panels (HR mod-cropped), each under a two-line title, with gaps
    assert grid.shape == (2 * (TITLE_HEIGHT + 60) + PANEL_GAP, 3 * 70 + 2 * PANEL_GAP, 3)
    # the panels are the images' own pixels, not resampled by the figure
    np.testing.assert_array_equal(grid[TITLE_HEIGHT : TITLE_HEIGHT + 60, :70], hr[:60])
    bicubic = upscale(downscale(hr[:60, :, ::-1], 2), 2)[:, :, ::-1]
    np.testing.assert_array_equal(grid[TITLE_HEIGHT : TITLE_HEIGHT + 60, 78:148], bicubic)
    assert grid[: TITLE_HEIGHT - 4].min() < 128  # dark title text above the panels
    assert set(scores[0]) == {"image", "bicubic", "bicubic_ssim", "model", "model_ssim"}
    assert scores[0]["bicubic"] > 25 and np.isfinite(scores[0]["model"])


def test_a_grid_without_images_is_one_error_line(tmp_path):
    """It was a traceback (max() of an empty sequence) after the loss plot was written."""
    from click.testing import CliRunner

    from ipt_train.cli import main

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "tiny.pt", IPT(ipt_tiny()))
    (tmp_path / "run").mkdir()
    header = ",".join(LOG_FIELDS)
    row = ",".join("1" if f == "step" else "sr_x2" if f == "task" else "0.5" for f in LOG_FIELDS)
    (tmp_path / "run" / "log.csv").write_text(f"{header}\n{row}\n")
    args = ["plot", str(tmp_path / "run"), "--grid-ckpt", str(tmp_path / "tiny.pt")]
    run = CliRunner().invoke(main, args)
    assert run.exit_code == 1, run.output
    assert "Error: the comparison grid needs at least one HR image (--grid-image)" in run.output
    assert "Traceback" not in run.output and not (tmp_path / "run" / "grid.png").exists()
