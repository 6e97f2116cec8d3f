"""The training loop: build -> run -> close, on one process or many (``torchrun``).

Each step trains one task, drawn from (seed, step) and so the same on every rank; the global
batch is ``micro_batch x accum x world`` samples, ``accum`` micro-batches per rank and step. The
loss is L1 + λ·SupCon of the body tokens (docs/training.md), Adam β (0.9, 0.999), lr from the
schedule. SupCon's negatives are the tokens of every rank's micro-batch, gathered at each
micro-step (so with ``accum`` > 1 they span ``micro_batch x world`` images, not the whole global
batch).

Multi-process: ``torchrun`` sets RANK/WORLD_SIZE/LOCAL_RANK; the process group uses nccl on GPUs
and gloo on CPUs. Only one head and tail take part in a step, so the model is not wrapped in
DDP (which would need ``find_unused_parameters`` and its per-step graph walk): after the last
micro-batch the gradients that exist (body + the step's head and tail, the same set on every
rank) are averaged with flat bucketed all-reduces, and the other slots keep ``grad=None`` so
Adam leaves them alone.

Data comes in segments that end at checkpoints: the streams of segment [a, b) are seeded from
(seed, a), so a run resumed from the checkpoint at step a reads exactly what the uninterrupted
run read, and continues with exactly the saved parameters and optimizer state.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from ipt_data.errors import UserError
from ipt_data.progress import progress_bar
from ipt_data.tasks import TASKS, parse_tasks
from ipt_train.checkpoint import PLAIN_NUM_HEADS, export_official
from ipt_train.configs import LoaderConfig, PretrainConfig, TrainConfig
from ipt_train.data import PretrainStream, ShardSet, check_unit, make_loader
from ipt_train.losses import pretrain_loss
from ipt_train.model import IPT, preset_config
from ipt_train.restore import pick_device
from ipt_train.schedule import TaskMix, parse_task_weights
from ipt_train.trainstate import STATE_NAME, load_train_state, restore_rng, save_train_state

ADAM_IMPLEMENTATIONS = {
    "default": {"foreach": None, "fused": None},  # on CPU tensors: the per-tensor loop
    "foreach": {"foreach": True, "fused": None},
    "fused": {"foreach": None, "fused": True},
}
TRAINING_ADAM = "fused"  # the implementation ipt-train pretrain / finetune run (see make_optimizer)
BUCKET_ELEMENTS = 1 << 24  # gradients reduced per all-reduce call (64 MB of float32)
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
)  # data_wait: the fraction of the step spent waiting for the loader


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world: int
    device: torch.device


@dataclass
class Job:
    """A run's parts: the model (on its device), its task mix and the slot of each task, and
    ``batches(steps)``, the rank's micro-batches of a range of steps in order."""

    model: IPT
    mix: TaskMix
    slot: Callable[[str], int]
    batches: Callable[[range, int], Iterable[dict]]  # (steps, accum) -> units
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
            f"{100 * wait:.1f}% of step time waiting for data, peak memory {_peak_memory()}"
        )


def _peak_memory() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (GPU)"
    import resource

    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process RSS)"


@contextmanager
def distributed(device: str) -> Iterable[DistEnv]:
    """The process group of a ``torchrun`` launch (none for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    env = DistEnv(rank, world, pick_device(process_device(device, local)))
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
        # fp32 matmuls (SupCon's similarities, which run outside bf16 autocast) on TF32 tensor
        # cores: ~10 bits of mantissa is plenty for softmax logits of magnitude <= 1/τ.
        torch.set_float32_matmul_precision("high")
    if world > 1:
        dist.init_process_group("nccl" if env.device.type == "cuda" else "gloo")
    try:
        yield env
    finally:
        if world > 1:
            dist.destroy_process_group()


def process_device(device: str, local_rank: int) -> str:
    """The device of the process with ``local_rank``: auto is ``cuda:LOCAL_RANK`` where torch
    sees a GPU, else cpu; a bare cuda is ``cuda:LOCAL_RANK`` too (one GPU per process, where
    torch.cuda.set_device refuses a device without an index)."""
    if device == "auto":
        return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    return f"cuda:{local_rank}" if device == "cuda" else device


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
    # The data streams restart at the checkpoint steps: another interval reorders the data
    order = {**job.notes.get("data_order", {}), "checkpoint_every": config.checkpoint_every}
    job = replace(job, notes={**job.notes, "data_order": order})
    identity = {**job.identity, "batch": config.batch, "seed": config.seed}
    optimizer = make_optimizer(job.model.parameters(), config.schedule.lr)
    start = _start_step(config, job, optimizer, identity, env)
    run = {**job.notes, **identity}
    log = RunLog(out, config, start, enabled=env.rank == 0)
    result = TrainResult(job.model, start, [], math.nan)
    # The compiled module shares job.model's parameters; checkpoints use job.model's own keys.
    forward = torch.compile(job.model) if config.compile else job.model
    try:
        for segment in _segments(start, config.steps, config.checkpoint_every):
            units = iter(job.batches(segment, accum))
            for step in segment:
                clock = time.perf_counter()
                losses = _train_step(job, forward, optimizer, units, step, accum, config, env)
                result.train_seconds += time.perf_counter() - clock
                result.data_wait_seconds += losses["data_wait_s"]
                result.trained.append((step, losses["task"]))
                result.step, result.last_loss = step + 1, losses["loss"]
                log.step(losses, config.batch)
            if env.rank == 0:
                save_train_state(out / STATE_NAME, job.model, optimizer, segment.stop, run)
            _barrier(env)
    finally:
        log.close()
    return result


def make_optimizer(parameters, lr: float, implementation: str = TRAINING_ADAM) -> torch.optim.Adam:
    """Adam β (0.9, 0.999). Fused (one kernel over all tensors) by default: the fastest on
    CUDA by PyTorch's documentation, and on CPUs too (``bench.adam_benchmark``; records in
    benchmarks/results/adam_*.md)."""
    return torch.optim.Adam(
        parameters, lr=lr, betas=(0.9, 0.999), **ADAM_IMPLEMENTATIONS[implementation]
    )


def _segments(start: int, steps: int, every: int) -> list[range]:
    """[start, steps) cut at the multiples of ``every`` (the checkpoint steps)."""
    bounds = [*range((start // every + 1) * every, steps, every), steps]
    return [range(a, b) for a, b in zip([start, *bounds[:-1]], bounds, strict=True) if a < b]


def _start_step(config, job, optimizer, identity, env) -> int:
    """0 for a fresh run (the same initial weights on every rank), else the saved step."""
    path = Path(config.out) / STATE_NAME
    if not config.resume:
        if path.exists():
            raise UserError(f"{path} exists: pass --resume to continue that run, or another --out")
        _broadcast_parameters(job.model, env)
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
    _say_data_order_changes(state.run.get("data_order", {}), job.notes.get("data_order", {}), env)
    return state.step


def _say_data_order_changes(saved: dict, now: dict, env: DistEnv) -> None:
    """A resume on other hardware (processes, loader workers, ...) is allowed; each reader's
    share of the shards then differs, so the samples from here on are not those an uninterrupted
    run would have read. Rank 0 says so on stderr."""
    changed = [
        f"{key} {saved[key]} -> {new}" for key, new in now.items() if saved.get(key, new) != new
    ]
    if changed and env.rank == 0:
        print(
            f"--resume: {', '.join(changed)}: the data order from here on differs from the "
            "uninterrupted run's",
            file=sys.stderr,
            flush=True,
        )


def _changes(saved: dict, identity: dict, notes: dict) -> str:
    """The settings of ``identity`` that differ from the ``saved`` run's, as one line."""
    changes = []
    for key, now in identity.items():
        if saved.get(key) == now:
            continue
        if key == "init_sha256":  # name both checkpoints: the path alone may be the same file
            before = f"{saved.get('init', '?')} (sha256 {saved.get(key)})"
            changes.append(f"--init was {before}, now {notes.get('init')} (sha256 {now})")
        elif key == "data":
            changes.append("the training data differ (other shards, images or pairs)")
        else:
            changes.append(f"{key} was {saved.get(key)!r}, now {now!r}")
    return "; ".join(changes)


def _train_step(job, forward, optimizer, units, step, accum, config, env) -> dict:
    """One optimizer step of ``accum`` micro-batches through ``forward`` (job.model, or it
    compiled); losses averaged over ranks."""
    task = job.mix.task_at(config.seed, step)
    for group in optimizer.param_groups:
        group["lr"] = config.schedule.at(step, config.steps)
    optimizer.zero_grad(set_to_none=True)
    sums, waited = torch.zeros(3, dtype=torch.float64), 0.0
    across = config.supcon_across_ranks and env.world > 1  # SupCon keys from every rank
    for _ in range(accum):
        clock = time.perf_counter()
        unit = check_unit(next(units))
        waited += time.perf_counter() - clock
        if (unit["step"], unit["task"]) != (step, task.name):
            raise RuntimeError(f"loader out of step: got {unit['step']}, expected {step}")
        x = unit["input"].to(env.device, non_blocking=True).float()  # [b, 3, 48, 48]
        y = unit["target"].to(env.device, non_blocking=True).float()  # [b, 3, 48s, 48s]
        autocast = torch.autocast("cuda", torch.bfloat16) if x.is_cuda else nullcontext()
        with autocast:
            output, feats = forward(x, job.slot(task.name), return_features=True)
        total, l1, contrastive = pretrain_loss(output, y, feats, config.supcon_weight, across)
        (total / accum).backward()
        sums += torch.stack([total.detach(), l1, contrastive]).double().cpu()
    _average_gradients(job.model, env)
    optimizer.step()
    sums = _average_across_ranks(sums / accum, env)
    return {
        "data_wait_s": waited,
        "step": step,
        "task": task.name,
        "loss": sums[0].item(),
        "l1": sums[1].item(),
        "supcon": sums[2].item(),
        "lr": optimizer.param_groups[0]["lr"],
    }


def _average_gradients(model: torch.nn.Module, env: DistEnv) -> None:
    """Mean of the existing gradients over ranks, in flat buckets of BUCKET_ELEMENTS."""
    if env.world == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    bucket: list[torch.Tensor] = []
    for grad in [*grads, None]:
        if bucket and (grad is None or sum(g.numel() for g in bucket) >= BUCKET_ELEMENTS):
            flat = _flatten_dense_tensors(bucket)
            dist.all_reduce(flat)
            flat /= env.world
            for g, reduced in zip(bucket, _unflatten_dense_tensors(flat, bucket), strict=True):
                g.copy_(reduced)
            bucket = []
        if grad is not None:
            bucket.append(grad)


def _average_across_ranks(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.world == 1:
        return values
    values = values.to(env.device)
    dist.all_reduce(values)
    return values.cpu() / env.world


def _broadcast_parameters(model: torch.nn.Module, env: DistEnv) -> None:
    if env.world > 1:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)


def _barrier(env: DistEnv) -> None:
    if env.world > 1:
        dist.barrier()


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


def run_identity(**settings) -> dict:
    """Settings as plain JSON-able values (tuples become lists) for the checkpoint."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}


def pretrain(config: TrainConfig, setup: PretrainConfig) -> TrainResult:
    """Multi-task pretraining of a 6-task IPT from a shard set; writes ``OUT/checkpoint.pt``
    (resumable) and ``OUT/model.pt`` (official layout) at the end."""
    model_config = preset_config(setup.preset)
    tasks = parse_tasks(setup.tasks)
    mix = TaskMix(tuple(tasks), parse_task_weights(tasks, setup.task_weights))
    shard_set = ShardSet.open(setup.shards)
    for task in mix.tasks:
        shard_set.check(task)  # before anything is written
    identity = run_identity(
        preset=setup.preset,
        tasks=[task.name for task in mix.tasks],
        weights=mix.weights,
        data=shard_set.fingerprint(mix.tasks),
        micro_batch=setup.loader.micro_batch,
    )
    with distributed(config.device) as env:
        torch.manual_seed(config.seed)
        model = IPT(model_config).to(env.device)
        slot = lambda name: TASKS[name].index  # noqa: E731
        job = stream_job(model, mix, slot, shard_set, setup.loader, config.seed, env, identity)
        return train_and_export(config, job, env)


def stream_job(
    model, mix, slot, source, loader: LoaderConfig, seed, env, identity, notes=None
) -> Job:
    """A job reading ``source`` (a shard set or a folder source) through PretrainStream."""

    def batches(steps: range, accum: int) -> Iterable[dict]:
        stream = PretrainStream(source, mix, seed, steps, accum, env.rank, env.world, loader)
        return make_loader(stream)

    # Settings a resume may change, though the data order from there on changes (said, not refused)
    order = {"processes": env.world, "workers": loader.workers}
    order |= {"shuffle_buffer": loader.shuffle_buffer, "augment": loader.augment}
    notes = {**(notes or {}), "data_order": order}
    return Job(model, mix, slot, batches, loader.micro_batch, identity, notes)


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
