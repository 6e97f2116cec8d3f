"""The ``ipt-train`` command line: thin wrappers over importable functions."""

from __future__ import annotations

import click

from ipt_data import __version__
from ipt_data.errors import UserErrorGroup


@click.group(cls=UserErrorGroup)
@click.version_option(__version__, prog_name="ipt-train")
def main() -> None:
    """Pretrain, fine-tune, evaluate and run the Image Processing Transformer (IPT)."""


@main.command()
@click.option(
    "--ckpt", required=True, type=click.Path(dir_okay=False), help="Official or our checkpoint."
)
@click.option("--task", "task_name", required=True, help="Task to run, e.g. sr_x2, denoise_30.")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--overlap", default=24, show_default=True, help="Input pixels shared by tiles.")
@click.option(
    "--blend", type=click.Choice(["uniform", "distance"]), default="uniform", show_default=True
)
@click.option("--tile-batch", default=64, show_default=True, help="Tiles per forward pass.")
@click.option("--self-ensemble", is_flag=True, help="Average the 8 flips/rotations (8x slower).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--num-heads", type=int, default=None, help="Attention heads, if not 12 nor saved.")
def restore(
    ckpt, task_name, inputs, out, overlap, blend, tile_batch, self_ensemble, device, num_heads
):
    """Restore image files and folders (INPUT...) with a checkpoint's TASK, as PNGs under OUT."""
    from ipt_train.restore import restore_files
    from ipt_train.tiling import TileConfig

    tiles = TileConfig(overlap=overlap, blend=blend, batch=tile_batch, self_ensemble=self_ensemble)
    written = restore_files(ckpt, task_name, inputs, out, tiles, device, num_heads)
    click.echo(f"wrote {len(written)} image(s) to {out}")
