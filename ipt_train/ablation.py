"""The steps of ``pipelines/ablation`` that are not ``ipt-data`` or ``ipt-train`` commands
(docs/pipelines.md#pipelinesablation): the synthetic pair folders it trains and evaluates on, the
shard count of a data fraction, and its results table and plots.

What the pipeline writes under its output folder OUT, and ``report`` reads:

* ``eval/input/<task>.json``: ``ipt-train eval --baseline --json`` on the task's evaluation set
  (bicubic for SR, the noisy or rainy input otherwise);
* ``eval/<arm>/<task>/<step>.json``: ``ipt-train eval --json`` of ``arm`` fine-tuned for
  ``step`` steps on ``task``;
* an arm is ``scratch`` (fine-tuned from a random initialisation) or ``l<λ>-d<percent>``
  (fine-tuned from the model pretrained with SupCon weight λ on ``percent`` % of the shards);
* ``shards/manifest.json``, and ``shards-d<percent>/manifest.json`` for each percent below 100.

Every score in the table and the plots is the mean Y-PSNR of such a JSON, in dB.

Run as ``python -m ipt_train.ablation pairs|fraction|report``; only ``report`` (its plots, through
:mod:`ipt_train.plot`) imports matplotlib and torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import numpy as np

from ipt_data import (
    Corruption,
    GaussianNoise,
    UserError,
    UserErrorGroup,
    decode_image,
    encode_png,
    get_task,
    read_bytes,
    walk_sources,
    write_bytes_atomic,
)

SCRATCH = "scratch"
_PRETRAINED = re.compile(r"^l(?P<weight>[0-9.]+)-d(?P<percent>[0-9]+)$")


def write_pairs(
    src: str | Path,
    out: str | Path,
    corruption: Corruption,
    copies: int = 1,
    limit: int | None = None,
    seed: int = 0,
) -> int:
    """Write ``rain-N.png`` / ``norain-N.png`` pairs (the Rain100L layout that ``ipt-train eval
    --task derain`` and ``finetune --pairs`` read) into the new folder ``out``: for each of the
    first ``limit`` images under ``src`` (all, sorted, recursively), ``copies`` corrupted
    versions, each with ``numpy.random.default_rng([seed, image, copy])``, N counting from 1.
    ``out`` appears complete or not at all. Returns the number of pairs."""
    out = Path(out)
    if out.exists():
        raise UserError(f"{out} exists: pairs are written into a new folder")
    if copies < 1:
        raise UserError(f"copies must be at least 1, got {copies}")
    sources = walk_sources(src, limit)  # an empty or missing src is a UserError there
    partial = out.with_name(out.name + ".part")
    number = 0
    for index, image_id in enumerate(sources.ids):
        path = sources.root / image_id
        clean = decode_image(read_bytes(path), str(path))
        for copy in range(copies):
            number += 1
            corrupted = corruption(clean, np.random.default_rng([seed, index, copy]))
            write_bytes_atomic(partial / f"norain-{number}.png", encode_png(clean))
            write_bytes_atomic(partial / f"rain-{number}.png", encode_png(corrupted))
    partial.rename(out)
    return number


def fraction_shards(manifest: dict, percent: float) -> int:
    """How many of each task's shards make ``percent`` % of a set: the nearest whole number of
    the smallest task's shard count, at least 1."""
    if not 0 < percent <= 100:
        raise UserError(f"a data fraction is a percentage in (0, 100], got {percent}")
    return max(1, round(_shard_count(manifest) * percent / 100))


def arm_label(arm: str, out: Path) -> str:
    """Human name of an arm: from scratch, or pretrained with its λ and its share of the data
    (the samples of its shard set against the whole set's)."""
    if arm == SCRATCH:
        return "from scratch"
    match = _PRETRAINED.match(arm)
    if not match:
        raise UserError(f"unknown arm {arm!r}: expected {SCRATCH} or l<λ>-d<percent>")
    percent = int(match["percent"])
    data = "all shards"
    if percent < 100:
        whole, part = (_manifest(out / name) for name in ("shards", f"shards-d{percent}"))
        share = _samples(part) / _samples(whole)
        shards = f"{_shard_count(part)} of {_shard_count(whole)} shards"
        data = f"{percent} %: {shards}, {share:.0%} of the samples"
    return f"pretrained (λ {match['weight']}, {data})"


def psnr(out: Path, arm: str, task: str, step: int) -> float:
    """Mean Y-PSNR of ``arm`` fine-tuned ``step`` steps on ``task``."""
    return _mean_psnr(out / "eval" / arm / task / f"{step}.json")


def input_psnr(out: Path, task: str) -> float:
    """Mean Y-PSNR of ``task``'s input (the baseline row)."""
    return _mean_psnr(out / "eval" / "input" / f"{task}.json")


def _mean_psnr(path: Path) -> float:
    if not path.is_file():
        raise UserError(f"{path}: no such evaluation (run pipelines/ablation to the end first)")
    return float(json.loads(path.read_text())["psnr_y"])


def results_table(
    out: str | Path,
    steps: list[int],
    tasks: dict[str, str],
    main: str,
    ablate: list[str],
    ablation_task: str,
    pretrain_steps: int | None = None,
) -> str:
    """The Markdown of ``OUT/results.md``: (1) per task of ``tasks`` (name -> evaluation set),
    Y-PSNR of the input, and of ``scratch`` and ``main`` after each fine-tuning step count,
    ``main``'s cells with their difference to scratch; (2) where ``steps`` hold both s and
    s + ``pretrain_steps``, :func:`equal_steps_section`; (3) ``ablation_task`` after the last
    step count for scratch, ``main`` and each arm of ``ablate``, with the difference to
    scratch."""
    out = Path(out)
    last = steps[-1]
    lines = [
        "## Pretrained vs from scratch",
        "",
        "Y-PSNR in dB after each number of fine-tuning steps; in brackets, pretrained minus "
        "from scratch (Δ dB). Input: the score of the input itself (MATLAB bicubic for SR).",
        "",
        "| task | evaluated on | input | arm | " + " | ".join(f"{s} steps" for s in steps) + " |",
        "|---|---|---:|---|" + "---:|" * len(steps),
    ]
    for task, evaluated_on in tasks.items():
        scratch = [psnr(out, SCRATCH, task, step) for step in steps]
        pretrained = [psnr(out, main, task, step) for step in steps]
        head = f"| {task} | {evaluated_on} | {input_psnr(out, task):.2f} |"
        lines.append(f"{head} from scratch | " + " | ".join(f"{v:.2f}" for v in scratch) + " |")
        cells = [f"{p:.2f} ({p - s:+.2f})" for p, s in zip(pretrained, scratch, strict=True)]
        lines.append(f"| | | | {arm_label(main, out)} | " + " | ".join(cells) + " |")
    lines += equal_steps_section(out, steps, tasks, main, pretrain_steps)
    scratch = psnr(out, SCRATCH, ablation_task, last)
    lines += [
        "",
        f"## Pretraining ablations: {ablation_task} on {tasks[ablation_task]}, {last} "
        "fine-tuning steps",
        "",
        "| fine-tuned from | Y-PSNR (dB) | Δ vs from scratch (dB) |",
        "|---|---:|---:|",
        f"| {arm_label(SCRATCH, out)} | {scratch:.2f} | |",
    ]
    for arm in [main, *ablate]:
        value = psnr(out, arm, ablation_task, last)
        lines.append(f"| {arm_label(arm, out)} | {value:.2f} | {value - scratch:+.2f} |")
    return "\n".join(lines) + "\n"


def equal_steps_section(
    out: Path, steps: list[int], tasks: dict[str, str], main: str, pretrain_steps: int | None
) -> list[str]:
    """Markdown lines comparing ``main`` after s fine-tuning steps with from scratch after
    s + ``pretrain_steps``, for each s of ``steps`` whose sum is also in ``steps``: the same
    number of optimizer steps, which separates "pretrained" from "trained longer" (the
    pretrained arm was pretrained on the images it is fine-tuned on). None where no such pair."""
    pairs = [
        (s, s + pretrain_steps) for s in steps if pretrain_steps and s + pretrain_steps in steps
    ]
    if not pairs:
        return []
    lines = [
        "",
        f"## Equal training steps: pretrained ({pretrain_steps} pretraining steps) vs from scratch",
        "",
        f"Y-PSNR in dB of the pretrained arm after s fine-tuning steps and of from scratch after "
        f"s + {pretrain_steps}; Δ: pretrained minus from scratch.",
        "",
        "| task | s | pretrained, s steps | from scratch, s + pretraining steps | Δ dB |",
        "|---|---:|---:|---:|---:|",
    ]
    for task in tasks:
        for short, long in pairs:
            pretrained, scratch = psnr(out, main, task, short), psnr(out, SCRATCH, task, long)
            lines.append(
                f"| {task} | {short} | {pretrained:.2f} | {scratch:.2f} | "
                f"{pretrained - scratch:+.2f} |"
            )
    return lines


def plot_curves(
    out: str | Path,
    steps: list[int],
    tasks: dict[str, str],
    main: str,
    ablate: list[str],
    ablation_task: str,
) -> list[Path]:
    """``OUT/plots/<task>.png`` per task: Y-PSNR against fine-tuning steps, one curve per arm
    (scratch and ``main``), the input as a dashed line, and on ``ablation_task``'s plot each arm
    of ``ablate`` as one marker at the last step count. Returns the paths."""
    from ipt_train.plot import figure_png, pyplot  # matplotlib (and torch) only for the plots

    plt, out = pyplot(), Path(out)
    paths = []
    for task, evaluated_on in tasks.items():
        figure, axis = plt.subplots(figsize=(6.4, 4.4), constrained_layout=True)
        for arm in (SCRATCH, main):
            values = [psnr(out, arm, task, step) for step in steps]
            axis.plot(steps, values, marker="o", label=arm_label(arm, out))
        for arm in ablate if task == ablation_task else []:
            value = psnr(out, arm, task, steps[-1])
            axis.plot([steps[-1]], [value], marker="s", linestyle="", label=arm_label(arm, out))
        axis.axhline(input_psnr(out, task), color="gray", linestyle="--", label="input")
        axis.set(xlabel="fine-tuning steps", ylabel="Y-PSNR (dB)", xticks=steps)
        axis.set_title(f"{task} on {evaluated_on}", fontsize=9)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
        path = out / "plots" / f"{task}.png"
        write_bytes_atomic(path, figure_png(figure))
        paths.append(path)
    return paths


def _manifest(shards: Path) -> dict:
    path = shards / "manifest.json"
    if not path.is_file():
        raise UserError(f"{path}: no shard set manifest here")
    return json.loads(path.read_text())


def _shard_count(manifest: dict) -> int:
    """Shards per task (the smallest task's count)."""
    return min(len(task["shards"]) for task in manifest["tasks"].values())


def _samples(manifest: dict) -> int:
    return sum(task["samples"] for task in manifest["tasks"].values())


@click.group(cls=UserErrorGroup)
def main() -> None:
    """pipelines/ablation's helpers."""


@main.command()
@click.argument("src", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--rain", is_flag=True, help="The derain task's rain.")
@click.option("--sigma", type=float, default=None, help="Gaussian noise of this sigma (0..255).")
@click.option("--copies", default=1, show_default=True, help="Corrupted versions per image.")
@click.option("--limit", type=int, default=None, help="Only the first N images (sorted).")
@click.option("--seed", default=0, show_default=True)
def pairs(src, out, rain, sigma, copies, limit, seed) -> None:
    """Write rain-N.png / norain-N.png pairs of SRC's images into the new folder OUT."""
    if rain == (sigma is not None):
        raise UserError("give exactly one of --rain and --sigma")
    corruption = get_task("derain").corruption if rain else GaussianNoise(sigma)
    count = write_pairs(src, out, corruption, copies, limit, seed)
    click.echo(f"{count} pairs in {out}")


@main.command()
@click.argument("shards", type=click.Path())
@click.argument("percent", type=float)
def fraction(shards, percent) -> None:
    """Print how many of each task's shards make PERCENT % of the set SHARDS."""
    click.echo(fraction_shards(_manifest(Path(shards)), percent))


@main.command()
@click.argument("out", type=click.Path())
@click.option("--steps", required=True, help="Fine-tuning step counts, comma-separated.")
@click.option("--task", "tasks", multiple=True, required=True, help="TASK=evaluation set.")
@click.option("--main-arm", required=True, help="The pretrained arm of the curves.")
@click.option("--ablate", multiple=True, help="Other pretrained arms (last step only).")
@click.option("--ablation-task", required=True)
@click.option("--pretrain-steps", type=int, help="Steps of each pretraining.")
def report(out, steps, tasks, main_arm, ablate, ablation_task, pretrain_steps) -> None:
    """Write OUT/results.md and OUT/plots/<task>.png, and print the table."""
    try:
        counts = [int(step) for step in steps.split(",")]
        named = dict(task.split("=", 1) for task in tasks)
    except ValueError:
        raise UserError("expected --steps N,N,... and --task TASK=SET") from None
    if ablation_task not in named:
        raise UserError(f"--ablation-task {ablation_task} is not one of the --task names")
    table = results_table(out, counts, named, main_arm, list(ablate), ablation_task, pretrain_steps)
    write_bytes_atomic(Path(out) / "results.md", table.encode())
    plots = plot_curves(out, counts, named, main_arm, list(ablate), ablation_task)
    click.echo(table + "plots: " + " ".join(str(path) for path in plots))


if __name__ == "__main__":
    main()
