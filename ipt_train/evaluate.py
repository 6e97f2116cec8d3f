"""``ipt-train eval``: PSNR / SSIM of a checkpoint on the standard benchmark layouts
(docs/evaluation.md).

* SR (``sr_x2/3/4``): ``DIR/HR/*.png`` (or a plain folder of HR images), with the LR inputs from
  ``DIR/LR_bicubic/X{s}/{name}x{s}.png`` where present, else made by MATLAB-exact bicubic from
  the HR mod-cropped to a multiple of s; Y channel, ``s`` pixels shaved at each border.
* Denoising (``denoise_30/50``): every clean image in DIR (or ``DIR/HR``) plus Gaussian noise
  seeded from (seed, image index), clipped to 0..255 and not rounded; Y (as IPT) and RGB (as
  DnCNN-style tables).
* Deraining: ``rain-N.png`` / ``norain-N.png`` pairs (Rain100L); Y channel.

Outputs are rounded to 0..255 before scoring; the model runs over overlapping 48x48 tiles
(:mod:`ipt_train.tiling`). ``baseline=True`` scores the input itself (bicubic-upscaled for SR),
the row every table starts from.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ipt_data.decode import decode_image
from ipt_data.errors import UserError
from ipt_data.fileio import read_bytes
from ipt_data.imresize import downscale, mod_crop, upscale
from ipt_data.metrics import psnr_rgb, psnr_y, ssim_rgb, ssim_y
from ipt_data.progress import progress_bar
from ipt_data.sources import is_image_name
from ipt_data.tasks import Task, get_task
from ipt_train.checkpoint import load_model, slot_for_task
from ipt_train.configs import EvalConfig
from ipt_train.distributed import pick_device
from ipt_train.restore import restore_image


@dataclass(frozen=True)
class EvalPair:
    name: str
    input: np.ndarray  # HxWx3, uint8 (or float 0..255 for noisy inputs)
    target: np.ndarray  # sH x sW x 3 uint8


def evaluate(
    checkpoint: str | Path | None, task_name: str, data: str | Path, config: EvalConfig
) -> dict:
    """Scores per image and their means: ``{"task", "images": [{name, psnr_y, ssim_y, ...}],
    "psnr_y", "ssim_y"[, "psnr_rgb", "ssim_rgb"]}``. ``checkpoint`` None scores the baseline
    (the input itself, bicubic-upscaled for SR)."""
    task = get_task(task_name)
    pairs = list(eval_pairs(task, Path(data), config.noise_seed))
    restore = _baseline(task) if checkpoint is None else _model_runner(checkpoint, task, config)
    rows = []
    for pair in progress_bar(
        pairs, desc=f"eval {task.name}", unit="image", enabled=config.progress
    ):
        rows.append({"name": pair.name, **score(restore(pair.input), pair.target, task)})
    means = {key: float(np.mean([row[key] for row in rows])) for key in rows[0] if key != "name"}
    return {"task": task.name, "images": rows, **means}


def score(output: np.ndarray, target: np.ndarray, task: Task) -> dict[str, float]:
    """The table's metrics of one output (rounded to 0..255 inside the metric functions)."""
    shave = task.scale if task.scale > 1 else 0
    scores = {"psnr_y": psnr_y(output, target, shave), "ssim_y": ssim_y(output, target, shave)}
    if task.name.startswith("denoise"):
        scores |= {"psnr_rgb": psnr_rgb(output, target), "ssim_rgb": ssim_rgb(output, target)}
    return scores


def _model_runner(checkpoint, task: Task, config: EvalConfig):
    model = load_model(checkpoint).to(pick_device(config.device))
    slot = slot_for_task(model.cfg, task)
    tiles = replace(config.tiles, tile=model.cfg.patch_size)
    return lambda image: restore_image(model, image, slot, task.scale, tiles)


def _baseline(task: Task):
    if task.scale == 1:
        return lambda image: image
    return lambda image: upscale(image, task.scale)


def eval_pairs(task: Task, data: Path, noise_seed: int = 0) -> Iterator[EvalPair]:
    """The (input, target) pairs of ``task`` on the benchmark folder ``data``."""
    if not data.is_dir():
        raise UserError(f"{data}: {'not a folder' if data.exists() else 'no such folder'}")
    if task.name == "derain":
        yield from rain_pairs(data)
        return
    images = _images(data / "HR" if (data / "HR").is_dir() else data)
    for index, path in enumerate(images):
        clean = decode_image(read_bytes(path), str(path))
        if task.scale > 1:
            yield _sr_pair(data, path, clean, task.scale)
        else:
            sigma = task.corruption.sigma
            rng = np.random.default_rng([noise_seed, index])
            noisy = np.clip(clean + rng.normal(0.0, sigma, clean.shape), 0, 255)
            yield EvalPair(path.stem, noisy, clean)


def _sr_pair(data: Path, hr_path: Path, hr: np.ndarray, scale: int) -> EvalPair:
    hr = mod_crop(hr, scale)
    lr_path = data / "LR_bicubic" / f"X{scale}" / f"{hr_path.stem}x{scale}.png"
    if lr_path.is_file():
        lr = decode_image(read_bytes(lr_path), str(lr_path))
        if lr.shape[0] * scale != hr.shape[0] or lr.shape[1] * scale != hr.shape[1]:
            raise UserError(f"{lr_path}: {lr.shape[:2]} is not the HR size / {scale}")
    else:
        lr = downscale(hr, scale)
    return EvalPair(hr_path.stem, lr, hr)


def rain_pairs(data: Path) -> Iterator[EvalPair]:
    rainy = sorted(data.glob("rain-*.png"), key=lambda p: _number(p.stem))
    if not rainy:
        raise UserError(f"{data}: no rain-*.png here; expected Rain100L-style rain-N/norain-N")
    for path in rainy:
        clean_path = path.with_name(f"no{path.name}")
        if not clean_path.is_file():
            raise UserError(f"{path}: no clean partner {clean_path.name}")
        rain = decode_image(read_bytes(path), str(path))
        clean = decode_image(read_bytes(clean_path), str(clean_path))
        if rain.shape != clean.shape:
            raise UserError(f"{path}: size {rain.shape[:2]} differs from {clean_path.name}")
        yield EvalPair(path.stem, rain, clean)


def _number(stem: str) -> tuple[int, str]:
    digits = re.findall(r"\d+", stem)
    return (int(digits[-1]) if digits else -1, stem)


def _images(folder: Path) -> list[Path]:
    images = sorted(p for p in folder.iterdir() if p.is_file() and is_image_name(p.name))
    if not images:
        raise UserError(f"{folder}: no images here")
    return images


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
