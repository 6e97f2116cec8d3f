"""``ipt-data show``: the contact sheet of a set in a folder and over loopback HTTP; the pixels
on it are the samples' own (input and target at the same display scale), its rows are labelled,
and a tampered shard is one Error line with nothing written. (The sheet of the demo's set was
also looked at, as README.md shows it.)"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from loopback_servers import copy_set, http_server, tiny_set

from ipt_data import show
from ipt_data.cli import main
from ipt_data.png import decode_png
from ipt_data.remote import open_location, read_shard


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory) -> Path:
    return tiny_set(tmp_path_factory)  # sr_x2, denoise_30: 3 shards of 4 samples each


def read_png(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]  # RGB


def shard_samples(shard_set: Path, task: str, shard: int) -> list[dict]:
    manifest = json.loads((shard_set / "manifest.json").read_bytes())
    entry = manifest["tasks"][task]["shards"][shard]
    return list(read_shard(open_location(shard_set), entry))


def tile(sheet: np.ndarray, row_top: int, column: int, which: int, side: int) -> np.ndarray:
    """A tile of the sheet: ``which`` 0 for the input, 1 for the target."""
    cell = 2 * show.DISPLAY + show._GAP
    left = show._LABEL_WIDTH + column * (cell + show._CELL_GAP) + which * (side + show._GAP)
    top = row_top + show._HEADING
    return sheet[top : top + side, left : left + side]


def magnified(image: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def test_the_sheet_holds_the_samples_input_next_to_target_labelled(shard_set, tmp_path):
    out = tmp_path / "sheet.png"
    result = CliRunner().invoke(main, ["show", str(shard_set), "-o", str(out), "--samples", "6"])
    assert result.exit_code == 0, result.output
    sheet = read_png(out)
    row = show._HEADING + show.DISPLAY + show._CAPTION + show._GAP  # both tasks shown at 192
    assert sheet.shape == (show._TITLE + 2 * row, show._LABEL_WIDTH + 6 * (2 * 192 + 6 + 14), 3)
    assert result.output == f"wrote {out} ({sheet.shape[1]}x{sheet.shape[0]})\n"
    # six samples a row: the first shard's four, then samples 0 and 2 of the second
    for number, (task, scales) in enumerate([("sr_x2", (4, 2)), ("denoise_30", (4, 4))]):
        picked = shard_samples(shard_set, task, 0) + shard_samples(shard_set, task, 1)[::2]
        top = show._TITLE + number * row
        for column, sample in enumerate(picked):
            for which, member in enumerate(("input.png", "target.png")):
                expected = magnified(decode_png(sample[member]), scales[which])
                assert np.array_equal(tile(sheet, top, column, which, 192), expected)
        label = sheet[top : top + row, : show._LABEL_WIDTH - 10]
        caption = sheet[top + show._HEADING + 192 : top + row, show._LABEL_WIDTH :]
        assert (label < 128).sum() > 500 and (caption < 128).sum() > 2000  # text is drawn
    title = sheet[: show._TITLE]
    assert (title < 128).sum() > 300


def test_a_set_over_http_gives_the_same_rows_and_only_the_asked_tasks(shard_set, tmp_path):
    local, remote = tmp_path / "local.png", tmp_path / "remote.png"
    show.show_set(shard_set, local, "denoise_30", samples=2)
    with http_server(shard_set) as server:
        width, height = show.show_set(server.url, remote, "denoise_30", samples=2)
        assert server.hits["/denoise_30/denoise_30-000000.tar"] == 1
        assert server.hits["/sr_x2/sr_x2-000000.tar"] == 0
    local_sheet, remote_sheet = read_png(local), read_png(remote)
    assert remote_sheet.shape == local_sheet.shape == (height, width, 3)
    assert height == show._TITLE + show._HEADING + 192 + show._CAPTION + show._GAP
    title = show._TITLE  # names the set: its folder, or its URL
    assert np.array_equal(local_sheet[title:], remote_sheet[title:])


def test_a_tampered_shard_is_one_error_and_nothing_is_written(shard_set, tmp_path):
    damaged = copy_set(shard_set, tmp_path / "set")
    shard = damaged / "sr_x2" / "sr_x2-000000.tar"
    data = bytearray(shard.read_bytes())
    data[2000] ^= 1
    shard.write_bytes(bytes(data))
    out = tmp_path / "sheet.png"
    result = CliRunner().invoke(main, ["show", str(damaged), "-o", str(out)])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {damaged}/sr_x2/sr_x2-000000.tar: sha256 differs from the manifest; refused\n"
    )
    assert not out.exists() and list(tmp_path.glob("*.part")) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["-o", "sheet.jpg"], "the sheet is a PNG; name a .png file"),
        (["-o", "s.png", "--tasks", "sr_x4"], "the set has no task ['sr_x4']"),
        (["-o", "s.png", "--samples", "17"], "--samples must be from 1 to 16"),
    ],
)
def test_bad_options_are_one_error(shard_set, tmp_path, monkeypatch, arguments, message):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["show", str(shard_set), *arguments])
    assert result.exit_code == 1 and message in result.output, result.output
    assert list(tmp_path.iterdir()) == []
