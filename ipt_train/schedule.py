"""The pretraining schedule (docs/training.md): learning rate per step and the task trained at
each step.

Both are pure functions of their arguments, so every rank computes the same values without
communicating, and a resumed run continues exactly where the saved one was.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        rng = np.random.Generator(np.random.PCG64([seed, step, 0x7A5C]))
        p = np.asarray(self.weights, dtype=np.float64)
        return self.tasks[int(rng.choice(len(self.tasks), p=p / p.sum()))]


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
