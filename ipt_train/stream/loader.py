"""A rank's micro-batches ("units") of a run's steps, in the order the training loop takes them.

Step ``k``'s global batch is ``batch`` consecutive positions of its task's order
(:mod:`ipt_train.stream.order`); it is cut into ``world x accum`` units of ``micro_batch``
positions, and rank ``r`` trains units ``r*accum .. r*accum + accum - 1``. Loader worker ``w``
of ``W`` makes the rank's units ``w, w + W, ...`` and ``torch.utils.data.DataLoader`` collects
its workers round robin, so the units arrive in order. Which pixels a step trains on (flips and
rotations included) therefore depends on the seed, the data and the step alone: not on the
processes, workers, micro-batch or checkpoints, and a run resumed at step ``k`` on any shape
continues exactly.

Each unit also carries a digest of its samples' pixels: the sums over its samples of the four
16-bit words of each sample's 64-bit BLAKE2b. Sums do not depend on how a batch was cut, so the
sum over all ranks' units of a step, which the training loop logs, identifies the step's global
batch on any shape.
"""

from __future__ import annotations

import hashlib
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import signal
import threading
import time
from collections.abc import Iterator
from functools import partial

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ipt_data import Task, UserError
from ipt_train.configs import LoaderConfig
from ipt_train.schedule import TaskMix
from ipt_train.stream.order import augment, augment_codes


def accumulation(batch: int, micro_batch: int, world: int) -> int:
    """Micro-batches per process and step: the global ``batch`` over ``micro_batch x world``,
    which must divide it."""
    per_step = micro_batch * world
    if batch % per_step:
        raise UserError(
            f"--batch {batch} is not a multiple of micro batch x processes = {per_step}"
        )
    return batch // per_step


def step_batches(mix: TaskMix, seed: int, batch: int, steps: range) -> Iterator[tuple]:
    """(step, task, first position of its global batch) for each step of ``steps``."""
    counts = mix.steps_before(seed, steps.start)
    for step in steps:
        task = mix.task_at(seed, step)
        slot = mix.tasks.index(task)
        yield step, task, int(counts[slot]) * batch
        counts[slot] += 1


class StepStream(IterableDataset):
    """Rank ``rank`` of ``world``'s units of ``steps`` (see the module doc). ``source`` is a
    training source (:class:`ipt_train.stream.shardset.ShardSet` or a folder source of
    :mod:`ipt_train.stream.folders`): what it gives for a position is fixed by the seed."""

    def __init__(
        self,
        source,
        mix: TaskMix,
        seed: int,
        steps: range,
        batch: int,
        rank: int,
        world: int,
        config: LoaderConfig,
    ) -> None:
        super().__init__()
        self.accum = accumulation(batch, config.micro_batch, world)
        for task in mix.tasks:
            source.check(task)  # fail now, not in a worker, if a task has no data
        self.source, self.mix, self.seed, self.steps = source, mix, seed, steps
        self.batch, self.rank, self.world, self.config = batch, rank, world, config

    def units(self) -> Iterator[tuple[int, Task, np.ndarray]]:
        """(step, task, positions) of each of this rank's units, in order."""
        size = self.config.micro_batch
        for step, task, first in step_batches(self.mix, self.seed, self.batch, self.steps):
            for micro in range(self.accum):
                start = first + (self.rank * self.accum + micro) * size
                yield step, task, np.arange(start, start + size, dtype=np.int64)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        cv2.setNumThreads(1)
        reader = None
        try:
            reader = self.source.reader(self.seed, self.config)
            for number, (step, task, positions) in enumerate(self.units()):
                if number % workers == worker:
                    pairs = reader.pairs(task, positions)
                    yield make_unit(step, task, pairs, positions, self.seed, self.config.augment)
        except UserError as error:
            if info is None:
                raise
            # In a loader worker, passed on as data: a DataLoader re-raises a worker's exception
            # with the worker's traceback folded into its message; check_unit raises it bare.
            yield {"error": str(error)}
        finally:
            if reader is not None:
                reader.close()  # pinned shards released, read-ahead threads stopped


def make_unit(step: int, task: Task, pairs: list, positions, seed: int, flips: bool) -> dict:
    """The unit dict the training loop takes: input [b, 3, 48, 48] and target [b, 3, 48s, 48s]
    uint8, with each position's flip/rotation applied when ``flips``, and the pixel digest."""
    codes = augment_codes(seed, task.index, positions) if flips else np.zeros(len(pairs), int)
    coded = zip(pairs, codes, strict=True)
    pairs = [(augment(x, int(code)), augment(y, int(code))) for (x, y), code in coded]
    inputs, targets = (np.ascontiguousarray(np.stack([p[i] for p in pairs])) for i in (0, 1))
    return {
        "step": step,
        "task": task.name,
        "input": _to_tensor(inputs),
        "target": _to_tensor(targets),
        "digest": torch.from_numpy(pixel_digest(inputs, targets)),
    }


def pixel_digest(inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """int64[4]: over the samples of [b, h, w, 3] uint8 ``inputs`` and ``targets``, the sums of
    the four 16-bit words of each sample's 64-bit BLAKE2b of its pixels (module doc)."""
    sums = np.zeros(4, dtype=np.int64)
    for x, y in zip(inputs, targets, strict=True):
        digest = hashlib.blake2b(x.tobytes(), digest_size=8)
        digest.update(y.tobytes())
        sums += np.frombuffer(digest.digest(), dtype="<u2").astype(np.int64)
    return sums


def digest_text(sums: torch.Tensor | np.ndarray) -> str:
    """A step's summed pixel digests as 16 hex digits (what ``log.csv`` records)."""
    data = np.asarray(sums, dtype="<i8").tobytes()
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


# The signals that stop a run (ipt_train.train.STOP_SIGNALS). The training process decides what
# they do; its loader processes must not die of them meanwhile, since the process may still wait
# for the next step's units: a terminal's Ctrl-C reaches its whole process group, torchrun's
# agent signals each rank's process group, a SLURM job's signal reaches every process.
RUN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def _exit_with(trainer: int, worker: int) -> None:
    """Set up a loader worker: SIGINT and SIGUSR1 ignored, SIGTERM left as it is (the loader's
    own shutdown sends it to a worker that does not end in time; a job-wide SIGTERM ends the
    worker, which the training loop, stopping, allows for); and its end once ``trainer`` is
    gone. A worker started from a forkserver is the forkserver's child, so DataLoader's own
    check (is my parent alive?) never fires and a training process killed with SIGKILL would
    leave its workers (and forkserver) forever."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, RUN_SIGNALS)  # blocked in the forkserver
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)

    def watch() -> None:
        while True:
            time.sleep(2)
            try:
                os.kill(trainer, 0)
            except ProcessLookupError:
                os._exit(0)

    threading.Thread(target=watch, daemon=True, name=f"worker {worker}: exit with trainer").start()


def start_forkserver() -> None:
    """Start this process's forkserver and resource tracker, where they are not running, with
    :data:`RUN_SIGNALS` blocked: they inherit the mask, so those signals never reach them (they
    end when this process does, at the end of their pipes), and the forkserver's children, the
    loader workers, start with them blocked too (:func:`_exit_with` sets them up)."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, RUN_SIGNALS)
    try:
        multiprocessing.resource_tracker.ensure_running()
        # Starting the tracker unblocks SIGINT and SIGTERM in this thread (Python 3.11): again.
        signal.pthread_sigmask(signal.SIG_BLOCK, RUN_SIGNALS)
        multiprocessing.forkserver.ensure_running()
    finally:  # a signal that came meanwhile is delivered now
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def check_unit(unit: dict) -> dict:
    """``unit`` itself, unless it reports a reader's UserError (a corrupt shard...): raised."""
    if "error" in unit:
        raise UserError(unit["error"])
    return unit


def make_loader(stream: StepStream) -> DataLoader:
    """The units of ``stream`` in order, prepared by ``stream.config.workers`` processes."""
    workers = stream.config.workers
    # Workers start from a clean forkserver, not a fork of this process: a fork inherits the
    # locked state of OpenCV's thread pool and of fsspec's/Ray's threads and can hang forever.
    if workers:
        start_forkserver()
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
