"""The ``ipt-data`` command line: thin wrappers over importable functions."""

from __future__ import annotations

import click

from ipt_data.clickgroup import UserErrorGroup
from ipt_data.configs import DEFAULT_JOBS, PNG_ENCODERS, BuildConfig, RayConfig
from ipt_data.errors import interrupted_then
from ipt_data.version import __version__

PNG_ENCODER_OPTION = click.option(
    "--png-encoder",
    type=click.Choice(PNG_ENCODERS),
    default=BuildConfig.png_encoder,
    show_default=True,
    help="Deflate library of the PNG members: with isal (pip install isal) a build is about "
    "1.3x as fast, but its bytes depend on the CPU class (docs/png.md).",
)
# What an interrupted build or transfer leaves, and how to go on (Error: interrupted; ...).
CHUNKS_KEPT = "the chunks finished so far are kept, no manifest was written: rerun to resume"
SHARDS_KEPT = "the shards copied so far are kept, no manifest was written: rerun to resume"


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
    from ipt_data.errors import UserError
    from ipt_data.fileio import encode_image, read_bytes, write_bytes_atomic
    from ipt_data.preview import render_preview
    from ipt_data.tasks import parse_tasks

    if not out.lower().endswith(".png"):
        raise UserError(f"--out {out}: the preview is a PNG; name a .png file")
    picked = parse_tasks(tasks)
    grid = render_preview(decode_image(read_bytes(image), image), seed, picked)
    write_bytes_atomic(out, encode_image(grid, ".png"))
    click.echo(f"wrote {out} ({grid.shape[1]}x{grid.shape[0]})")


@main.command()
@click.argument("shards", type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("--tasks", help="Comma-separated task names [default: all of the set's].")
@click.option(
    "--samples",
    default=4,
    show_default=True,
    type=click.IntRange(min=1),
    help="Samples per task, spread over its first shards.",
)
def show(shards: str, out: str, tasks: str | None, samples: int) -> None:
    """Draw a contact sheet of the shard set SHARDS (a folder or URL): a row per task of its
    samples, input next to target at the same scale, each with its key and source image. Every
    shard read is checked as training checks it."""
    from ipt_data.show import show_set

    width, height = show_set(shards, out, tasks, samples)
    click.echo(f"wrote {out} ({width}x{height})")


@main.command()
@click.option("--corruptions", is_flag=True, help="Time each corruption stage per image.")
@click.option("--build", "build_", is_flag=True, help="Ray build vs its floor, 1 vs 2 workers.")
@click.option(
    "--images",
    default=100,
    show_default=True,
    type=click.IntRange(min=1),
    help="Input JPEGs for --build.",
)
@click.option(
    "--patches",
    default=BuildConfig.patches_per_image,
    show_default=True,
    type=click.IntRange(min=1),
    help="Patches per image per task (the build's default).",
)
@PNG_ENCODER_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench(
    corruptions: bool, build_: bool, images: int, patches: int, png_encoder: str, as_json: bool
) -> None:
    """Benchmark on ImageNet-size JPEGs made from the sample photographs (one core)."""
    import json

    from ipt_data.bench.build import benchmark_build
    from ipt_data.bench.corruptions import benchmark_corruptions
    from ipt_data.machine import cpu_model

    parts = {
        "corruptions": (corruptions, lambda: benchmark_corruptions(patches, png_encoder)),
        "build": (build_, lambda: benchmark_build(images, patches, png_encoder)),
    }
    units = {"build": "rates in images/s; GB = 1e9 bytes; RSS in MiB; ratios unitless"}
    chosen = [name for name, (flag, _) in parts.items() if flag] or list(parts)  # none: all
    figures = {name: parts[name][1]() for name in chosen}
    if as_json:
        click.echo(json.dumps({"cpu": cpu_model(), **figures}, indent=2))
        return
    click.echo(f"cpu: {cpu_model()}")  # the machine, for the record (benchmarks/README.md)
    for part, values in figures.items():
        unit = units.get(part, "ms per 500x375 image, one core; ratios unitless")
        click.echo(f"{part} ({unit})")
        for key, value in values.items():
            click.echo(f"  {key:32s} {value:8.2f}")


@main.command()
@click.option("--src", type=click.Path(), help="Image folder, walked recursively (n*/*.JPEG).")
@click.option(
    "--files",
    "file_list",
    type=click.Path(dir_okay=False),
    help="Text file naming the images, one per line, relative to --src (else to its folder).",
)
@click.option(
    "--out",
    required=True,
    help="Shard set folder, or any writable fsspec URL (s3://bucket/prefix).",
)
@click.option("--tasks", default="all", show_default=True, help="Comma-separated task names.")
@click.option(
    "--patches-per-image",
    default=BuildConfig.patches_per_image,
    show_default=True,
    help="Pairs per image per task.",
)
@click.option(
    "--seed", default=BuildConfig.seed, show_default=True, help="Seed of crops and corruptions."
)
@click.option(
    "--images-per-shard",
    default=BuildConfig.images_per_shard,
    show_default=True,
    help="Images per chunk (one shard per task).",
)
@PNG_ENCODER_OPTION
@click.option("--limit", type=int, help="Only the first N images (in sorted order).")
@click.option("--workers", type=int, help="Tasks at once [default: all cores / cluster CPUs].")
@click.option("--address", help="Join this Ray cluster (host:port) instead of a local one.")
@click.option("--no-progress", is_flag=True, help="No live progress bar.")
def build(
    src: str | None,
    file_list: str | None,
    out: str,
    tasks: str,
    patches_per_image: int,
    seed: int,
    images_per_shard: int,
    png_encoder: str,
    limit: int | None,
    workers: int | None,
    address: str | None,
    no_progress: bool,
) -> None:
    """Build (or resume) a WebDataset shard set of the IPT tasks from an image folder."""
    from ipt_data.build import build_shards, check_every_task_has_samples, summary_lines
    from ipt_data.sources import open_sources
    from ipt_data.tasks import parse_tasks

    config = BuildConfig(
        tasks=tuple(parse_tasks(tasks)),
        patches_per_image=patches_per_image,
        seed=seed,
        images_per_shard=images_per_shard,
        png_encoder=png_encoder,
        ray=RayConfig(workers=workers, address=address, progress=not no_progress),
    )
    with interrupted_then(CHUNKS_KEPT):
        result = build_shards(open_sources(src, file_list, limit), out, config)
    click.echo("\n".join(summary_lines(result)))
    check_every_task_has_samples(result.manifest)


@main.command()
@click.argument("shards", type=click.Path())
@click.option("--workers", type=int, help="Processes [default: all cores].")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def verify(shards: str, workers: int | None, no_progress: bool) -> None:
    """Re-hash and decode every shard of the set SHARDS (a folder, or a URL: http(s)://,
    s3://, any fsspec URL; remote shards are fetched one at a time) against its manifest."""
    from ipt_data.errors import UserError, printable
    from ipt_data.verify import verify_shard_set

    report = verify_shard_set(shards, workers, progress=not no_progress)
    for name, problem in report.problems.items():
        click.echo(printable(f"BAD {name}: {problem}"))
    for name in report.unlisted:
        click.echo(printable(f"UNLISTED {name}: not in the manifest (readers ignore it)"))
    if not report.ok:
        raise UserError(f"{len(report.problems)} of {report.shards} shards are bad")
    click.echo(f"OK: {report.shards} shards, {report.samples} samples")


@main.command()
@click.argument("shards", type=click.Path())
def info(shards: str) -> None:
    """Print the build parameters and per-task counts and sizes of the shard set SHARDS (a
    folder or a URL)."""
    from ipt_data.verify import describe_shard_set

    click.echo("\n".join(describe_shard_set(shards)))


@main.command()
@click.argument("shards", type=click.Path())
@click.option("--stdout", "to_stdout", is_flag=True, help="Print the card instead of writing it.")
def card(shards: str, to_stdout: bool) -> None:
    """Write the dataset card (README.md: the Hugging Face Hub's YAML header, what the set holds,
    how it was made and how to load it) of the shard set SHARDS, from its manifest; shards are
    not touched."""
    from ipt_data.card import card_of_set

    text, where = card_of_set(shards, write=not to_stdout)
    click.echo(text if to_stdout else f"wrote {where}", nl=not to_stdout)


_SUBSET_OPTIONS = (
    click.option("--tasks", help="Only these tasks (comma-separated) [default: all]."),
    click.option("--shards", help="Only this slice of each task's shards, e.g. 0:100."),
    click.option("--no-progress", is_flag=True, help="No progress bar."),
    click.option(
        "--jobs",
        default=DEFAULT_JOBS,
        show_default=True,
        type=click.IntRange(min=1),
        help="Shards copied at once.",
    ),
)


def _subset_options(command):
    for option in reversed(_SUBSET_OPTIONS):
        command = option(command)
    return command


@main.command()
@click.argument("url")
@click.argument("dest", type=click.Path(file_okay=False))
@_subset_options
def pull(
    url: str, dest: str, tasks: str | None, shards: str | None, no_progress: bool, jobs: int
) -> None:
    """Copy the shard set at URL (http(s)://, s3://, hf://datasets/OWNER/NAME[@REVISION], any
    fsspec URL or a folder) into DEST, verifying every shard; rerun to resume."""
    from ipt_data.transfer import pull as pull_set
    from ipt_data.transfer import summary_line

    with interrupted_then(SHARDS_KEPT):
        result = pull_set(url, dest, tasks, shards, progress=not no_progress, jobs=jobs)
    click.echo(summary_line(result))


@main.command()
@click.argument("src", type=click.Path(file_okay=False))
@click.argument("url")
@_subset_options
@click.option(
    "--private", is_flag=True, help="hf:// only: create the repository private if it is new."
)
def push(
    src: str,
    url: str,
    tasks: str | None,
    shards: str | None,
    no_progress: bool,
    jobs: int,
    private: bool,
) -> None:
    """Copy the shard set in the folder SRC to URL (s3://…, any writable fsspec URL or a
    folder; hf://datasets/OWNER/NAME uploads it to the Hugging Face Hub in a few commits),
    verifying every shard; rerun to resume."""
    progress = not no_progress
    with interrupted_then(SHARDS_KEPT):
        if url.startswith("hf://"):
            from ipt_data.hub import push_to_hub
            from ipt_data.hub import summary_line as hub_summary

            pushed = push_to_hub(
                src, url, tasks, shards, progress=progress, jobs=jobs, private=private
            )
            click.echo(hub_summary(pushed))
            return
        from ipt_data.transfer import push as push_set
        from ipt_data.transfer import summary_line

        result = push_set(src, url, tasks, shards, progress=progress, jobs=jobs)
    click.echo(summary_line(result))


@main.command("rain-stats")
@click.argument("folder", type=click.Path())
@click.option("--pairs", is_flag=True, help="Measure real rain-N / norain-N pairs in FOLDER.")
@click.option("--heavy", is_flag=True, help="Synthesise heavy (Rain100H-like) rain.")
@click.option("--seed", default=0, show_default=True, help="Seed of the synthesised rain.")
@click.option("--draws", default=1, show_default=True, help="Rain layers drawn per image.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def rain_stats(folder: str, pairs: bool, heavy: bool, seed: int, draws: int, as_json: bool) -> None:
    """Rain-streak statistics (docs/corruptions.md) of our rain over every clean image in FOLDER,
    or of the real pairs in FOLDER with --pairs."""
    import json

    from ipt_data.rainstats import format_summary, rain_statistics

    summary = rain_statistics(folder, pairs=pairs, heavy=heavy, seed=seed, draws=draws)
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))
