"""The ``ipt-data`` command line: thin wrappers over importable functions."""

from __future__ import annotations

import click

from ipt_data import __version__
from ipt_data.errors import UserErrorGroup


@click.group(cls=UserErrorGroup)
@click.version_option(__version__, prog_name="ipt-data")
def main() -> None:
    """Build the six IPT pretraining tasks' patch pairs as WebDataset shard sets."""


@main.command()
@click.argument("out", type=click.Path(file_okay=False))
def sample(out: str) -> None:
    """Write the built-in sample photographs as an ImageNet-style tree of JPEGs under OUT."""
    from ipt_data.sample import write_sample_tree

    for path in write_sample_tree(out):
        click.echo(path)


@main.command()
@click.argument("image", type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random corruptions.")
@click.option("--tasks", default="all", show_default=True, help="Comma-separated task names.")
def preview(image: str, out: str, seed: int, tasks: str) -> None:
    """Render IMAGE under every task's corruption, next to the clean targets, as one PNG."""
    from ipt_data.decode import decode_image
    from ipt_data.fileio import encode_image, read_bytes, write_bytes_atomic
    from ipt_data.preview import render_preview
    from ipt_data.tasks import parse_tasks

    picked = parse_tasks(tasks)
    grid = render_preview(decode_image(read_bytes(image), image), seed, picked)
    write_bytes_atomic(out, encode_image(grid, ".png"))
    click.echo(f"wrote {out} ({grid.shape[1]}x{grid.shape[0]})")


@main.command()
@click.option("--corruptions", is_flag=True, help="Time each corruption stage per image.")
@click.option("--patches", default=8, show_default=True, help="Patches per image per task.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench(corruptions: bool, patches: int, as_json: bool) -> None:
    """Benchmark on ImageNet-size JPEGs made from the sample photographs (one core)."""
    import json

    from ipt_data.bench import benchmark_corruptions

    parts = {"corruptions": (corruptions, lambda: benchmark_corruptions(patches))}
    chosen = [name for name, (flag, _) in parts.items() if flag] or list(parts)  # none: all
    figures = {name: parts[name][1]() for name in chosen}
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    for part, values in figures.items():
        click.echo(f"{part} (ms per 500x375 image, one core; ratios unitless)")
        for key, value in values.items():
            click.echo(f"  {key:32s} {value:8.2f}")
