"""``build_shards``: source folder -> a complete shard set (SPEC §4, §5).

The stages are chained one way: the source list is cut into chunks (``sources``), each chunk is
one Ray task (``distributor``) that decodes, corrupts, packs and writes that chunk's shard of
every task (``worker``), and the manifest is assembled from the chunks' stats (``manifest``).
Chunks whose stats file exists are skipped, so rerunning an interrupted build finishes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ipt_data.distributor import RayConfig, ray_session, run_chunks
from ipt_data.errors import UserError
from ipt_data.manifest import build_identity, claim_output, make_manifest, write_manifest
from ipt_data.shardwriter import remove_stale_temporaries
from ipt_data.sources import SourceList
from ipt_data.tasks import TASKS, Task
from ipt_data.worker import ChunkJob, ChunkStats, stats_path

# Shard bytes per image and task at 8 pairs, measured by `ipt-data bench --build` (README):
# 82 kB (derain) .. 102 kB (denoise) .. 172 / 321 / 529 kB (sr_x2 / x3 / x4). 1000 images per
# shard gives shards of 82-529 MB, 1282 shards per task for ImageNet-1k train.
DEFAULT_IMAGES_PER_SHARD = 1000


@dataclass(frozen=True)
class BuildConfig:
    """What to build; the four fields before ``ray`` fix the shard set's bytes."""

    tasks: tuple[Task, ...] = tuple(TASKS.values())
    patches_per_image: int = 8
    seed: int = 0
    images_per_shard: int = DEFAULT_IMAGES_PER_SHARD
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        if self.patches_per_image < 1:
            raise UserError(f"--patches-per-image must be at least 1, got {self.patches_per_image}")
        if self.images_per_shard < 1:
            raise UserError(f"--images-per-shard must be at least 1, got {self.images_per_shard}")
        if not self.tasks:
            raise UserError("no task to build")


@dataclass(frozen=True)
class BuildResult:
    manifest: dict
    manifest_path: Path
    chunks_run: int  # chunks written by this call (the rest were done before)
    chunks_total: int
    peak_worker_rss_bytes: int  # largest peak RSS reported by a worker in this call (0 if none)
    worker_seconds: float  # sum of the chunks' run times in this call
    worker_cpu_seconds: float  # sum of the chunks' CPU times in this call
    seconds: float  # wall time of this call


def build_shards(sources: SourceList, out: str | Path, config: BuildConfig) -> BuildResult:
    """Build (or finish building) the shard set of ``sources`` in ``out``; returns the manifest.

    Refuses an ``out`` that holds anything other than an earlier run of this same build.
    """
    out = Path(out)
    identity = build_identity(
        list(config.tasks), config.patches_per_image, config.seed, config.images_per_shard, sources
    )
    start = time.perf_counter()
    claim_output(out, identity, check_only=True)
    jobs = _chunk_jobs(sources, out, config)
    pending = [job for job in jobs if not stats_path(out, job.index).is_file()]
    fresh = []
    if pending:
        with ray_session(config.ray):  # connected before anything is written
            claim_output(out, identity)
            fresh = run_chunks(pending, config.ray)
    # Every chunk is done: what killed or retried workers left half-written can go.
    remove_stale_temporaries(out)
    manifest = make_manifest(identity, [_read_stats(job) for job in jobs])
    return BuildResult(
        manifest=manifest,
        manifest_path=write_manifest(out, manifest),
        chunks_run=len(fresh),
        chunks_total=len(jobs),
        peak_worker_rss_bytes=max((stats.peak_rss_bytes for stats in fresh), default=0),
        worker_seconds=sum(stats.seconds for stats in fresh),
        worker_cpu_seconds=sum(stats.cpu_seconds for stats in fresh),
        seconds=time.perf_counter() - start,
    )


def _chunk_jobs(sources: SourceList, out: Path, config: BuildConfig) -> list[ChunkJob]:
    return [
        ChunkJob(
            index=index,
            first_number=index * config.images_per_shard,
            image_ids=chunk,
            root=str(sources.root.resolve()),
            out=str(out.resolve()),
            task_names=tuple(task.name for task in config.tasks),
            patches_per_image=config.patches_per_image,
            seed=config.seed,
        )
        for index, chunk in enumerate(sources.chunks(config.images_per_shard))
    ]


def _read_stats(job: ChunkJob) -> ChunkStats:
    return ChunkStats.from_json(stats_path(job.out, job.index).read_bytes())


def summary_lines(result: BuildResult) -> list[str]:
    """What a finished build says: work done now, images skipped, per-task samples and bytes."""
    manifest = result.manifest
    images = manifest["images"]
    skipped = ", ".join(f"{reason} {count}" for reason, count in images["skipped"].items())
    lines = [
        f"built {result.chunks_run} of {result.chunks_total} chunks now "
        f"({result.chunks_total - result.chunks_run} were done before) in {result.seconds:.1f} s",
        f"images: {images['decoded']} of {images['listed']} decoded; skipped: {skipped or 'none'}",
    ]
    for name, task in manifest["tasks"].items():
        lines.append(
            f"{name}: {task['samples']} samples in {len(task['shards'])} shards, "
            f"{task['bytes']:,} bytes; {task['too_small']} images too small"
        )
    lines.append(f"manifest: {result.manifest_path}")
    return lines
