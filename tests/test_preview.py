"""`ipt-data sample` and `ipt-data preview` end to end through the real CLI."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from ipt_data.preview import VIEW, render_preview
from ipt_data.tasks import TASKS


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "from ipt_data.cli import main; main()", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def sample_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    result = run_cli("sample", str(root))
    assert result.returncode == 0, result.stderr
    return root


def test_sample_tree_is_imagenet_style(sample_tree, sample_photos):
    files = sorted(sample_tree.glob("n*/*.JPEG"))
    assert len(files) == len(sample_photos) == 6
    assert {path.stem for path in files} == set(sample_photos)


def test_preview_shows_clean_and_corrupted_view_for_every_task(sample_tree, tmp_path):
    image = sample_tree / "n00000000" / "astronaut.JPEG"
    out = tmp_path / "grid.png"
    result = run_cli("preview", str(image), "-o", str(out))
    assert result.returncode == 0, result.stderr
    grid = cv2.imread(str(out))
    assert grid is not None and grid.shape[0] > len(TASKS) * VIEW


def test_preview_rows_hold_the_real_corruption(sample_photos):
    photo = sample_photos["coffee"]
    one = render_preview(photo, seed=1, tasks=[TASKS["denoise_50"]])
    two = render_preview(photo, seed=1, tasks=[TASKS["denoise_50"]])
    other = render_preview(photo, seed=2, tasks=[TASKS["denoise_50"]])
    np.testing.assert_array_equal(one, two)
    assert not np.array_equal(one, other)  # the noise is drawn, not a fixed picture
    x4 = render_preview(photo, tasks=[TASKS["sr_x4"]])
    # The x4 input is shown by pixel repetition: 4x4 blocks of equal pixels.
    view = x4[-VIEW - 6 : -6, -VIEW - 6 : -6]
    np.testing.assert_array_equal(view[0::4, 0::4], view[3::4, 3::4])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("preview", "/no/such/file.JPEG", "-o", "x.png"), "no such file"),
        (("preview", __file__, "-o", "x.png"), "unreadable image (not_an_image)"),
        (("preview", __file__, "-o", "x.png", "--tasks", "sr_x9"), "unknown task 'sr_x9'"),
        # wrote PNG bytes under a .jpg name before
        (("preview", __file__, "-o", "x.jpg"), "the preview is a PNG; name a .png file"),
    ],
)
def test_bad_input_is_one_clear_error(args, message, tmp_path):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0  # one line
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.jpg").exists()


def test_outputs_in_the_wrong_place_are_one_clear_error(sample_tree, tmp_path):
    """preview under a file, and sample into a folder holding other files (a shard set, say),
    are refused with one line and write nothing; sample into an earlier sample tree is fine."""
    (tmp_path / "blocker").write_bytes(b"a file")
    image = sample_tree / "n00000000" / "astronaut.JPEG"
    result = run_cli("preview", str(image), "-o", str(tmp_path / "blocker" / "x.png"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "blocker is a file, not a folder" in result.stderr  # was "File exists"
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "manifest.json").write_text("{}")
    result = run_cli("sample", str(tmp_path / "set"))
    assert result.returncode == 1 and "holds other files (manifest.json)" in result.stderr
    assert sorted(path.name for path in (tmp_path / "set").iterdir()) == ["manifest.json"]
    assert run_cli("sample", str(sample_tree)).returncode == 0
