"""Benchmark folders, read one way by every command that reads them (docs/benchmark-sets.md):
``ipt-train eval``, ``tables``, ``bench --compare-blends``, ``finetune --clean`` and ``--pairs``,
and ``ipt-data rain-stats``.

* **A folder of images** holds every file with an image extension under it, recursively, sorted
  by its path relative to the folder: :func:`ipt_data.sources.walk_sources`, the rule a build
  finds its sources by. The clean images of a benchmark set are those of ``DIR/HR/`` where it
  exists, else of ``DIR``.
* **A super-resolution set** adds, for scale s, ``DIR/LR_bicubic/X<s>/<name>x<s>.png`` as the
  LR input of ``DIR/HR/<name>.<ext>``. Where ``LR_bicubic/X<s>/`` exists it must hold the LR
  image of every HR image; where it does not, the set is HR-only and the caller makes the LR
  input (MATLAB-exact bicubic, :func:`read_pair`).
* **Rain pairs** are ``rain-N.<ext>`` and ``norain-N.<ext>`` anywhere under the folder (image
  extensions as above, any case), paired by the number N (``rain-001`` with ``norain-1``): in
  the same folder, else wherever in the tree that N is unique, so both Rain100L's flat layout and
  the one with the rainy images in a subfolder read. Pairs are one to one; files named otherwise
  are not read.

Nothing here imports torch: ``ipt-data rain-stats`` uses it too.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ipt_data.decode import decode_image
from ipt_data.errors import UserError
from ipt_data.fileio import read_bytes
from ipt_data.imresize import downscale, mod_crop
from ipt_data.sources import walk_sources

HR_FOLDER = "HR"
LR_FOLDER = "LR_bicubic"
_RAIN_NAME = re.compile(r"^(no)?rain-(\d+)\.[^.]+$", re.IGNORECASE)


@dataclass(frozen=True)
class BenchImage:
    """One image of a benchmark folder: its clean file and, where the folder holds one, its
    degraded file (an LR image, a rainy image); ``name`` is the path of the degraded file (else
    of the clean file) relative to the folder listed, without its extension."""

    name: str
    clean: Path
    degraded: Path | None = None


def image_files(folder: str | Path) -> list[Path]:
    """Every image file under ``folder``, recursively, sorted by relative path; a ``folder``
    that is missing, not a folder, or holds no image is a :class:`UserError`."""
    sources = walk_sources(folder)
    return [sources.root / image_id for image_id in sources.ids]


def clean_images(data: str | Path) -> list[BenchImage]:
    """The images of the benchmark set ``data``: those of ``data/HR/`` where it exists, else of
    ``data`` (a set with ``LR_bicubic/`` but no ``HR/`` is an error: its LR images would be read
    as clean ones)."""
    data = Path(data)
    folder = data / HR_FOLDER
    if not folder.is_dir():
        if (data / LR_FOLDER).is_dir():
            raise UserError(f"{data}: has {LR_FOLDER}/ but no {HR_FOLDER}/ folder of HR images")
        folder = data
    return [BenchImage(_stem(path, folder), path) for path in image_files(folder)]


def sr_images(data: str | Path, scale: int) -> list[BenchImage]:
    """The HR images of the set ``data`` with their published LR images at ``scale`` where the
    set has ``LR_bicubic/X<scale>/`` (one for every HR image), else without (HR-only)."""
    images = clean_images(data)
    lr_folder = Path(data) / LR_FOLDER / f"X{scale}"
    if not lr_folder.is_dir():
        return images
    return [replace(image, degraded=_lr_file(lr_folder, image, scale)) for image in images]


def _lr_file(lr_folder: Path, image: BenchImage, scale: int) -> Path:
    path = lr_folder / f"{image.name}x{scale}.png"
    if not path.is_file():
        raise UserError(f"{path}: missing; {lr_folder} holds no LR image of {image.clean.name}")
    return path


def rain_images(folder: str | Path) -> list[BenchImage]:
    """The ``rain-N`` / ``norain-N`` pairs under ``folder`` (module doc), sorted by N; a file
    without its partner, or a clean image claimed by two rainy ones, is a :class:`UserError`."""
    root = Path(folder)
    rainy, clean = _numbered(image_files(root))
    if not rainy and not clean:
        raise UserError(f"{root}: no rain-N / norain-N image pairs found")
    images = [
        BenchImage(_stem(path, root), _partner(path, clean.get(number, [])), path)
        for number in sorted(rainy)
        for path in rainy[number]
    ]
    _check_one_to_one(images, [path for paths in clean.values() for path in paths])
    return images


def _numbered(paths: list[Path]) -> tuple[dict[int, list[Path]], dict[int, list[Path]]]:
    """The rainy and the clean files among ``paths``, each by its number N."""
    rainy: dict[int, list[Path]] = {}
    clean: dict[int, list[Path]] = {}
    for path in paths:
        match = _RAIN_NAME.match(path.name)
        if match:
            (clean if match.group(1) else rainy).setdefault(int(match.group(2)), []).append(path)
    return rainy, clean


def _partner(rain_path: Path, candidates: list[Path]) -> Path:
    same_folder = [path for path in candidates if path.parent == rain_path.parent]
    if len(same_folder) == 1:
        return same_folder[0]
    if len(candidates) == 1:
        return candidates[0]
    problem = "no matching norain-N image" if not candidates else "several norain-N candidates"
    raise UserError(f"{rain_path}: {problem}")


def _check_one_to_one(images: list[BenchImage], clean_files: list[Path]) -> None:
    uses = Counter(image.clean for image in images)
    lonely = [path for path in clean_files if path not in uses]
    if lonely:
        raise UserError(f"{lonely[0]}: no matching rain-N image ({len(lonely)} unmatched)")
    shared = next((path for path, count in uses.items() if count > 1), None)
    if shared is not None:
        claims = ", ".join(str(image.degraded) for image in images if image.clean == shared)
        raise UserError(f"{shared}: the clean partner of several rainy images ({claims})")


def _stem(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def read_image(path: Path) -> np.ndarray:
    """The image file decoded to HxWx3 uint8 RGB (:func:`ipt_data.decode.decode_image`)."""
    return decode_image(read_bytes(path), str(path))


def read_pair(image: BenchImage, scale: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(degraded, clean) HxWx3 uint8 arrays of ``image``. The clean image is cropped to a
    multiple of ``scale`` (top left kept); the degraded file must be that size divided by
    ``scale``. An SR image without a degraded file gets the MATLAB-exact bicubic downscale of
    the cropped clean image."""
    clean = mod_crop(read_image(image.clean), scale)
    if image.degraded is None:
        return downscale(clean, scale), clean
    return _read_degraded(image, clean.shape, scale), clean


def check_images(images: list[BenchImage], scale: int = 1) -> None:
    """Decode every file of ``images`` and check the size of each degraded one, as
    :func:`read_pair` would, keeping no pixels: a bad file is then an error before a long
    evaluation starts rather than in its middle."""
    for image in images:
        clean = mod_crop(read_image(image.clean), scale)
        if image.degraded is not None:
            _read_degraded(image, clean.shape, scale)


def _read_degraded(image: BenchImage, clean_shape: tuple[int, ...], scale: int) -> np.ndarray:
    degraded = read_image(image.degraded)
    expected = (clean_shape[0] // scale, clean_shape[1] // scale)
    if degraded.shape[:2] != expected:
        (height, width), (want_h, want_w) = degraded.shape[:2], expected
        raise UserError(
            f"{image.degraded}: is {width}x{height}; {image.clean.name} needs {want_w}x{want_h}"
        )
    return degraded
