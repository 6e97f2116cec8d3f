"""The six IPT pretraining tasks (docs/corruptions.md): name -> slot in the official 6-task
checkpoint and the corruption that makes its input from a clean image.

The table is plain Python: the code behind any task is one jump away (``BicubicDownscale`` in
``superres.py``, ``GaussianNoise`` in ``noise.py``, ``Rain`` in ``rain.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ipt_data.errors import UserError
from ipt_data.noise import GaussianNoise
from ipt_data.rain import Rain
from ipt_data.superres import BicubicDownscale

INPUT_SIZE = 48  # side of every task's input patch, in pixels


class Corruption(Protocol):
    """What a task's corruption provides; the implementations are frozen dataclasses."""

    @property
    def scale(self) -> int:
        """Clean side / corrupted side (the SR factor, 1 for same-size tasks)."""

    @property
    def pointwise(self) -> bool:
        """True when each output pixel depends on its own input pixel only, so the corruption
        may be applied to cut patches instead of the whole image. Such a corruption accepts
        any shape and draws from ``rng`` in element order, so corrupting the [n, h, w, 3] stack
        of n patches gives what corrupting each patch in turn would."""

    def __call__(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """HxWx3 uint8 clean image -> (H/scale)x(W/scale)x3 uint8 corrupted image."""

    def params(self) -> dict:
        """JSON-able parameters, recorded in the manifest and in every sample."""


@dataclass(frozen=True)
class Task:
    name: str
    index: int  # slot of head, tail and task embedding in the official 6-task checkpoint
    corruption: Corruption

    @property
    def scale(self) -> int:
        return self.corruption.scale

    @property
    def target_size(self) -> int:
        return INPUT_SIZE * self.scale

    def params(self) -> dict:
        return {
            "name": self.name,
            "index": self.index,
            "scale": self.scale,
            "corruption": self.corruption.params(),
        }


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task("sr_x2", 0, BicubicDownscale(2)),
        Task("sr_x3", 1, BicubicDownscale(3)),
        Task("sr_x4", 2, BicubicDownscale(4)),
        Task("derain", 3, Rain()),
        Task("denoise_30", 4, GaussianNoise(30.0)),
        Task("denoise_50", 5, GaussianNoise(50.0)),
    )
}


def get_task(name: str) -> Task:
    """The task called ``name``; an unknown name is a :class:`UserError` listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        known = ", ".join(TASKS)
        raise UserError(f"unknown task {name!r}; known tasks: {known}") from None


def parse_tasks(names: str) -> list[Task]:
    """Comma-separated task names (``"sr_x2,derain"``, or ``"all"``) -> tasks in slot order,
    without repeats."""
    if names.strip() == "all":
        return list(TASKS.values())
    picked = {get_task(name.strip()) for name in names.split(",") if name.strip()}
    if not picked:
        raise UserError("no task named; give one or more of: " + ", ".join(TASKS))
    return sorted(picked, key=lambda task: task.index)
