"""The global sample order of a run: a pure function of the seed, the sample counts and the step.

Step ``k`` trains task ``t = TaskMix.task_at(seed, k)`` on the *global batch* of ``batch``
consecutive positions of task ``t``'s endless sample sequence, starting at
``batch x (steps before k that trained t)``. Nothing here depends on the number of nodes,
processes, loader workers, the micro-batch or where the checkpoints fall: those only decide who
reads which positions (:mod:`ipt_train.stream.loader`).

A task's sequence is a series of *epochs*, each a permutation of all of the task's samples, so
each sample comes once before any comes twice. Epoch ``e`` is built from *shuffle blocks*, after
MosaicML Streaming's block shuffles: the shards are permuted (seeded by seed, task, e), the
permuted list is cut into runs of consecutive shards holding at least ``block`` samples each,
and the samples of each run are permuted together (seeded by seed, task, e and the run). A
stretch of the sequence therefore draws evenly from a whole block of shards, while a reader
needs only the block's shards at a time (fetched, cached, read by position).

Finding a position is arithmetic on the shard counts (one permutation of the shards and one of
the block that holds it): resuming at any step reads nothing it will not use.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

AUGMENT_BLOCK = 4096  # positions whose flips/rotations one generator call draws


class TaskOrder:
    """Task ``task_index``'s endless sequence over shards of ``counts`` samples (each > 0).

    ``locate(positions)`` gives, for each position, the shard (an index into ``counts``) and
    the sample's index within that shard. The last epoch's and block's permutations are kept,
    since consecutive positions nearly always fall in them.
    """

    def __init__(self, counts: Sequence[int], seed: int, task_index: int, block: int) -> None:
        self.counts = np.asarray(counts, dtype=np.int64)
        if len(self.counts) == 0 or (self.counts <= 0).any() or block < 1:
            raise ValueError("a task order needs shards of at least one sample and block >= 1")
        self.seed, self.task_index, self.block = seed, task_index, block
        self.epoch_samples = int(self.counts.sum())
        self._epoch: tuple[int, EpochBlocks] | None = None
        self._block: tuple[tuple[int, int], np.ndarray] | None = None

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, sample index in shard) of each position (int64 arrays, same shape)."""
        positions = np.asarray(positions, dtype=np.int64)
        shards = np.empty_like(positions)
        samples = np.empty_like(positions)
        for i, position in enumerate(positions.flat):
            shards.flat[i], samples.flat[i] = self._locate_one(int(position))
        return shards, samples

    def block_shards(self, position: int) -> np.ndarray:
        """The shards of the shuffle block that holds ``position`` (for read-ahead)."""
        epoch, offset = divmod(position, self.epoch_samples)
        blocks = self.epoch_blocks(epoch)
        block = blocks.block_of(offset)
        return blocks.order[blocks.shard_bounds[block] : blocks.shard_bounds[block + 1]]

    def block_end(self, position: int) -> int:
        """The first position after the shuffle block that holds ``position``."""
        epoch, offset = divmod(position, self.epoch_samples)
        blocks = self.epoch_blocks(epoch)
        return epoch * self.epoch_samples + int(blocks.sample_bounds[blocks.block_of(offset) + 1])

    def epoch_blocks(self, epoch: int) -> EpochBlocks:
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([self.seed, self.task_index, 0x5A4D, epoch])
            order = rng.permutation(len(self.counts))
            self._epoch = (epoch, EpochBlocks(self.counts, order, self.block))
        return self._epoch[1]

    def _locate_one(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, self.epoch_samples)
        blocks = self.epoch_blocks(epoch)
        block = blocks.block_of(offset)
        within = self._block_permutation(epoch, block, blocks)[offset - blocks.sample_bounds[block]]
        first = blocks.shard_bounds[block]
        in_block = blocks.starts_in_block(block)
        slot = int(np.searchsorted(in_block, within, side="right")) - 1
        return int(blocks.order[first + slot]), int(within - in_block[slot])

    def _block_permutation(self, epoch: int, block: int, blocks: EpochBlocks) -> np.ndarray:
        if self._block is None or self._block[0] != (epoch, block):
            rng = np.random.default_rng([self.seed, self.task_index, 0xB10C, epoch, block])
            size = int(blocks.sample_bounds[block + 1] - blocks.sample_bounds[block])
            self._block = ((epoch, block), rng.permutation(size))
        return self._block[1]


class EpochBlocks:
    """One epoch's shard order (``order``: shard indices) cut into shuffle blocks: block ``b``
    is ``order[shard_bounds[b] : shard_bounds[b + 1]]``, holding the epoch's samples
    ``sample_bounds[b] .. sample_bounds[b + 1] - 1``. Every block holds at least ``block``
    samples but the last, which is joined to the one before when it holds fewer."""

    def __init__(self, counts: np.ndarray, order: np.ndarray, block: int) -> None:
        self.order, self.counts = order, counts
        ends = np.cumsum(counts[order])
        bounds = [0]
        while bounds[-1] < len(order):  # each block: the fewest shards that reach `block`
            reached = ends[bounds[-1] - 1] if bounds[-1] else 0
            bounds.append(int(np.searchsorted(ends, reached + block, side="left")) + 1)
            bounds[-1] = min(bounds[-1], len(order))
        if len(bounds) > 2 and ends[-1] - ends[bounds[-2] - 1] < block:
            del bounds[-2]  # a short last block joins the one before
        self.shard_bounds = np.asarray(bounds, dtype=np.int64)
        self.sample_bounds = np.concatenate([[0], ends[self.shard_bounds[1:] - 1]])

    def block_of(self, offset: int) -> int:
        return int(np.searchsorted(self.sample_bounds, offset, side="right")) - 1

    def starts_in_block(self, block: int) -> np.ndarray:
        """Where each of the block's shards starts within the block's samples."""
        shards = self.order[self.shard_bounds[block] : self.shard_bounds[block + 1]]
        return np.concatenate([[0], np.cumsum(self.counts[shards])[:-1]])


def augment_codes(seed: int, task_index: int, positions: np.ndarray) -> np.ndarray:
    """The flip/rotation of each position, 0..7 (``turns = code // 2``, ``flip = code % 2``):
    from (seed, task, position) alone, so every reader of a position applies the same one."""
    positions = np.asarray(positions, dtype=np.int64)
    codes = np.empty(positions.shape, dtype=np.int64)
    for block in np.unique(positions // AUGMENT_BLOCK):
        rng = np.random.default_rng([seed, task_index, 0xA6, int(block)])
        drawn = rng.integers(8, size=AUGMENT_BLOCK)
        inside = positions // AUGMENT_BLOCK == block
        codes[inside] = drawn[positions[inside] % AUGMENT_BLOCK]
    return codes


def augment(image: np.ndarray, code: int) -> np.ndarray:
    """One of the 8 flips/rotations of an HxWxC image: ``code // 2`` quarter turns, then a
    left-right flip if ``code`` is odd (the same code on input and target keeps them aligned)."""
    image = np.rot90(image, code // 2)
    return image[:, ::-1] if code % 2 else image
