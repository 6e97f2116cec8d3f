"""Rain synthesis (docs/corruptions.md) and its statistics, on scikit-image's colour photographs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from ipt_data.cli import main
from ipt_data.errors import UserError
from ipt_data.fileio import encode_image
from ipt_data.rain import LIGHT, TILT_LIMIT_DEG, Rain, rain_layer, streak_layer
from ipt_data.rainstats import (
    autocorrelation,
    pair_statistics,
    shape_statistics,
    streak_tilt,
    summarize,
    synthesized_pairs,
)


def _measure(photos: dict[str, np.ndarray], rain: Rain, seeds: range) -> dict[str, float]:
    per_image = [
        pair_statistics(image, rain(image, np.random.default_rng([seed, index])))
        for seed in seeds
        for index, image in enumerate(photos.values())
    ]
    return summarize(per_image)


def test_light_rain_matches_the_real_rain100l_layers_on_the_photographs(sample_photos):
    # Every calibration statistic (docs/corruptions.md) against its target band, on 18 layers
    # over the photographs.
    figures = _measure(sample_photos, Rain(), range(3))
    # The real Rain100L layers tiled over these photographs: 26.4 dB, SSIM 0.80, S >= 1 on 37%
    # (35% on Rain100L itself).
    assert figures["psnr_y"] == pytest.approx(26.4, abs=0.5)
    assert figures["ssim_y"] == pytest.approx(0.80, abs=0.015)
    assert figures["touched"] == pytest.approx(0.36, abs=0.03)
    # Rain100L: S >= 30 on 6%, median non-zero S 8, RMS 13.4, correlation half-length ~17 px.
    assert figures["strong"] == pytest.approx(0.06, abs=0.01)
    assert 7 <= figures["median_touched"] <= 9
    assert 12 <= figures["rms"] <= 15.5
    assert 15 <= figures["half_length_px"] <= 19.5
    assert 88 <= figures["p99_touched"] <= 110  # Rain100L: 100 (ours ~94)
    # The one known gap (docs/corruptions.md): streaks ~1.75 px wide where Rain100L's are ~2 px;
    # wider ones raise SSIM past 0.80 at the PSNR target.
    assert 1.6 <= figures["width_px"] <= 2.3


def test_tilt_spread_over_many_draws():
    tilts = [
        shape_statistics(rain_layer(96, 96, np.random.default_rng(seed)))["tilt_deg"]
        for seed in range(200)
    ]
    # N(0, 13.6°) redrawn beyond ±27° (docs/corruptions.md) has a standard deviation of 11.9°.
    assert np.std(tilts) == pytest.approx(11.9, abs=1.5)
    assert np.max(np.abs(tilts)) <= TILT_LIMIT_DEG + 2.0  # estimate within 2° of the drawn tilt


@pytest.mark.parametrize("tilt", [-24.0, -8.0, 0.0, 13.0, 26.0])
def test_measured_tilt_is_the_drawn_tilt(tilt):
    layer = streak_layer(200, 240, np.random.default_rng(1), tilt, LIGHT)
    assert streak_tilt(autocorrelation(layer)) == pytest.approx(tilt, abs=1.0)


def test_rain_is_deterministic_given_the_rng(sample_photos):
    clean = sample_photos["chelsea"]
    first = Rain()(clean, np.random.default_rng(7))
    again = Rain()(clean, np.random.default_rng(7))
    other = Rain()(clean, np.random.default_rng(8))
    np.testing.assert_array_equal(first, again)
    assert np.mean(first != other) > 0.2


def test_layer_is_nonnegative_and_added_equally_to_each_channel(sample_photos):
    clean = sample_photos["coffee"]
    layer = rain_layer(*clean.shape[:2], np.random.default_rng(3))
    assert layer.dtype == np.float32 and layer.shape == clean.shape[:2]
    assert layer.min() >= 0.0 and layer.max() > 50.0
    rainy = Rain()(clean, np.random.default_rng(3))  # draws the same layer
    gray = np.rint(layer).astype(np.int16)[..., None]
    expected = np.clip(clean.astype(np.int16) + gray, 0, 255)
    np.testing.assert_array_equal(rainy, expected)
    unclipped = rainy.max(axis=2) < 255
    added = rainy.astype(np.int16) - clean
    assert np.all(added[unclipped] == added[unclipped][:, :1])


def test_streaks_run_across_the_patch_grid():
    layer = rain_layer(240, 240, np.random.default_rng(5))
    # Streaks (S >= 8) that run continuously across the rows of the 48-px patch grid.
    _, _, boxes, _ = cv2.connectedComponentsWithStats((layer >= 8).astype(np.uint8))
    top, bottom = boxes[1:, cv2.CC_STAT_TOP], boxes[1:, cv2.CC_STAT_TOP] + boxes[1:, 3] - 1
    crossing = sum(np.sum((top < line) & (bottom >= line)) for line in range(48, 240, 48))
    assert crossing >= 40
    # Across a grid line the layer varies no more than between any two neighbouring rows.
    steps = np.abs(np.diff(layer, axis=0)).mean(axis=1)
    at_grid = steps[47:-1:48].mean()
    assert at_grid == pytest.approx(steps.mean(), rel=0.3)


def test_heavy_rain_is_rain100h_like(sample_photos):
    figures = _measure(sample_photos, Rain(heavy=True), range(1))
    assert 12.0 <= figures["psnr_y"] <= 16.0
    assert figures["touched"] > 0.9
    params = json.loads(json.dumps(Rain(heavy=True).params()))
    assert params["heavy"] is True and params["style"] != Rain().params()["style"]


def _write_streak_folder(folder: Path, rng: np.random.Generator) -> list[np.ndarray]:
    """Two small colour streak layers; returns their gray versions (mean of R, G, B)."""
    grays = []
    for index in range(2):
        tile = rng.integers(0, 60, (30, 40, 3), dtype=np.uint8)
        (folder / f"rainstreak-{index + 1}.png").write_bytes(encode_image(tile, ".png"))
        grays.append(np.rint(tile.astype(np.float32).mean(axis=2)).astype(np.uint8))
    (folder / "norain-1.png").write_bytes(encode_image(np.zeros((8, 8, 3), np.uint8), ".png"))
    return grays


def _tiled_crop_index(tiles: list[np.ndarray], crop: np.ndarray) -> int | None:
    """Which tile ``crop`` is a tiled crop of (any offset), or None."""
    for index, tile in enumerate(tiles):
        tiled = np.tile(tile, (4, 4))
        for dy in range(tile.shape[0]):
            for dx in range(tile.shape[1]):
                window = tiled[dy : dy + crop.shape[0], dx : dx + crop.shape[1]]
                if np.array_equal(window, crop):
                    return index
    return None


def test_real_streak_folder_is_tiled_over_the_image(tmp_path):
    tiles = _write_streak_folder(tmp_path, np.random.default_rng(0))
    rain = Rain(streaks_dir=str(tmp_path))
    picked = set()
    for seed in range(8):
        rainy = rain(np.zeros((70, 100, 3), np.uint8), np.random.default_rng(seed))
        assert np.array_equal(rainy[..., 0], rainy[..., 1])
        assert np.array_equal(rainy[..., 0], rainy[..., 2])
        picked.add(_tiled_crop_index(tiles, rainy[..., 0]))
    assert picked == {0, 1}
    assert rain.params()["streaks_dir"] == str(tmp_path)


def test_missing_or_empty_streak_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="nowhere"):
        Rain(streaks_dir=str(tmp_path / "nowhere"))
    (tmp_path / "streak-1.png").write_bytes(b"not a streak layer name")
    with pytest.raises(UserError, match=f"{tmp_path}.*no rainstreak-"):
        Rain(streaks_dir=str(tmp_path))
    with pytest.raises(UserError, match="either heavy or streaks_dir"):
        Rain(heavy=True, streaks_dir=str(tmp_path))


@pytest.fixture(scope="module")
def clean_folder(tmp_path_factory, sample_photos) -> Path:
    folder = tmp_path_factory.mktemp("clean")
    for name, image in sample_photos.items():
        (folder / f"{name}.png").write_bytes(encode_image(image, ".png"))
    return folder


def _run(*args: str):
    return CliRunner().invoke(main, ["rain-stats", *args])


def test_pairs_recover_the_statistics_of_the_synthesis(clean_folder, tmp_path):
    direct = _run(str(clean_folder), "--seed", "3", "--json")
    assert direct.exit_code == 0, direct.output
    figures = json.loads(direct.output)
    for key in ("psnr_y", "ssim_y", "touched", "strong", "median_touched", "p99_touched"):
        assert key in figures
    assert figures["images"] == 6
    # The same rain written as Rain100L-style pairs, in two subfolders.
    for index, (_, clean, rainy) in enumerate(synthesized_pairs(clean_folder, Rain(), 3)):
        sub = tmp_path / f"part{index % 2}"
        sub.mkdir(exist_ok=True)
        (sub / f"norain-{index + 1:03d}.png").write_bytes(encode_image(clean, ".png"))
        (sub / f"rain-{index + 1}.png").write_bytes(encode_image(rainy, ".png"))
    recovered = _run("--pairs", str(tmp_path), "--json")
    assert recovered.exit_code == 0, recovered.output
    # the same statistics of the same pixels, read back from PNG files (lossless) and JSON
    # (exact for floats); rel 1e-9 only absorbs float64 sums in another order
    assert json.loads(recovered.output) == pytest.approx(figures, rel=1e-9)
    text = _run("--pairs", str(tmp_path))
    assert "PSNR_Y" in text.output and "tilt std" in text.output


def _assert_one_error_line(result, expected: str) -> None:
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and expected in lines[0], lines
    assert "Traceback" not in result.output


def test_rain_stats_errors_are_one_clear_line(tmp_path, sample_photos):
    _assert_one_error_line(_run(str(tmp_path / "missing")), "no such folder")
    _assert_one_error_line(_run(str(tmp_path)), "no image files")
    lonely = encode_image(sample_photos["chelsea"][:64, :64], ".png")
    (tmp_path / "rain-1.png").write_bytes(lonely)
    (tmp_path / "norain-2.png").write_bytes(lonely)
    _assert_one_error_line(_run("--pairs", str(tmp_path)), "rain-1.png: no matching norain-N")
    (tmp_path / "rain-1.png").unlink()
    _assert_one_error_line(_run("--pairs", str(tmp_path)), "norain-2.png: no matching rain-N")
