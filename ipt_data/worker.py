"""The worker: one chunk of sources -> that chunk's shard of every task, plus its stats file.

Stages per image, streamed (one decoded image in memory at a time, whatever the chunk size):
read -> decode -> for each task: cut aligned pairs from the corrupted image -> PNG-encode ->
append to the task's open shard. Shards are renamed into place when complete; the chunk's stats
file is written after all of them, so its presence marks the chunk done (a resumed build skips
it). Nothing here depends on which process runs the chunk or when. Shards and stats go through
:mod:`ipt_data.remote`, so the output may be a folder or an fsspec URL (``s3://…``).
"""

from __future__ import annotations

import re
import resource
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ipt_data.decode import decode_image
from ipt_data.errors import UnreadableImage, UserError
from ipt_data.layout import ChunkStats, shard_name, stats_name
from ipt_data.patches import ImageTooSmall, cut_pairs
from ipt_data.png import encode_png, encoder_identity
from ipt_data.remote import SetLocation, open_location, write_bytes
from ipt_data.seeding import image_rng
from ipt_data.shardwriter import ShardWriter, sample_json
from ipt_data.tasks import Task

_KEY_UNSAFE = re.compile(r"[^0-9A-Za-z_-]+")


@dataclass(frozen=True)
class ChunkJob:
    """Everything a worker needs for one chunk; ``first_number`` numbers its images globally."""

    index: int
    first_number: int
    image_ids: tuple[str, ...]
    root: str
    out: str  # the output's folder or URL
    tasks: tuple[Task, ...]  # the build's own task objects, whose parameters the manifest states
    patches_per_image: int
    seed: int
    png_encoder: str  # one of PNG_ENCODERS
    png_identity: str  # the driver's encoder_identity(png_encoder): every node's must be equal


def sample_key(number: int, image_id: str, patch: int) -> str:
    """A unique, dot-free key: the image's global number (unique), a readable slug of its id,
    the patch index. Example: ``00000042_n01440764_n01440764_10026_p3``."""
    slug = _KEY_UNSAFE.sub("_", image_id.rsplit(".", 1)[0]).strip("_")[-80:]
    return f"{number:08d}_{slug}_p{patch}"


def _ignore_progress(images: int, pairs: int, skipped: int) -> None:
    pass


def process_chunk(
    job: ChunkJob, report: Callable[[int, int, int], None] = _ignore_progress
) -> tuple[int, ChunkStats]:
    """Write chunk ``job.index``'s shard of every task, then its stats file (the done-marker).

    ``report(images, pairs, skipped)`` is called after every image, for a live progress bar.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    ours = encoder_identity(job.png_encoder)
    if ours != job.png_identity:  # a node with another deflate version (or CPU class, for ISA-L)
        raise UserError(
            f"{job.out}: chunk {job.index}: this worker's PNG encoder is {ours!r}, "
            f"the build's is {job.png_identity!r}; install the same on every node"
        )
    cv2.setNumThreads(1)  # one task per core: OpenCV's own pool would oversubscribe it
    tasks = list(job.tasks)
    stats = ChunkStats(chunk=job.index, too_small={task.name: 0 for task in tasks})
    out = open_location(job.out)
    try:
        stats.shards = _write_shards(job, out, tasks, stats, report)
    except OSError as error:  # inputs that cannot be read are _read_image's: this is the output
        raise UserError(
            f"{job.out}: cannot write the shards of chunk {job.index} ({error.strerror or error})"
        ) from None
    stats.seconds = time.perf_counter() - start
    stats.cpu_seconds = time.process_time() - cpu_start
    stats.peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    write_bytes(out, stats_name(job.index), stats.to_json())
    return job.index, stats


def _write_shards(
    job: ChunkJob,
    out: SetLocation,
    tasks: list[Task],
    stats: ChunkStats,
    report: Callable[[int, int, int], None],
) -> dict[str, dict]:
    """Stream the chunk's images into one shard per task (counting into ``stats``); each
    task's manifest entry. On any error every temporary shard file is removed."""
    with ExitStack() as stack:
        writers = {
            task.name: stack.enter_context(ShardWriter(out, shard_name(task.name, job.index)))
            for task in tasks
        }
        for offset, image_id in enumerate(job.image_ids):
            stats.images += 1
            image = _read_image(Path(job.root, image_id), stats)
            if image is None:
                report(1, 0, 1)
                continue
            stats.decoded += 1
            number = job.first_number + offset
            pairs = sum(
                _write_pairs(writers[task.name], image, task, job, number, image_id, stats)
                for task in tasks
            )
            report(1, pairs, 0)
        return {name: _close_shard(writer) for name, writer in writers.items()}


def _close_shard(writer: ShardWriter) -> dict:
    """Rename the finished shard into place; its manifest entry."""
    info = writer.close()
    return {
        "path": info.path,
        "samples": info.samples,
        "bytes": info.bytes,
        "sha256": info.sha256,
    }


def _read_image(path: Path, stats: ChunkStats) -> np.ndarray | None:
    """The decoded RGB image, or None after counting why it was skipped."""
    try:
        return decode_image(path.read_bytes(), str(path))
    except UnreadableImage as error:
        reason = error.reason
    except FileNotFoundError:  # listed (--files), or deleted or a dangling link since the walk
        reason = "missing_file"
    except OSError:
        reason = "unreadable_file"
    stats.skipped[reason] = stats.skipped.get(reason, 0) + 1
    return None


def _write_pairs(
    writer: ShardWriter,
    image: np.ndarray,
    task: Task,
    job: ChunkJob,
    number: int,
    image_id: str,
    stats: ChunkStats,
) -> int:
    """Cut one image's pairs for one task and append them to the task's shard; returns how
    many were written."""
    rng, seed64 = image_rng(job.seed, image_id, task.name)
    try:
        pairs = cut_pairs(image, task, rng, job.patches_per_image)
    except ImageTooSmall:
        stats.too_small[task.name] += 1
        return 0
    task_params = task.params()
    for patch, pair in enumerate(pairs):
        metadata = {
            "source": image_id,
            "image_size": list(image.shape[:2]),
            "box": list(pair.box),
            "task": task_params,
            "seed": job.seed,
            # Decimal digits, not a JSON number: half of all seeds are >= 2**63, past the int64
            # that Arrow infers for a number column (docs/format.md#sample-json).
            "image_seed": str(seed64),
            "patch": patch,
        }
        members = {
            "input.png": encode_png(pair.input, job.png_encoder),
            "target.png": encode_png(pair.target, job.png_encoder),
            "json": sample_json(metadata),
        }
        writer.write(sample_key(number, image_id, patch), members)
    return len(pairs)
