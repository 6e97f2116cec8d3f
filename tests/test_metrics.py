"""PSNR / SSIM as the published tables compute them: Y conversion, shaving, rounding, and SSIM
checked against scikit-image's implementation of the same definition.

The float64 comparisons allow what two computations of the same formula may differ by
(tests/numerics.py): their sums' rounding, scaled by how much the formula amplifies it.
"""

from __future__ import annotations

import numpy as np
import pytest
from numerics import assert_within, tolerance, tolerance_of
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


def psnr_limit(pixels: int, value: float) -> float:
    """Two float64 PSNRs, 10·log10(255²/MSE), of the same images: the MSE's mean of ``pixels``
    terms is off by a relative error that moves the PSNR by 10/ln 10 times it; log10 itself is
    good to 4 units in the last place of ``value`` (NumPy's vectorised log10)."""
    mean = tolerance(pixels, 10 / np.log(10), dtype=np.float64)
    return mean + tolerance(4, value, dtype=np.float64)


def ssim_limit(pixels: int) -> float:
    """Two float64 SSIMs (ours, scikit-image's) of the same images: each 11x11 window's sums of
    products of values up to 255², whose differences (the variances) count against a
    denominator of at least C2 = (0.03·255)²; then the mean over ``pixels`` values near 1."""
    return tolerance(121 + pixels, 255**2 / (0.03 * 255) ** 2, dtype=np.float64)


@pytest.fixture(scope="module")
def clean_and_noisy(sample_photos):
    clean = sample_photos["astronaut"][100:260, 150:330]
    noise = np.random.default_rng(0).normal(0, 20, clean.shape)
    return clean, np.clip(clean + noise, 0, 255).round().astype(np.uint8)


@pytest.mark.numerics
def test_rgb_to_y_is_the_bt601_studio_range_luma():
    pixels = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]])
    y = rgb_to_y(pixels.astype(np.uint8))
    assert y.dtype == np.float64
    expected = np.array([16, 235, 16 + 65.481, 16 + 128.553, 16 + 24.966])
    assert_within(y[0], expected, tolerance_of(expected, 4))  # 3 products and the offset


@pytest.mark.numerics
def test_psnr_values_and_shave():
    a = np.full((20, 30), 100.0)
    assert psnr(a, a) == float("inf")
    expected = 20 * np.log10(255)
    assert_within(psnr(a, a + 1), expected, psnr_limit(600, expected))
    b = a.copy()
    b[:2] += 50  # damage only the top two rows
    assert psnr(a, b, shave=2) == float("inf")
    expected = 10 * np.log10(255**2 / (50**2 * 28 / (18 * 28)))
    assert_within(psnr(a, b, shave=1), expected, psnr_limit(18 * 28, expected))


@pytest.mark.numerics
def test_ssim_matches_scikit_image(clean_and_noisy):
    clean, noisy = clean_and_noisy
    y_clean, y_noisy = rgb_to_y(clean), rgb_to_y(noisy)
    ours = ssim(y_clean, y_noisy)
    assert 0.3 < ours < 0.95
    assert_within(ours, skimage_ssim(y_clean, y_noisy), ssim_limit(y_clean.size))
    shaved = ssim(y_clean, y_noisy, shave=4)
    expected = skimage_ssim(y_clean[4:-4, 4:-4], y_noisy[4:-4, 4:-4])
    assert_within(shaved, expected, ssim_limit(y_clean.size))
    # exactly 1: with equal images each window's numerator and denominator are the same sums
    assert ssim(y_clean, y_clean) == 1.0


@pytest.mark.numerics
def test_y_and_rgb_conveniences(clean_and_noisy):
    clean, noisy = clean_and_noisy
    assert psnr_y(clean, noisy, shave=3) == psnr(rgb_to_y(clean), rgb_to_y(noisy), shave=3)
    assert ssim_y(clean, noisy) == ssim(rgb_to_y(clean), rgb_to_y(noisy))
    mse = np.mean((clean.astype(float) - noisy) ** 2)
    expected = 10 * np.log10(255**2 / mse)
    assert_within(psnr_rgb(clean, noisy), expected, psnr_limit(clean.size, expected))
    expected = skimage_ssim(clean.astype(float), noisy.astype(float), channel_axis=2)
    assert_within(ssim_rgb(clean, noisy), expected, ssim_limit(clean.size))


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
