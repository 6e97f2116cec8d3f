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


@main.command()
@click.option("--preset", type=click.Choice(["ipt-full", "ipt-tiny"]), default="ipt-full")
@click.option("--scales", default="2+3+4+1+1+1", show_default=True, help="Task layout, '+'-joined.")
@click.option("--batch", default=4, show_default=True)
@click.option("--slot", default=0, show_default=True, help="Task slot the steps run.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--steps", default=5, show_default=True, help="Timed steps (median reported).")
@click.option("--warmup", default=1, show_default=True)
@click.option("--amp", type=click.Choice(["none", "bf16", "fp16"]), default="none")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile our model.")
@click.option("--official", type=click.Path(file_okay=False), help="Official IPT checkout.")
@click.option("--tiled-size", default=256, show_default=True, help="Tiled image side; 0 skips.")
@click.option("--tile-batch", default=64, show_default=True)
@click.option("--overlap", default=24, show_default=True)
@click.option("--compare-blends", type=click.Path(file_okay=False), help="Set5-style folder.")
@click.option("--ckpt", type=click.Path(dir_okay=False), help="Checkpoint for --compare-blends.")
@click.option("--task", "task_name", default="sr_x2", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench(**options):
    """Speed and memory of the IPT model (and of the official code with --official); with
    --compare-blends, the Set5 scores of the uniform and distance-weighted tile blends instead."""
    import json

    from ipt_train.bench import bench_from_options

    as_json = options.pop("as_json")
    figures = bench_from_options(**options, log=lambda line: click.echo(line, err=True))
    if as_json:
        click.echo(json.dumps(figures))
    else:
        for key, value in figures.items():
            click.echo(f"{key}: {value:.6g}" if isinstance(value, float) else f"{key}: {value}")
