"""Where training pairs come from: the interface the training stream reads
(:class:`TrainingSource`) and the two folder sources of fine-tuning beside the shard set
(:class:`ipt_train.data.ShardSet`), all three read by :class:`ipt_train.data.PretrainStream`.

* :class:`CleanFolder` (``finetune --clean``): clean images corrupted on the fly by the task's own
  ``ipt_data`` corruption (:func:`ipt_data.patches.cut_pairs`), so the pairs are made exactly as
  in a shard build;
* :class:`PairedFolder` (``finetune --pairs``): ``rain-N`` / ``norain-N`` pairs, aligned random
  48x48 crops.

Both folders are read by :mod:`ipt_data.benchsets`, as ``ipt-train eval`` reads them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ipt_data import (
    INPUT_SIZE,
    ImageTooSmall,
    Task,
    UserError,
    cut_pairs,
    file_sha256,
    image_files,
    rain_images,
    read_image,
    read_pair,
)
from ipt_train.configs import LoaderConfig
from ipt_train.data import PairBatcher, fingerprint, shard_sequence, shuffled

PATCHES_PER_IMAGE = 8  # pairs cut from a clean image each time it comes round


@runtime_checkable
class TrainingSource(Protocol):
    """What the training stream reads (input, target) pairs from."""

    def check(self, task: Task) -> None:
        """A UserError if this source has no pairs of ``task``: called before any loader
        worker starts, so that the error is one line from the training process."""

    def fingerprint(self, tasks: list[Task]) -> str:
        """What identifies the data of ``tasks``: recorded in the run's identity, which a
        resumed run must match."""

    def stream(
        self,
        task: Task,
        seed: tuple[int, int],
        reader: int,
        readers: int,
        config: LoaderConfig,
        position: int = 0,
    ) -> PairBatcher:
        """Reader ``reader`` of ``readers``: endless micro-batches of ``task``'s pairs, seeded
        from ``seed`` (run seed, first step of the segment), starting ``position`` samples into
        the reader's share where the source has an order."""


class CleanFolder:
    """Clean images corrupted on the fly: each reader walks its share of the images."""

    def __init__(self, folder: str | Path) -> None:
        self.root = Path(folder)
        self.names = [path.relative_to(self.root).as_posix() for path in image_files(folder)]

    def check(self, task: Task) -> None:
        pass  # any image can give pairs of any task; too small ones are found while reading

    def fingerprint(self, tasks: list[Task]) -> str:
        """The images' names and contents: an image edited or replaced under the same name
        since the run began is another run's data (reading the folder once: seconds for a
        benchmark-sized set)."""
        return fingerprint([[name, file_sha256(self.root / name)] for name in self.names])

    def stream(
        self,
        task: Task,
        seed: tuple[int, int],
        reader: int,
        readers: int,
        config: LoaderConfig,
        position: int = 0,
    ) -> PairBatcher:
        """As :meth:`TrainingSource.stream`; ``position`` // PATCHES_PER_IMAGE images skipped."""
        rng = np.random.default_rng([*seed, task.index, 2, reader])
        names = shard_sequence(self.names, (seed[0], task.index, 3), reader, readers)
        names = islice(names, position // PATCHES_PER_IMAGE, None)
        pairs = shuffled(self._pairs(names, task, rng), config.shuffle_buffer, rng)
        return PairBatcher(pairs, rng, config)

    def _pairs(self, names: Iterable[str], task: Task, rng) -> Iterator[tuple]:
        too_small: set[str] = set()  # skipped from then on; all of them: nothing to train on
        for name in names:
            if name in too_small:
                continue
            try:
                image = read_image(self.root / name)
                yield from (
                    (p.input, p.target) for p in cut_pairs(image, task, rng, PATCHES_PER_IMAGE)
                )
            except ImageTooSmall as error:
                too_small.add(name)
                if len(too_small) == len(self.names):
                    raise UserError(
                        f"{self.root}: every image is too small for {task.name} (the last: {error})"
                    ) from None


class PairedFolder:
    """Rain100L-style ``rain-N`` / ``norain-N`` pairs, held in memory (small sets)."""

    def __init__(self, folder: str | Path) -> None:
        images = rain_images(folder)
        self.names = [image.name for image in images]
        self.files = [(image.degraded, image.clean) for image in images]
        self.pairs = [read_pair(image) for image in images]  # (rainy, clean)
        for image, (rainy, _) in zip(images, self.pairs, strict=True):
            if min(rainy.shape[:2]) < INPUT_SIZE:
                height, width = rainy.shape[:2]
                raise UserError(
                    f"{image.degraded} is {width}x{height}, smaller than the "
                    f"{INPUT_SIZE}x{INPUT_SIZE} training crop"
                )

    def check(self, task: Task) -> None:
        if task.scale != 1:
            raise UserError(f"--pairs trains same-size tasks only, not {task.name}")

    def fingerprint(self, tasks: list[Task]) -> str:
        """The pairs' names and both files' contents (as :meth:`CleanFolder.fingerprint`)."""
        named = zip(self.names, self.files, strict=True)
        return fingerprint([[name, *map(file_sha256, files)] for name, files in named])

    def stream(
        self,
        task: Task,
        seed: tuple[int, int],
        reader: int,
        readers: int,
        config: LoaderConfig,
        position: int = 0,
    ) -> PairBatcher:
        """Random aligned crops of random pairs (``position`` is irrelevant: no order)."""
        rng = np.random.default_rng([*seed, task.index, 4, reader])
        return PairBatcher(self._crops(rng), rng, config)

    def _crops(self, rng) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while True:
            rainy, clean = self.pairs[int(rng.integers(len(self.pairs)))]
            top = int(rng.integers(rainy.shape[0] - INPUT_SIZE + 1))
            left = int(rng.integers(rainy.shape[1] - INPUT_SIZE + 1))
            window = np.s_[top : top + INPUT_SIZE, left : left + INPUT_SIZE]
            yield np.ascontiguousarray(rainy[window]), np.ascontiguousarray(clean[window])
