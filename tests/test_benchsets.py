"""Benchmark folders are read one way (ipt_data.benchsets): ipt-train eval and ipt-data
rain-stats accept exactly the same rain folders, and the SR layout's rules hold."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from test_eval import write_png

from ipt_data.benchsets import clean_images, read_pair, sr_images
from ipt_data.cli import main as data_main
from ipt_data.errors import UserError
from ipt_train.cli import main as train_main


@pytest.fixture(scope="module")
def rain_pairs(sample_photos) -> list[dict[str, np.ndarray]]:
    """Two real 64x80 crops with vertical streaks added, and a smaller clean image."""
    pairs = []
    for name in ("astronaut", "coffee"):
        clean = sample_photos[name][:64, :80]
        streaks = 50 * (np.arange(80) % 9 == 0)[None, :, None]
        rainy = np.clip(clean.astype(int) + streaks, 0, 255).astype(np.uint8)
        pairs.append({"rain": rainy, "clean": clean, "small": clean[:60]})
    return pairs


# folder -> [(file, which image of which pair)]; the first five are accepted, the rest refused
RAIN_FOLDERS = {
    "zero-padded": [("rain-001.png", "rain", 0), ("norain-001.png", "clean", 0),
                    ("rain-002.png", "rain", 1), ("norain-002.png", "clean", 1)],
    "plain": [("rain-1.png", "rain", 0), ("norain-1.png", "clean", 0),
              ("rain-2.png", "rain", 1), ("norain-2.png", "clean", 1)],
    "mixed": [("rain-001.png", "rain", 0), ("norain-1.png", "clean", 0),
              ("rain-10.PNG", "rain", 1), ("norain-010.png", "clean", 1)],
    "rainy-subfolder": [("rainy/rain-1.png", "rain", 0), ("norain-1.png", "clean", 0),
                        ("rainy/rain-2.png", "rain", 1), ("norain-2.png", "clean", 1)],
    "pairs-in-subfolders": [("a/rain-1.png", "rain", 0), ("a/norain-1.png", "clean", 0),
                            ("b/rain-1.png", "rain", 1), ("b/norain-1.png", "clean", 1)],
    "rain-without-partner": [("rain-1.png", "rain", 0), ("norain-2.png", "clean", 1)],
    "clean-without-partner": [("rain-1.png", "rain", 0), ("norain-1.png", "clean", 0),
                              ("norain-2.png", "clean", 1)],
    "no-pairs": [("photo.png", "clean", 0)],
    "two-rainy-one-clean": [("rain-1.png", "rain", 0), ("rain-001.png", "rain", 1),
                            ("norain-1.png", "clean", 0)],
    "sizes-differ": [("rain-1.png", "rain", 0), ("norain-1.png", "small", 0)],
    "ambiguous": [("a/rain-1.png", "rain", 0), ("b/norain-1.png", "clean", 0),
                  ("c/norain-1.png", "clean", 1)],
}  # fmt: skip
ACCEPTED = ("zero-padded", "plain", "mixed", "rainy-subfolder", "pairs-in-subfolders")


@pytest.mark.parametrize("folder", list(RAIN_FOLDERS))
def test_eval_and_rain_stats_accept_the_same_rain_folders(folder, rain_pairs, tmp_path):
    for name, kind, index in RAIN_FOLDERS[folder]:
        write_png(tmp_path / folder / name, rain_pairs[index][kind])
    data = str(tmp_path / folder)
    runner = CliRunner()
    scored = runner.invoke(
        train_main, ["eval", "--baseline", "--task", "derain", "--data", data, "--json"]
    )
    measured = runner.invoke(data_main, ["rain-stats", "--pairs", data, "--json"])
    if folder in ACCEPTED:
        assert scored.exit_code == 0 and measured.exit_code == 0, (scored.output, measured.output)
        report, figures = json.loads(scored.stdout), json.loads(measured.stdout)
        assert len(report["images"]) == figures["images"] == 2
        # the same psnr_y of the same pixels in both commands; their means over the 2 images
        # may round differently, by 1e-16 relative
        assert report["psnr_y"] == pytest.approx(figures["psnr_y"], rel=1e-12)
        assert report["psnr_y"] < 40  # the streaks were read as rain: not a clean/clean pair
    else:
        errors = [result.output.strip().splitlines() for result in (scored, measured)]
        assert scored.exit_code == measured.exit_code == 1, errors
        assert errors[0] == errors[1] and len(errors[0]) == 1, errors
        assert errors[0][0].startswith("Error: ") and "Traceback" not in errors[0][0]


def test_sr_sets_take_published_lr_images_for_every_hr_image_or_none(refdata, tmp_path):
    with_lr = sr_images(refdata / "Set5", 2)
    assert [image.name for image in with_lr] == ["baby", "bird", "butterfly", "head", "woman"]
    assert all(image.degraded.name == f"{image.name}x2.png" for image in with_lr)
    lr, hr = read_pair(with_lr[1], 2)
    assert hr.shape == (288, 288, 3) and lr.shape == (144, 144, 3)
    shutil.copytree(refdata / "Set5", tmp_path / "Set5")
    shutil.rmtree(tmp_path / "Set5" / "LR_bicubic" / "X3")
    assert all(image.degraded is None for image in sr_images(tmp_path / "Set5", 3))  # HR-only
    (tmp_path / "Set5" / "LR_bicubic" / "X4" / "birdx4.png").unlink()
    with pytest.raises(UserError, match=r"birdx4\.png: missing; .*X4 holds no LR image of bird"):
        sr_images(tmp_path / "Set5", 4)
    shutil.rmtree(tmp_path / "Set5" / "HR")
    with pytest.raises(UserError, match="has LR_bicubic/ but no HR/"):
        clean_images(tmp_path / "Set5")


def test_a_folder_of_images_is_listed_recursively_by_relative_path(sample_photos, tmp_path):
    for name in ("b/inner.png", "a.jpg", "c.PNG"):
        write_png(tmp_path / "set" / name, sample_photos["coffee"][:20, :30])
    (tmp_path / "set" / "notes.txt").write_text("not an image")
    images = clean_images(tmp_path / "set")
    assert [image.name for image in images] == ["a", "b/inner", "c"]
    (tmp_path / "set" / "b" / "empty").mkdir()
    with pytest.raises(UserError, match="empty: no image files found"):
        clean_images(tmp_path / "set" / "b" / "empty")
    with pytest.raises(UserError, match="missing: no such folder"):
        clean_images(tmp_path / "missing")
