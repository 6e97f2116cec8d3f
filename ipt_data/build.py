"""``build_shards``: source folder -> a complete shard set (docs/building.md, docs/format.md).

The stages are chained one way: the source list is cut into chunks (``sources``), each chunk is
one Ray task (``distributor``) that decodes, corrupts, packs and writes that chunk's shard of
every task (``worker``), and the manifest is assembled from the chunks' stats (``manifest``).
Chunks whose stats file exists are skipped, so rerunning an interrupted build finishes it.

The output is a folder or any writable fsspec URL (``s3://bucket/prefix``), reached through one
code path (:mod:`ipt_data.remote`): a Ray cluster whose nodes share no filesystem writes its
shards, done-markers and manifest (last) to the object store, and a rerun resumes from there.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from ipt_data.card import write_card
from ipt_data.configs import BuildConfig
from ipt_data.distributor import ray_session, run_chunks
from ipt_data.errors import UserError
from ipt_data.layout import (
    MANIFEST_NAME,
    PARAMS_NAME,
    STATE_FOLDER,
    ChunkStats,
    shard_name,
    stats_name,
)
from ipt_data.manifest import (
    build_identity,
    differences,
    dump_json,
    images_line,
    make_manifest,
    png_encoder_of,
)
from ipt_data.png import encoder_identity
from ipt_data.remote import (
    SetLocation,
    check_writable,
    file_size,
    has_files,
    list_names,
    open_location,
    read_bytes,
    read_many,
    remove_partials,
    sole_writer,
    storage_errors,
    write_bytes,
)
from ipt_data.sources import SourceList
from ipt_data.worker import ChunkJob


@dataclass(frozen=True)
class BuildResult:
    manifest: dict
    manifest_path: str  # a local path or a URL
    chunks_run: int  # chunks written by this call (the rest were done before)
    chunks_total: int
    peak_worker_rss_bytes: int  # largest peak RSS reported by a worker in this call (0 if none)
    worker_seconds: float  # sum of the chunks' run times in this call
    worker_cpu_seconds: float  # sum of the chunks' CPU times in this call
    seconds: float  # wall time of this call


def build_shards(sources: SourceList, out: str | Path, config: BuildConfig) -> BuildResult:
    """Build (or finish building) the shard set of ``sources`` in ``out`` (a folder or a
    writable fsspec URL); returns the manifest.

    Refuses an ``out`` that holds anything other than an earlier run of this same build.
    """
    location = open_location(out)
    check_writable(location)
    _check_outside_the_source(sources, location)
    with storage_errors(str(out)):
        return _build(sources, location, config)


def _check_outside_the_source(sources: SourceList, location: SetLocation) -> None:
    """Refuse an output inside a walked source folder: on a rerun the walk would count its
    shards as source files, and the changed source would refuse to resume the build."""
    if not (sources.walked and location.is_local):
        return
    out, root = Path(location.root).resolve(), sources.root.resolve()
    if out == root or root in out.parents:
        raise UserError(
            f"--out {location.url} is inside the source folder {sources.root}; choose an --out "
            "outside it"
        )


def _build(sources: SourceList, location: SetLocation, config: BuildConfig) -> BuildResult:
    sources = sources.in_build_order(config.seed)  # chunks, keys and fingerprint follow it
    identity = build_identity(
        list(config.tasks),
        config.patches_per_image,
        config.seed,
        config.images_per_shard,
        sources,
        config.png_encoder,
    )
    start = time.perf_counter()
    claim_output(location, identity, check_only=True)
    jobs = _chunk_jobs(sources, location, config)
    # Ray is connected before anything is written; the output is this process's alone from the
    # claim to the manifest (another build's partial files must not be swept up as leftovers).
    needs_ray = bool(_pending(location, jobs))
    with ray_session(config.ray) if needs_ray else contextlib.nullcontext(), sole_writer(location):
        claim_output(location, identity)
        pending = _pending(location, jobs)  # again: a build that held the place may have ended
        fresh = run_chunks(pending, config.ray) if pending else []
        # Every chunk is done: what killed or retried workers (shards, stats files) or a killed
        # driver (the manifest) left half-written can go.
        for folder in ("", STATE_FOLDER, *(task.name for task in config.tasks)):
            remove_partials(location, folder)
        manifest = make_manifest(identity, _chunk_stats(location, jobs, fresh))
        write_card(location, manifest)  # README.md, the dataset card; the manifest stays last
        write_bytes(location, MANIFEST_NAME, dump_json(manifest))
    return BuildResult(
        manifest=manifest,
        manifest_path=location.describe(MANIFEST_NAME),
        chunks_run=len(fresh),
        chunks_total=len(jobs),
        peak_worker_rss_bytes=max((stats.peak_rss_bytes for stats in fresh), default=0),
        worker_seconds=sum(stats.seconds for stats in fresh),
        worker_cpu_seconds=sum(stats.cpu_seconds for stats in fresh),
        seconds=time.perf_counter() - start,
    )


def _pending(location: SetLocation, jobs: list[ChunkJob]) -> list[ChunkJob]:
    """The jobs whose chunk is not done: no stats file (done-marker) yet, or a shard of it gone
    since (deleted by hand, or lost by the storage), which the chunk then writes again rather
    than the manifest listing a file that is not there. One listing per folder."""
    listed = {STATE_FOLDER} | {task.name for job in jobs for task in job.tasks}
    present = {folder: set(list_names(location, folder)) for folder in listed}

    def done(job: ChunkJob) -> bool:
        names = [stats_name(job.index)] + [shard_name(task.name, job.index) for task in job.tasks]
        return all(name.rpartition("/")[2] in present[name.partition("/")[0]] for name in names)

    return [job for job in jobs if not done(job)]


def claim_output(location: SetLocation, identity: dict, *, check_only: bool = False) -> bool:
    """Make ``location`` this build's output; True when it resumes an earlier run of the same
    build.

    Refuses (:class:`UserError`) a place that holds anything else, including a shard set built
    with other parameters or from other sources, rather than mixing two sets. With
    ``check_only`` nothing is written.
    """
    identity = json.loads(dump_json(identity))  # as it reads back: tuples become lists
    if file_size(location, PARAMS_NAME) is not None:
        earlier = _load_json(location, PARAMS_NAME)
        _refuse_another_format(location, earlier, identity["format_version"])
        _refuse_another_encoder(location, png_encoder_of(earlier), identity["png_encoder"])
        if earlier != identity:
            raise UserError(
                f"{location.url} already holds a shard set built differently "
                f"({differences(earlier, identity)}); rerun with the same parameters to resume "
                "it, or choose another --out"
            )
        return True
    if has_files(location):
        raise UserError(
            f"{location.url} exists and is not an empty folder or an ipt-data build; "
            "choose another --out"
        )
    if not check_only:
        write_bytes(location, PARAMS_NAME, dump_json(identity))
    return False


def _refuse_another_format(location: SetLocation, earlier: object, now: int) -> None:
    """A set is of one format version (docs/format.md#builder-state-_build): continuing a
    version-1 set would put hash-ordered chunks and string seeds beside name-ordered chunks and
    integer seeds, so a build of another version is refused in one line, not as a difference."""
    version = earlier.get("format_version") if isinstance(earlier, dict) else None
    if version != now:
        raise UserError(
            f"{location.url} holds a shard set of format version {version}, and this ipt-data "
            f"builds version {now}; a build does not continue a set of another version: build "
            "into a new folder (another --out)"
        )


def _refuse_another_encoder(location: SetLocation, earlier: str, now: str) -> None:
    """A set holds one encoder's PNGs (docs/png.md#determinism-and-pinning): refuse to continue
    one written by another, naming both in full (the general difference line would shorten
    them)."""
    if earlier != now:
        raise UserError(
            f"{location.url} was written with PNG encoder {earlier!r}; this ipt-data writes "
            f"{now!r}. A set holds one encoder's PNGs: build into another --out, or continue it "
            "with the encoder it names (its --png-encoder and library version; for ISA-L, on a "
            "CPU of the same class)"
        )


def _chunk_jobs(sources: SourceList, location: SetLocation, config: BuildConfig) -> list[ChunkJob]:
    return [
        ChunkJob(
            index=index,
            first_number=index * config.images_per_shard,
            image_ids=chunk,
            root=str(sources.root.resolve()),
            out=location.root if location.is_local else location.url,
            tasks=tuple(config.tasks),
            patches_per_image=config.patches_per_image,
            seed=config.seed,
            png_encoder=config.png_encoder,
            png_identity=encoder_identity(config.png_encoder),
        )
        for index, chunk in enumerate(sources.chunks(config.images_per_shard))
    ]


def _chunk_stats(
    location: SetLocation, jobs: list[ChunkJob], fresh: list[ChunkStats]
) -> list[ChunkStats]:
    """Every chunk's stats as its stats file holds them: this run's as the workers returned them,
    through the same JSON (the manifest's bytes must not depend on which run built a chunk: key
    order, for one), the chunks done before read from the output together."""
    known = {stats.chunk: ChunkStats.from_json(stats.to_json()) for stats in fresh}
    earlier = [job.index for job in jobs if job.index not in known]
    stored = read_many(location, [stats_name(index) for index in earlier])
    known.update(zip(earlier, map(ChunkStats.from_json, stored), strict=True))
    return [known[job.index] for job in jobs]


def _load_json(location: SetLocation, relative: str) -> object:
    try:
        return json.loads(read_bytes(location, relative))
    except ValueError as error:
        raise UserError(f"{location.describe(relative)}: cannot read JSON ({error})") from None


def check_every_task_has_samples(manifest: dict) -> None:
    """Refuse (UserError) a finished set in which a task got no sample at all (every image
    skipped, or too small for its crop): it is complete and truthful, but nothing can train on
    that task, and a zero exit would hide it."""
    empty = [name for name, task in manifest["tasks"].items() if task["samples"] == 0]
    if empty:
        images = manifest["images"]
        raise UserError(
            f"the shard set holds no {', '.join(empty)} samples ({images['decoded']} of "
            f"{images['listed']} images decoded; skipped and too-small counts above)"
        )


def summary_lines(result: BuildResult) -> list[str]:
    """What a finished build says: work done now, images skipped, per-task samples and bytes."""
    manifest = result.manifest
    lines = [
        f"built {result.chunks_run} of {result.chunks_total} chunks now "
        f"({result.chunks_total - result.chunks_run} were done before) in {result.seconds:.1f} s",
        images_line(manifest),
    ]
    for name, task in manifest["tasks"].items():
        lines.append(
            f"{name}: {task['samples']} samples in {len(task['shards'])} shards, "
            f"{task['bytes']:,} bytes; {task['too_small']} images too small"
        )
    lines.append(f"manifest: {result.manifest_path}")
    return lines
