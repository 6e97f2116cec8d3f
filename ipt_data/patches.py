"""Aligned patch pairs: a 48×48 corrupted input and its 48s×48s clean target, cut at aligned
positions from the whole-image corruption (docs/corruptions.md), never by corrupting a bare
patch whose borders would come out wrong."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ipt_data.errors import UserError
from ipt_data.tasks import INPUT_SIZE, Task


class ImageTooSmall(UserError):
    """The image cannot hold one target crop of the task."""


@dataclass(frozen=True)
class PatchPair:
    input: np.ndarray  # 48x48x3 uint8, corrupted
    target: np.ndarray  # 48s x 48s x3 uint8, clean
    box: tuple[int, int, int, int]  # (top, left, height, width) of the target in source pixels


def cut_pairs(image: np.ndarray, task: Task, rng: np.random.Generator, n: int) -> list[PatchPair]:
    """Cut ``n`` aligned pairs for ``task`` from ``image`` (HxWx3 uint8), positions drawn
    uniformly from ``rng``. Raises :class:`ImageTooSmall` when no target crop fits."""
    _check_image(image)
    scale, target_side = task.scale, task.target_size
    height, width = image.shape[:2]
    if height < target_side or width < target_side:
        raise ImageTooSmall(
            f"image of {width}x{height} is smaller than {task.name}'s "
            f"{target_side}x{target_side} target crop"
        )
    # Positions on the input grid; the target starts at scale times the input position.
    tops = rng.integers(0, height // scale - INPUT_SIZE + 1, size=n).tolist()
    lefts = rng.integers(0, width // scale - INPUT_SIZE + 1, size=n).tolist()
    boxes = [
        (top * scale, left * scale, target_side, target_side)
        for top, left in zip(tops, lefts, strict=True)
    ]
    if not boxes:
        return []
    # [n, 48s, 48s, 3]: one copy of the n target crops (each pair gets a contiguous slice)
    targets = np.stack(
        [image[top : top + side, left : left + side] for top, left, side, _ in boxes]
    )
    if task.corruption.pointwise:  # corrupt the clean crops themselves, all in one call
        inputs = task.corruption(targets, rng)
    else:
        corrupted = task.corruption(image[: height - height % scale, : width - width % scale], rng)
        inputs = np.stack(
            [
                corrupted[top : top + INPUT_SIZE, left : left + INPUT_SIZE]
                for top, left in zip(tops, lefts, strict=True)
            ]
        )  # [n, 48, 48, 3]
    return [PatchPair(inputs[i], targets[i], box) for i, box in enumerate(boxes)]


def _check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise UserError(
            f"expected an HxWx3 uint8 RGB image, got shape {image.shape} and dtype {image.dtype}"
        )
