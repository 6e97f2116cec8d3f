"""``manifest.json``: what a shard set holds and how it was made (docs/format.md).

The manifest is the build's identity (format and tool version, build parameters, source
fingerprint) plus its result (per task: shards with sample count, byte size and sha256, images
too small for the task; images skipped by reason). It holds no times or host names, so the same
build gives the same manifest bytes.

The identity is also written to ``_build/params.json`` when a build starts
(:func:`ipt_data.build.claim_output`): a rerun into the same place resumes only when its
identity is the same, and refuses otherwise.

Every reader of a set, local or remote, gets its manifest from :func:`read_set_manifest`, which
refuses (:func:`validate_manifest`) anything that is not a well-formed, safe manifest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from ipt_data.errors import UserError
from ipt_data.layout import MANIFEST_NAME, ChunkStats
from ipt_data.png import encoder_identity
from ipt_data.remote import SetLocation, read_bytes
from ipt_data.safety import MAX_MANIFEST_BYTES, check_manifest_entries
from ipt_data.sources import SourceList
from ipt_data.tasks import INPUT_SIZE, Task
from ipt_data.version import __version__

FORMAT = "ipt-data shard set"
# The version this ipt-data writes, and those it reads (docs/format.md#version): version 1 put
# images into chunks in name order and wrote each sample's image_seed as a JSON integer
# (docs/format.md#reading-older-versions).
FORMAT_VERSION = 2
READ_FORMAT_VERSIONS = (1, 2)
SHARD_FIELDS = {"path": str, "samples": int, "bytes": int, "sha256": str}


def build_identity(
    tasks: list[Task],
    patches_per_image: int,
    seed: int,
    images_per_shard: int,
    sources: SourceList,
    png_encoder: str,
) -> dict:
    """The parameters that determine a shard set's bytes (worker count and paths do not);
    ``png_encoder`` is one of PNG_ENCODERS, recorded as its full identity."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tool_version": __version__,
        "png_encoder": encoder_identity(png_encoder),
        "params": {
            "seed": seed,
            "patches_per_image": patches_per_image,
            "images_per_shard": images_per_shard,
            "tasks": {task.name: task.params() for task in tasks},
        },
        "source": {
            "fingerprint": sources.fingerprint,
            "images": len(sources.ids),
            "non_image_files": sources.non_image_files,
        },
    }


def make_manifest(identity: dict, chunks: list[ChunkStats]) -> dict:
    """The manifest of a finished build: its identity plus the per-task shards and counts."""
    chunks = sorted(chunks, key=lambda stats: stats.chunk)
    skipped: dict[str, int] = {}
    if identity["source"]["non_image_files"]:
        skipped["non_image_file"] = identity["source"]["non_image_files"]
    for stats in chunks:
        for reason, count in stats.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + count
    tasks = {}
    for name, params in identity["params"]["tasks"].items():
        shards = [stats.shards[name] for stats in chunks]
        tasks[name] = {
            "input_size": INPUT_SIZE,
            "target_size": INPUT_SIZE * params["scale"],
            "samples": sum(shard["samples"] for shard in shards),
            "bytes": sum(shard["bytes"] for shard in shards),
            "too_small": sum(stats.too_small[name] for stats in chunks),
            "shards": shards,
        }
    images = {
        "listed": sum(stats.images for stats in chunks),
        "decoded": sum(stats.decoded for stats in chunks),
        "skipped": dict(sorted(skipped.items())),
    }
    return {**identity, "images": images, "tasks": tasks}


# The fields every reader (info, verify, pull, the training loader) relies on, by path, and
# their JSON types; a manifest lacking one is refused up front rather than failing half-way.
REQUIRED_FIELDS = {
    "tool_version": str,
    "params.seed": int,
    "params.patches_per_image": int,
    "params.images_per_shard": int,
    "source.fingerprint": str,
    "source.images": int,
    "images.listed": int,
    "images.decoded": int,
    "images.skipped": dict,
}
TASK_FIELDS = {
    "input_size": int,
    "target_size": int,
    "samples": int,
    "bytes": int,
    "too_small": int,
}


# What wrote the PNGs of a set whose manifest names no encoder (ipt-data before 0.2: OpenCV).
UNRECORDED_ENCODER = "OpenCV PNG, zlib level 1 (written before ipt-data recorded its encoder)"


def png_encoder_of(identity: dict) -> str:
    """The PNG encoder a build identity or manifest records (:data:`UNRECORDED_ENCODER` if
    none)."""
    return identity.get("png_encoder", UNRECORDED_ENCODER)


def _check_subset_of(subset: object, fail: Callable[[str], None]) -> None:
    """``subset_of`` (a subset copied by ``ipt-data pull --tasks/--shards``): the source's URL
    and manifest sha256, and the selection, a dict of ``tasks`` (a list of names or "all") and
    ``shards`` ("START:STOP")."""
    selection = subset.get("selection") if isinstance(subset, dict) else None
    if not (
        isinstance(subset, dict)
        and isinstance(subset.get("source"), str)
        and isinstance(subset.get("manifest_sha256"), str)
        and isinstance(selection, dict)
        and isinstance(selection.get("shards"), str)
        and (selection.get("tasks") == "all" or _is_str_list(selection.get("tasks")))
    ):
        fail("'subset_of' lacks source/manifest_sha256/selection (tasks, shards)")


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def read_set_manifest(location: SetLocation) -> tuple[dict, bytes]:
    """The checked manifest of the set at ``location`` (:func:`validate_manifest`) and its exact
    bytes; a missing, unreadable, non-JSON or malformed one is one UserError."""
    where = location.describe(MANIFEST_NAME)
    missing = "no manifest (is this an ipt-data shard set? is its build finished?)"
    data = read_bytes(location, MANIFEST_NAME, missing, MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(data)
    except ValueError as error:
        raise UserError(f"{where}: bad manifest: not JSON ({error})") from None
    validate_manifest(manifest, where)
    return manifest, data


def validate_manifest(manifest: object, where: str) -> None:
    """Refuse (:class:`UserError` naming ``where``) a manifest that is not a well-formed
    manifest of this format in one of :data:`READ_FORMAT_VERSIONS` (each of
    :data:`REQUIRED_FIELDS`, :data:`TASK_FIELDS` and :data:`SHARD_FIELDS` present with its
    type), or whose shard entries are unsafe
    (:func:`ipt_data.safety.check_manifest_entries`: paths leaving the set, duplicates, bad
    sha256, negative counts). Every reader of a manifest, local or remote, goes through here."""

    def fail(problem: str) -> None:
        raise UserError(f"{where}: bad manifest: {problem}")

    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        fail(f"not an {FORMAT} manifest")
    version = manifest.get("format_version")
    if not (_is(version, int) and version in READ_FORMAT_VERSIONS):
        fail(
            f"format version {version!r}, this tool reads {_versions(READ_FORMAT_VERSIONS)} "
            "(a set written by a newer ipt-data needs that version)"
        )
    for key in ("params", "source", "images", "tasks"):
        if not isinstance(manifest.get(key), dict):
            fail(f"missing {key!r}")
    for path, kind in REQUIRED_FIELDS.items():
        if not _is(_field(manifest, path), kind):
            fail(f"{path!r} is missing or not {_KIND_NAMES[kind]}")
    if not all(_is(count, int) for count in manifest["images"]["skipped"].values()):
        fail("'images.skipped' holds a count that is not an int")
    if "subset_of" in manifest:
        _check_subset_of(manifest["subset_of"], fail)
    if not isinstance(png_encoder_of(manifest), str):
        fail("'png_encoder' is not a string")
    for name, task in manifest["tasks"].items():
        if not _TASK_NAME.match(name):
            fail(f"task name {name!r} is not letters, digits and underscores")
        if not isinstance(task, dict) or not isinstance(task.get("shards"), list):
            fail(f"task {name!r} has no shard list")
        for key, kind in TASK_FIELDS.items():
            if not _is(task.get(key), kind):
                fail(f"task {name!r}: {key!r} is missing or not {_KIND_NAMES[kind]}")
        for shard in task["shards"]:
            if not isinstance(shard, dict) or any(
                not _is(shard.get(key), kind) for key, kind in SHARD_FIELDS.items()
            ):
                fail(f"task {name!r}: a shard entry lacks path/samples/bytes/sha256")
    check_manifest_entries(manifest, where)


def _versions(versions: tuple[int, ...]) -> str:
    """``1 and 2``, ``1, 2 and 3``."""
    names = [str(version) for version in versions]
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


_TASK_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_KIND_NAMES = {int: "an integer", str: "a string", dict: "an object"}


def _field(manifest: dict, path: str) -> object:
    """``manifest["a"]["b"]`` for ``"a.b"``; None where a level is missing."""
    value: object = manifest
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _is(value: object, kind: type) -> bool:
    """isinstance, except that a JSON true/false is not a count."""
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def differences(earlier: dict, now: dict, prefix: str = "") -> str:
    """Which fields of two identities differ, e.g. ``params.seed: 0 -> 1``."""
    changes = []
    for key in sorted(set(earlier) | set(now)):
        before, after = earlier.get(key), now.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            nested = differences(before, after, f"{prefix}{key}.")
            changes.extend([nested] if nested else [])
        elif before != after:
            changes.append(f"{prefix}{key}: {_short(before)} -> {_short(after)}")
    return "; ".join(changes)


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def dump_json(value: dict) -> bytes:
    """The JSON bytes of a manifest, of a build's identity (``_build/params.json``) and of a
    transfer's marker (``_transfer/source.json``): keys in their given order, one-space indent."""
    return (json.dumps(value, indent=1) + "\n").encode()


def images_line(manifest: dict) -> str:
    """The manifest's image counts in one line, as ``build`` and ``info`` print them."""
    images = manifest["images"]
    skipped = ", ".join(f"{reason} {count}" for reason, count in images["skipped"].items())
    decoded = f"{images['decoded']} of {images['listed']} decoded"
    return f"images: {decoded}; skipped: {skipped or 'none'}"
