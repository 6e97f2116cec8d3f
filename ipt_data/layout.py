"""The layout of a shard set: every file and folder name in it (docs/format.md#layout), and the
chunk record a build keeps in ``_build/`` (docs/format.md#builder-state-_build).

Names are relative to the set's root, ``/``-separated, whether the set is a folder or a URL
prefix. Only this module spells them; builders, transfers, readers and checks import them.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field

MANIFEST_NAME = "manifest.json"  # what the set holds; written last, so it marks the set complete
# The dataset card (docs/format.md#the-dataset-card): what the set is, for people and for the
# Hugging Face Hub and `datasets` (its YAML header names each task's shards); never a shard.
CARD_NAME = "README.md"
STATE_FOLDER = "_build"  # build parameters and per-chunk stats (done-markers) of a shard set
PARAMS_NAME = f"{STATE_FOLDER}/params.json"  # the build's identity, written when it claims a place
TRANSFER_FOLDER = "_transfer"  # present only while a push/pull into the place is unfinished
MARKER = f"{TRANSFER_FOLDER}/source.json"  # which set (and selection) that transfer copies
BOOKKEEPING_FOLDERS = (STATE_FOLDER, TRANSFER_FOLDER)  # never shards; readers ignore them
PARTIAL_SUFFIX = ".part"  # ends every file being written, beside its final name


def shard_name(task_name: str, index: int) -> str:
    """Shard path relative to the set's root: ``<task>/<task>-NNNNNN.tar``."""
    return f"{task_name}/{task_name}-{index:06d}.tar"


def stats_name(index: int) -> str:
    """The chunk's stats file (its done-marker), relative to the set's root."""
    return f"{STATE_FOLDER}/chunk-{index:06d}.json"


def partial_name(final: str) -> str:
    """A fresh temporary name beside ``final`` (a path with ``/`` separators):
    ``<folder>/.<name>.<12 hex digits>.part``, unique per call, so a retried writer never
    writes into a stale attempt's file."""
    folder, _, name = final.rpartition("/")
    return f"{folder}/.{name}.{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}"


@dataclass
class ChunkStats:
    """What a finished chunk wrote and counted: the content of its stats file."""

    chunk: int
    images: int = 0
    decoded: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> images
    too_small: dict[str, int] = field(default_factory=dict)  # task -> images
    shards: dict[str, dict] = field(default_factory=dict)  # task -> path/samples/bytes/sha256
    # Run-time figures, for the summary and the benchmark; never copied into the manifest.
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_bytes: int = 0

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ChunkStats:
        return cls(**json.loads(data))
