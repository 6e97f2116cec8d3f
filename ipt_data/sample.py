"""The built-in sample: the real colour photographs that scikit-image ships.

Used by the demo, the benchmarks and the tests, since nothing can be downloaded at run time.
scikit-image is an optional dependency (extra ``sample``); asking for the sample without it is a
clear error, not a silent empty list.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ipt_data.errors import UserError
from ipt_data.fileio import encode_image, write_bytes_atomic

# name -> the scikit-image loader; stereo_motorcycle gives two views, both are used.
PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "motorcycle_right")


def sample_photographs() -> dict[str, np.ndarray]:
    """Return scikit-image's six colour photographs as ``name -> HxWx3 uint8 RGB``."""
    try:
        from skimage import data
    except ImportError as error:
        raise UserError(
            "the built-in sample needs scikit-image: pip install 'ipt-toolkit[sample]'"
        ) from error
    left, right, _disparity = data.stereo_motorcycle()
    photos = {
        "astronaut": data.astronaut(),
        "chelsea": data.chelsea(),
        "coffee": data.coffee(),
        "rocket": data.rocket(),
        "motorcycle_left": left,
        "motorcycle_right": right,
    }
    return {name: np.ascontiguousarray(photos[name][..., :3]) for name in PHOTO_NAMES}


def imagenet_like_jpegs(size: tuple[int, int] = (500, 375), quality: int = 90) -> dict[str, bytes]:
    """The sample photographs resized to a typical ImageNet size (``size`` = width, height) and
    JPEG-encoded at ``quality``: the fixed input of the benchmarks."""
    jpegs = {}
    for name, photo in sample_photographs().items():
        resized = cv2.resize(photo, size, interpolation=cv2.INTER_AREA)
        jpegs[name] = encode_image(resized, ".jpg", (cv2.IMWRITE_JPEG_QUALITY, quality))
    return jpegs


def write_sample_tree(out: str | Path, quality: int = 95) -> list[Path]:
    """Write the sample photographs (full size, JPEG) as an ImageNet-style tree
    ``out/nXXXXXXXX/<name>.JPEG``, two photographs per class folder; returns the paths.

    ``out`` must be absent, empty or an earlier sample tree: writing photographs into a shard
    set or a folder of one's own would mix them with what is there (a UserError instead)."""
    photos = sample_photographs()
    relative = [f"n{number // 2:08d}/{name}.JPEG" for number, name in enumerate(photos)]
    _check_sample_folder(Path(out), set(relative))
    for name, path in zip(photos, relative, strict=True):
        jpeg = encode_image(photos[name], ".jpg", (cv2.IMWRITE_JPEG_QUALITY, quality))
        write_bytes_atomic(Path(out) / path, jpeg)
    return [Path(out) / path for path in relative]


def _check_sample_folder(out: Path, sample_files: set[str]) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"{out}: is a file, not a folder")
    for path in sorted(out.rglob("*")):
        if not path.is_dir() and path.relative_to(out).as_posix() not in sample_files:
            raise UserError(
                f"{out}: holds other files ({path.relative_to(out)}); write the sample into a new "
                "or empty folder"
            )
