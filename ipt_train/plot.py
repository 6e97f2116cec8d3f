"""``ipt-train plot``: a run's loss curves, and a bicubic-vs-model comparison grid, as PNGs.

Both are rendered in memory and written atomically (a reader never sees half a PNG).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ipt_data import (
    UserError,
    decode_image,
    downscale,
    get_task,
    mod_crop,
    psnr_y,
    read_bytes,
    ssim_y,
    upscale,
    write_bytes_atomic,
)
from ipt_train.checkpoint import load_model, slot_for_task
from ipt_train.configs import LOSS_WINDOW
from ipt_train.restore import restore_image
from ipt_train.tilegrid import TileConfig

PLOTTED = ("step", "task", "l1", "supcon")  # the log.csv columns the plot reads


def read_log(run: str | Path) -> list[dict]:
    path = Path(run) / "log.csv"
    if not path.is_file():
        raise UserError(f"{path}: no training log here (is {run} an ipt-train run folder?)")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = sorted(set(PLOTTED) - set(reader.fieldnames or ()))
        if missing:
            raise UserError(f"{path}: not an ipt-train log (no column {', '.join(missing)})")
        rows = [row for row in reader if _complete(row)]
    if not rows:
        raise UserError(f"{path}: the log has no steps yet")
    return rows


def _complete(row: dict) -> bool:
    """False for a row cut short (a run killed while writing it): it is left out."""
    try:
        int(row["step"]), float(row["l1"]), float(row["supcon"])
    except (TypeError, ValueError):
        return False
    return bool(row["task"])


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` values (the first points average fewer)."""
    sums = np.cumsum(np.insert(values.astype(np.float64), 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def plot_losses(run: str | Path, out: str | Path | None = None, window: int = LOSS_WINDOW) -> Path:
    """Per-task L1 and SupCon against the step (raw, faint; smoothed, solid) -> ``RUN/loss.png``."""
    plt = pyplot()
    rows = read_log(run)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    plotted = ("l1", "supcon") if any(float(row["supcon"]) for row in rows) else ("l1",)
    for task in sorted({row["task"] for row in rows}):
        mine = [row for row in rows if row["task"] == task]
        steps = np.array([int(row["step"]) for row in mine])
        for axis, key in zip(axes, plotted, strict=False):
            values = np.array([float(row[key]) for row in mine])
            marker = "o" if len(steps) == 1 else None  # a lone step is no line
            (line,) = axis.plot(steps, smooth(values, window), label=task, marker=marker)
            axis.plot(steps, values, color=line.get_color(), alpha=0.2, linewidth=0.8)
    titles = ("L1 loss (pixels on the 0..255 scale)", "SupCon loss")
    for axis, title in zip(axes, titles, strict=True):
        axis.set(title=title, xlabel="step")
        axis.grid(alpha=0.3)
    axes[0].legend(title="task")
    if len(plotted) == 1:  # fine-tuning: SupCon weight 0 by default
        axes[1].set(xticks=[], yticks=[])
        axes[1].text(0.5, 0.5, "not used in this run (weight 0)", ha="center", va="center")
    figure.suptitle(
        f"{Path(run).resolve().name}: faint, each step of a task; solid, the mean of its last "
        f"{window} steps"
    )
    out = Path(out) if out else Path(run) / "loss.png"
    write_bytes_atomic(out, figure_png(figure))
    return out


def comparison_grid(
    checkpoint: str | Path, task_name: str, images: list[str | Path], out: str | Path
) -> list[dict]:
    """For each HR image a row of three panels at their own pixels, HR | MATLAB bicubic | model,
    each titled (the image's name; each output's Y-PSNR and Y-SSIM, shave = scale), written as
    a PNG; returns those scores per image (SR tasks only)."""
    task = get_task(task_name)
    if task.scale == 1:
        raise UserError("the comparison grid is for SR tasks (bicubic is the baseline)")
    if not images:
        raise UserError("the comparison grid needs at least one HR image (--grid-image)")
    model = load_model(checkpoint)
    slot, s = slot_for_task(model.cfg, task), task.scale
    names = {"bicubic": f"MATLAB bicubic ×{s}", "model": f"model ({Path(checkpoint).name})"}
    rows, scores = [], []
    for path in images:
        hr = mod_crop(decode_image(read_bytes(path), str(path)), s)
        lr = downscale(hr, s)
        outputs = {
            "bicubic": upscale(lr, s),
            "model": restore_image(model, lr, slot, s, TileConfig()),
        }
        row, panels = {"image": Path(path).stem}, [(hr, f"{Path(path).stem}\nHR")]
        for key, output in outputs.items():
            row |= {key: psnr_y(output, hr, s), f"{key}_ssim": ssim_y(output, hr, s)}
            scored = f"Y-PSNR {row[key]:.2f} dB, Y-SSIM {row[f'{key}_ssim']:.4f}"
            panels.append((output, f"{names[key]}\n{scored}"))
        scores.append(row)
        rows.append(panels)
    write_bytes_atomic(out, render_panels(rows))
    return scores


PANEL_GAP, TITLE_HEIGHT, TITLE_POINTS = 8, 34, 9  # pixels, pixels (two lines), font size


def render_panels(rows: list[list[tuple[np.ndarray, str]]]) -> bytes:
    """PNG bytes of titled panels, one list per row, each image drawn at its own pixels (no
    resampling: an SR comparison must not be smoothed by the figure)."""
    plt = pyplot()
    width = max(
        sum(image.shape[1] for image, _ in row) + PANEL_GAP * (len(row) - 1) for row in rows
    )
    heights = [max(image.shape[0] for image, _ in row) + TITLE_HEIGHT for row in rows]
    total = sum(heights) + PANEL_GAP * (len(rows) - 1)
    figure = plt.figure(figsize=(width / 100, total / 100), dpi=100, facecolor="white")
    top = total
    for row, height in zip(rows, heights, strict=True):
        left = 0
        for image, title in row:
            h, w = image.shape[:2]
            box = (left / width, (top - TITLE_HEIGHT - h) / total, w / width, h / total)
            axis = figure.add_axes(box)
            axis.imshow(image, interpolation="nearest", aspect="auto")
            axis.set_axis_off()
            axis.set_title(title, fontsize=TITLE_POINTS, pad=4, loc="left")
            left += w + PANEL_GAP
        top -= height + PANEL_GAP
    return figure_png(figure)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display is needed or opened)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(figure) -> bytes:
    """The figure as PNG bytes at 100 dpi (one figure inch = 100 pixels); the figure is closed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    pyplot().close(figure)
    return buffer.getvalue()
