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

SIGTERM, SIGINT and SIGUSR1 stop a run the same way (docs/training.md#stopping-and-preemption):
the signal only sets a flag, which rides on the one small all-reduce every step makes anyway
(:func:`_take_units`), so that all ranks learn of any rank's signal at the same step; each
finishes the step it is in, rank 0 saves the steps done, and every process ends with
:class:`Stopped` (exit status 128 + the signal's number). A second signal at least
:data:`REPEAT_SECONDS` after the first ends the process at once, the previous checkpoint intact.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
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
from ipt_train.stream.loader import (
    StepStream,
    accumulation,
    check_unit,
    digest_text,
    make_loader,
)
from ipt_train.trainstate import STATE_NAME, load_train_state, restore_rng, save_train_state

ADAM_IMPLEMENTATIONS = {
    "default": {"foreach": None, "fused": None},  # on CPU tensors: the per-tensor loop
    "foreach": {"foreach": True, "fused": None},
    "fused": {"foreach": None, "fused": True},
}
STREAM_ORDER = 2  # the global order of ipt_train.stream (1: per-reader streams, before it)
TRAINING_ADAM = "fused"  # the implementation ipt-train pretrain / finetune run (see make_optimizer)
# The signals that stop a run, in the order of their slots in the step's all-reduce.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
# A signal this soon after the first is the same stop delivered twice, not a second request: a
# SLURM job's signal reaches every process while torchrun's agent (or ipt-train launch) also
# forwards it to the ranks, milliseconds apart.
REPEAT_SECONDS = 1.0
# How long after a stopped run's end further stop signals are still taken for late copies.
LATE_SECONDS = 10.0


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


def train(config: TrainConfig, job: Job, env: DistEnv) -> TrainResult:
    """Run (or resume) ``job`` to ``config.steps``; rank 0 writes checkpoints and logs. A stop
    signal ends the run after the step under way with its steps saved, raising
    :class:`Stopped` (see the module doc)."""
    out = Path(config.out)
    accum = accumulation(config.batch, job.micro_batch, env.world)
    identity = {**job.identity, "batch": config.batch, "seed": config.seed}
    optimizer = make_optimizer(job.model.parameters(), config.schedule.lr)
    start = _start_step(config, job, optimizer, identity, env)
    run = {**job.notes, **identity}
    log = RunLog(out, config, start, enabled=env.rank == 0)
    result = TrainResult(job.model, start, [], math.nan)
    # The compiled module shares job.model's parameters; checkpoints use job.model's own keys.
    forward = torch.compile(job.model) if config.compile else job.model
    stop = StopSignals(env.rank, out / STATE_NAME, start if config.resume else None)

    def save(step: int) -> None:
        if stop.saved_step != step:
            _checkpoint(out, job, optimizer, step, run, env)
            stop.saved_step = step

    # The error ending the run is raised after the block: an exception raised inside would keep
    # the loader's iterator referenced (through its traceback) past the block, and its worker
    # processes with it.
    ending: UserError | None = None
    with stop:
        try:
            steps = range(start, config.steps)
            units = iter(job.batches(steps, config.batch)) if steps else iter(())
            for step in range(start, config.steps):
                clock = time.perf_counter()
                try:
                    losses = _train_step(
                        job, forward, optimizer, units, step, accum, config, env, stop
                    )
                except DataFailure as failure:  # the steps done so far are kept: --resume goes on
                    ending = UserError(f"{failure}{_resume_hint(out, result)}")
                except StopAgreed as agreed:
                    line = _stopped_line(agreed.cause, out, result, config.steps, env)
                    ending = Stopped(line, agreed.signum)
                if ending is not None:
                    if result.trained:
                        save(step)
                    break
                result.train_seconds += time.perf_counter() - clock
                result.data_wait_seconds += losses["data_wait_s"]
                result.trained.append((step, losses["task"]))
                result.step, result.last_loss = step + 1, losses["loss"]
                log.step(losses, config.batch)
                if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                    save(step + 1)
        finally:
            units = None  # the loader's workers end now
            log.close()
    if ending is not None:
        raise ending
    return result


class Stopped(UserError):
    """A run stopped by a signal, its steps saved. Rank 0's message says where and that
    ``--resume`` continues; the other ranks' is empty (they exit without a word). The exit
    status is 128 + the signal's number, as a shell reports a process ended by it."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class StopAgreed(Exception):
    """The ranks' all-reduce of a step carried a stop request: every rank stops before it.
    ``cause`` says what requested it (``SIGTERM``...)."""

    def __init__(self, signum: int, cause: str) -> None:
        super().__init__(cause)
        self.signum, self.cause = signum, cause


class StopSignals:
    """While a run trains (a ``with`` block, in the main thread only), SIGTERM, SIGINT and
    SIGUSR1 request a stop (:attr:`requested`, the first one's number) instead of ending the
    process, and rank 0 says at once on stderr that the run will stop. Under torchrun (or
    ``ipt-train launch``) the end of the launcher, the process's parent, requests one too (as
    SIGTERM), so that a launcher killed outright does not leave its ranks training on.

    A signal within :data:`REPEAT_SECONDS` of the first is a copy of it and ignored. A later
    one, while the step is finished or the checkpoint saved, ends the process at once
    (``os._exit``, status 128 + its number): the checkpoint file is replaced by a rename only
    once complete, so the previous one stays intact, and rank 0 removes the unfinished one.

    After the block the handlers before are restored; after a stop, only once
    :data:`LATE_SECONDS` have passed (a late copy of the stop, such as torchrun's agent sends to
    the ranks still running once one has exited, is ignored until then; a signal after that
    gets the handler before, and the handler from then on).
    """

    def __init__(self, rank: int, checkpoint: Path, saved_step: int | None) -> None:
        self.rank, self.checkpoint = rank, checkpoint
        self.requested: int | None = None
        self.cause = ""  # what requested the stop: SIGTERM, ...
        self.saved_step = saved_step  # the step the checkpoint file holds, if any
        self._first_at = 0.0
        self._ended_at: float | None = None  # the block's end, after a stop
        self._done = threading.Event()  # the block's end
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
            if "TORCHELASTIC_RUN_ID" in os.environ:  # set by torchrun's agent, our parent
                threading.Thread(
                    target=self._watch_launcher, args=(os.getppid(),), daemon=True
                ).start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self.requested is None:
            self._restore()
        else:
            self._ended_at = time.monotonic()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _watch_launcher(self, launcher: int) -> None:
        while not self._done.wait(1.0):
            if os.getppid() != launcher:
                self._request(signal.SIGTERM, f"the end of its launcher (process {launcher})")
                return

    def _request(self, signum: int, cause: str) -> None:
        if self.requested is None:
            self.requested, self.cause, self._first_at = signum, cause, time.monotonic()
            self._say(
                f"ipt-train: {cause}: stopping after the step under way and saving the steps "
                f"done; a second signal ({REPEAT_SECONDS:g} s or more later) exits at once "
                "without saving\n"
            )

    def _handle(self, signum: int, frame: object) -> None:
        now, name = time.monotonic(), signal.Signals(signum).name
        if self._ended_at is not None:
            if now - self._ended_at < LATE_SECONDS:
                return
            self._restore()
            os.kill(os.getpid(), signum)  # to the handler before, which is back
            return
        if self.requested is None:
            self._request(signum, name)
            return
        if now - self._first_at < REPEAT_SECONDS:
            return  # the same stop delivered twice
        if self.rank == 0:
            self._discard_unfinished_save()
        kept = (
            f"{self.checkpoint} still holds step {self.saved_step}: --resume continues from it"
            if self.saved_step is not None
            else "nothing was saved"
        )
        self._say(f"Error: {name} again: exited at once, without saving; {kept}\n")
        os._exit(128 + signum)

    def _say(self, line: str) -> None:
        if self.rank == 0:  # os.write, not print: the main thread may be inside a print
            os.write(2, line.encode())

    def _discard_unfinished_save(self) -> None:
        """Remove the temporary file of a checkpoint write the exit cuts short (its name:
        docs/format.md, the temporary names)."""
        for partial in self.checkpoint.parent.glob(f".{self.checkpoint.name}.*.part"):
            partial.unlink(missing_ok=True)


def _stopped_line(cause: str, out: Path, result: TrainResult, steps: int, env: DistEnv) -> str:
    """Rank 0's last line after a stop: the steps done and where they are; "" on other ranks."""
    if env.rank != 0:
        return ""
    path = out / STATE_NAME
    if result.trained:
        return f"stopped by {cause} after {result.step} of {steps} steps: saved {path}; " + RESUME
    if result.step:
        held = f"{path} still holds {result.step} of {steps} steps"
        return f"stopped by {cause} before training on: {held}; " + RESUME
    return f"stopped by {cause} before the first step; nothing was saved"


RESUME = "--resume continues"


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
    if env.rank == 0:  # what a run ended at once in the middle of a save left (StopSignals)
        for partial in path.parent.glob(f".{STATE_NAME}.*.part"):
            partial.unlink(missing_ok=True)
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


def _train_step(job, forward, optimizer, units, step, accum, config, env, stop) -> dict:
    """One optimizer step of ``accum`` micro-batches through ``forward`` (job.model, or it
    compiled); losses averaged over ranks. The step's units are all taken first, and the ranks
    agree that each has its own before any computes (a DataFailure on every rank otherwise), and
    that none was asked to stop (StopAgreed on every rank otherwise)."""
    task = job.mix.task_at(config.seed, step)
    clock = time.perf_counter()
    taken, digest = _take_units(units, step, task, accum, env, stop)
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


def _take_units(
    units, step: int, task, accum: int, env: DistEnv, stop: StopSignals | None = None
) -> tuple[list[dict], str]:
    """This rank's ``accum`` units of ``step`` and the digest of the whole global batch (the
    ranks' digest sums added up). Before any rank enters the step's collectives, in the one
    all-reduce: a rank asked to stop (``stop.requested``; it takes no more units) makes every
    rank raise StopAgreed, and a rank whose data failed every rank raise DataFailure."""
    stop = stop or StopSignals(env.rank, Path(), None)  # one that never hears a signal
    taken, problem = [], ""
    try:
        for _ in range(accum):
            if stop.requested is not None:
                break
            taken.append(check_unit(next(units)))
    except UserError as error:
        problem = str(error)
    except Exception:
        if stop.requested is None:
            raise
        # else the stop's signal reached the loader's workers too (a job-wide SIGTERM) and the
        # loader says they are gone: the step is not trained either way
    stopping = stop.requested
    digests = [unit["digest"] for unit in taken] or [torch.zeros(4, dtype=torch.int64)]
    # [ranks whose data failed, ranks stopping per STOP_SIGNALS, the 4 digest sums], summed
    stops = [int(stopping == signum) for signum in STOP_SIGNALS]
    flags = torch.tensor([int(bool(problem)), *stops])
    total = sum_across_ranks(torch.cat([flags, sum(digests)]), env)
    stopped = [signum for signum, count in zip(STOP_SIGNALS, total[1:4], strict=True) if count]
    if stopped:  # this rank's own request, else the first signal another rank got
        if stopping is not None:
            raise StopAgreed(stopping, stop.cause)
        raise StopAgreed(stopped[0], signal.Signals(stopped[0]).name)
    if problem:
        raise DataFailure(problem)
    if total[0]:
        raise DataFailure(f"step {step}: another process's training data failed (its error above)")
    for unit in taken:
        if (unit["step"], unit["task"]) != (step, task.name):
            raise RuntimeError(f"loader out of step: got {unit['step']}, expected {step}")
    return taken, digest_text(total[4:])


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
