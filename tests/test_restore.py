"""``ipt-train restore`` end to end on real image files, through the real CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ipt_data.decode import decode_image
from ipt_data.fileio import encode_image
from ipt_train.checkpoint import export_official, load_model, save_checkpoint
from ipt_train.cli import main
from ipt_train.model import IPT, ipt_tiny
from ipt_train.restore import restore_image
from ipt_train.tilegrid import TileConfig


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    save_checkpoint(folder / "tiny6.pt", IPT(ipt_tiny()))
    export_official(IPT(ipt_tiny(scales=(3,))), folder / "tiny_sr3.pt")  # plain state_dict
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, sample_photos):
    folder = tmp_path_factory.mktemp("inputs")
    astronaut, coffee = sample_photos["astronaut"], sample_photos["coffee"]
    (folder / "set" / "sub").mkdir(parents=True)
    (folder / "set" / "a.png").write_bytes(encode_image(astronaut[100:160, 200:250], ".png"))
    (folder / "set" / "sub" / "b.jpg").write_bytes(encode_image(coffee[:40, :70], ".jpg"))
    (folder / "single.png").write_bytes(encode_image(coffee[50:80, 90:120], ".png"))
    return folder


def run(*args):
    return CliRunner().invoke(main, ["restore", *map(str, args)])


def test_restore_files_and_folders(checkpoints, inputs, tmp_path):
    out = tmp_path / "out"
    ckpt = checkpoints / "tiny6.pt"
    result = run(
        "--ckpt", ckpt, "--task", "sr_x2", inputs / "set", inputs / "single.png", "-o", out
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "a.png",
        "single.png",
        "sub/b.png",
    ]
    restored = decode_image((out / "a.png").read_bytes(), "a.png")
    assert restored.shape == (120, 100, 3)
    source = decode_image((inputs / "set" / "a.png").read_bytes(), "a.png")
    expected = restore_image(load_model(ckpt), source, 0, 2, TileConfig())
    # bit-identical by construction: the command ran in this process, the same kernels on the
    # same input, rounded to the same uint8 pixels
    np.testing.assert_array_equal(restored, expected)
    assert decode_image((out / "sub" / "b.png").read_bytes(), "b").shape == (80, 140, 3)


def test_single_task_checkpoint_runs_its_own_task(checkpoints, inputs, tmp_path):
    out = tmp_path / "out"
    ckpt = checkpoints / "tiny_sr3.pt"
    args = ("--num-heads", 4, "--blend", "distance", "--overlap", 12)
    result = run("--ckpt", ckpt, "--task", "sr_x3", *args, inputs / "single.png", "-o", out)
    assert result.exit_code == 0, result.output
    assert decode_image((out / "single.png").read_bytes(), "x").shape == (90, 90, 3)


@pytest.mark.parametrize(
    "task, message",
    [
        ("sr_x2", "single-task x3 model; task sr_x2 needs a x2 model"),
        ("sr_x5", "unknown task 'sr_x5'"),
    ],
)
def test_task_that_does_not_fit_is_one_clear_error(checkpoints, inputs, tmp_path, task, message):
    out = tmp_path / "out"
    ckpt = checkpoints / "tiny_sr3.pt"
    result = run("--ckpt", ckpt, "--num-heads", 4, "--task", task, inputs / "single.png", "-o", out)
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and message in result.output
    assert "Traceback" not in result.output and not out.exists()


def test_bad_checkpoint_and_missing_input_are_clear_errors(checkpoints, inputs, tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes((checkpoints / "tiny6.pt").read_bytes()[:10_000])
    result = run("--ckpt", corrupt, "--task", "sr_x2", inputs / "single.png", "-o", tmp_path / "o")
    assert result.exit_code == 1 and "not a readable PyTorch checkpoint" in result.output
    missing = inputs / "nope.png"
    result = run("--ckpt", checkpoints / "tiny6.pt", "--task", "sr_x2", missing, "-o", tmp_path)
    assert result.exit_code == 1 and "nope.png: no such file or folder" in result.output


def one_error_line(result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    assert message in result.output, result.output


def test_user_errors_are_one_line_before_any_output_is_written(checkpoints, inputs, tmp_path):
    """Every input is checked before the first image is written: an unreadable image after
    good ones leaves no outputs; a file given as the output folder is our error, not click's."""
    ckpt = checkpoints / "tiny6.pt"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "out"
    result = run("--ckpt", ckpt, "--task", "sr_x2", inputs / "set", bad, "-o", out)
    one_error_line(result, "bad.png: unreadable image (not_an_image)")
    assert not out.exists()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for target in (a_file, a_file / "sub"):
        result = run("--ckpt", ckpt, "--task", "sr_x2", inputs / "single.png", "-o", target)
        one_error_line(result, f"cannot be the output folder, {a_file} is a file")
    for option, value, message in [
        ("--device", "gpu0", "unknown device 'gpu0'"),
        ("--blend", "max", "unknown blend 'max'"),
        ("--ckpt", inputs, "a folder, not a checkpoint file"),
    ]:
        args = ("--ckpt", ckpt, "--task", "sr_x2", option, value, inputs / "single.png")
        one_error_line(run(*args, "-o", out), message)
    assert not out.exists()


def test_checkpoints_that_cannot_be_used_are_one_line_errors(checkpoints, inputs, tmp_path):
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, pickled)  # loads only with weights_only=False
    foreign = tmp_path / "foreign.pt"
    torch.save(torch.nn.Linear(3, 3).state_dict(), foreign)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    out = tmp_path / "out"
    for ckpt, message in [
        (pickled, "holds pickled Python objects"),
        (foreign, "not an IPT state_dict"),
        (text, "not a PyTorch file"),
    ]:
        result = run("--ckpt", ckpt, "--task", "sr_x2", inputs / "single.png", "-o", out)
        one_error_line(result, f"{ckpt.name}: ")
        assert message in result.output
    assert not out.exists()
