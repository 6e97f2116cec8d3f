"""``ipt-train eval``: PSNR / SSIM of a checkpoint on the standard benchmark layouts
(docs/evaluation.md), the folders read by :mod:`ipt_data.benchsets`.

* SR (``sr_x2/3/4``): the HR images of DIR (``DIR/HR/``, or DIR itself), with the LR inputs
  ``DIR/LR_bicubic/X{s}/{name}x{s}.png`` where the set has them, else made by MATLAB-exact
  bicubic from the HR mod-cropped to a multiple of s; Y channel, ``s`` pixels shaved at each
  border.
* Denoising (``denoise_30/50``, or a :class:`Task` of another sigma): every clean image of DIR
  plus Gaussian noise seeded from (seed, image name), clipped to 0..255 and not rounded; Y (as
  IPT) and RGB (as DnCNN-style tables).
* Deraining: ``rain-N`` / ``norain-N`` pairs (Rain100L); Y channel.

Outputs are rounded to 0..255 before scoring; the model runs over overlapping 48x48 tiles
(:mod:`ipt_train.tiling`). The baseline scores the input itself (bicubic-upscaled for SR), the
row every table starts from. :func:`evaluate_restorer` is the one evaluation loop: ``eval``,
``tables`` and the blend comparison all score through it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ipt_data import (
    BenchImage,
    Task,
    check_images,
    clean_images,
    get_task,
    progress_bar,
    psnr_rgb,
    psnr_y,
    rain_images,
    read_image,
    read_pair,
    sr_images,
    ssim_rgb,
    ssim_y,
    upscale,
)
from ipt_train.checkpoint import load_model, slot_for_task
from ipt_train.configs import EvalConfig
from ipt_train.distributed import pick_device
from ipt_train.restore import restore_image
from ipt_train.tilegrid import TileConfig

Restorer = Callable[[np.ndarray], np.ndarray]  # H x W x 3 input -> sH x sW x 3 output


@dataclass(frozen=True)
class EvalPair:
    name: str
    input: np.ndarray  # HxWx3, uint8 (or float 0..255 for noisy inputs)
    target: np.ndarray  # sH x sW x 3 uint8


PerImage = Callable[[Restorer, EvalPair, np.ndarray], dict[str, float]]


@dataclass(frozen=True)
class TiledModel:
    """A model's task slot run over whole images by tiled inference: H x W x 3 uint8 ->
    sH x sW x 3 uint8 (:func:`ipt_train.restore.restore_image`)."""

    model: torch.nn.Module
    slot: int
    scale: int
    tiles: TileConfig  # tile = the model's input size

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return restore_image(self.model, image, self.slot, self.scale, self.tiles)


def evaluate(
    checkpoint: str | Path | None,
    task_name: str,
    data: str | Path,
    config: EvalConfig,
) -> dict:
    """Scores per image and their means: ``{"task", "images": [{name, psnr_y, ssim_y, ...}],
    "psnr_y", "ssim_y"[, "psnr_rgb", "ssim_rgb"]}``. ``checkpoint`` None scores the baseline
    (the input itself, bicubic-upscaled for SR)."""
    task = get_task(task_name)
    images = benchmark_images(task, Path(data))
    if checkpoint is None:
        return evaluate_restorer(baseline_restorer(task), task, images, config)
    model = load_model(checkpoint).to(pick_device(config.device))
    return evaluate_restorer(model_restorer(model, task, config.tiles), task, images, config)


def evaluate_restorer(
    restore: Restorer,
    task: Task,
    images: list[BenchImage],
    config: EvalConfig,
    per_image: PerImage | None = None,
) -> dict:
    """The evaluation of ``restore`` on ``task``'s ``images`` of a benchmark folder
    (:func:`benchmark_images`), as :func:`evaluate` reports it, the images read one at a time;
    ``per_image(restore, pair, output)`` adds figures to each image's row (and so to the
    means)."""
    rows = []
    bar = progress_bar(images, desc=f"eval {task.name}", unit="image", enabled=config.progress)
    for image in bar:
        pair = eval_pair(task, image, config.noise_seed)
        output = restore(pair.input)
        row = {"name": pair.name, **score(output, pair.target, task)}
        rows.append(row | (per_image(restore, pair, output) if per_image else {}))
    means = {key: float(np.mean([row[key] for row in rows])) for key in rows[0] if key != "name"}
    return {"task": task.name, "images": rows, **means}


def score(output: np.ndarray, target: np.ndarray, task: Task) -> dict[str, float]:
    """The table's metrics of one output (rounded to 0..255 inside the metric functions)."""
    shave = task.scale if task.scale > 1 else 0
    scores = {"psnr_y": psnr_y(output, target, shave), "ssim_y": ssim_y(output, target, shave)}
    if task.name.startswith("denoise"):
        scores |= {"psnr_rgb": psnr_rgb(output, target), "ssim_rgb": ssim_rgb(output, target)}
    return scores


def model_restorer(model: torch.nn.Module, task: Task, tiles: TileConfig) -> TiledModel:
    """``model``'s slot for ``task`` (a UserError where it has none), tiled as ``tiles`` with
    tiles of the model's input size."""
    slot = slot_for_task(model.cfg, task)
    return TiledModel(model, slot, task.scale, replace(tiles, tile=model.cfg.patch_size))


def baseline_restorer(task: Task) -> Restorer:
    """The input row of the tables: the input itself, MATLAB-bicubic-upscaled for SR."""
    if task.scale == 1:
        return lambda image: image
    return lambda image: upscale(image, task.scale)


def benchmark_images(task: Task, data: Path) -> list[BenchImage]:
    """The images of ``task`` in the benchmark folder ``data`` (:mod:`ipt_data.benchsets`):
    rain pairs for deraining, HR (with LR where published) for SR, clean images for
    denoising. A bad layout, or a file that does not decode or is of the wrong size, is a
    UserError here, before anything is evaluated."""
    if task.name == "derain":
        images = rain_images(data)
    else:
        images = sr_images(data, task.scale) if task.scale > 1 else clean_images(data)
    check_images(images, task.scale)
    return images


def eval_pair(task: Task, image: BenchImage, noise_seed: int = 0) -> EvalPair:
    """The (input, target) pair of ``image``. A denoising input is ``clip(clean + N(0,
    sigma^2), 0, 255)`` in float64, not rounded, the noise drawn from :func:`noise_rng`."""
    if task.scale > 1 or image.degraded is not None:
        degraded, clean = read_pair(image, task.scale)
        return EvalPair(image.name, degraded, clean)
    clean = read_image(image.clean)
    rng = noise_rng(noise_seed, image.name)
    noisy = np.clip(clean + rng.normal(0.0, task.corruption.sigma, clean.shape), 0, 255)
    return EvalPair(image.name, noisy, clean)


def noise_rng(noise_seed: int, name: str) -> np.random.Generator:
    """The generator of the evaluation noise of the image called ``name`` (its path in the
    folder, without extension): seeded by ``noise_seed`` and the first 16 bytes of the name's
    sha256, so an image gets the same noise whatever else its folder holds."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()
    return np.random.default_rng([noise_seed, *np.frombuffer(digest[:16], "<u4").tolist()])


def format_table(report: dict) -> list[str]:
    """Per-image rows and the mean, as text lines."""
    keys = [key for key in report["images"][0] if key != "name"]
    width = max(8, *(len(row["name"]) for row in report["images"]))
    lines = [f"{'image':<{width}}  " + "  ".join(f"{key:>8}" for key in keys)]
    for row in [*report["images"], {"name": "mean", **{k: report[k] for k in keys}}]:
        lines.append(f"{row['name']:<{width}}  " + "  ".join(_cell(k, row[k]) for k in keys))
    return lines


def _cell(key: str, value: float) -> str:
    return f"{value:8.4f}" if key.startswith("ssim") else f"{value:8.2f}"
