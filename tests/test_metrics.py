"""PSNR / SSIM as the published tables compute them: Y conversion, shaving, rounding, and SSIM
checked against scikit-image's implementation of the same definition."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from ipt_data.errors import UserError
from ipt_data.metrics import psnr, psnr_rgb, psnr_y, rgb_to_y, ssim, ssim_rgb, ssim_y


def skimage_ssim(a: np.ndarray, b: np.ndarray, **kwargs) -> float:
    return structural_similarity(
        a,
        b,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
        **kwargs,
    )


@pytest.fixture(scope="module")
def clean_and_noisy(sample_photos):
    clean = sample_photos["astronaut"][100:260, 150:330]
    noise = np.random.default_rng(0).normal(0, 20, clean.shape)
    return clean, np.clip(clean + noise, 0, 255).round().astype(np.uint8)


def test_rgb_to_y_is_the_bt601_studio_range_luma():
    pixels = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]])
    y = rgb_to_y(pixels.astype(np.uint8))
    assert y.dtype == np.float64
    np.testing.assert_allclose(y[0], [16, 235, 16 + 65.481, 16 + 128.553, 16 + 24.966])


def test_psnr_values_and_shave():
    a = np.full((20, 30), 100.0)
    assert psnr(a, a) == float("inf")
    assert psnr(a, a + 1) == pytest.approx(20 * np.log10(255))
    b = a.copy()
    b[:2] += 50  # damage only the top two rows
    assert psnr(a, b, shave=2) == float("inf")
    assert psnr(a, b, shave=1) == pytest.approx(10 * np.log10(255**2 / (50**2 * 28 / (18 * 28))))


def test_ssim_matches_scikit_image(clean_and_noisy):
    clean, noisy = clean_and_noisy
    y_clean, y_noisy = rgb_to_y(clean), rgb_to_y(noisy)
    ours = ssim(y_clean, y_noisy)
    assert 0.3 < ours < 0.95
    assert ours == pytest.approx(skimage_ssim(y_clean, y_noisy), abs=1e-9)
    shaved = ssim(y_clean, y_noisy, shave=4)
    assert shaved == pytest.approx(skimage_ssim(y_clean[4:-4, 4:-4], y_noisy[4:-4, 4:-4]), abs=1e-9)
    assert ssim(y_clean, y_clean) == pytest.approx(1.0)


def test_y_and_rgb_conveniences(clean_and_noisy):
    clean, noisy = clean_and_noisy
    assert psnr_y(clean, noisy, shave=3) == psnr(rgb_to_y(clean), rgb_to_y(noisy), shave=3)
    assert ssim_y(clean, noisy) == ssim(rgb_to_y(clean), rgb_to_y(noisy))
    mse = np.mean((clean.astype(float) - noisy) ** 2)
    assert psnr_rgb(clean, noisy) == pytest.approx(10 * np.log10(255**2 / mse))
    expected = skimage_ssim(clean.astype(float), noisy.astype(float), channel_axis=2)
    assert ssim_rgb(clean, noisy) == pytest.approx(expected, abs=1e-9)


def test_float_outputs_are_rounded_and_clipped_first(clean_and_noisy):
    clean, noisy = clean_and_noisy
    blurred = noisy.astype(np.float64) + np.random.default_rng(1).uniform(-0.49, 0.49, noisy.shape)
    blurred[0, 0] = [-40.0, 300.0, 128.2]  # out of range values clip to 0 / 255
    rounded = np.clip(np.round(blurred), 0, 255).astype(np.uint8)
    assert psnr_y(blurred, clean) == psnr_y(rounded, clean)
    assert ssim_y(blurred, clean) == ssim_y(rounded, clean)
    assert psnr_rgb(blurred, clean) == psnr_rgb(rounded, clean)
    assert ssim_rgb(blurred, clean) == ssim_rgb(rounded, clean)


@pytest.mark.parametrize("metric", [psnr_y, ssim_y, psnr_rgb, ssim_rgb])
def test_shape_mismatch_names_both_shapes(metric):
    with pytest.raises(UserError, match=r"\(20, 30, 3\) and \(20, 31, 3\)"):
        metric(np.zeros((20, 30, 3), np.uint8), np.zeros((20, 31, 3), np.uint8))


def test_other_user_errors():
    with pytest.raises(UserError, match="smaller than the 11x11 window"):
        ssim(np.zeros((10, 30)), np.zeros((10, 30)))
    with pytest.raises(UserError, match="cannot shave 5 px"):
        psnr(np.zeros((10, 30)), np.zeros((10, 30)), shave=5)
    with pytest.raises(UserError, match=r"HxWx3 RGB image, got shape \(20, 30\)"):
        psnr_y(np.zeros((20, 30), np.uint8), np.zeros((20, 30), np.uint8))
    with pytest.raises(UserError, match="single-channel"):
        ssim(np.zeros((20, 30, 3)), np.zeros((20, 30, 3)))
