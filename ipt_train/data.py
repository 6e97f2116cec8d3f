"""Streaming pretraining data: a shard set (docs/format.md) -> one micro-batch of one task per unit.

The training loop consumes *units* (micro-batches) in a fixed order: step s has ``accum`` units,
all of the task ``TaskMix.task_at(seed, s)``. :class:`PretrainStream` produces exactly the units
``[first_step*accum, last_step*accum)`` of one rank, in order, whatever the number of loader
workers: worker w of W makes units w, w+W, w+2W, ... and ``torch.utils.data.DataLoader``
collects its workers round robin, so the batches arrive in unit order.

Every (rank, worker) pair is one *reader* with its own sample stream per task (stages chained one
way: shard names -> tar members -> member check -> shuffle buffer of encoded samples -> PNG
decode -> flips/rotations -> batch). A reader's shard names come from an endless sequence of
epochs: each epoch is a permutation of the task's shards drawn from the seed, and reader g of G
takes every G-th shard of it (with fewer shards than readers, shard g mod n). No reader ever runs
out and no reader waits on another, so uneven shard counts cannot hang a rank.

The streams are seeded from (seed, first_step, task, reader) only: a run resumed at step s reads
exactly the data that an uninterrupted run read from its segment starting at s (the training
loop starts a new segment at every checkpoint), given the same world size and worker count.
Memory per reader is bounded by one shuffle buffer of *encoded* samples per task.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ipt_data import (
    PngError,
    SetLocation,
    Task,
    UserError,
    decode_png,
    open_set_location,
    read_set_manifest,
    read_shard,
    storage_errors,
)
from ipt_train.configs import LoaderConfig
from ipt_train.schedule import TaskMix


@dataclass(frozen=True)
class ShardSet:
    """A shard set's location and checked manifest; ``shards(task)`` its set-relative shards."""

    location: SetLocation
    manifest: dict

    @classmethod
    def open(cls, where: str | Path) -> ShardSet:
        location = open_set_location(where)  # a folder, URL or its manifest.json
        manifest, _ = read_set_manifest(location)
        return cls(location, manifest)

    def check(self, task: Task) -> None:
        self.shards(task)

    def fingerprint(self, tasks) -> str:
        """The identity of the data of ``tasks``: their shards' paths and sha256 digests (the
        same wherever the set lies, a folder or a URL)."""
        entries = self.manifest["tasks"]
        return fingerprint(
            [[s["path"], s.get("sha256")] for t in tasks for s in entries[t.name]["shards"]]
        )

    def stream(
        self, task: Task, seed: tuple[int, int], reader: int, readers: int, config, position=0
    ):
        """Reader ``reader`` of ``readers``: its decoded, shuffled pairs of ``task`` from sample
        ``position`` of its share of the run's shard sequence. ``seed`` is (run seed, first
        step of the segment): the shard order comes from the run seed alone, the shuffle and
        flips from both."""
        rng = np.random.default_rng([*seed, task.index, 1, reader])
        names = shard_sequence(self.shards(task), (seed[0], task.index, 0), reader, readers)
        raw = samples_from(self, names, self.counts(task), position)
        samples = shuffled(raw, config.shuffle_buffer, rng)
        return PairBatcher((decode_pair(sample, task) for sample in samples), rng, config)

    def counts(self, task: Task) -> dict[str, int]:
        """Samples per shard of ``task``, from the manifest."""
        return {s["path"]: s["samples"] for s in self.manifest["tasks"][task.name]["shards"]}

    def entry(self, path: str) -> dict:
        """The manifest entry (path, samples, bytes, sha256) of the shard at ``path``."""
        tasks = self.manifest["tasks"].values()
        return next(shard for task in tasks for shard in task["shards"] if shard["path"] == path)

    def shards(self, task: Task) -> list[str]:
        entry = self.manifest["tasks"].get(task.name)
        shards = [s["path"] for s in entry["shards"] if s["samples"] > 0] if entry else []
        if not shards:
            raise UserError(f"{self.location.url}: the shard set holds no {task.name} samples")
        return shards


def fingerprint(items: list) -> str:
    """sha256 of a JSON-able list: how a run records which training data it was started on."""
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def shard_sequence(
    shards: list[str], seed: tuple[int, ...], reader: int, readers: int
) -> Iterator[str]:
    """Endless: this reader's share of one seeded permutation of ``shards`` per epoch."""
    epoch = 0
    while True:
        order = np.random.default_rng([*seed, epoch]).permutation(len(shards))
        mine = order[reader::readers] if reader < len(shards) else order[reader % len(shards) :][:1]
        yield from (shards[i] for i in mine)
        epoch += 1


def samples_from(
    shard_set: ShardSet, names: Iterator[str], counts: dict[str, int], position: int
) -> Iterator[dict]:
    """The raw samples of the endless shard sequence ``names`` from sample ``position`` on:
    whole shards are skipped by their manifest counts (nothing read), then the first
    ``position`` samples left of the next shard are read and dropped."""
    for name in names:
        if position < counts[name]:
            break
        position -= counts[name]
    yield from islice(raw_samples(shard_set, iter([name])), position, None)
    yield from raw_samples(shard_set, names)


def reader_position(mix: TaskMix, task: Task, step: int, samples_per_step: int, readers: int):
    """Samples of ``task`` each of ``readers`` has taken before ``step``, by expectation (its
    share of the task mix times the global samples per step). A pure function of the settings:
    a resumed segment starts where the uninterrupted run's did, and every segment goes on
    where the one before stopped instead of rereading the start of the same shards."""
    share = mix.weights[mix.tasks.index(task)] / sum(mix.weights)
    return int(step * samples_per_step * share / readers)


def raw_samples(shard_set: ShardSet, names: Iterator[str]) -> Iterator[dict]:
    """Undecoded samples of the named shards in webdataset's sample form, each shard read
    through the one shard stream (:func:`ipt_data.remote.read_shard`): every tar member checked
    from its header before it is read (no links, no oversized or foreign members, no compressed
    tars), every sample's PNG headers before it is yielded, and the shard's size, sha256 and
    sample count against the manifest as it streams. A shard that disagrees with its manifest
    entry is a UserError naming it, raised where the disagreement shows: for the sha256 at the
    shard's end, after its samples were yielded (docs/training.md#the-streaming-data-path)."""
    for name in names:
        where = shard_set.location.describe(name)
        try:
            with storage_errors(where):
                yield from read_shard(shard_set.location, shard_set.entry(name))
        except OSError as error:  # a shard the manifest lists that is gone or unreadable
            raise UserError(f"{where}: cannot read the shard ({error.strerror or error})") from None


def shuffled(samples: Iterator[dict], size: int, rng: np.random.Generator) -> Iterator[dict]:
    """Endless stream through a buffer of ``size``: each output a random buffered sample."""
    buffer: list[dict] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        index = int(rng.integers(size))
        yield buffer[index]
        buffer[index] = sample
    raise UserError("a shard stream ended")  # shard_sequence is endless: only a bug gets here


def decode_pair(sample: dict, task: Task) -> tuple[np.ndarray, np.ndarray]:
    """(input 48x48x3, target 48s x 48s x 3) RGB uint8 from a raw sample's two PNGs
    (:func:`ipt_data.png.decode_png`: the same pixels as OpenCV's decode, faster on our files)."""
    pair = []
    for member, side in (("input.png", 48), ("target.png", task.target_size)):
        try:
            image = decode_png(sample[member])
        except PngError:
            image = None
        if image is None or image.shape != (side, side, 3):
            where = f"{sample.get('__url__')}: sample {sample.get('__key__')}"
            raise UserError(f"{where}: {member} is not a {side}x{side} RGB PNG for {task.name}")
        pair.append(image)
    return pair[0], pair[1]


def augment(pair: tuple[np.ndarray, np.ndarray], rng: np.random.Generator):
    """One of the 8 flips/rotations, drawn once and applied to input and target alike."""
    turns, flip = int(rng.integers(4)), bool(rng.integers(2))
    out = []
    for image in pair:
        image = np.rot90(image, turns)
        out.append(image[:, ::-1] if flip else image)
    return out[0], out[1]


class PairBatcher:
    """Micro-batches from one reader's endless stream of (input, target) HxWx3 uint8 pairs."""

    def __init__(self, pairs: Iterator[tuple[np.ndarray, np.ndarray]], rng, config) -> None:
        self.pairs, self.rng, self.config = pairs, rng, config

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``micro_batch`` pairs -> (input [b, 3, 48, 48], target [b, 3, 48s, 48s]) uint8."""
        pairs = [next(self.pairs) for _ in range(self.config.micro_batch)]
        if self.config.augment:
            pairs = [augment(pair, self.rng) for pair in pairs]
        inputs, targets = (np.stack([p[i] for p in pairs]) for i in (0, 1))
        return _to_tensor(inputs), _to_tensor(targets)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


class PretrainStream(IterableDataset):
    """The units of ``steps`` for ``rank`` of ``world`` (see module doc). ``source`` is a shard
    set (or its location) or a folder source: an ``ipt_train.sources.TrainingSource`` (named,
    not imported: the folder sources build on this module)."""

    def __init__(
        self,
        source: str | Path | ShardSet,
        mix: TaskMix,
        seed: int,
        steps: range,
        accum: int,
        rank: int,
        world: int,
        config: LoaderConfig,
    ) -> None:
        super().__init__()
        self.source = ShardSet.open(source) if isinstance(source, (str, Path)) else source
        for task in mix.tasks:
            self.source.check(task)  # fail now, not in a worker, if a task has no data
        self.mix, self.seed, self.steps, self.accum = mix, seed, steps, accum
        self.rank, self.world, self.config = rank, world, config

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        cv2.setNumThreads(1)
        reader, readers = self.rank * workers + worker, self.world * workers
        segment_seed = (self.seed, self.steps.start)
        samples_per_step = self.accum * self.config.micro_batch * self.world
        positions = lambda task: reader_position(  # noqa: E731
            self.mix, task, self.steps.start, samples_per_step, readers
        )
        streams: dict[str, PairBatcher] = {}
        units = range(self.steps.start * self.accum, self.steps.stop * self.accum)
        try:
            for unit in units[worker::workers]:
                step = unit // self.accum
                task = self.mix.task_at(self.seed, step)
                if task.name not in streams:
                    streams[task.name] = self.source.stream(
                        task, segment_seed, reader, readers, self.config, positions(task)
                    )
                inputs, targets = streams[task.name].batch()
                yield {"step": step, "task": task.name, "input": inputs, "target": targets}
        except UserError as error:
            if info is None:
                raise
            # In a loader worker, passed on as data: a DataLoader re-raises a worker's exception
            # with the worker's traceback folded into its message; check_unit raises it bare.
            yield {"error": str(error)}


def _exit_with(trainer: int, worker: int) -> None:
    """End this loader worker once ``trainer`` is gone. A worker started from a forkserver is
    the forkserver's child, so DataLoader's own check (is my parent alive?) never fires and a
    training process killed with SIGKILL would leave its workers (and forkserver) forever."""

    def watch() -> None:
        while True:
            time.sleep(2)
            try:
                os.kill(trainer, 0)
            except ProcessLookupError:
                os._exit(0)

    threading.Thread(target=watch, daemon=True, name=f"worker {worker}: exit with trainer").start()


def check_unit(unit: dict) -> dict:
    """``unit`` itself, unless it reports a reader's UserError (a corrupt shard...): raised."""
    if "error" in unit:
        raise UserError(unit["error"])
    return unit


def make_loader(stream: PretrainStream) -> DataLoader:
    """Batches of ``stream`` in unit order, prepared by ``stream.config.workers`` processes."""
    workers = stream.config.workers
    # Workers start from a clean forkserver, not a fork of this process: a fork inherits the
    # locked state of OpenCV's thread pool and of fsspec's/Ray's threads and can hang forever.
    extra = (
        {
            "prefetch_factor": stream.config.prefetch,
            "multiprocessing_context": "forkserver",
            "worker_init_fn": partial(_exit_with, os.getpid()),
        }
        if workers
        else {}
    )
    pin = torch.cuda.is_available()  # page-locked batches: asynchronous copies to the GPU
    return DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin, **extra)
