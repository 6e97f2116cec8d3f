"""The training loop: build -> run -> close, on one process or many (``torchrun``).

Each step trains one task, drawn from (seed, step) and so the same on every rank; the global
batch is ``micro_batch x accum x world`` samples, ``accum`` micro-batches per rank and step. The
loss is L1 + λ·SupCon of the body tokens (docs/training.md), Adam β (0.9, 0.999), lr from the
schedule. SupCon's negatives are the tokens of every rank's micro-batch, gathered at each
micro-step (so with ``accum`` > 1 they span ``micro_batch x world`` images, not the whole global
batch).

Multi-process set-up and the gradient averaging are :mod:`ipt_train.distributed`'s, the log and
progress bar :mod:`ipt_train.runlog`'s; the entry points are :mod:`ipt_train.pretrain` and
:mod:`ipt_train.finetune`, which build a :class:`Job` (model, task mix, data) and hand it here.

The data of every step comes from the training stream (:mod:`ipt_train.stream`), which fixes
each step's global batch from the seed, the data and the step alone: one loader serves the
whole run, checkpoints do not touch it, and a run resumed at step k on any number of processes
or workers reads exactly what the uninterrupted run read, and continues with exactly the saved
parameters and optimizer state. A failure of the data (a shard that stays unreachable, a corrupt
one) ends the run with the step reached saved, so that ``--resume`` continues once it is fixed.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ipt_data import UserError
from ipt_train.checkpoint import PLAIN_NUM_HEADS, export_official
from ipt_train.configs import LoaderConfig, TrainConfig
from ipt_train.distributed import (
    DistEnv,
    average_across_ranks,
    average_gradients,
    barrier,
    broadcast_parameters,
    peak_memory,
    sum_across_ranks,
)
from ipt_train.losses import pretrain_loss
from ipt_train.model import IPT
from ipt_train.runlog import RunLog
from ipt_train.schedule import TaskMix
from ipt_train.stream.folders import TrainingSource
from ipt_train.stream.loader import StepStream, check_unit, digest_text, make_loader
from ipt_train.trainstate import STATE_NAME, load_train_state, restore_rng, save_train_state

ADAM_IMPLEMENTATIONS = {
    "default": {"foreach": None, "fused": None},  # on CPU tensors: the per-tensor loop
    "foreach": {"foreach": True, "fused": None},
    "fused": {"foreach": None, "fused": True},
}
STREAM_ORDER = 2  # the global order of ipt_train.stream (1: per-reader streams, before it)
TRAINING_ADAM = "fused"  # the implementation ipt-train pretrain / finetune run (see make_optimizer)


@dataclass
class Job:
    """A run's parts: the model (on its device), its task mix and the slot of each task, and
    ``batches(steps)``, the rank's micro-batches of a range of steps in order."""

    model: IPT
    mix: TaskMix
    slot: Callable[[str], int]
    batches: Callable[[range, int], Iterable[dict]]  # (steps, global batch) -> units
    micro_batch: int
    identity: dict  # settings a resumed run must share with the saved one
    notes: dict = field(default_factory=dict)  # saved with them, not compared (--init's path)


@dataclass
class TrainResult:
    model: IPT  # the trained model, on its device
    step: int  # steps done in total
    trained: list[tuple[int, str]]  # (step, task) run by this process in this call
    last_loss: float
    train_seconds: float = 0.0  # wall time of this call's steps, checkpoints excluded
    data_wait_seconds: float = 0.0  # of which waiting for the loader

    def summary(self, batch: int) -> str:
        """Steps, loss, samples/s, data-wait fraction and peak memory of this call."""
        done = len(self.trained)
        if not done:
            return f"step {self.step}: already trained to its last step, nothing to do"
        rate = done * batch / self.train_seconds if self.train_seconds else 0.0
        wait = self.data_wait_seconds / self.train_seconds if self.train_seconds else 0.0
        return (
            f"step {self.step}: loss {self.last_loss:.4f}; {done} steps at {rate:.1f} samples/s, "
            f"{100 * wait:.1f}% of step time waiting for data, peak memory {peak_memory()}"
        )


def accumulation(config: TrainConfig, micro_batch: int, world: int) -> int:
    per_step = micro_batch * world
    if config.batch % per_step:
        raise UserError(
            f"--batch {config.batch} is not a multiple of micro batch x processes = {per_step}"
        )
    return config.batch // per_step


def train(config: TrainConfig, job: Job, env: DistEnv) -> TrainResult:
    """Run (or resume) ``job`` to ``config.steps``; rank 0 writes checkpoints and logs."""
    out = Path(config.out)
    accum = accumulation(config, job.micro_batch, env.world)
    identity = {**job.identity, "batch": config.batch, "seed": config.seed}
    optimizer = make_optimizer(job.model.parameters(), config.schedule.lr)
    start = _start_step(config, job, optimizer, identity, env)
    run = {**job.notes, **identity}
    log = RunLog(out, config, start, enabled=env.rank == 0)
    result = TrainResult(job.model, start, [], math.nan)
    # The compiled module shares job.model's parameters; checkpoints use job.model's own keys.
    forward = torch.compile(job.model) if config.compile else job.model
    save = lambda step: _checkpoint(out, job, optimizer, step, run, env)  # noqa: E731
    try:
        steps = range(start, config.steps)
        units = iter(job.batches(steps, config.batch)) if steps else iter(())
        for step in range(start, config.steps):
            clock = time.perf_counter()
            try:
                losses = _train_step(job, forward, optimizer, units, step, accum, config, env)
            except DataFailure as failure:
                if result.trained:  # the steps done so far are kept: --resume goes on
                    save(step)
                raise UserError(f"{failure}{_resume_hint(out, result)}") from None
            result.train_seconds += time.perf_counter() - clock
            result.data_wait_seconds += losses["data_wait_s"]
            result.trained.append((step, losses["task"]))
            result.step, result.last_loss = step + 1, losses["loss"]
            log.step(losses, config.batch)
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                save(step + 1)
    finally:
        log.close()
    return result


class DataFailure(Exception):
    """A rank's units of a step could not be read (the message says why, or which rank)."""


def _checkpoint(out: Path, job: Job, optimizer, step: int, run: dict, env: DistEnv) -> None:
    if env.rank == 0:
        save_train_state(out / STATE_NAME, job.model, optimizer, step, run)
    barrier(env)


def _resume_hint(out: Path, result: TrainResult) -> str:
    if not result.trained:
        return ""
    return f" (steps to {result.step} are saved in {out / STATE_NAME}: --resume continues)"


def make_optimizer(parameters, lr: float, implementation: str = TRAINING_ADAM) -> torch.optim.Adam:
    """Adam β (0.9, 0.999). Fused (one kernel over all tensors) by default: the fastest on
    CUDA by PyTorch's documentation, and on CPUs too (``ipt_train.bench.adam``; records in
    benchmarks/results/adam_*.md)."""
    return torch.optim.Adam(
        parameters, lr=lr, betas=(0.9, 0.999), **ADAM_IMPLEMENTATIONS[implementation]
    )


def _start_step(config, job, optimizer, identity, env) -> int:
    """0 for a fresh run (the same initial weights on every rank), else the saved step."""
    path = Path(config.out) / STATE_NAME
    if not config.resume:
        if path.exists():
            raise UserError(f"{path} exists: pass --resume to continue that run, or another --out")
        broadcast_parameters(job.model, env)
        return 0
    if not path.is_file():
        raise UserError(f"--resume: {path} does not exist")
    state = load_train_state(path)
    changes = _changes(state.run, identity, job.notes)
    if changes:
        raise UserError(f"--resume: the run at {path} was started differently: {changes}")
    job.model.load_state_dict(state.model.state_dict())
    own_flags = [
        {key: group[key] for key in ("foreach", "fused")} for group in optimizer.param_groups
    ]
    optimizer.load_state_dict(state.optimizer)
    for group, flags in zip(optimizer.param_groups, own_flags, strict=True):
        group.update(flags)  # a saved state brings the flags it was saved with: keep ours
    restore_rng(state.rng)
    return state.step


def _changes(saved: dict, identity: dict, notes: dict) -> str:
    """The settings of ``identity`` that differ from the ``saved`` run's, as one line."""
    changes = []
    for key, now in identity.items():
        if saved.get(key) == now:
            continue
        if key == "order" and key not in saved:  # saved before the one global order existed
            print(
                "--resume: the run was saved by an older ipt-train, whose data order differs: "
                "from here on the data follow this version's order",
                file=sys.stderr,
                flush=True,
            )
            continue
        if key == "init_sha256":  # name both checkpoints: the path alone may be the same file
            before = f"{saved.get('init', '?')} (sha256 {saved.get(key)})"
            changes.append(f"--init was {before}, now {notes.get('init')} (sha256 {now})")
        elif key == "data":
            changes.append("the training data differ (other or edited shards, images or pairs)")
        else:
            changes.append(f"{key} was {saved.get(key)!r}, now {now!r}")
    return "; ".join(changes)


def _train_step(job, forward, optimizer, units, step, accum, config, env) -> dict:
    """One optimizer step of ``accum`` micro-batches through ``forward`` (job.model, or it
    compiled); losses averaged over ranks. The step's units are all taken first, and the ranks
    agree that each has its own before any computes (a DataFailure on every rank otherwise)."""
    task = job.mix.task_at(config.seed, step)
    clock = time.perf_counter()
    taken, digest = _take_units(units, step, task, accum, env)
    waited = time.perf_counter() - clock
    for group in optimizer.param_groups:
        group["lr"] = config.schedule.at(step, config.steps)
    optimizer.zero_grad(set_to_none=True)
    sums = torch.zeros(3, dtype=torch.float64)
    across = config.supcon_across_ranks and env.world > 1  # SupCon keys from every rank
    for unit in taken:
        x = unit["input"].to(env.device, non_blocking=True).float()  # [b, 3, 48, 48]
        y = unit["target"].to(env.device, non_blocking=True).float()  # [b, 3, 48s, 48s]
        autocast = torch.autocast("cuda", torch.bfloat16) if x.is_cuda else nullcontext()
        with autocast:
            output, feats = forward(x, job.slot(task.name), return_features=True)
        total, l1, contrastive = pretrain_loss(output, y, feats, config.supcon_weight, across)
        (total / accum).backward()
        sums += torch.stack([total.detach(), l1, contrastive]).double().cpu()
    average_gradients(job.model, env)
    optimizer.step()
    sums = average_across_ranks(sums / accum, env)
    return {
        "data_wait_s": waited,
        "step": step,
        "task": task.name,
        "loss": sums[0].item(),
        "l1": sums[1].item(),
        "supcon": sums[2].item(),
        "lr": optimizer.param_groups[0]["lr"],
        "batch_digest": digest,
    }


def _take_units(units, step: int, task, accum: int, env: DistEnv) -> tuple[list[dict], str]:
    """This rank's ``accum`` units of ``step`` and the digest of the whole global batch (the
    ranks' digest sums added up). A rank whose data failed makes every rank raise DataFailure,
    before any of them enters the step's collectives."""
    taken, problem = [], ""
    try:
        for _ in range(accum):
            taken.append(check_unit(next(units)))
    except UserError as error:
        problem = str(error)
    digests = [unit["digest"] for unit in taken] or [torch.zeros(4, dtype=torch.int64)]
    # [ranks whose data failed, the 4 digest sums], added over ranks in one collective
    total = sum_across_ranks(torch.cat([torch.tensor([int(bool(problem))]), sum(digests)]), env)
    if problem:
        raise DataFailure(problem)
    if total[0]:
        raise DataFailure(f"step {step}: another process's training data failed (its error above)")
    for unit in taken:
        if (unit["step"], unit["task"]) != (step, task.name):
            raise RuntimeError(f"loader out of step: got {unit['step']}, expected {step}")
    return taken, digest_text(total[1:])


def run_identity(**settings) -> dict:
    """Settings as plain JSON-able values (tuples become lists) for the checkpoint."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}


def stream_job(
    model, mix, slot, source: TrainingSource, loader: LoaderConfig, seed, env, identity, notes=None
) -> Job:
    """A job reading ``source`` (a shard set or a folder source) through the training stream.
    What fixes the data order joins the run's identity, which a resumed run must share."""

    def batches(steps: range, batch: int) -> Iterable[dict]:
        stream = StepStream(source, mix, seed, steps, batch, env.rank, env.world, loader)
        return make_loader(stream)

    order = {"stream": STREAM_ORDER, "shuffle_block": loader.shuffle_block}
    identity = {**identity, "order": {**order, "augment": loader.augment}}
    return Job(model, mix, slot, batches, loader.micro_batch, identity, notes or {})


def train_and_export(config: TrainConfig, job: Job, env: DistEnv) -> TrainResult:
    """Train, then write ``OUT/model.pt``: the model's official-layout state_dict."""
    result = train(config, job, env)
    if env.rank == 0:
        path = Path(config.out) / "model.pt"
        export_official(job.model, path)
        heads = job.model.cfg.num_heads
        if heads != PLAIN_NUM_HEADS:  # the plain file would load back as another model
            print(
                f"note: {path} does not record this model's {heads} attention heads: load it "
                f"with num_heads={heads} (--num-heads), or use {STATE_NAME}, which does",
                file=sys.stderr,
            )
    return result
