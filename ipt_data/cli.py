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
