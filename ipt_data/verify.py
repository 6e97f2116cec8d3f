"""``verify`` and ``info`` of a shard set, in a folder or at a URL.

``verify_shard_set`` re-hashes every shard against the manifest, then reads it as a tar and
checks that it holds the recorded number of samples, each with ``input.png`` (48×48 RGB),
``target.png`` (48s×48s RGB) and a JSON object, and nothing else. Local shards are checked in
parallel processes; a remote set's shards are fetched one at a time per thread into a verified
temporary copy (:func:`ipt_data.transfer.fetched_shard`) and checked there. The result names
every bad shard with its first problem.

A shard is someone else's file even when its hash matches the manifest (the manifest may be
theirs too): it is read through :func:`ipt_data.safety.read_samples`, so a member other than
the three, a link, an oversized member or a PNG bomb is refused from its header before anything
is decoded. Tars are read with the standard library (``ipt_data`` does not import webdataset,
which would import torch).
"""

from __future__ import annotations

import functools
import json
import os
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ipt_data.errors import UserError, printable
from ipt_data.fileio import file_sha256
from ipt_data.manifest import MANIFEST_NAME
from ipt_data.progress import progress_bar
from ipt_data.remote import SetLocation, open_set_location, read_set_manifest, storage_errors
from ipt_data.safety import check_png_header, read_samples
from ipt_data.transfer import MARKER, fetched_shard
from ipt_data.worker import STATE_FOLDER


@dataclass(frozen=True)
class ShardCheck:
    """One shard to check: its file and what the manifest says about it."""

    path: Path
    name: str  # as listed in the manifest
    samples: int
    bytes: int
    sha256: str
    input_size: int
    target_size: int

    def entry(self) -> dict:
        """The shard's manifest entry."""
        return {
            "path": self.name,
            "samples": self.samples,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class VerifyReport:
    shards: int
    samples: int
    problems: dict[str, str]  # shard path as listed -> its first problem
    # Files in a local set that its manifest does not list (readers ignore them; not a problem,
    # but a stray shard-named tar or a leftover .part deserves a look). Build and transfer
    # bookkeeping (_build/, _transfer/) is not counted.
    unlisted: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


def open_shard_set(shard_set: str | Path) -> tuple[SetLocation, dict]:
    """The location of the set at ``shard_set`` (a folder, its ``manifest.json``, or a URL:
    ``http(s)://…``, ``s3://…``, any fsspec URL) and its checked manifest."""
    location = open_set_location(shard_set)
    if location.is_local and Path(location.root).is_file():
        raise UserError(f"{shard_set}: is a file; a shard set is a folder with a manifest.json")
    with storage_errors(location.url):
        return location, read_set_manifest(location)[0]


def verify_shard_set(
    shard_set: str | Path, workers: int | None = None, *, progress: bool = False
) -> VerifyReport:
    """Check every shard of the set at ``shard_set`` (folder or URL) against its manifest,
    ``workers`` at a time, with a progress bar on stderr if ``progress``."""
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    location, manifest = open_shard_set(shard_set)
    checks = _shard_checks(location, manifest)
    workers = workers or os.cpu_count() or 1
    bar = progress_bar(total=len(checks), unit="shard", desc="verify", enabled=progress)
    with bar:
        if location.is_local:
            problems = _map(check_shard, checks, workers, ProcessPoolExecutor, bar)
        else:  # network-bound: threads share one fsspec client
            remote = functools.partial(check_remote_shard, location)
            problems = _map(remote, checks, workers, ThreadPoolExecutor, bar)
    found = {
        check.name: problem for check, problem in zip(checks, problems, strict=True) if problem
    }
    unlisted = unlisted_files(Path(location.root), checks) if location.is_local else ()
    return VerifyReport(len(checks), sum(check.samples for check in checks), found, unlisted)


def _shard_checks(location: SetLocation, manifest: dict) -> list[ShardCheck]:
    return [
        ShardCheck(
            # a remote shard's path is set to its fetched copy's when it is checked
            Path(location.path(shard["path"])) if location.is_local else Path(shard["path"]),
            shard["path"],
            shard["samples"],
            shard["bytes"],
            shard["sha256"],
            task["input_size"],
            task["target_size"],
        )
        for task in manifest["tasks"].values()
        for shard in task["shards"]
    ]


def unlisted_files(root: Path, checks: list[ShardCheck]) -> tuple[str, ...]:
    """Set-relative names of the files under ``root`` that are neither the manifest, nor a
    listed shard, nor build/transfer bookkeeping."""
    known = {check.name for check in checks} | {MANIFEST_NAME}
    bookkeeping = {STATE_FOLDER, MARKER.partition("/")[0]}
    found = (path.relative_to(root).as_posix() for path in root.rglob("*") if not path.is_dir())
    return tuple(
        sorted(
            name for name in found if name not in known and name.split("/")[0] not in bookkeeping
        )
    )


def _map(function, items: list, workers: int, pool: type[Executor], bar: tqdm) -> list:
    """``[function(item) for item in items]``, ``workers`` at a time, ticking ``bar`` per item."""
    if workers == 1 or len(items) < 2:
        return [_ticked(bar, function(item)) for item in items]
    with pool(workers) as running:
        return [_ticked(bar, result) for result in running.map(function, items)]


def _ticked(bar: tqdm, result: object) -> object:
    bar.update()
    return result


def check_remote_shard(location: SetLocation, check: ShardCheck) -> str | None:
    """The first problem of one shard of a remote set: fetched (size, sha256 and tar members
    checked as it streams), then checked as a local shard; the copy is removed after."""
    try:
        with (
            storage_errors(location.describe(check.name)),
            fetched_shard(location, check.entry()) as path,
        ):
            return check_shard(replace(check, path=path))
    except UserError as error:
        return str(error)


def check_shard(check: ShardCheck) -> str | None:
    """The first problem of one local shard, or None when it is intact."""
    if not check.path.is_file():
        return "missing"
    size = check.path.stat().st_size
    if size != check.bytes:
        return f"size {size} bytes, manifest says {check.bytes}"
    if file_sha256(check.path) != check.sha256:
        return "sha256 differs from the manifest"
    try:
        samples = _check_samples(check)
    except UserError as error:  # from the member and PNG-header gates: nothing was decoded
        return str(error)
    except (OSError, ValueError) as error:
        return f"unreadable: {error}"
    if samples != check.samples:
        return f"{samples} samples, manifest says {check.samples}"
    return None


def _check_samples(check: ShardCheck) -> int:
    """Read the tar sample by sample through the safety gates, decode each; raises ValueError
    naming the first sample that does not decode to the expected sizes."""
    with open(check.path, "rb") as stream:
        return sum(_check_sample(sample, check) for sample in read_samples(stream, check.name))


def _check_sample(sample: dict, check: ShardCheck) -> int:
    key = sample["__key__"]
    for extension, side in (("input.png", check.input_size), ("target.png", check.target_size)):
        data = sample[extension]
        if check_png_header(data, f"sample {key}: {extension}") != (side, side):
            raise ValueError(f"sample {key}: {extension} header is not {side}x{side}")
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None or image.shape != (side, side, 3) or image.dtype != np.uint8:
            shape = None if image is None else image.shape
            raise ValueError(f"sample {key}: {extension} is {shape}, expected ({side}, {side}, 3)")
    if not isinstance(json.loads(sample["json"]), dict):
        raise ValueError(f"sample {key}: json is not an object")
    return 1


def describe_shard_set(shard_set: str | Path) -> list[str]:
    """Human-readable lines: the set's build parameters, source, image counts and per-task
    samples, shards and sizes."""
    _, manifest = open_shard_set(shard_set)
    params, source, images = manifest["params"], manifest["source"], manifest["images"]
    skipped = ", ".join(f"{reason} {count}" for reason, count in images["skipped"].items())
    lines = [
        f"shard set {shard_set} (format {manifest['format_version']}, "
        f"ipt-data {manifest['tool_version']})",
        f"seed {params['seed']}, {params['patches_per_image']} patches per image, "
        f"{params['images_per_shard']} images per shard",
        f"source: {source['images']} images, fingerprint {source['fingerprint'][:16]}",
        f"images: {images['decoded']} of {images['listed']} decoded; skipped: {skipped or 'none'}",
        *_subset_lines(manifest),
        f"{'task':12s} {'input':>6s} {'target':>7s} {'samples':>10s} {'shards':>7s} "
        f"{'bytes':>14s} {'too small':>9s}",
    ]
    for name, task in manifest["tasks"].items():
        lines.append(
            f"{name:12s} {task['input_size']:>6d} {task['target_size']:>7d} {task['samples']:>10d} "
            f"{len(task['shards']):>7d} {task['bytes']:>14,d} {task['too_small']:>9d}"
        )
    return [printable(line) for line in lines]


def _subset_lines(manifest: dict) -> list[str]:
    """Where a subset (``ipt-data pull --tasks/--shards``) came from; nothing for a whole set."""
    subset = manifest.get("subset_of")
    if subset is None:
        return []
    picked = subset["selection"]  # its fields are checked with the manifest
    digest = subset["manifest_sha256"][:16]
    return [
        f"subset of {subset['source']} (tasks {picked['tasks']}, shards {picked['shards']}; "
        f"source manifest sha256 {digest})",
        "  image counts and 'too small' below are the whole source set's",
    ]
