"""``verify`` and ``info`` of a shard set, in a folder or at a URL.

``verify_shard_set`` streams every shard once through the one shard stream
(:func:`ipt_data.remote.read_shard`: size, sha256 and sample count against the manifest, member
and PNG-header gates) and decodes each sample as it passes: ``input.png`` 48×48 RGB,
``target.png`` 48s×48s RGB, ``json`` an object whose ``image_seed``, where it has one, is
spelt as the set's format version writes it. Local shards are checked in parallel processes,
a remote set's in threads (each shard fetched once, nothing kept). The result names every bad
shard with its first problem; a shard whose bytes differ from the manifest is named for that
rather than for a sample that then fails to decode.

Ctrl-C, SIGTERM or SIGUSR1 stops the checks under way within a 1 MiB block (a stop event the
shard streams watch) and ends the command with ``Error: interrupted; ...`` and 128 + the signal's
number (:mod:`ipt_data.errors`); verify writes nothing, so there is nothing to clean up. Its
processes ignore Ctrl-C (the terminal sends it to them too: the main process decides) and end
within a second of the main process however it ends, SIGKILL included.

A shard is someone else's file even when its hash matches the manifest (the manifest may be
theirs too): the stream's gates refuse a member other than the three, a link, an oversized
member or a PNG bomb from its header, before anything is decoded. Tars are read with the
standard library (``ipt_data`` does not import webdataset, which would import torch).
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import re
import signal
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ipt_data.errors import UserError, interrupted_then, printable
from ipt_data.layout import BOOKKEEPING_FOLDERS, CARD_NAME, MANIFEST_NAME
from ipt_data.manifest import images_line, png_encoder_of, read_set_manifest
from ipt_data.progress import progress_bar
from ipt_data.remote import (
    SetLocation,
    open_set_location,
    read_shard,
    retried,
    storage_errors,
)
from ipt_data.safety import check_png_header


@dataclass(frozen=True)
class ShardCheck:
    """One shard to check: its manifest entry, its task's PNG sides and the set's format
    version (which says how its sample JSON spells ``image_seed``)."""

    entry: dict  # path, samples, bytes, sha256
    input_size: int
    target_size: int
    format_version: int

    @property
    def name(self) -> str:
        """The shard's path in the set, as the manifest lists it."""
        return self.entry["path"]


@dataclass(frozen=True)
class VerifyReport:
    shards: int
    samples: int
    problems: dict[str, str]  # shard path as listed -> its first problem
    # Files in a local set that its manifest does not list (readers ignore them; not a problem,
    # but a stray shard-named tar or a leftover .part deserves a look). The card (README.md) and
    # build and transfer bookkeeping (_build/, _transfer/) are not counted.
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
    checks = _shard_checks(manifest)
    workers = workers or os.cpu_count() or 1
    bar = progress_bar(total=len(checks), unit="shard", desc="verify", enabled=progress)
    with bar, interrupted_then("nothing was written: rerun verify to check the set"):
        problems = _map(location, checks, workers, bar)
    found = {
        check.name: problem for check, problem in zip(checks, problems, strict=True) if problem
    }
    unlisted = unlisted_files(Path(location.root), checks) if location.is_local else ()
    samples = sum(check.entry["samples"] for check in checks)
    return VerifyReport(len(checks), samples, found, unlisted)


def _shard_checks(manifest: dict) -> list[ShardCheck]:
    version = manifest["format_version"]
    return [
        ShardCheck(shard, task["input_size"], task["target_size"], version)
        for task in manifest["tasks"].values()
        for shard in task["shards"]
    ]


def unlisted_files(root: Path, checks: list[ShardCheck]) -> tuple[str, ...]:
    """Set-relative names of the files under ``root`` that are neither the manifest, the card, a
    listed shard, nor build/transfer bookkeeping."""
    known = {check.name for check in checks} | {MANIFEST_NAME, CARD_NAME}
    found = (path.relative_to(root).as_posix() for path in root.rglob("*") if not path.is_dir())
    return tuple(
        sorted(
            name
            for name in found
            if name not in known and name.split("/")[0] not in BOOKKEEPING_FOLDERS
        )
    )


def _map(location: SetLocation, checks: list[ShardCheck], workers: int, bar: tqdm) -> list:
    """``[check_shard(location, check) ...]``, ``workers`` at a time, ticking ``bar`` per shard:
    local shards in processes (decoding is CPU-bound), remote ones in threads (network-bound,
    sharing one fsspec client). When the caller is interrupted, the checks not begun are
    cancelled and those under way stop within a block (their stop event)."""
    if workers == 1 or len(checks) < 2:
        return [_ticked(bar, check_shard(location, check)) for check in checks]
    pool: Executor
    if location.is_local:
        context = multiprocessing.get_context()
        stop = context.Event()
        start = (stop, os.getpid())
        pool = ProcessPoolExecutor(workers, context, _start_checker, start)
        function = functools.partial(_check_in_process, location)
    else:
        stop = threading.Event()
        pool = ThreadPoolExecutor(workers, thread_name_prefix="ipt-verify")
        function = functools.partial(check_shard, location, stop=stop)
    with pool:
        try:
            return [_ticked(bar, result) for result in pool.map(function, checks)]
        except BaseException:  # Ctrl-C, SIGTERM: stop now, not after every shard is checked
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise


_process_stop = None  # a checking process's stop event (_start_checker)


def _start_checker(stop, parent: int) -> None:
    """Set up a checking process: its stop event; Ctrl-C and SIGUSR1 ignored (the main process
    stops the checks), SIGTERM as :func:`_on_sigterm`; its end within a second of ``parent``'s,
    which may be killed outright."""
    global _process_stop
    _process_stop = stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit with the main process").start()


def _on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM in a checking process: its end a second later, unless the main process starts
    stopping the checks meanwhile. A scheduler signals every process of a job at once, and then
    the main process stops the checks (a process that died instead would break the pool under
    it); the pool's own SIGTERM, after another process died, ends this one."""

    def end_unless_stopping() -> None:
        if not _process_stop.wait(1.0):
            os._exit(128 + signum)

    threading.Thread(target=end_unless_stopping, daemon=True).start()


def _check_in_process(location: SetLocation, check: ShardCheck) -> str | None:
    return check_shard(location, check, _process_stop)


def _ticked(bar: tqdm, result: object) -> object:
    bar.update()
    return result


def check_shard(location: SetLocation, check: ShardCheck, stop=None) -> str | None:
    """The first problem of one shard of the set at ``location``, or None when it is intact.
    Network errors are retried (:func:`ipt_data.remote.retried`); once the event ``stop`` is
    set, the check ends within a block (:class:`ipt_data.remote.CopyStopped`)."""
    name = location.describe(check.name)
    try:
        with storage_errors(name):
            return retried(name, lambda: _first_problem(location, check, stop))
    except UserError as error:  # the stream's checks and gates: nothing foreign was decoded
        return str(error)


def _first_problem(location: SetLocation, check: ShardCheck, stop=None) -> str | None:
    """Stream the shard through :func:`ipt_data.remote.read_shard`, decoding each sample until
    one fails; that sample's problem, told only once the stream has ended verified (a shard
    whose bytes differ from the manifest raises for that first)."""
    problem = None
    for sample in read_shard(location, check.entry, stop=stop):
        problem = problem or _sample_problem(sample, check)
    return problem


def _sample_problem(sample: dict, check: ShardCheck) -> str | None:
    """What is wrong with one sample's contents (exact PNG sizes, decoding, JSON), or None."""
    key = sample["__key__"]
    for extension, side in (("input.png", check.input_size), ("target.png", check.target_size)):
        data = sample[extension]
        if check_png_header(data, f"sample {key}: {extension}") != (side, side):
            return f"unreadable: sample {key}: {extension} header is not {side}x{side}"
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None or image.shape != (side, side, 3) or image.dtype != np.uint8:
            shape = None if image is None else image.shape
            return f"unreadable: sample {key}: {extension} is {shape}, expected ({side}, {side}, 3)"
    problem = _json_problem(sample["json"], check.format_version)
    return f"unreadable: sample {key}: {problem}" if problem else None


def _json_problem(data: bytes, format_version: int) -> str | None:
    """What is wrong with a sample's JSON: not JSON, not an object, or an ``image_seed`` that
    its format version does not write (docs/format.md#sample-json); None if nothing. The other
    fields are for people and replays: readers do not depend on them."""
    try:
        metadata = json.loads(data)
    except ValueError as error:
        return f"json does not parse ({error})"
    if not isinstance(metadata, dict):
        return "json is not an object"
    if "image_seed" not in metadata:
        return None
    seed = metadata["image_seed"]
    if format_version == 1:  # a JSON integer (docs/format.md#reading-older-versions)
        if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**64:
            return None
        expected = "an integer from 0 to 2**64-1"
    else:  # decimal digits, no sign or leading zero, so that Arrow reads the field
        if isinstance(seed, str) and _DECIMAL.fullmatch(seed) and int(seed) < 2**64:
            return None
        expected = "a string of decimal digits below 2**64"
    shown = json.dumps(seed)  # ASCII, control characters escaped
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return f"json image_seed is {shown}, format {format_version} writes {expected}"


# At most 20 digits (2**64 has 20), checked before int() reads them.
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")


def describe_shard_set(shard_set: str | Path) -> list[str]:
    """Human-readable lines: the set's build parameters, source, image counts and per-task
    samples, shards and sizes."""
    _, manifest = open_shard_set(shard_set)
    params, source = manifest["params"], manifest["source"]
    lines = [
        f"shard set {shard_set} (format {manifest['format_version']}, "
        f"ipt-data {manifest['tool_version']})",
        f"seed {params['seed']}, {params['patches_per_image']} patches per image, "
        f"{params['images_per_shard']} images per shard",
        f"source: {source['images']} images, fingerprint {source['fingerprint'][:16]}",
        f"PNG encoder: {png_encoder_of(manifest)}",
        images_line(manifest),
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
