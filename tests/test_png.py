"""The PNG writer and reader of ipt_data.png on real patches, with both PNG encoders (libdeflate
and ISA-L): every task's input and target round trip bit-exactly through OpenCV, Pillow,
webdataset and decode_png; the files are standard, the same pixels give the same bytes, and a
golden digest pins the default encoder (docs/png.md#determinism-and-pinning)."""

from __future__ import annotations

import hashlib
import io
import re
import struct
import subprocess
import sys
import tarfile
import zlib

import cv2
import deflate
import numpy as np
import pytest
from PIL import Image

from ipt_data.configs import PNG_ENCODERS
from ipt_data.errors import UserError
from ipt_data.patches import cut_pairs
from ipt_data.png import PngError, assemble_png, decode_png, encode_png, encoder_identity
from ipt_data.seeding import image_rng
from ipt_data.tasks import INPUT_SIZE, TASKS

# sha256 of encode_png(astronaut[64:160, 192:288]) and the identity it goes with. A change here
# means the PNG bytes changed (a new libdeflate, a change to the writer): see
# docs/png.md#determinism-and-pinning.
GOLDEN_SHA256 = "845f350868d0ed975ebe73e6980612ee9cf7788f687e0e7972713b9e67fe722d"
GOLDEN_IDENTITY = "ipt-png 1 (Up filter, libdeflate level 1, deflate 0.9.0, probe a2f7df1e8915)"


@pytest.fixture(scope="module")
def pairs(sample_photos) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """task -> (input, target) pairs cut as a build cuts them, from two photographs."""
    cut = {}
    for name, task in TASKS.items():
        cut[name] = []
        for photo in ("coffee", "astronaut"):
            rng, _ = image_rng(0, photo, name)
            cut[name] += [
                (p.input, p.target) for p in cut_pairs(sample_photos[photo], task, rng, 2)
            ]
    return cut


def opencv_rgb(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]


def chunks(data: bytes) -> list[tuple[bytes, bytes, int]]:
    """(type, body, stored CRC) of every chunk, read with struct alone."""
    found, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        found.append((kind, body, struct.unpack_from(">I", data, offset + 8 + length)[0]))
        offset += 12 + length
    return found


@pytest.mark.parametrize("encoder", PNG_ENCODERS)
@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_pair_round_trips_through_opencv_pillow_and_decode_png(pairs, name, encoder):
    for pair in pairs[name]:
        for image, side in zip(pair, (INPUT_SIZE, TASKS[name].target_size), strict=True):
            assert image.shape == (side, side, 3)
            data = encode_png(image, encoder)
            assert np.array_equal(opencv_rgb(data), image)
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), image)
            assert np.array_equal(decode_png(data), image)


@pytest.mark.parametrize("encoder", PNG_ENCODERS)
def test_webdataset_reads_the_pngs_as_written(pairs, tmp_path, encoder):
    import webdataset as wds

    shard, expected = tmp_path / "pairs.tar", {}
    with tarfile.open(shard, "w") as tar:
        for name, task_pairs in pairs.items():
            for number, (patch, target) in enumerate(task_pairs):
                key = f"{name}_{number}"
                expected[key] = (patch, target)
                for member, image in (("input.png", patch), ("target.png", target)):
                    data = encode_png(image, encoder)
                    info = tarfile.TarInfo(f"{key}.{member}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    dataset = wds.WebDataset([str(shard)], shardshuffle=False, empty_check=False).decode("rgb8")
    read = {sample["__key__"]: (sample["input.png"], sample["target.png"]) for sample in dataset}
    assert read.keys() == expected.keys()
    for key, (patch, target) in expected.items():
        assert read[key][0].dtype == np.uint8
        assert np.array_equal(read[key][0], patch) and np.array_equal(read[key][1], target)


@pytest.mark.parametrize("encoder", PNG_ENCODERS)
def test_the_file_is_a_standard_8_bit_rgb_png_with_up_filtered_rows(pairs, encoder):
    target = pairs["sr_x3"][0][1]
    data = encode_png(target, encoder)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    found = chunks(data)
    assert [kind for kind, _, _ in found] == [b"IHDR", b"IDAT", b"IEND"]
    for kind, body, crc in found:  # checked with Python's zlib, not the writer's libdeflate
        assert zlib.crc32(body, zlib.crc32(kind)) == crc
    assert struct.unpack(">IIBBBBB", found[0][1]) == (144, 144, 8, 2, 0, 0, 0)
    scanlines = np.frombuffer(zlib.decompress(found[1][1]), np.uint8).reshape(144, 1 + 144 * 3)
    assert (scanlines[:, 0] == 2).all()


@pytest.mark.parametrize("encoder", PNG_ENCODERS)
def test_the_same_pixels_give_the_same_bytes_whatever_their_memory_layout(sample_photos, encoder):
    view = sample_photos["coffee"][10:202, 20:212]  # a 192x192 view into the photograph
    assert not view.flags.c_contiguous
    data = encode_png(view, encoder)
    assert encode_png(view, encoder) == data
    assert encode_png(np.ascontiguousarray(view), encoder) == data
    assert encode_png(np.asfortranarray(view), encoder) == data


def test_the_two_encoders_write_other_bytes_and_say_so_in_their_identities(sample_photos):
    # ISA-L's bytes depend on the CPU class, so no golden digest can pin them on every machine
    # that runs these tests; what must hold everywhere is that the identities tell the two apart
    # (a set is never continued by the other) and that the pixels are the same.
    crop = sample_photos["astronaut"][64:160, 192:288]
    fast, portable = encode_png(crop, "isal"), encode_png(crop, "libdeflate")
    assert fast != portable
    assert np.array_equal(decode_png(fast), decode_png(portable))
    isal_identity = encoder_identity("isal")
    assert re.fullmatch(
        r"ipt-png 1 \(Up filter, ISA-L level 1, isal [0-9.]+, probe [0-9a-f]{12}\)", isal_identity
    )
    assert isal_identity != encoder_identity("libdeflate") == encoder_identity()


def test_an_unknown_encoder_and_a_missing_isal_are_clear_errors(sample_photos):
    crop = sample_photos["astronaut"][:48, :48]
    with pytest.raises(UserError, match="unknown PNG encoder 'zopfli'; known: libdeflate, isal"):
        encode_png(crop, "zopfli")
    # Without the isal package: a fresh interpreter in which importing it fails.
    script = (
        "import sys; sys.modules['isal'] = None\n"
        "import numpy as np\n"
        "from ipt_data.png import encode_png\n"
        "encode_png(np.zeros((48, 48, 3), np.uint8), 'isal')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "the PNG encoder 'isal' needs the isal package: pip install isal" in result.stderr


def test_a_golden_digest_pins_the_encoder_bytes_and_identity(sample_photos):
    crop = sample_photos["astronaut"][64:160, 192:288]
    digest = hashlib.sha256(encode_png(crop)).hexdigest()
    assert (digest, encoder_identity()) == (GOLDEN_SHA256, GOLDEN_IDENTITY), (
        f"the PNG encoder's bytes or identity changed (deflate is now {deflate.__version__}); "
        "see docs/png.md#determinism-and-pinning before updating the golden values"
    )


def foreign_pngs(image: np.ndarray) -> dict[str, bytes]:
    """PNGs of ``image`` that ipt_data.png did not write, or not in its layout."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    pillow = {}
    for mode in ("RGB", "L", "RGBA", "P"):
        buffer = io.BytesIO()
        Image.fromarray(image).convert(mode).save(buffer, "PNG")
        pillow[f"Pillow {mode}"] = buffer.getvalue()
    # Sub on every row but the first, which is Up: a stream that starts as this writer's does.
    rows = image.reshape(image.shape[0], -1)
    up_then_sub = np.empty((rows.shape[0], 1 + rows.shape[1]), np.uint8)
    up_then_sub[:, 0], up_then_sub[:, 1:4] = 1, rows[:, :3]
    np.subtract(rows[:, 3:], rows[:, :-3], out=up_then_sub[:, 4:])
    up_then_sub[0, 0], up_then_sub[0, 1:] = 2, rows[0]
    return {
        "OpenCV level 1": cv2.imencode(".png", image[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 1])[
            1
        ].tobytes(),
        "OpenCV 16-bit": cv2.imencode(".png", image[:, :, ::-1].astype(np.uint16) * 257)[
            1
        ].tobytes(),
        "OpenCV gray": cv2.imencode(".png", gray)[1].tobytes(),
        **pillow,
        "Up then Sub": assemble_png(image.shape[0], image.shape[1], zlib.compress(up_then_sub)),
        "ipt-png over 1024 wide": encode_png(np.tile(image[:8], (1, 24, 1))),
    }


def test_decode_png_reads_other_pngs_as_opencv_does(pairs):
    image = pairs["sr_x2"][0][1]
    files = foreign_pngs(image)
    for name, data in files.items():
        assert np.array_equal(decode_png(data), opencv_rgb(data)), name
    assert np.array_equal(decode_png(files["Up then Sub"]), image)


def test_corrupt_or_foreign_bytes_are_a_png_error(pairs):
    data = encode_png(pairs["denoise_30"][0][0])
    body = chunks(data)[1][1]
    at = data.index(b"IDAT") + 4 + len(body) // 2
    flipped = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
    with pytest.raises(PngError, match="CRC mismatch in its IDAT"):
        decode_png(flipped)
    garbled = bytearray(body)
    garbled[len(body) // 2] ^= 0xFF
    refit = assemble_png(48, 48, bytes(garbled))  # valid chunk CRCs around a broken zlib stream
    with pytest.raises(PngError, match="does not inflate"):
        decode_png(refit)
    with pytest.raises(PngError, match="runs past the end"):
        decode_png(data[: len(data) // 2])
    jpeg = cv2.imencode(".jpg", pairs["denoise_30"][0][0])[1].tobytes()
    with pytest.raises(PngError, match="no PNG signature"):
        decode_png(jpeg)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((48, 48, 3), np.float32),
        np.zeros((48, 48), np.uint8),
        np.zeros((48, 48, 4), np.uint8),
        np.zeros((0, 48, 3), np.uint8),
    ],
)
def test_encode_png_takes_only_hxwx3_uint8(array):
    with pytest.raises(ValueError, match="HxWx3 uint8 RGB"):
        encode_png(array)
