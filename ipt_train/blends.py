"""Comparing tile blends: their scores, their seams and their cost (docs/evaluation.md).

A tile seam is an abrupt change of the output along the lines where tiles begin or end their
contribution. ``seam_index`` measures it without needing a seam-free reference: the image is
restored twice, the second time with the tile grid shifted by half a stride, so that the lines
of one grid fall inside the tiles of the other. The index is the energy of the second
difference across each grid's own lines (the two pixels on either side of each line) over the
energy across the same lines in the other output, which has the same picture and the same
model there but no tile edge. Without seams it is 1 (up to the model's own noise); seams push
it above, whatever the picture.

``compare_blends`` evaluates a checkpoint on a benchmark folder once per blend, each time with
``ipt-train eval``'s own evaluation (:func:`ipt_train.evaluate.evaluate_restorer`) adding the
seam index and the tile count of each image, and reports per blend the mean Y-PSNR / Y-SSIM,
the mean seam index and the forward passes per input megapixel.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ipt_data import get_task, rgb_to_y
from ipt_train.checkpoint import load_model
from ipt_train.configs import EvalConfig
from ipt_train.distributed import pick_device
from ipt_train.evaluate import (
    EvalPair,
    Restorer,
    TiledModel,
    benchmark_images,
    evaluate_restorer,
    model_restorer,
)
from ipt_train.tilegrid import BLENDS, TileConfig, grid_stride, tile_count, tile_lines


def line_energy(y: np.ndarray, lines: tuple[list[int], list[int]]) -> float:
    """Sum of the squared second difference of the image ``y`` [H, W] across the (row, column)
    ``lines``: a line p lies between pixels p-1 and p, and both count."""
    y = y.astype(np.float64)
    across_cols = (y[:, :-2] - 2 * y[:, 1:-1] + y[:, 2:]) ** 2  # centred on columns 1..W-2
    across_rows = (y[:-2] - 2 * y[1:-1] + y[2:]) ** 2
    on_rows = _beside(lines[0], y.shape[0])[1:-1]
    on_cols = _beside(lines[1], y.shape[1])[1:-1]
    return float(across_cols[:, on_cols].sum() + across_rows[on_rows].sum())


def _beside(lines: list[int], length: int) -> np.ndarray:
    """[length] bool: the pixels on either side of each line."""
    marked = np.zeros(length, dtype=bool)
    for p in lines:
        marked[max(p - 1, 0) : p + 1] = True
    return marked


def seam_index(
    restore: Restorer,
    image: np.ndarray,
    tiles: TileConfig,
    scale: int,
    restored: np.ndarray | None = None,
) -> float:
    """Seams of restoring ``image`` (H x W x 3) with ``restore`` tiled as ``tiles``: the line
    energy of each of two grids half a stride apart over the other output's at the same lines
    (Y channel); 1 without seams. ``restored``: ``restore(image)`` where the caller has it."""
    height, width = image.shape[:2]
    shift = grid_stride(tiles) // 2
    shifted_input = np.pad(image, ((shift, 0), (shift, 0), (0, 0)), mode="symmetric")
    plain = rgb_to_y(restore(image) if restored is None else restored)
    shifted = rgb_to_y(restore(shifted_input))[shift * scale :, shift * scale :]

    def lines(offset: int) -> tuple[list[int], list[int]]:
        return tuple(
            [p - offset * scale for p in tile_lines(tiles, n + offset, scale) if p > offset * scale]
            for n in (height, width)
        )

    own = line_energy(plain, lines(0)) + line_energy(shifted, lines(shift))
    other = line_energy(shifted, lines(0)) + line_energy(plain, lines(shift))
    return own / max(other, 1e-12)


def compare_blends(
    checkpoint: str | Path,
    task_name: str,
    data: str | Path,
    tiles: TileConfig | None = None,
    device: str = "cpu",
) -> dict[str, dict[str, float]]:
    """{blend: {"psnr_y", "ssim_y", "seam_index", "passes_per_megapixel"}} of the checkpoint's
    SR ``task_name`` on the benchmark folder ``data``, every blend with the rest of ``tiles``;
    scores and seam indices are means over the images."""
    task = get_task(task_name)
    images = benchmark_images(task, Path(data))
    model = load_model(checkpoint).to(pick_device(device))
    results = {}
    for blend in BLENDS:
        config = EvalConfig(tiles=replace(tiles or TileConfig(), blend=blend), progress=False)
        restore = model_restorer(model, task, config.tiles)
        report = evaluate_restorer(restore, task, images, config, per_image=_seams_and_cost)
        results[blend] = {key: report[key] for key in ("psnr_y", "ssim_y", "seam_index")}
        # the ratio of the means is the ratio of the sums: passes over all input pixels
        results[blend]["passes_per_megapixel"] = 1e6 * report["tile_passes"] / report["pixels"]
    return results


def _seams_and_cost(restore: TiledModel, pair: EvalPair, output: np.ndarray) -> dict[str, float]:
    """The seam index of one evaluated image, its tile passes and input pixels."""
    height, width = pair.input.shape[:2]
    return {
        "seam_index": seam_index(restore, pair.input, restore.tiles, restore.scale, output),
        "tile_passes": tile_count(restore.tiles, height, width),
        "pixels": height * width,
    }
