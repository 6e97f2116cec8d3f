"""A shard set as a training source: its manifest, and the pairs at any positions of a task's
global order (:mod:`ipt_train.stream.order`), read through the checked store
(:mod:`ipt_train.stream.store`) with the next shuffle block's shards fetched ahead."""

from __future__ import annotations

import contextlib
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ipt_data import (
    PngError,
    SetLocation,
    Task,
    UserError,
    decode_png,
    open_set_location,
    read_set_manifest,
    timeout_options,
)
from ipt_train.configs import LoaderConfig, default_cache_folder
from ipt_train.stream.cache import ShardCache
from ipt_train.stream.order import TaskOrder
from ipt_train.stream.store import OpenShard, ShardStore

Pair = tuple[np.ndarray, np.ndarray]  # (input 48x48x3, target 48s x 48s x 3) RGB uint8


@dataclass(frozen=True)
class ShardSet:
    """A shard set's location and checked manifest."""

    location: SetLocation
    manifest: dict

    @classmethod
    def open(cls, where: str | Path, timeout: float = LoaderConfig.fetch_timeout) -> ShardSet:
        """The set at a folder or URL (or its manifest.json); remote reads give up on a
        connection silent for ``timeout`` seconds."""
        location = open_set_location(where, timeout_options(str(where), timeout, timeout))
        manifest, _ = read_set_manifest(location)
        return cls(location, manifest)

    def check(self, task: Task) -> None:
        self.entries(task)

    def fingerprint(self, tasks: list[Task]) -> str:
        """The identity of the data of ``tasks``: their shards' paths and sha256 digests (the
        same wherever the set lies, a folder or a URL)."""
        entries = self.manifest["tasks"]
        return fingerprint(
            [[s["path"], s.get("sha256")] for t in tasks for s in entries[t.name]["shards"]]
        )

    def entries(self, task: Task) -> list[dict]:
        """The manifest entries of ``task``'s shards that hold samples, in manifest order."""
        entry = self.manifest["tasks"].get(task.name)
        shards = [s for s in entry["shards"] if s["samples"] > 0] if entry else []
        if not shards:
            raise UserError(f"{self.location.url}: the shard set holds no {task.name} samples")
        return shards

    def reader(self, seed: int, config: LoaderConfig) -> ShardSetReader:
        return ShardSetReader(self, seed, config)


def fingerprint(items: list) -> str:
    """sha256 of a JSON-able list: how a run records which training data it was started on."""
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


class ShardSetReader:
    """One process's reader of a shard set: ``pairs(task, positions)``. Made in the process
    that reads (a loader worker), never pickled: it holds the store's indexes and threads."""

    def __init__(self, shard_set: ShardSet, seed: int, config: LoaderConfig) -> None:
        self.shard_set, self.seed, self.block = shard_set, seed, config.shuffle_block
        cache = ShardCache(config.cache or default_cache_folder(), config.cache_limit)
        self.store = ShardStore(shard_set.location, cache, config.fetch_attempts)
        self.orders: dict[str, tuple[TaskOrder, list[dict]]] = {}
        self.ahead = ThreadPoolExecutor(config.read_ahead) if config.read_ahead else None
        self.ahead_asked: dict[int, int] = {}  # task slot -> end of the block last read ahead
        self.opened: dict[str, dict[int, OpenShard]] = {}  # task -> shard -> open (pinned)

    def pairs(self, task: Task, positions: np.ndarray) -> list[Pair]:
        """The decoded pairs at ``positions`` of ``task``'s global order, in that order."""
        order, entries = self.order(task)
        shards, samples = order.locate(positions)
        opened = self._open_block(task, order, entries, positions)
        raw: list[tuple[bytes, bytes, str]] = [None] * len(positions)  # type: ignore[list-item]
        for shard in np.unique(shards):
            where = np.flatnonzero(shards == shard)
            read = opened[int(shard)].read([int(samples[i]) for i in where])
            for i, sample in zip(where, read, strict=True):
                raw[i] = sample
        self.read_ahead(order, entries, int(positions[-1]))
        urls = [self.store.describe(entries[s]) for s in shards]
        return [decode_pair(*sample, url, task) for sample, url in zip(raw, urls, strict=True)]

    def _open_block(self, task: Task, order: TaskOrder, entries, positions) -> dict:
        """The shards of the shuffle block(s) ``positions`` fall in, opened (a cached copy is
        pinned while open); those of the task's earlier blocks are closed, so that the cache
        may evict them."""
        needed = {int(s) for p in (positions[0], positions[-1]) for s in order.block_shards(int(p))}
        opened = self.opened.setdefault(task.name, {})
        for shard in [s for s in opened if s not in needed]:
            opened.pop(shard).close()
        for shard in sorted(needed - set(opened)):
            opened[shard] = self.store.open(entries[shard])
        return opened

    def close(self) -> None:
        """Release the shards held open (pinned) and stop the read-ahead threads."""
        for opened in self.opened.values():
            for shard in opened.values():
                shard.close()
        self.opened.clear()
        if self.ahead is not None:
            self.ahead.shutdown(wait=True, cancel_futures=True)

    def order(self, task: Task) -> tuple[TaskOrder, list[dict]]:
        if task.name not in self.orders:
            entries = self.shard_set.entries(task)
            counts = [entry["samples"] for entry in entries]
            self.orders[task.name] = (TaskOrder(counts, self.seed, task.index, self.block), entries)
        return self.orders[task.name]

    def read_ahead(self, order: TaskOrder, entries: list[dict], position: int) -> None:
        """Once per shuffle block: have its shards and the next block's made ready (fetched,
        checked) by the background threads."""
        end = order.block_end(position)
        if self.ahead is None or self.ahead_asked.get(order.task_index) == end:
            return
        self.ahead_asked[order.task_index] = end
        for shard in [*order.block_shards(position), *order.block_shards(end)]:
            self.ahead.submit(self._ready_quietly, entries[shard])

    def _ready_quietly(self, entry: dict) -> None:
        # A failure is raised again, with its message, when the shard's samples are read; a
        # cache with no room now (the current blocks pinned) is not waited for.
        with contextlib.suppress(UserError):
            self.store.ready(entry, wait=False)


def decode_pair(input_png: bytes, target_png: bytes, key: str, url: str, task: Task) -> Pair:
    """(input 48x48x3, target 48s x 48s x 3) RGB uint8 from a sample's two PNGs
    (:func:`ipt_data.decode_png`: the same pixels as OpenCV's decode, faster on our files)."""
    pair = []
    for member, data, side in (
        ("input.png", input_png, 48),
        ("target.png", target_png, task.target_size),
    ):
        try:
            image = decode_png(data)
        except PngError:
            image = None
        if image is None or image.shape != (side, side, 3):
            raise UserError(
                f"{url}: sample {key}: {member} is not a {side}x{side} RGB PNG for {task.name}"
            )
        pair.append(image)
    return pair[0], pair[1]
