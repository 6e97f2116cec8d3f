"""Fine-tuning's folder sources beside the shard set, with what every training source offers the
stream (:class:`TrainingSource`): a check, a fingerprint, and a reader that gives the pair at
any position of a task's order, fixed by the seed.

* :class:`CleanFolder` (``finetune --clean``): clean images corrupted on the fly by the task's
  own ``ipt_data`` corruption (:func:`ipt_data.cut_pairs`), so the pairs are made exactly as in a
  shard build. Each image gives :data:`PATCHES_PER_IMAGE` pairs per epoch (new crops and noise
  every epoch); the epoch's order is :mod:`ipt_train.stream.order`'s, with each image as a
  "shard" of its pairs, shuffled in blocks of :data:`IMAGES_PER_BLOCK` images, so that a
  worker decodes an image about once per block and keeps the block's pairs.
* :class:`PairedFolder` (``finetune --pairs``): ``rain-N`` / ``norain-N`` pairs; each epoch
  visits every pair once in a seeded order, each time at a random aligned 48x48 crop.

Both folders are read by :mod:`ipt_data.benchsets`, as ``ipt-train eval`` reads them.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from ipt_data import (
    INPUT_SIZE,
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
from ipt_train.stream.order import TaskOrder
from ipt_train.stream.shardset import Pair, fingerprint

PATCHES_PER_IMAGE = 8  # pairs cut from a clean image each epoch
IMAGES_PER_BLOCK = 32  # images whose pairs are shuffled together (a worker keeps two blocks)


class PairReader(Protocol):
    def pairs(self, task: Task, positions: np.ndarray) -> list[Pair]:
        """The (input, target) pairs at ``positions`` of ``task``'s order, in that order."""

    def close(self) -> None:
        """Release what the reader holds (open files, threads)."""


@runtime_checkable
class TrainingSource(Protocol):
    """What the training stream reads (input, target) pairs from."""

    def check(self, task: Task) -> None:
        """A UserError if this source has no pairs of ``task``: called before any loader
        worker starts, so that the error is one line from the training process."""

    def fingerprint(self, tasks: list[Task]) -> str:
        """What identifies the data of ``tasks``: recorded in the run's identity, which a
        resumed run must match."""

    def reader(self, seed: int, config: LoaderConfig) -> PairReader:
        """A reader for the process that reads (a loader worker); never pickled."""


class CleanFolder:
    """Clean images corrupted on the fly (module doc)."""

    def __init__(self, folder: str | Path) -> None:
        self.root = Path(folder)
        self.names = [path.relative_to(self.root).as_posix() for path in image_files(folder)]
        self.sides: list[int] | None = None  # each image's shorter side, read on check

    def check(self, task: Task) -> None:
        if not self.usable(task):
            raise UserError(
                f"{self.root}: every image is too small for {task.name} (its target is "
                f"{task.target_size}x{task.target_size})"
            )

    def usable(self, task: Task) -> list[str]:
        """The images large enough for one target crop of ``task`` (sizes from the headers)."""
        if self.sides is None:
            self.sides = [min(_image_size(self.root / name)) for name in self.names]
        sides = zip(self.names, self.sides, strict=True)
        return [name for name, side in sides if side >= task.target_size]

    def fingerprint(self, tasks: list[Task]) -> str:
        """The images' names and contents: an image edited or replaced under the same name
        since the run began is another run's data (reading the folder once: seconds for a
        benchmark-sized set)."""
        return fingerprint([[name, file_sha256(self.root / name)] for name in self.names])

    def reader(self, seed: int, config: LoaderConfig) -> CleanFolderReader:
        return CleanFolderReader(self, seed)


class CleanFolderReader:
    def __init__(self, folder: CleanFolder, seed: int) -> None:
        self.folder, self.seed = folder, seed
        self.orders: dict[str, tuple[TaskOrder, list[str]]] = {}
        self.kept: OrderedDict[tuple, list[Pair]] = OrderedDict()  # (task, epoch, image) -> pairs

    def close(self) -> None:
        self.kept.clear()

    def pairs(self, task: Task, positions: np.ndarray) -> list[Pair]:
        order, names = self._order(task)
        images, patches = order.locate(positions)
        epochs = np.asarray(positions) // order.epoch_samples
        return [
            self._image_pairs(task, int(e), names, int(i))[int(p)]
            for e, i, p in zip(epochs, images, patches, strict=True)
        ]

    def _order(self, task: Task) -> tuple[TaskOrder, list[str]]:
        if task.name not in self.orders:
            names = self.folder.usable(task)
            counts = [PATCHES_PER_IMAGE] * len(names)
            block = IMAGES_PER_BLOCK * PATCHES_PER_IMAGE
            self.orders[task.name] = (TaskOrder(counts, self.seed, task.index, block), names)
        return self.orders[task.name]

    def _image_pairs(self, task: Task, epoch: int, names: list[str], image: int) -> list[Pair]:
        key = (task.name, epoch, image)
        if key not in self.kept:
            rng = np.random.default_rng([self.seed, task.index, 2, epoch, image])
            photo = read_image(self.folder.root / names[image])
            cut = cut_pairs(photo, task, rng, PATCHES_PER_IMAGE)
            self.kept[key] = [(pair.input, pair.target) for pair in cut]
            while len(self.kept) > 2 * IMAGES_PER_BLOCK:
                self.kept.popitem(last=False)
        self.kept.move_to_end(key)
        return self.kept[key]


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding its pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, Image.DecompressionBombError) as error:
        raise UserError(f"{path}: cannot read the image's size ({error})") from None


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

    def reader(self, seed: int, config: LoaderConfig) -> PairedFolderReader:
        return PairedFolderReader(self, seed)


class PairedFolderReader:
    def __init__(self, folder: PairedFolder, seed: int) -> None:
        self.folder, self.seed = folder, seed
        self.epoch: tuple[tuple[int, int], np.ndarray] | None = None  # ((slot, epoch), order)

    def close(self) -> None:
        pass  # holds nothing beyond memory

    def pairs(self, task: Task, positions: np.ndarray) -> list[Pair]:
        return [self._crop(task, int(position)) for position in positions]

    def _crop(self, task: Task, position: int) -> Pair:
        """Pair ``position mod n`` of its epoch's seeded order, at a crop drawn from the
        position."""
        epoch, offset = divmod(position, len(self.folder.pairs))
        if self.epoch is None or self.epoch[0] != (task.index, epoch):
            rng = np.random.default_rng([self.seed, task.index, 3, epoch])
            self.epoch = ((task.index, epoch), rng.permutation(len(self.folder.pairs)))
        rainy, clean = self.folder.pairs[int(self.epoch[1][offset])]
        rng = np.random.default_rng([self.seed, task.index, 4, position])
        top = int(rng.integers(rainy.shape[0] - INPUT_SIZE + 1))
        left = int(rng.integers(rainy.shape[1] - INPUT_SIZE + 1))
        window = np.s_[top : top + INPUT_SIZE, left : left + INPUT_SIZE]
        return np.ascontiguousarray(rainy[window]), np.ascontiguousarray(clean[window])
