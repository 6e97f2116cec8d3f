"""``pull`` and ``push``: copy a shard set between a folder and a URL, several shards at once.

Shards are copied ``jobs`` at a time (threads: each copy mostly waits on the network, and an
object store answers every request only after a round trip). Each shard is streamed once from
the source to a temporary name at the destination through the one shard stream
(:func:`ipt_data.remote.read_shard`: hashed, counted and walked as a tar, nothing decoded); only
a shard whose size, sha256 and sample count equal the source manifest's is renamed into place,
so a shard path at the destination always holds a verified shard. Network errors are
retried; a shard that disagrees with the manifest, or holds anything but patch pairs, is
refused by name. Every selected shard is attempted; the failures, if any, are reported together
at the end as one error naming each failed shard, and the manifest is not written.

The destination is complete or clearly incomplete: its ``manifest.json`` is written last, and
until then ``_transfer/source.json`` says which set (and which selection of it) is being copied.
A rerun resumes: shards already in place and intact are skipped (re-hashed when local; for a
remote destination their size is checked, since only verified shards ever get a final name
under a transfer marker that pins the source), the rest are copied. A destination holding
another set, another selection, or anything else is refused.

A subset (``tasks``, ``shards``: a slice of each task's shard list) gets a manifest describing
only the copied shards, with a ``subset_of`` entry naming the source and the sha256 of its
manifest; a complete copy gets the source manifest's exact bytes.

The dataset card (``README.md``, :mod:`ipt_data.card`) is written just before the manifest: a
complete copy gets the source's card byte for byte (none where the source has none), a subset
the card of its own manifest.
"""

from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from ipt_data.card import render_card
from ipt_data.configs import DEFAULT_JOBS
from ipt_data.errors import UserError, printable
from ipt_data.fileio import file_sha256
from ipt_data.layout import CARD_NAME, MANIFEST_NAME, MARKER, TRANSFER_FOLDER
from ipt_data.manifest import dump_json, read_set_manifest
from ipt_data.progress import progress_bar
from ipt_data.remote import (
    SetLocation,
    check_writable,
    discard,
    file_size,
    has_files,
    open_location,
    open_set_location,
    open_write_partial,
    publish,
    read_bytes,
    read_shard,
    remove_partials,
    retried,
    sole_writer,
    storage_errors,
    write_bytes,
)
from ipt_data.safety import MAX_MANIFEST_BYTES


@dataclass(frozen=True)
class Selection:
    """Which part of a set to copy: task names (None: all) and a slice of each task's shards."""

    tasks: tuple[str, ...] | None = None
    first: int | None = None
    stop: int | None = None

    def describe(self) -> dict:
        first, stop = ("" if end is None else end for end in (self.first, self.stop))
        return {"tasks": list(self.tasks) if self.tasks else "all", "shards": f"{first}:{stop}"}


def parse_selection(tasks: str | None, shards: str | None) -> Selection:
    """``--tasks a,b`` and ``--shards START:STOP`` (either end may be left out) -> Selection."""
    names = tuple(dict.fromkeys(name.strip() for name in (tasks or "").split(",") if name.strip()))
    if shards is None:
        return Selection(names or None)
    start, colon, stop = shards.partition(":")
    bounds = [part.strip() for part in (start, stop)]
    if not colon or not all(part.isdigit() or not part for part in bounds):
        raise UserError(f"--shards {shards!r}: expected START:STOP, e.g. 0:100")
    first, end = (int(part) if part else None for part in bounds)
    return Selection(names or None, first, end)


@dataclass(frozen=True)
class TransferResult:
    manifest: dict  # as written at the destination
    manifest_path: str
    copied: int  # shards copied by this call
    skipped: int  # shards already in place and intact
    bytes_copied: int


def pull(
    url: str,
    dest_dir: str | Path,
    tasks: str | None = None,
    shards: str | None = None,
    *,
    progress: bool = False,
    storage_options: dict | None = None,
    jobs: int = DEFAULT_JOBS,
) -> TransferResult:
    """Copy the shard set at ``url`` (or the selected part of it) into the folder ``dest_dir``,
    ``jobs`` shards at a time."""
    source, dest = open_set_location(url, storage_options), open_location(dest_dir)
    return copy_set(source, dest, parse_selection(tasks, shards), progress, jobs)


def push(
    src_dir: str | Path,
    url: str,
    tasks: str | None = None,
    shards: str | None = None,
    *,
    progress: bool = False,
    storage_options: dict | None = None,
    jobs: int = DEFAULT_JOBS,
) -> TransferResult:
    """Copy the shard set in the folder ``src_dir`` (or part of it) to ``url``, ``jobs`` shards
    at a time."""
    source, dest = open_set_location(src_dir), open_location(url, storage_options)
    return copy_set(source, dest, parse_selection(tasks, shards), progress, jobs)


def copy_set(
    source: SetLocation,
    dest: SetLocation,
    selection: Selection,
    progress: bool = False,
    jobs: int = DEFAULT_JOBS,
) -> TransferResult:
    """Copy the selected shards of ``source`` to ``dest``, ``jobs`` at a time, then write its
    manifest (last, and only when every shard is in place)."""
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    check_writable(dest)
    with storage_errors(f"{source.url} -> {dest.url}"):
        plan = plan_copy(source, selection)  # a bad source or selection creates no folder
        with sole_writer(dest):
            return _copy_planned(source, dest, plan, progress, jobs)


@dataclass(frozen=True)
class CopyPlan:
    shards: list[dict]  # the selected manifest entries, in copy order
    origin: str  # the source as the destination's marker and subset manifest name it
    manifest_bytes: bytes  # the destination's manifest, written last
    card_bytes: bytes | None = None  # the destination's README.md, written just before it


def plan_copy(source: SetLocation, selection: Selection) -> CopyPlan:
    """What a copy of ``selection`` of ``source`` writes: its shards, the card and the manifest
    (the source's own bytes for a complete copy, a subset's card and manifest otherwise)."""
    manifest, manifest_bytes = read_set_manifest(source)
    chosen = select_shards(manifest, selection)
    everything = [shard for task in manifest["tasks"].values() for shard in task["shards"]]
    origin = source.root if source.is_local else source.url
    if sorted(_paths(chosen)) != sorted(_paths(everything)):
        subset = subset_manifest(manifest, manifest_bytes, origin, selection)
        return CopyPlan(chosen, origin, dump_json(subset), render_card(subset).encode())
    return CopyPlan(chosen, origin, manifest_bytes, source_card(source))


def source_card(source: SetLocation) -> bytes | None:
    """The bytes of the set's card, or None where it has none."""
    if file_size(source, CARD_NAME) is None:
        return None
    return read_bytes(source, CARD_NAME, limit=MAX_MANIFEST_BYTES)


def _copy_planned(
    source: SetLocation, dest: SetLocation, plan: CopyPlan, progress: bool, jobs: int
) -> TransferResult:
    chosen, origin, out_bytes = plan.shards, plan.origin, plan.manifest_bytes
    _claim_destination(dest, origin, out_bytes)
    for folder in sorted({shard["path"].rpartition("/")[0] for shard in chosen} - {""}):
        remove_partials(dest, folder)
    outcomes = _copy_shards(source, dest, chosen, progress, jobs)
    sizes = [size for size in outcomes if size is not None]  # None: was in place already
    if plan.card_bytes is not None:
        write_bytes(dest, CARD_NAME, plan.card_bytes)
    write_bytes(dest, MANIFEST_NAME, out_bytes)
    dest.fs.rm(dest.path(TRANSFER_FOLDER), recursive=True)
    return TransferResult(
        json.loads(out_bytes),
        dest.describe(MANIFEST_NAME),
        copied=len(sizes),
        skipped=len(chosen) - len(sizes),
        bytes_copied=sum(sizes),
    )


def _copy_shards(
    source: SetLocation, dest: SetLocation, shards: list[dict], progress: bool, jobs: int
) -> list[int | None]:
    """Bring every shard into place at ``dest``, ``jobs`` at a time; per shard the bytes copied,
    or None where it was in place already. A shard that fails does not stop the others; the
    failures are one UserError at the end. Any other error cancels the shards not yet begun,
    waits for those under way (each publishes or discards its temporary file) and is raised."""
    outcomes, failures, stop = {}, {}, threading.Event()
    bar = progress_bar(total=len(shards), unit="shard", desc="shards", enabled=progress)
    with bar, ThreadPoolExecutor(jobs, thread_name_prefix="ipt-transfer") as pool:
        futures = {
            pool.submit(_bring_in_place, source, dest, shard, stop): shard for shard in shards
        }
        try:
            for future in as_completed(futures):
                try:
                    outcomes[futures[future]["path"]] = future.result()
                except UserError as error:
                    failures[futures[future]["path"]] = str(error)
                bar.update()
        except BaseException:  # Ctrl-C, say: copies under way stop within a block, not at the end
            stop.set()
            pool.shutdown(cancel_futures=True)
            raise
    if failures:
        raise UserError(_failure_message(shards, failures))
    return [outcomes[shard["path"]] for shard in shards]


def _bring_in_place(
    source: SetLocation, dest: SetLocation, shard: dict, stop: threading.Event
) -> int | None:
    """Copy one shard unless ``dest`` holds it intact already (None then)."""
    return None if _in_place(dest, shard) else copy_shard(source, dest, shard, stop)


def _failure_message(shards: list[dict], failures: dict[str, str]) -> str:
    """One message naming every failed shard (in manifest order) with its own reason."""
    reasons = [f"  {failures[shard['path']]}" for shard in shards if shard["path"] in failures]
    return "\n".join(
        [
            f"{len(failures)} of {len(shards)} shards could not be copied; the others are in "
            "place and no manifest was written. Rerun the same command to resume:",
            *reasons,
        ]
    )


def select_shards(manifest: dict, selection: Selection) -> list[dict]:
    """The shard entries a selection picks, task by task (in the selection's order)."""
    tasks = manifest["tasks"]
    names = selection.tasks or tuple(tasks)
    unknown = [name for name in names if name not in tasks]
    if unknown:
        raise UserError(f"--tasks: the set has no task {unknown}; it has {sorted(tasks)}")
    picked = slice(selection.first, selection.stop)
    chosen = [shard for name in names for shard in tasks[name]["shards"][picked]]
    if not chosen:
        raise UserError(f"the selection {selection.describe()} picks no shard of the set")
    return chosen


def subset_manifest(
    manifest: dict, manifest_bytes: bytes, source_url: str, selection: Selection
) -> dict:
    """The manifest of a subset: only the selected shards, per-task totals recounted, and
    ``subset_of`` naming the source set (its URL and the sha256 of its manifest)."""
    picked = slice(selection.first, selection.stop)
    tasks = {}
    for name in selection.tasks or tuple(manifest["tasks"]):
        task = manifest["tasks"][name]
        shards = task["shards"][picked]
        samples = sum(shard["samples"] for shard in shards)
        size = sum(shard["bytes"] for shard in shards)
        tasks[name] = {**task, "samples": samples, "bytes": size, "shards": shards}
    subset_of = {
        "source": source_url,
        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        "selection": selection.describe(),
        "note": "'images' and each task's 'too_small' count the whole source set",
    }
    return {**manifest, "tasks": tasks, "subset_of": subset_of}


def copy_shard(
    source: SetLocation, dest: SetLocation, shard: dict, stop: threading.Event | None = None
) -> int:
    """Stream one shard from ``source`` to ``dest``, verified; retries network errors
    (:func:`ipt_data.remote.retried`). Once ``stop`` is set the copy ends
    (:class:`ipt_data.remote.CopyStopped`), its temporary file removed."""
    name = source.describe(shard["path"])
    return retried(name, lambda: _copy_once(source, dest, shard, stop))


def _copy_once(
    source: SetLocation, dest: SetLocation, shard: dict, stop: threading.Event | None
) -> int:
    """One attempt: the shard read through :func:`ipt_data.remote.read_shard` into a temporary
    file at ``dest``, published only once the stream has ended verified; its size."""
    stream, partial = open_write_partial(dest, shard["path"])
    try:
        with stream:  # an object store uploads (the rest of) the copy when it closes
            for _ in read_shard(source, shard, copy_to=stream, stop=stop):
                pass
        publish(dest, partial, shard["path"])
    except BaseException:
        discard(dest, partial)
        raise
    return shard["bytes"]


def _in_place(dest: SetLocation, shard: dict) -> bool:
    """True when ``dest`` already holds this shard intact (see the module doc)."""
    if file_size(dest, shard["path"]) != shard["bytes"]:
        return False
    if not dest.is_local:
        return True
    return file_sha256(dest.path(shard["path"])) == shard["sha256"]


def _claim_destination(dest: SetLocation, source_url: str, out_bytes: bytes) -> None:
    """Make ``dest`` this transfer's: empty, the same finished copy, or this copy resumed."""
    marker = dump_json(
        {"source": source_url, "manifest_sha256": hashlib.sha256(out_bytes).hexdigest()}
    )
    if file_size(dest, MANIFEST_NAME) is not None:
        if dest.fs.cat_file(dest.path(MANIFEST_NAME)) != out_bytes:
            raise UserError(f"{dest.url} already holds another shard set; choose another place")
    elif file_size(dest, MARKER) is not None:
        earlier = dest.fs.cat_file(dest.path(MARKER))
        if json.loads(earlier)["manifest_sha256"] != json.loads(marker)["manifest_sha256"]:
            raise UserError(
                f"{dest.url} holds an unfinished copy of another set or selection "
                f"({json.loads(earlier)['source']}); resume that one or choose another place"
            )
    elif has_files(dest):
        raise UserError(f"{dest.url} is not empty and not a shard set; choose another place")
    write_bytes(dest, MARKER, marker)


def _paths(shards: list[dict]) -> list[str]:
    return [shard["path"] for shard in shards]


def summary_line(result: TransferResult) -> str:
    """One line for the CLI: what was copied now, what was already there, where the set is."""
    subset = result.manifest.get("subset_of")
    if subset:
        picked = subset["selection"]
        tasks = ",".join(picked["tasks"]) if isinstance(picked["tasks"], list) else "all"
        kind = f"subset (tasks {tasks}, shards {picked['shards']}) of {subset['source']}"
    else:
        kind = "the complete set"
    return printable(
        f"copied {result.copied} shards ({result.bytes_copied:,} bytes), {result.skipped} were "
        f"already in place; {kind}; manifest: {result.manifest_path}"
    )
