"""``verify`` and ``info`` of a shard set.

``verify_shard_set`` re-hashes every shard against the manifest, then reads it as a tar and
checks that it holds the recorded number of samples, each with ``input.png`` (48×48 RGB),
``target.png`` (48s×48s RGB) and a JSON object, and nothing else. Shards are checked in parallel
processes; the result names every bad shard with its first problem.

Tars are read with the standard library (``ipt_data`` does not import webdataset, which would
import torch).
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ipt_data.manifest import read_manifest

MEMBERS = ("input.png", "json", "target.png")  # sorted: the extensions a sample must have


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


@dataclass(frozen=True)
class VerifyReport:
    shards: int
    samples: int
    problems: dict[str, str]  # shard path as listed -> its first problem

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_shard_set(shard_set: str | Path, workers: int | None = None) -> VerifyReport:
    """Check every shard of the set at ``shard_set`` against its manifest."""
    root = Path(shard_set)
    manifest = read_manifest(root)
    checks = [
        ShardCheck(
            root / shard["path"],
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
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(checks) < 2:
        problems = list(map(check_shard, checks))
    else:
        with ProcessPoolExecutor(workers) as pool:
            problems = list(pool.map(check_shard, checks))
    found = {
        check.name: problem for check, problem in zip(checks, problems, strict=True) if problem
    }
    return VerifyReport(len(checks), sum(check.samples for check in checks), found)


def check_shard(check: ShardCheck) -> str | None:
    """The first problem of one shard, or None when it is intact."""
    if not check.path.is_file():
        return "missing"
    size = check.path.stat().st_size
    if size != check.bytes:
        return f"size {size} bytes, manifest says {check.bytes}"
    if _sha256(check.path) != check.sha256:
        return "sha256 differs from the manifest"
    try:
        samples = _check_samples(check)
    except (tarfile.TarError, OSError, ValueError) as error:
        return f"unreadable: {error}"
    if samples != check.samples:
        return f"{samples} samples, manifest says {check.samples}"
    return None


def _check_samples(check: ShardCheck) -> int:
    """Read the tar sample by sample; raises ValueError naming the first bad sample."""
    samples, key, members = 0, None, {}
    with tarfile.open(check.path, mode="r|") as tar:
        for member in tar:
            name_key, _, extension = member.name.partition(".")
            if name_key != key:
                samples += _check_sample(key, members, check) if key is not None else 0
                key, members = name_key, {}
            members[extension] = tar.extractfile(member).read()
    if key is not None:
        samples += _check_sample(key, members, check)
    return samples


def _check_sample(key: str, members: dict[str, bytes], check: ShardCheck) -> int:
    if tuple(sorted(members)) != MEMBERS:
        raise ValueError(f"sample {key} has members {sorted(members)}, expected {list(MEMBERS)}")
    for extension, side in (("input.png", check.input_size), ("target.png", check.target_size)):
        image = cv2.imdecode(np.frombuffer(members[extension], np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None or image.shape != (side, side, 3) or image.dtype != np.uint8:
            shape = None if image is None else image.shape
            raise ValueError(f"sample {key}: {extension} is {shape}, expected ({side}, {side}, 3)")
    if not isinstance(json.loads(members["json"]), dict):
        raise ValueError(f"sample {key}: json is not an object")
    return 1


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def describe_shard_set(shard_set: str | Path) -> list[str]:
    """Human-readable lines: the set's build parameters, source, image counts and per-task
    samples, shards and sizes."""
    manifest = read_manifest(shard_set)
    params, source, images = manifest["params"], manifest["source"], manifest["images"]
    skipped = ", ".join(f"{reason} {count}" for reason, count in images["skipped"].items())
    lines = [
        f"shard set {shard_set} (format {manifest['format_version']}, "
        f"ipt-data {manifest['tool_version']})",
        f"seed {params['seed']}, {params['patches_per_image']} patches per image, "
        f"{params['images_per_shard']} images per shard",
        f"source: {source['images']} images, fingerprint {source['fingerprint'][:16]}",
        f"images: {images['decoded']} of {images['listed']} decoded; skipped: {skipped or 'none'}",
        f"{'task':12s} {'input':>6s} {'target':>7s} {'samples':>10s} {'shards':>7s} "
        f"{'bytes':>14s} {'too small':>9s}",
    ]
    for name, task in manifest["tasks"].items():
        lines.append(
            f"{name:12s} {task['input_size']:>6d} {task['target_size']:>7d} {task['samples']:>10d} "
            f"{len(task['shards']):>7d} {task['bytes']:>14,d} {task['too_small']:>9d}"
        )
    return lines
