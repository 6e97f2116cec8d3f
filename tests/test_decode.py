"""decode_image: every odd input becomes HxWx3 uint8 RGB; unreadable ones name their reason."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from ipt_data.decode import decode_image
from ipt_data.errors import UnreadableImage


@pytest.fixture(scope="module")
def photo(sample_photos) -> np.ndarray:
    return sample_photos["chelsea"][:120, :160]


def _pil_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_rgb_jpeg_decodes_to_rgb_order(photo):
    data = _pil_bytes(Image.fromarray(photo), "JPEG", quality=95)
    decoded = decode_image(data, "a.JPEG")
    assert decoded.shape == photo.shape and decoded.dtype == np.uint8
    # JPEG is lossy; channel order must be RGB (a BGR mix-up would be far off).
    assert np.abs(decoded.astype(int) - photo).mean() < 3


def test_png_named_jpeg_is_decoded_by_content(photo):
    data = _pil_bytes(Image.fromarray(photo), "PNG")
    np.testing.assert_array_equal(decode_image(data, "really_a_png.JPEG"), photo)


def test_grayscale_palette_and_rgba_become_rgb(photo):
    gray = photo[..., 1]
    decoded = decode_image(_pil_bytes(Image.fromarray(gray), "PNG"), "g.png")
    np.testing.assert_array_equal(decoded, np.repeat(gray[..., None], 3, axis=2))
    rgba = np.dstack([photo, np.full(photo.shape[:2], 7, np.uint8)])
    np.testing.assert_array_equal(
        decode_image(_pil_bytes(Image.fromarray(rgba), "PNG"), "a"), photo
    )
    palette = Image.fromarray(photo).quantize(16)
    decoded = decode_image(_pil_bytes(palette, "PNG"), "p.png")
    np.testing.assert_array_equal(decoded, np.asarray(palette.convert("RGB")))


def test_sixteen_bit_gray_and_rgb_keep_the_high_byte(photo):
    wide = photo.astype(np.uint16) * 256 + 200  # high byte = photo, low byte would round up
    _ok, rgb16 = cv2.imencode(".png", cv2.cvtColor(wide, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(decode_image(rgb16.tobytes(), "w.png"), photo)
    _ok, gray16 = cv2.imencode(".png", wide[..., 0])
    np.testing.assert_array_equal(
        decode_image(gray16.tobytes(), "g16.png"), np.repeat(photo[..., :1], 3, axis=2)
    )


def test_cmyk_jpeg_is_converted(photo):
    cmyk = Image.fromarray(photo).convert("CMYK")
    decoded = decode_image(_pil_bytes(cmyk, "JPEG", quality=95), "cmyk.JPEG")
    assert decoded.shape == photo.shape
    assert np.abs(decoded.astype(int) - photo).mean() < 6


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"this is a text file, not a picture\n" * 20, "not_an_image"),
    ],
)
def test_unreadable_inputs_name_their_reason(data, reason):
    with pytest.raises(UnreadableImage) as caught:
        decode_image(data, "bad.JPEG")
    assert caught.value.reason == reason and "bad.JPEG" in str(caught.value)


def test_truncated_jpeg_is_refused(photo):
    data = _pil_bytes(Image.fromarray(photo), "JPEG", quality=90)
    with pytest.raises(UnreadableImage) as caught:
        decode_image(data[: len(data) // 2], "cut.JPEG")
    assert caught.value.reason == "truncated"


def test_oversized_image_is_refused_before_decoding():
    # A tiny file that claims a huge canvas: a decompression bomb.
    bomb = _pil_bytes(Image.new("L", (12_000, 12_000)), "PNG")
    with pytest.raises(UnreadableImage) as caught:
        decode_image(bomb, "bomb.png")
    assert caught.value.reason == "too_large"
