"""Where a training process runs: its rank and device, and the collectives between ranks.

``torchrun`` (or ``ipt-train launch``) sets RANK/WORLD_SIZE/LOCAL_RANK; the process group uses
nccl on GPUs and gloo on CPUs. Only one head and tail take part in a step, so the model is not
wrapped in DDP (which would need ``find_unused_parameters`` and its per-step graph walk): after
the last micro-batch the gradients that exist (body + the step's head and tail, the same set on
every rank) are averaged with flat bucketed all-reduces (:func:`average_gradients`), and the
other slots keep ``grad=None`` so Adam leaves them alone. With one process every collective is a
no-op.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from ipt_data import UserError

BUCKET_ELEMENTS = 1 << 24  # gradients reduced per all-reduce call (64 MB of float32)


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world: int
    device: torch.device


def pick_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; a malformed name, or a GPU that is not there, is a
    UserError."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but torch sees no CUDA GPU")
    return device


def thread_budget(requested: int, loader_workers: int) -> int:
    """torch's intra-op CPU threads for one training process: ``requested`` if > 0, else the
    cores this process may run on, shared among this node's training processes
    (LOCAL_WORLD_SIZE), less one core per loader worker, and at least 1.

    torch's default (every core) over-subscribes them once loader workers or another program
    run: its OpenMP threads then spin at each parallel region's barrier waiting for a thread
    that is not scheduled, and a step slows many times over (docs/training.md#cpu-threads)."""
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (cores or 1) // local_processes - loader_workers)


@contextmanager
def distributed(device: str, threads: int = 0) -> Iterable[DistEnv]:
    """The process group of a ``torchrun`` launch (none for a single process); ``threads`` > 0
    sets torch's intra-op CPU threads (:func:`thread_budget`)."""
    if threads > 0:
        torch.set_num_threads(threads)
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


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (for timing); nothing on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory() -> str:
    """This process's peak memory: the GPU's allocations, or the process's resident set."""
    if torch.cuda.is_available():
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (GPU)"
    import resource

    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process RSS)"


def average_gradients(model: torch.nn.Module, env: DistEnv) -> None:
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


def average_across_ranks(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.world == 1:
        return values
    values = values.to(env.device)
    dist.all_reduce(values)
    return values.cpu() / env.world


def sum_across_ranks(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """The sum over ranks of an integer tensor (exact), on the CPU."""
    if env.world == 1:
        return values
    values = values.to(env.device)
    dist.all_reduce(values)
    return values.cpu()


def broadcast_parameters(model: torch.nn.Module, env: DistEnv) -> None:
    if env.world > 1:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)


def barrier(env: DistEnv) -> None:
    if env.world > 1:
        dist.barrier()
