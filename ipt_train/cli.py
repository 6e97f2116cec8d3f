"""The ``ipt-train`` command line: thin wrappers over importable functions."""

from __future__ import annotations

import click

from ipt_data import UserErrorGroup, __version__
from ipt_train.configs import (
    AMPS,
    LOSS_WINDOW,
    RESTORE_DEVICE,
    BenchConfig,
    EvalConfig,
    FinetuneConfig,
    LoaderConfig,
    PretrainConfig,
    TablesConfig,
    TrainConfig,
    finetune_training,
    pretrain_training,
)
from ipt_train.launch import LaunchConfig
from ipt_train.schedule import LRSchedule
from ipt_train.tilegrid import BLENDS, TileConfig


@click.group(cls=UserErrorGroup)
@click.version_option(__version__, prog_name="ipt-train")
def main() -> None:
    """Pretrain, fine-tune, evaluate and run the Image Processing Transformer (IPT)."""


def tiling_options(command):
    """--blend, --overlap, --tile-batch, --self-ensemble: how images are tiled (TileConfig,
    whose defaults these are); :func:`tile_config` turns them into one."""
    blend = f"{'/'.join(BLENDS)} (docs/evaluation.md)."
    options = [
        click.option("--blend", default=TileConfig.blend, show_default=True, help=blend),
        click.option("--overlap", default=TileConfig.overlap, show_default=True, help="Input px."),
        click.option("--tile-batch", default=TileConfig.batch, show_default=True, help="Per pass."),
        click.option("--self-ensemble", is_flag=True, help="Average 8 flips/rotations (8x time)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def tile_config(options: dict) -> TileConfig:
    """The TileConfig of :func:`tiling_options`' values (removed from ``options``)."""
    return TileConfig(
        blend=options.pop("blend"),
        overlap=options.pop("overlap"),
        batch=options.pop("tile_batch"),
        self_ensemble=options.pop("self_ensemble"),
    )


@main.command()
# Paths and names are checked by the command's own code (one `Error:` line), not by click.
@click.option("--ckpt", required=True, type=click.Path(), help="Official or our checkpoint.")
@click.option("--task", "task_name", required=True, help="Task to run, e.g. sr_x2, denoise_30.")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(), help="Output folder.")
@tiling_options
@click.option("--device", default=RESTORE_DEVICE, show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--num-heads", type=int, default=None, help="Attention heads, if not 12 nor saved.")
def restore(ckpt, task_name, inputs, out, device, num_heads, **options):
    """Restore image files and folders (INPUT...) with a checkpoint's TASK, as PNGs under OUT."""
    from ipt_train.restore import restore_files

    tiles = tile_config(options)
    written = restore_files(ckpt, task_name, inputs, out, tiles, device, num_heads)
    click.echo(f"wrote {len(written)} image(s) to {out}")


@main.command()
@click.option("--preset", default=BenchConfig.preset, show_default=True, help="ipt-full|tiny.")
@click.option("--scales", default=BenchConfig.scales, show_default=True, help="Task layout.")
@click.option("--batch", default=BenchConfig.batch, show_default=True)
@click.option("--slot", default=BenchConfig.slot, show_default=True, help="Task slot timed.")
@click.option("--device", default=BenchConfig.device, show_default=True)
@click.option("--steps", default=BenchConfig.steps, show_default=True, help="Timed steps.")
@click.option("--warmup", default=BenchConfig.warmup, show_default=True)
@click.option("--amp", default=BenchConfig.amp, show_default=True, help="/".join(AMPS))
@click.option("--compile", "compile_", is_flag=True, help="torch.compile our model.")
@click.option("--official", type=click.Path(), help="Official IPT checkout (its model/).")
@click.option("--tiled-size", default=BenchConfig.tiled_size, show_default=True, help="0: skip.")
@click.option("--tile-batch", default=BenchConfig.tile_batch, show_default=True)
@click.option("--threads", default=BenchConfig.threads, show_default=True, help="0: torch's.")
@click.option("--overlap", default=BenchConfig.overlap, show_default=True)
@click.option("--compare-blends", type=click.Path(), help="Benchmark folder (SR: Set5-style).")
@click.option("--ckpt", type=click.Path(), help="Checkpoint for --compare-blends.")
@click.option("--task", "task_name", default="sr_x2", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench(**options):
    """Speed and memory of the IPT model (and of the official code with --official); with
    --compare-blends, each tile blend's scores, seam index and cost on a benchmark folder."""
    import json

    from ipt_data import cpu_model
    from ipt_train.bench.model import bench_from_options

    as_json = options.pop("as_json")
    figures = bench_from_options(**options, log=lambda line: click.echo(line, err=True))
    figures = {"cpu": cpu_model(), **figures}  # the machine, for the record
    if as_json:
        click.echo(json.dumps(figures))
    else:
        for key, value in figures.items():
            click.echo(f"{key}: {value:.6g}" if isinstance(value, float) else f"{key}: {value}")


@main.command()
@click.argument("source", type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(), help="Checkpoint file to write.")
@click.option("--task", "task_name", help="Keep only this task's slot (single-task output).")
@click.option("--into", type=click.Path(), help="Multi-task checkpoint to put --task's slot in.")
@click.option("--num-heads", type=int, default=None, help="Attention heads, if not 12 nor saved.")
def convert(source, out, task_name, into, num_heads):
    """Write SOURCE (official or ours) in the official layout: a plain state_dict, optionally
    one task's slot only, or a single-task model put back into a multi-task one."""
    from ipt_data import get_task
    from ipt_train.checkpoint import convert_checkpoint

    task = get_task(task_name) if task_name else None
    cfg = convert_checkpoint(source, out, task, into, num_heads)
    click.echo(f"wrote {out}: official layout, task scales {'+'.join(map(str, cfg.scales))}")


def training_options(defaults: TrainConfig):
    """The options every training command shares; their defaults are ``defaults``' and
    LoaderConfig's (a schedule without decay, as fine-tuning's, leaves --lr-after following
    --lr)."""
    decays = defaults.schedule.lr_after != defaults.schedule.lr
    lr_after = defaults.schedule.lr_after if decays else None
    loader = LoaderConfig()
    options = [
        click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder."),
        click.option("--steps", default=defaults.steps, show_default=True, help="Optimizer steps."),
        click.option("--batch", default=defaults.batch, show_default=True, help="Global samples."),
        click.option(
            "--micro-batch",
            default=loader.micro_batch,
            show_default=True,
            help="Samples per forward pass.",
        ),
        click.option(
            "--lr", default=defaults.schedule.lr, show_default=True, help="Learning rate."
        ),
        click.option("--lr-after", default=lr_after, type=float, help="lr after --decay-at."),
        click.option(
            "--decay-at",
            default=defaults.schedule.decay_at,
            show_default=f"{defaults.schedule.decay_at:.4g}",
            help="Fraction of the steps.",
        ),
        click.option(
            "--supcon-weight", default=defaults.supcon_weight, show_default=True, help="λ"
        ),
        click.option(
            "--supcon-local",
            is_flag=True,
            help="SupCon negatives from this process's micro-batch only, not every rank's.",
        ),
        click.option("--seed", default=defaults.seed, show_default=True),
        click.option("--compile", "compile_", is_flag=True, help="torch.compile the model."),
        click.option("--checkpoint-every", default=defaults.checkpoint_every, show_default=True),
        click.option("--workers", default=loader.workers, show_default=True, help="Per rank."),
        click.option(
            "--shuffle-block",
            default=loader.shuffle_block,
            show_default=True,
            help="Samples shuffled together (shards joined into blocks of at least this many).",
        ),
        click.option(
            "--shuffle-buffer", type=int, hidden=True, help="Deprecated: see --shuffle-block."
        ),
        click.option(
            "--cache",
            type=click.Path(file_okay=False),
            help="The node's shard cache folder "
            "[default: $IPT_CACHE, else ~/.cache/ipt-toolkit/shards].",
        ),
        click.option(
            "--cache-limit",
            help="Most bytes the cache holds: 200G, 1.5T, or a share of the free disk: 40%. "
            "[default: half the free disk]",
        ),
        click.option(
            "--fetch-attempts",
            default=loader.fetch_attempts,
            show_default=True,
            help="Tries at a remote shard while the storage fails, with backoff.",
        ),
        click.option(
            "--fetch-timeout",
            default=loader.fetch_timeout,
            show_default=True,
            help="Seconds without a byte or a connection before a try fails.",
        ),
        click.option(
            "--read-ahead",
            default=loader.read_ahead,
            show_default=True,
            help="Threads per loader worker making the next shards ready.",
        ),
        click.option("--no-augment", is_flag=True, help="No random flips/rotations."),
        click.option("--device", default=defaults.device, show_default=True, help="auto/cpu/cuda"),
        click.option(
            "--threads",
            default=defaults.threads,
            show_default=True,
            help="torch CPU threads per process; 0: the cores left after the loader workers.",
        ),
        click.option("--resume", is_flag=True, help="Continue the run in --out."),
        click.option("--no-progress", is_flag=True, help="No progress bar."),
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _train_config(options: dict):
    """(TrainConfig, LoaderConfig) from the shared options (removed from ``options``)."""
    lr, lr_after = options.pop("lr"), options.pop("lr_after")
    schedule = LRSchedule(lr, lr if lr_after is None else lr_after, options.pop("decay_at"))
    if options.pop("shuffle_buffer") is not None:
        click.echo(
            "note: --shuffle-buffer is deprecated and ignored: the stream shuffles blocks of "
            "--shuffle-block samples (docs/training.md#the-training-stream)",
            err=True,
        )
    loader = LoaderConfig(
        micro_batch=options.pop("micro_batch"),
        workers=options.pop("workers"),
        shuffle_block=options.pop("shuffle_block"),
        augment=not options.pop("no_augment"),
        cache=options.pop("cache"),
        cache_limit=options.pop("cache_limit"),
        fetch_attempts=options.pop("fetch_attempts"),
        fetch_timeout=options.pop("fetch_timeout"),
        read_ahead=options.pop("read_ahead"),
    )
    train = TrainConfig(
        out=options.pop("out"),
        steps=options.pop("steps"),
        batch=options.pop("batch"),
        schedule=schedule,
        supcon_weight=options.pop("supcon_weight"),
        supcon_across_ranks=not options.pop("supcon_local"),
        compile=options.pop("compile_"),
        seed=options.pop("seed"),
        checkpoint_every=options.pop("checkpoint_every"),
        device=options.pop("device"),
        threads=options.pop("threads"),
        resume=options.pop("resume"),
        progress=not options.pop("no_progress"),
    )
    return train, loader


@main.command()
@click.option("--shards", required=True, help="Shard set folder or URL (ipt-data build).")
@click.option("--preset", default=PretrainConfig.preset, show_default=True, help="ipt-full|tiny.")
@click.option("--tasks", default=PretrainConfig.tasks, show_default=True, help="Comma-separated.")
@click.option("--task-weights", default=None, help="Relative draw weights, e.g. sr_x2=2,derain=1.")
@training_options(pretrain_training())
def pretrain(shards, preset, tasks, task_weights, **options):
    """Multi-task pretraining from a shard set (one process, or many under torchrun).

    SIGTERM, SIGINT or SIGUSR1 stops it after the step under way, the steps saved for --resume;
    exit status 128 + the signal (143, 130, 138). A second signal 1 s or more later exits at
    once, the last checkpoint kept."""
    import os

    from ipt_train.pretrain import pretrain

    train, loader = _train_config(options)
    setup = PretrainConfig(shards, preset, tasks, task_weights, loader)
    result = pretrain(train, setup)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"{result.summary(train.batch)}; run in {train.out}")


@main.command("eval")
@click.option("--ckpt", type=click.Path(), help="Checkpoint (official or ours).")
@click.option("--baseline", is_flag=True, help="Score the input itself (bicubic for SR).")
@click.option("--task", "task_name", required=True, help="sr_x2, sr_x3, sr_x4, derain, denoise_30…")
@click.option("--data", required=True, type=click.Path(), help="Benchmark folder (Set5-style…).")
@click.option("--seed", default=EvalConfig.noise_seed, show_default=True, help="Of the noise.")
@tiling_options
@click.option("--device", default=EvalConfig.device, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of a table.")
def evaluate(ckpt, baseline, task_name, data, seed, device, as_json, **options):
    """PSNR/SSIM of a checkpoint's TASK on a benchmark folder, per image and mean."""
    import json

    from ipt_data import UserError
    from ipt_train.evaluate import evaluate, format_table

    if bool(ckpt) == baseline:
        raise UserError("give exactly one of --ckpt and --baseline")
    tiles = tile_config(options)
    config = EvalConfig(tiles=tiles, device=device, noise_seed=seed, progress=not as_json)
    report = evaluate(ckpt, task_name, data, config)
    click.echo(json.dumps(report) if as_json else "\n".join(format_table(report)))


@main.command()
@click.option("--bench", required=True, type=click.Path(), help="Folder of the benchmark sets.")
@click.option("--ckpt", type=click.Path(), help="A 6-task checkpoint, for every task.")
@click.option("--ckpt-for", multiple=True, metavar="TASK=CKPT", help="One task's (over --ckpt).")
@click.option("--baseline", is_flag=True, help="Only the input rows (bicubic, noisy, rainy).")
@click.option("--sets", default=None, help="Comma-separated sets  [default: every set found]")
@click.option("--seed", default=EvalConfig.noise_seed, show_default=True, help="Of the noise.")
@tiling_options
@click.option("--device", default=EvalConfig.device, show_default=True)
@click.option("--json", "json_path", type=click.Path(), help="Also write the results here.")
def tables(bench, ckpt, ckpt_for, baseline, sets, seed, device, json_path, **options):
    """The IPT paper's Tables 1-4 on the sets in BENCH (docs/benchmark-sets.md), as Markdown."""
    from ipt_train.tables import format_tables, run_tables

    evaluation = EvalConfig(tiles=tile_config(options), device=device, noise_seed=seed)
    config = TablesConfig(bench, ckpt, ckpt_for, baseline, sets, evaluation, json_path)
    results = run_tables(config, note=lambda line: click.echo(line, err=True))
    click.echo(format_tables(results), nl=False)


@main.command()
@click.option("--init", type=click.Path(), help="Pretrained ckpt [none: random --preset].")
@click.option("--preset", default=FinetuneConfig.preset, show_default=True, help="Without --init.")
@click.option("--task", "task_name", required=True, help="Task to fine-tune, e.g. sr_x2.")
@click.option("--shards", default=None, help="Shard set (folder or URL) holding the task.")
@click.option("--clean", default=None, type=click.Path(), help="Clean images, corrupted live.")
@click.option("--pairs", default=None, type=click.Path(), help="rain-N/norain-N pairs folder.")
@training_options(finetune_training())
def finetune(init, preset, task_name, shards, clean, pairs, **options):
    """Fine-tune one task of a pretrained IPT (other heads and tails dropped).

    SIGTERM, SIGINT or SIGUSR1 stops it after the step under way, the steps saved for --resume;
    exit status 128 + the signal (143, 130, 138)."""
    import os

    from ipt_train.finetune import finetune

    train, loader = _train_config(options)
    setup = FinetuneConfig(init, task_name, shards, clean, pairs, loader, preset)
    result = finetune(train, setup)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"{result.summary(train.batch)}; run in {train.out}")


@main.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("-o", "--out", default=None, type=click.Path(dir_okay=False), help="[RUN/loss.png]")
@click.option("--window", default=LOSS_WINDOW, show_default=True, help="Steps averaged per point.")
@click.option("--grid-ckpt", default=None, type=click.Path(), help="Model to show.")
@click.option("--grid-task", default="sr_x2", show_default=True, help="SR task of the grid.")
@click.option("--grid-image", multiple=True, type=click.Path(dir_okay=False), help="HR image(s).")
def plot(run, out, window, grid_ckpt, grid_task, grid_image):
    """Loss curves of RUN as a PNG; with --grid-ckpt also RUN/grid.png (HR | bicubic | model)."""
    from ipt_train.plot import comparison_grid, plot_losses

    click.echo(f"wrote {plot_losses(run, out, window)}")
    if grid_ckpt:
        scores = comparison_grid(grid_ckpt, grid_task, list(grid_image), f"{run}/grid.png")
        for row in scores:
            click.echo(
                f"{row['image']}: bicubic {row['bicubic']:.2f} dB / {row['bicubic_ssim']:.4f}, "
                f"model {row['model']:.2f} dB / {row['model_ssim']:.4f} (Y-PSNR / Y-SSIM)"
            )
        click.echo(f"wrote {run}/grid.png")


@main.command(
    "launch", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.option("--nproc-per-node", type=int, required=True, help="Processes on this node (GPUs).")
@click.option("--nnodes", default=LaunchConfig.nnodes, show_default=True, help="Nodes taking part.")
@click.option(
    "--node-rank", default=LaunchConfig.node_rank, show_default=True, help="This node's rank."
)
@click.option(
    "--master-addr", default=LaunchConfig.master_addr, show_default=True, help="Node 0's address."
)
@click.option(
    "--master-port",
    default=LaunchConfig.master_port,
    show_default=True,
    help="A free port on node 0.",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def launch_command(command, **where):
    """Run `pretrain ...` or `finetune ...` (COMMAND) in several processes, as torchrun does, but
    ending in one Error line, not torchrun's traceback, when a process fails.

    SIGTERM, SIGINT and SIGUSR1 are passed on to the processes, which stop after their step with
    the steps saved; launch waits for them and exits with their status (143, 130, 138)."""
    from ipt_train.launch import launch

    launch(LaunchConfig(**where), command)
