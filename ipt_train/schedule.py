"""The pretraining schedule (docs/training.md): learning rate per step and the task trained at
each step.

Both are pure functions of their arguments, so every rank computes the same values without
communicating, and a resumed run continues exactly where the saved one was.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ipt_data import Task, UserError


@dataclass(frozen=True)
class LRSchedule:
    """Paper schedule: ``lr`` for the first ``decay_at`` of the steps, then ``lr_after``."""

    lr: float = 5e-5
    lr_after: float = 2e-5
    decay_at: float = 2 / 3

    def at(self, step: int, total_steps: int) -> float:
        return self.lr if step < int(self.decay_at * total_steps) else self.lr_after


@dataclass(frozen=True)
class TaskMix:
    """The tasks pretrained and their relative weights (uniform by default, as the paper)."""

    tasks: tuple[Task, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.tasks or len(self.tasks) != len(self.weights):
            raise UserError("give one weight per task")
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise UserError(f"task weights must be >= 0 and not all 0, got {self.weights}")

    @classmethod
    def uniform(cls, tasks: list[Task] | tuple[Task, ...]) -> TaskMix:
        return cls(tuple(tasks), (1.0,) * len(tasks))

    def task_at(self, seed: int, step: int) -> Task:
        """The task of ``step``: drawn from (seed, step) only, the same on every rank."""
        draws = _task_draws(seed, step // STEP_BLOCK, self.weights)
        return self.tasks[int(draws[step % STEP_BLOCK])]

    def steps_before(self, seed: int, step: int) -> np.ndarray:
        """How many of the steps 0 .. step-1 train each task (int64, in the order of ``tasks``):
        with the global batch, where each task's sample sequence stands at ``step``. About 20 ms
        per million steps (one generator call per :data:`STEP_BLOCK` steps)."""
        counts = np.zeros(len(self.tasks), dtype=np.int64)
        for block in range(step // STEP_BLOCK):
            counts += np.bincount(_draw_block(seed, block, self.weights), minlength=len(counts))
        done = _task_draws(seed, step // STEP_BLOCK, self.weights)[: step % STEP_BLOCK]
        return counts + np.bincount(done, minlength=len(counts))


STEP_BLOCK = 1024  # steps whose tasks one generator call draws


@lru_cache(maxsize=4)
def _task_draws(seed: int, block: int, weights: tuple[float, ...]) -> np.ndarray:
    """The task indices of steps [block * STEP_BLOCK, (block + 1) * STEP_BLOCK), kept for the
    steps that follow (a training loop asks for one step after another)."""
    return _draw_block(seed, block, weights)


def _draw_block(seed: int, block: int, weights: tuple[float, ...]) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64([seed, block, 0x7A5D]))
    cdf = np.cumsum(weights, dtype=np.float64)
    draws = np.searchsorted(cdf / cdf[-1], rng.random(STEP_BLOCK), side="right")
    draws = np.minimum(draws, len(weights) - 1)  # a draw of the last cdf value's rounding
    draws.flags.writeable = False
    return draws


def parse_task_weights(names: list[Task], weights: str | None) -> tuple[float, ...]:
    """``"sr_x2=2,derain=1"`` -> a weight per task in ``names`` (unnamed tasks weigh 1)."""
    table = {task.name: 1.0 for task in names}
    for item in (weights or "").split(","):
        if not item.strip():
            continue
        name, _, value = item.partition("=")
        if name.strip() not in table:
            raise UserError(f"--task-weights names {name.strip()!r}, which is not a trained task")
        try:
            table[name.strip()] = float(value)
        except ValueError:
            raise UserError(f"--task-weights: {item!r} is not NAME=NUMBER") from None
    return tuple(table[task.name] for task in names)
