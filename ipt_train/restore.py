"""The work behind ``ipt-train restore``: run a checkpoint's task over image files and folders.

Each input image is decoded to RGB (``ipt_data.decode``), restored by tiled inference
(:mod:`ipt_train.tiling`), rounded to uint8 and written as PNG under the output folder, atomically
(an output file is either complete or absent). Folders are searched recursively and their
relative layout is kept; a file given directly is written as ``<stem>.png``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ipt_data import (
    UserError,
    decode_image,
    encode_image,
    get_task,
    image_files,
    progress_bar,
    read_bytes,
    write_bytes_atomic,
)
from ipt_train.checkpoint import load_model, slot_for_task
from ipt_train.configs import RESTORE_DEVICE
from ipt_train.distributed import pick_device
from ipt_train.tilegrid import TileConfig
from ipt_train.tiling import restore_tiled


def collect_inputs(inputs: Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """(image file, output path relative to the output folder) for files and folders."""
    jobs: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():  # listed as every command lists a folder of images
            found = image_files(item)
            jobs += [(path, path.relative_to(item).with_suffix(".png")) for path in found]
        elif item.is_file():
            jobs.append((item, Path(item.stem + ".png")))
        else:
            raise UserError(f"{item}: no such file or folder")
    names = [name for _, name in jobs]
    if len(set(names)) != len(names):
        clash = next(name for name in names if names.count(name) > 1)
        raise UserError(f"two inputs would both be written to {clash}; restore them separately")
    return jobs


def restore_image(
    model: torch.nn.Module, rgb: np.ndarray, slot: int, scale: int, tiles: TileConfig
) -> np.ndarray:
    """HxWx3 uint8 -> (sH)x(sW)x3 uint8 through tiled inference on the model's device."""
    device = next(model.parameters()).device
    x = torch.tensor(rgb, device=device).permute(2, 0, 1).float()  # copy: [3, H, W]
    y = restore_tiled(model, x, slot, scale, tiles)
    return y.clamp(0, 255).round().byte().permute(1, 2, 0).cpu().numpy()


def restore_files(
    checkpoint: str | Path,
    task_name: str,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    tiles: TileConfig | None = None,
    device: str = RESTORE_DEVICE,
    num_heads: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Restore every input image with the checkpoint's ``task_name`` slot; returns the outputs.

    Everything a user can get wrong (task, inputs, output folder, device, checkpoint, an
    unreadable image among the inputs) is found before the first output is written, so a failed
    call leaves no partial set of outputs behind."""
    task = get_task(task_name)
    jobs = collect_inputs(inputs)
    _check_output_folder(Path(out_dir))
    model = load_model(checkpoint, num_heads).to(pick_device(device))
    slot = slot_for_task(model.cfg, task)
    for source, _ in jobs:  # decoding is cheap next to the model: fail before writing anything
        decode_image(read_bytes(source), str(source))
    tiles = replace(tiles or TileConfig(), tile=model.cfg.patch_size)
    written = []
    for source, name in progress_bar(
        jobs, desc=f"restore {task.name}", unit="image", enabled=progress
    ):
        rgb = decode_image(read_bytes(source), str(source))
        restored = restore_image(model, rgb, slot, model.cfg.scales[slot], tiles)
        write_bytes_atomic(Path(out_dir) / name, encode_image(restored, ".png"))
        written.append(Path(out_dir) / name)
    return written


def _check_output_folder(out_dir: Path) -> None:
    """The output folder, or its nearest existing ancestor, must be a folder."""
    existing = next(p for p in (out_dir, *out_dir.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{out_dir}: cannot be the output folder, {existing} is a file")
