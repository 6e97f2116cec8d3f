"""``ipt-train tables``: the IPT paper's Tables 1-4 (H. Chen et al., CVPR 2021) on a folder of
benchmark sets, in the paper's layout (docs/evaluation.md#ipt-train-tables).

* Table 1, super-resolution x2/x3/x4 on Set5, Set14, B100 and Urban100: per scale a Bicubic row
  and a model row, a column per set.
* Table 2, colour denoising at sigma 30 and 50 on CBSD68 and Urban100: a column per set and
  sigma, a noisy-input row and a model row.
* Table 3, deraining on Rain100L: an input column and a model column, a PSNR row and an SSIM row.
* Table 4, generalisation: Table 2 at sigma 10 and 70, noise levels no task trains on, run by the
  heads of sigma 30 and 50 (their slots of a 6-task checkpoint, or their ``--ckpt-for``
  checkpoints) unless ``denoise_10`` / ``denoise_70`` have checkpoints of their own.

Scores are PSNR (dB) and SSIM on Y, as ``ipt-train eval`` computes them: every cell is one call
of :func:`ipt_train.evaluate.evaluate_restorer`, and the input rows are ``eval --baseline``'s.
Everything a user can get wrong (options, a named set that is missing, a set that is malformed
or holds a bad file, the JSON path) is found before anything is evaluated.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from ipt_data import (
    TASKS,
    BenchImage,
    GaussianNoise,
    Task,
    UserError,
    file_in_the_way,
    progress_bar,
    write_bytes_atomic,
)
from ipt_train.checkpoint import load_model
from ipt_train.configs import EvalConfig, TablesConfig
from ipt_train.distributed import pick_device
from ipt_train.evaluate import (
    PerImage,
    Restorer,
    baseline_restorer,
    benchmark_images,
    evaluate_restorer,
    model_restorer,
)

SR_SETS = ("Set5", "Set14", "B100", "Urban100")
NOISE_SETS = ("CBSD68", "Urban100")
RAIN_SET = "Rain100L"
SETS = (*SR_SETS, "CBSD68", RAIN_SET)  # every set a table reads, in the order of the tables
# Table 4's noise levels, run by the slot (head and tail) of the trained sigma nearest them.
UNSEEN_NOISE = (
    Task("denoise_10", TASKS["denoise_30"].index, GaussianNoise(10.0)),
    Task("denoise_70", TASKS["denoise_50"].index, GaussianNoise(70.0)),
)
TITLES = {
    1: "Table 1: super-resolution, PSNR (dB) / SSIM on Y",
    2: "Table 2: colour image denoising, PSNR (dB) / SSIM on Y",
    3: "Table 3: image deraining on Rain100L, on Y",
    4: "Table 4: generalisation to unseen noise levels, PSNR (dB) / SSIM on Y",
}
INPUT_ROWS = {1: "Bicubic", 2: "Noisy input", 3: "Input", 4: "Noisy input"}


@dataclass(frozen=True)
class Cell:
    """One evaluation of the tables: a set under one task, in one table's column."""

    table: int
    set_name: str
    task: Task

    @property
    def column(self) -> str:
        """The column's heading: the set, and the noise level in the denoising tables."""
        noise = self.task.corruption
        if isinstance(noise, GaussianNoise):
            return f"{self.set_name} σ={noise.sigma:g}"
        return self.set_name


CELLS = (
    *(Cell(1, name, TASKS[f"sr_x{scale}"]) for scale in (2, 3, 4) for name in SR_SETS),
    *(Cell(2, name, TASKS[f"denoise_{sigma}"]) for name in NOISE_SETS for sigma in (30, 50)),
    Cell(3, RAIN_SET, TASKS["derain"]),
    *(Cell(4, name, task) for name in NOISE_SETS for task in UNSEEN_NOISE),
)


@dataclass(frozen=True)
class Planned:
    """A cell to evaluate: its checked images and the checkpoint of its model row (or None)."""

    cell: Cell
    images: list[BenchImage]
    checkpoint: str | None


def run_tables(config: TablesConfig, note: Callable[[str], None]) -> dict:
    """Evaluate every cell of the tables whose set is in ``config.bench`` (``note`` receives
    the sets left out) and write the results to ``config.json`` if given. Returns ``{"bench",
    "sets", "models": {task: checkpoint}, "cells": [{"table", "set", "task", "scale", "column",
    "input": means, "model": means or None}]}``, the means those of ``ipt-train eval --json``
    plus the image count."""
    sets, plan = plan_tables(config, note)
    results = {
        "bench": str(config.bench),
        "sets": sets,
        "models": {p.cell.task.name: p.checkpoint for p in plan if p.checkpoint},
        "cells": evaluate_plan(plan, config.evaluation),
    }
    if config.json:
        write_bytes_atomic(config.json, (json.dumps(results, indent=2) + "\n").encode())
    return results


def plan_tables(
    config: TablesConfig, note: Callable[[str], None]
) -> tuple[list[str], list[Planned]]:
    """(the sets to evaluate, the :class:`Planned` cells). The options, the sets and every
    file in them are checked here, before anything is evaluated; a checkpoint is read only
    when its rows come. The sets left out are noted once all checks have passed."""
    named = named_checkpoints(config)
    check_json_path(config.json)
    bench = Path(config.bench)
    sets = present_sets(bench, config.sets)
    checked: dict[tuple, list[BenchImage]] = {}  # a set's four noise cells read one list

    def images(cell: Cell) -> list[BenchImage]:
        folder = (cell.set_name, cell.task.scale, cell.task.name == "derain")
        if folder not in checked:  # checking decodes every file: once per set and reading
            checked[folder] = benchmark_images(cell.task, bench / cell.set_name)
        return checked[folder]

    plan = [Planned(cell, images(cell), None) for cell in CELLS if cell.set_name in sets]
    if not config.baseline:
        plan = [replace(p, checkpoint=checkpoint_of(p.cell.task, config, named)) for p in plan]
    absent = [name for name in SETS if name not in sets]
    if absent and config.sets is None:
        note(f"note: no {', '.join(absent)} in {bench}: left out of the tables")
    return sets, plan


def named_checkpoints(config: TablesConfig) -> dict[str, str]:
    """``--ckpt-for``'s {task name: checkpoint}, after checking that the options name models
    (or ``--baseline``, alone), known tasks, each once, and files that exist."""
    if config.baseline == bool(config.checkpoint or config.checkpoint_for):
        raise UserError("give --ckpt and/or --ckpt-for TASK=CKPT, or --baseline alone")
    pairs = [_task_and_checkpoint(item) for item in config.checkpoint_for]
    named = dict(pairs)
    if len(named) != len(pairs):
        raise UserError("--ckpt-for names a task more than once")
    for path in [config.checkpoint, *named.values()]:
        if path and not Path(path).is_file():
            raise UserError(f"{path}: no such checkpoint file")
    if not config.baseline:
        pick_device(config.evaluation.device)  # a bad device is an error now, not after hours
    return named


def _task_and_checkpoint(item: str) -> tuple[str, str]:
    task, _, path = item.partition("=")
    known = [*TASKS, *(task.name for task in UNSEEN_NOISE)]
    if not path or task not in known:
        raise UserError(f"--ckpt-for {item!r}: give TASK=CKPT, TASK one of {', '.join(known)}")
    return task, path


def checkpoint_of(task: Task, config: TablesConfig, named: dict[str, str]) -> str | None:
    """The checkpoint of ``task``'s model row: its own ``--ckpt-for``, else (Table 4's noise
    levels) that of the trained task whose slot runs it, else ``--ckpt``; None: no model row."""
    trained = next(name for name, other in TASKS.items() if other.index == task.index)
    return named.get(task.name) or named.get(trained) or config.checkpoint


def check_json_path(path: str | None) -> None:
    """A JSON output path that cannot be written is an error before any evaluation."""
    if path is None:
        return
    blocking = file_in_the_way(Path(path).absolute().parent)
    if Path(path).is_dir() or blocking is not None:
        raise UserError(f"{path}: cannot write the JSON there ({blocking or path} is in the way)")


def present_sets(bench: Path, names: str | None) -> list[str]:
    """The sets to evaluate, in table order: those named (comma-separated; each must be a
    folder in ``bench``), or every set found in ``bench``."""
    if not bench.is_dir():
        raise UserError(f"{bench}: {'is not a folder' if bench.exists() else 'no such folder'}")
    if names is None:
        found = [name for name in SETS if (bench / name).is_dir()]
        if not found:
            raise UserError(f"{bench}: holds none of the sets {', '.join(SETS)}")
        return found
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in SETS]
    if unknown or not wanted:
        raise UserError(f"--sets {names!r}: the sets are {', '.join(SETS)}")
    for name in wanted:
        if not (bench / name).is_dir():
            raise UserError(f"{bench / name}: no such folder (named by --sets)")
    return [name for name in SETS if name in wanted]


def evaluate_plan(plan: list[Planned], config: EvalConfig) -> list[dict]:
    """Every planned cell's input row, then the model rows, under one progress bar."""
    quiet = replace(config, progress=False)
    total = sum(len(p.images) * (2 if p.checkpoint else 1) for p in plan)
    with progress_bar(total=total, desc="tables", unit="image", enabled=config.progress) as bar:
        tick = _ticker(bar)
        inputs = [_cell_means(baseline_restorer(p.cell.task), p, quiet, tick) for p in plan]
        models = _model_rows(plan, quiet, tick)
    return [_cell_result(*cell) for cell in zip(plan, inputs, models, strict=True)]


def _model_rows(plan: list[Planned], config: EvalConfig, tick: PerImage) -> list[dict | None]:
    """The model row of each planned cell, each checkpoint loaded once and in turn."""
    rows: list[dict | None] = [None] * len(plan)
    for checkpoint in dict.fromkeys(p.checkpoint for p in plan if p.checkpoint):
        model = load_model(checkpoint).to(pick_device(config.device))
        for index, p in enumerate(plan):
            if p.checkpoint == checkpoint:
                restore = model_restorer(model, p.cell.task, config.tiles)
                rows[index] = _cell_means(restore, p, config, tick)
    return rows


def _cell_means(restore: Restorer, planned: Planned, config: EvalConfig, tick: PerImage) -> dict:
    """One cell's means (and image count) under ``restore``: ``eval``'s evaluation."""
    report = evaluate_restorer(restore, planned.cell.task, planned.images, config, tick)
    means = {key: value for key, value in report.items() if key not in ("task", "images")}
    return {"images": len(report["images"]), **means}


def _ticker(bar) -> PerImage:
    def tick(restore, pair, output) -> dict[str, float]:
        bar.update()
        return {}

    return tick


def _cell_result(planned: Planned, inputs: dict, model: dict | None) -> dict:
    cell = planned.cell
    return {
        "table": cell.table,
        "set": cell.set_name,
        "task": cell.task.name,
        "scale": cell.task.scale,
        "column": cell.column,
        "input": inputs,
        "model": model,
    }


def format_tables(results: dict) -> str:
    """The tables of :func:`run_tables`' results as Markdown in the paper's layout: PSNR to 2
    decimals, SSIM to 4, a cell the model row has no checkpoint for as "–"."""
    blocks = []
    for table in sorted({cell["table"] for cell in results["cells"]}):
        cells = [cell for cell in results["cells"] if cell["table"] == table]
        rows = {1: _sr_rows, 3: _derain_rows}.get(table, _noise_rows)(cells)
        blocks.append("\n".join([f"### {TITLES[table]}", "", *rows, *_model_note(cells, results)]))
    return "\n\n".join(blocks) + "\n"


def _sr_rows(cells: list[dict]) -> list[str]:
    """Table 1: a column per set, a Bicubic and a model row per scale."""
    sets = list(dict.fromkeys(cell["set"] for cell in cells))
    lines = _header(["Method", "Scale", *sets])
    for scale in (2, 3, 4):
        by_set = {cell["set"]: cell for cell in cells if cell["scale"] == scale}
        for method, label in (("input", INPUT_ROWS[1]), ("model", "Model")):
            if any(cell[method] for cell in by_set.values()):
                scores = [_scores(by_set[name][method]) for name in sets]
                lines.append(_row([label, f"×{scale}", *scores]))
    return lines


def _noise_rows(cells: list[dict]) -> list[str]:
    """Tables 2 and 4: a column per set and noise level, an input and a model row."""
    lines = _header(["Method", *(cell["column"] for cell in cells)])
    for method, label in (("input", INPUT_ROWS[cells[0]["table"]]), ("model", "Model")):
        if any(cell[method] for cell in cells):
            lines.append(_row([label, *(_scores(cell[method]) for cell in cells)]))
    return lines


def _derain_rows(cells: list[dict]) -> list[str]:
    """Table 3: a column per method (the input, the model), a PSNR and an SSIM row."""
    (cell,) = cells
    methods = [method for method in ("input", "model") if cell[method]]
    labels = {"input": INPUT_ROWS[3], "model": "Model"}
    lines = _header(["Method", *(labels[method] for method in methods)])
    lines.append(_row(["PSNR (dB)", *(f"{cell[method]['psnr_y']:.2f}" for method in methods)]))
    lines.append(_row(["SSIM", *(f"{cell[method]['ssim_y']:.4f}" for method in methods)]))
    return lines


def _scores(means: dict | None) -> str:
    return "–" if means is None else f"{means['psnr_y']:.2f} / {means['ssim_y']:.4f}"


def _header(names: list[str]) -> list[str]:
    return [_row(names), _row(["---"] * len(names))]


def _row(values: Iterable[str]) -> str:
    return "| " + " | ".join(values) + " |"


def _model_note(cells: list[dict], results: dict) -> list[str]:
    """The line under a table naming the checkpoint(s) of its model row, if it has one."""
    tasks_of: dict[str, list[str]] = {}
    for cell in cells:
        checkpoint = results["models"].get(cell["task"]) if cell["model"] else None
        if checkpoint and cell["task"] not in tasks_of.get(checkpoint, []):
            tasks_of.setdefault(checkpoint, []).append(cell["task"])
    if len(tasks_of) == 1:
        return ["", f"Model: `{next(iter(tasks_of))}`."]
    named = [f"`{path}` ({', '.join(tasks)})" for path, tasks in tasks_of.items()]
    return ["", f"Model: {'; '.join(named)}."] if named else []
