"""Rank 0's record of a training run: ``log.csv``, TensorBoard scalars and the progress bar."""

from __future__ import annotations

import csv
import time
from pathlib import Path

from ipt_data import progress_bar
from ipt_train.configs import TrainConfig

LOG_FIELDS = (
    "step",
    "task",
    "loss",
    "l1",
    "supcon",
    "lr",
    "samples_per_s",
    "data_wait",
    "seconds",
    "batch_digest",
)  # data_wait: the fraction of the step spent waiting for the loader; batch_digest: the step's
# global batch, pixel for pixel, as ipt_train.stream.loader.digest_text (equal on any shape)


class RunLog:
    """Rank 0's record of a run: ``log.csv`` (one row per step), TensorBoard scalars under
    ``tb/``, and a progress bar in samples with samples/s, ETA and each task's recent loss.
    The files are opened at the first step done: a run that fails before (a corrupt shard, a
    folder of images too small) leaves no run folder behind."""

    def __init__(self, out: Path, config: TrainConfig, start: int, enabled: bool) -> None:
        self.enabled, self.recent = enabled, {}
        self.out, self.start, self.tensorboard = out, start, config.tensorboard
        self.csv_file = self.board = None
        if not enabled:
            return
        self.bar = progress_bar(
            total=config.steps * config.batch,
            initial=start * config.batch,
            unit="sample",
            unit_scale=True,
            enabled=config.progress,
            dynamic_ncols=True,
        )
        self.clock, self.first = time.perf_counter(), time.perf_counter()

    def step(self, losses: dict, samples: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        seconds, self.clock = max(now - self.clock, 1e-9), now
        row = {k: v for k, v in losses.items() if k != "data_wait_s"}
        row["samples_per_s"] = round(samples / seconds, 2)
        row["data_wait"] = round(min(losses["data_wait_s"] / seconds, 1.0), 4)
        row["seconds"] = round(now - self.first, 3)
        if self.csv_file is None:
            self._open()
        self.rows.writerow(row)
        self.csv_file.flush()
        task, step = losses["task"], losses["step"]
        if self.board:
            for key in ("loss", "l1", "supcon"):
                self.board.add_scalar(f"{key}/{task}", losses[key], step)
            self.board.add_scalar("lr", losses["lr"], step)
        self.recent[task] = losses["loss"]
        self.bar.set_postfix({name: f"{v:.3g}" for name, v in sorted(self.recent.items())})
        self.bar.update(samples)

    def _open(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.csv_file = _open_csv(self.out / "log.csv", self.start)
        self.rows = csv.DictWriter(self.csv_file, LOG_FIELDS)
        self.board = _summary_writer(self.out / "tb") if self.tensorboard else None

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
        if self.csv_file:
            self.csv_file.close()
        if self.board:
            self.board.close()


def _open_csv(path: Path, start: int):
    """``log.csv`` opened for appending, without rows of steps >= ``start`` (a resumed run
    redoes those steps after a kill)."""
    kept = []
    if path.is_file():
        with path.open(newline="") as old:
            kept = [row for row in csv.DictReader(old) if int(row["step"]) < start]
    handle = path.open("w", newline="")
    writer = csv.DictWriter(handle, LOG_FIELDS)
    writer.writeheader()
    writer.writerows(kept)
    return handle


def _summary_writer(folder: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(folder))
