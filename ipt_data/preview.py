"""A labelled picture of one image under every task's corruption: see the data, not only read it.

One row per task: the clean target region, and the task's input for the same region (SR inputs
shown enlarged by pixel repetition, so that their true resolution stays visible).
"""

from __future__ import annotations

import cv2
import numpy as np

from ipt_data.errors import UserError
from ipt_data.seeding import image_rng
from ipt_data.tasks import TASKS, Task

VIEW = 192  # side of the region shown, in clean pixels: one sr_x4 target
_ALIGN = 12  # the view starts on a multiple of every SR factor (2, 3, 4)
_LABEL_WIDTH = 230
_GAP = 6
_HEADER = 28
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_INK = (20, 20, 20)


def render_preview(image: np.ndarray, seed: int = 0, tasks: list[Task] | None = None) -> np.ndarray:
    """``image`` (HxWx3 uint8, at least 192 px each way) -> an RGB uint8 grid with one labelled
    row per task (default: all six) showing the clean centre region and the task's input."""
    tasks = list(TASKS.values()) if tasks is None else tasks
    height, width = image.shape[:2]
    if height < VIEW or width < VIEW:
        raise UserError(f"preview needs an image of at least {VIEW}x{VIEW}, got {width}x{height}")
    top = (height - VIEW) // 2 // _ALIGN * _ALIGN
    left = (width - VIEW) // 2 // _ALIGN * _ALIGN
    clean = image[top : top + VIEW, left : left + VIEW]
    rows = [_header_row()]
    for task in tasks:
        shown_input = _corrupted_view(image, task, seed, top, left)
        rows.append(_row(_label(task), clean, shown_input))
    return np.concatenate(rows, axis=0)


def _corrupted_view(image: np.ndarray, task: Task, seed: int, top: int, left: int) -> np.ndarray:
    """The task's input over the view, from the whole-image corruption, enlarged to VIEW px."""
    scale = task.scale
    height, width = image.shape[:2]
    rng, _ = image_rng(seed, "preview", task.name)
    corrupted = task.corruption(image[: height - height % scale, : width - width % scale], rng)
    side = VIEW // scale
    region = corrupted[top // scale : top // scale + side, left // scale : left // scale + side]
    return np.repeat(np.repeat(region, scale, axis=0), scale, axis=1)


def _label(task: Task) -> list[str]:
    """Task name, then what its input is, in words (Hershey fonts draw ASCII only)."""
    params = task.corruption.params()
    kind = params["kind"]
    if kind == "matlab_bicubic_downscale":
        factor = params["factor"]
        words = [f"MATLAB bicubic, 1/{factor} size", f"shown enlarged x{factor}"]
    elif kind == "gaussian_noise":
        words = [f"Gaussian noise, sigma {params['sigma']:g}", "per pixel and channel"]
    elif kind == "rain" and params.get("model") == "real_streaks":
        words = ["rain: real streak layers"]
    elif kind == "rain":
        words = ["heavy rain" if params["heavy"] else "light rain", "(Yang et al. streaks)"]
    else:  # a corruption of someone's own: its scalar settings
        words = [kind.replace("_", " ")]
        words += [
            f"{k} {v}"
            for k, v in params.items()
            if k != "kind" and isinstance(v, (int, float, str))
        ]
    return [task.name, *words]


def _row(label_lines: list[str], clean: np.ndarray, shown_input: np.ndarray) -> np.ndarray:
    label = np.full((VIEW, _LABEL_WIDTH, 3), 255, np.uint8)
    for line_number, text in enumerate(label_lines):
        scale, thickness = (0.7, 2) if line_number == 0 else (0.45, 1)
        origin = (8, 30 + 24 * line_number)
        cv2.putText(label, text, origin, _FONT, scale, _INK, thickness, cv2.LINE_AA)
    gap = np.full((VIEW, _GAP, 3), 255, np.uint8)
    row = np.concatenate([label, clean, gap, shown_input, gap], axis=1)
    return np.concatenate([row, np.full((_GAP, row.shape[1], 3), 255, np.uint8)], axis=0)


def _header_row() -> np.ndarray:
    width = _LABEL_WIDTH + 2 * (VIEW + _GAP)
    header = np.full((_HEADER, width, 3), 255, np.uint8)
    columns = (("clean target", _LABEL_WIDTH + 8), ("task input", _LABEL_WIDTH + VIEW + _GAP + 8))
    for text, x in columns:
        cv2.putText(header, text, (x, 20), _FONT, 0.55, _INK, 1, cv2.LINE_AA)
    return header
