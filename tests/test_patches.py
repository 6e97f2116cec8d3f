"""Task table, noise and aligned patch cutting on real photographs."""

from __future__ import annotations

import numpy as np
import pytest

from ipt_data.errors import UserError
from ipt_data.imresize import downscale
from ipt_data.noise import GaussianNoise
from ipt_data.patches import ImageTooSmall, cut_pairs
from ipt_data.seeding import image_rng
from ipt_data.tasks import TASKS, get_task, parse_tasks


def test_task_table_matches_the_official_slots():
    slots = {name: task.index for name, task in TASKS.items()}
    assert slots == {
        "sr_x2": 0,
        "sr_x3": 1,
        "sr_x4": 2,
        "derain": 3,
        "denoise_30": 4,
        "denoise_50": 5,
    }
    assert [TASKS[n].target_size for n in TASKS] == [96, 144, 192, 48, 48, 48]


def test_unknown_task_names_the_known_ones():
    with pytest.raises(UserError, match=r"unknown task .sr_x5.*sr_x2"):
        get_task("sr_x5")
    assert [t.name for t in parse_tasks("denoise_50, sr_x2,sr_x2")] == ["sr_x2", "denoise_50"]
    assert len(parse_tasks("all")) == 6


@pytest.mark.parametrize("name", list(TASKS))
def test_pairs_have_the_task_sizes_and_lie_inside_the_image(sample_photos, name):
    task, image = TASKS[name], sample_photos["coffee"]
    rng, _ = image_rng(0, "coffee.JPEG", name)
    pairs = cut_pairs(image, task, rng, 8)
    assert len(pairs) == 8
    for pair in pairs:
        assert pair.input.shape == (48, 48, 3) and pair.input.dtype == np.uint8
        assert pair.target.shape == (task.target_size,) * 2 + (3,)
        top, left, height, width = pair.box
        np.testing.assert_array_equal(pair.target, image[top : top + height, left : left + width])


@pytest.mark.parametrize("name", ["sr_x2", "sr_x3", "sr_x4"])
def test_sr_input_is_the_whole_image_downscale_at_the_aligned_place(sample_photos, name):
    task, image = TASKS[name], sample_photos["astronaut"]
    scale = task.scale
    whole = downscale(image[: 512 - 512 % scale, : 512 - 512 % scale], scale)
    for pair in cut_pairs(image, task, np.random.default_rng(3), 4):
        top, left = pair.box[0] // scale, pair.box[1] // scale
        np.testing.assert_array_equal(pair.input, whole[top : top + 48, left : left + 48])
        # Away from its border the input equals the downscale of the bare target patch too;
        # at the border the whole-image corruption sees pixels the patch does not.
        bare = downscale(pair.target, scale)
        np.testing.assert_array_equal(pair.input[3:-3, 3:-3], bare[3:-3, 3:-3])
        assert not np.array_equal(pair.input, bare)


def test_noise_statistics_and_clipping(sample_photos):
    clean = np.full((200, 200, 3), 128, np.uint8)
    noisy = GaussianNoise(30.0)(clean, np.random.default_rng(0)).astype(float)
    assert abs((noisy - 128).std() - np.sqrt(30.0**2 + 1 / 12)) < 0.5
    assert abs((noisy - 128).mean()) < 0.5
    dark = GaussianNoise(50.0)(np.zeros((64, 64, 3), np.uint8), np.random.default_rng(0))
    assert dark.min() == 0 and (dark == 0).mean() > 0.45  # clipped, not wrapped


def test_noise_on_stacked_crops_is_the_noise_each_crop_gets_in_turn(sample_photos):
    # cut_pairs corrupts a pointwise task's n crops in one call; that must draw exactly what n
    # calls, one per crop, would (the Corruption protocol's promise for pointwise corruptions).
    image = sample_photos["chelsea"]
    crops = np.stack([image[0:48, 0:48], image[100:148, 30:78], image[5:53, 200:248]])
    for sigma in (30.0, 50.0):
        stacked = GaussianNoise(sigma)(crops, np.random.default_rng(11))
        in_turn_rng = np.random.default_rng(11)
        in_turn = [GaussianNoise(sigma)(crop, in_turn_rng) for crop in crops]
        np.testing.assert_array_equal(stacked, np.stack(in_turn))
        assert not np.array_equal(stacked, crops)


def test_same_seed_same_pairs_other_image_other_pairs(sample_photos):
    image, task = sample_photos["rocket"], TASKS["denoise_50"]
    first = cut_pairs(image, task, image_rng(7, "a/rocket.JPEG", task.name)[0], 3)
    again = cut_pairs(image, task, image_rng(7, "a/rocket.JPEG", task.name)[0], 3)
    other = cut_pairs(image, task, image_rng(7, "b/rocket.JPEG", task.name)[0], 3)
    for one, two in zip(first, again, strict=True):
        np.testing.assert_array_equal(one.input, two.input)
        assert one.box == two.box
    assert any(a.box != b.box for a, b in zip(first, other, strict=True))


def test_too_small_and_wrong_inputs_are_clear_errors(sample_photos):
    with pytest.raises(ImageTooSmall, match="smaller than sr_x4's 192x192"):
        cut_pairs(np.zeros((150, 300, 3), np.uint8), TASKS["sr_x4"], np.random.default_rng(), 1)
    with pytest.raises(UserError, match="HxWx3 uint8"):
        cut_pairs(np.zeros((100, 100), np.uint8), TASKS["derain"], np.random.default_rng(), 1)
    with pytest.raises(UserError, match="sigma"):
        GaussianNoise(-1.0)
