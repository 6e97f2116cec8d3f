"""The work behind ``ipt-train bench``: speed and memory of the IPT model, against the official
implementation in the same run.

Timed per step (after warm-up, medians over ``steps``): the eval forward pass and the training
step (forward, L1 loss, backward, Adam step) at the given batch. With an official checkout
(``--official DIR``, its ``model/`` package imported from there at run time, never vendored) the
official model gets the same weights and inputs, and each its own trainer's Adam (fused for
ours, as ``ipt-train pretrain``; the plain per-tensor loop for the official code, whose trainer
builds ``optim.Adam``); the two are timed interleaved, alternating which goes first, so that
load from other processes on a shared machine hits both alike. Tiled inference is timed on a
synthetic image. On a GPU, the model FLOPs of a training step (counted once by
``torch.utils.flop_counter``) give the MFU against the device's peak.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ipt_data import Task, UserError, get_task
from ipt_train.configs import BenchConfig
from ipt_train.distributed import pick_device, synchronize
from ipt_train.model import IPT, IPTConfig, preset_config
from ipt_train.official import OfficialIPT
from ipt_train.tilegrid import TileConfig, tile_count
from ipt_train.tiling import restore_tiled
from ipt_train.train import TRAINING_ADAM, make_optimizer

# Dense peak TFLOPS (bf16/fp16 tensor cores, and fp32 without TF32) by device-name fragment.
PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "fp32": 67.0},
    "H100 PCIe": {"bf16": 756.0, "fp32": 51.0},
    "H100": {"bf16": 989.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp32": 19.5},
}
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # configs.AMPS


class Runner:
    """One model with its optimizer, inputs and per-step timings. ``adam`` is the optimizer
    implementation the model's own trainer uses: fused for ours (``make_optimizer``, as
    ``ipt-train pretrain``), ``"default"`` (torch.optim.Adam's per-tensor loop) for the official
    code, whose trainer builds a plain ``optim.Adam``."""

    def __init__(
        self, model: torch.nn.Module, bench: BenchConfig, x, target, adam: str = TRAINING_ADAM
    ) -> None:
        self.model, self.bench, self.x, self.target = model, bench, x, target
        self.device = x.device
        trained = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(trained, lr=1e-5, implementation=adam)
        # Wall seconds, and process CPU seconds (all threads): on a machine shared with other
        # jobs the CPU time is the steadier measure of the work a step needs.
        self.times: dict[str, list[float]] = {"forward": [], "train": [], "train_cpu": []}
        self.peak_cuda = 0

    def _autocast(self):
        dtype = AMP_DTYPES[self.bench.amp]
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def forward(self) -> None:
        self.model.eval()
        with torch.no_grad(), self._autocast():
            self.model(self.x, self.bench.slot)

    def train_step(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = F.l1_loss(self.model(self.x, self.bench.slot).float(), self.target)
        loss.backward()
        self.optimizer.step()

    def timed(self, kind: str, record: bool = True) -> None:
        step = self.forward if kind == "forward" else self.train_step
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        synchronize(self.device)
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        synchronize(self.device)
        if record:
            self.times[kind].append(time.perf_counter() - start)
            if kind == "train":
                self.times["train_cpu"].append(time.process_time() - start_cpu)
        if self.device.type == "cuda":
            self.peak_cuda = max(self.peak_cuda, torch.cuda.max_memory_allocated(self.device))

    def median(self, kind: str) -> float:
        return statistics.median(self.times[kind])


def run_interleaved(runners: list[Runner], bench: BenchConfig) -> None:
    """Warm up, then time every runner once per round, alternating who goes first."""
    for kind in ("forward", "train"):
        for _ in range(bench.warmup):
            for runner in runners:
                runner.timed(kind, record=False)
        for round_index in range(bench.steps):
            order = runners if round_index % 2 == 0 else runners[::-1]
            for runner in order:
                runner.timed(kind)


def train_step_flops(model: torch.nn.Module, bench: BenchConfig, x, target) -> int:
    """Model FLOPs of one training step (forward + backward), counted by the dispatcher."""
    counter = FlopCounterMode(display=False)
    with counter:
        F.l1_loss(model(x, bench.slot).float(), target).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def peak_tflops(device: torch.device, amp: str) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, peaks in PEAK_TFLOPS.items():
        if fragment in name:
            return peaks["fp32" if amp == "none" else "bf16"]
    return None


def figures(prefix: str, runner: Runner, batch: int) -> dict:
    train = runner.median("train")
    out = {
        f"{prefix}forward_s_per_sample": runner.median("forward") / batch,
        f"{prefix}train_step_s": train,
        f"{prefix}train_s_per_sample": train / batch,
        f"{prefix}train_samples_per_s": batch / train,
        f"{prefix}train_step_rounds_s": [round(t, 4) for t in runner.times["train"]],
    }
    if runner.device.type == "cuda":
        out[f"{prefix}peak_cuda_memory_mib"] = runner.peak_cuda / 2**20
    else:
        out[f"{prefix}train_step_cpu_s"] = runner.median("train_cpu")
    return out


def bench_tiled(
    model: torch.nn.Module, cfg: IPTConfig, bench: BenchConfig, device: torch.device
) -> dict:
    """Tiles/s and ms per input megapixel of tiled inference on a random image."""
    scale = cfg.scales[bench.slot]
    tiles = TileConfig(tile=cfg.patch_size, overlap=bench.overlap, batch=bench.tile_batch)
    image = torch.rand(3, bench.tiled_size, bench.tiled_size, device=device) * 255
    count = tile_count(tiles, bench.tiled_size, bench.tiled_size)
    model.eval()
    restore_tiled(model, image[:, : tiles.tile, : tiles.tile], bench.slot, scale, tiles)  # warm
    synchronize(device)
    start = time.perf_counter()
    restore_tiled(model, image, bench.slot, scale, tiles)
    synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "tiled_image": f"{bench.tiled_size}x{bench.tiled_size}",
        "tiles": count,
        "tiles_per_s": count / seconds,
        "tiled_ms_per_megapixel": 1000 * seconds / (bench.tiled_size**2 / 1e6),
    }


def paired_ratios(ours: Runner, official: Runner) -> dict:
    """Ours / official per round (the two ran back to back, under the same load), median over
    rounds: steadier than a ratio of medians on a machine shared with other jobs."""
    kinds = {"forward": "forward_ratio", "train": "train_step_ratio"}
    if ours.device.type == "cpu":
        kinds["train_cpu"] = "train_step_cpu_ratio"
    return {
        name: statistics.median(
            a / b for a, b in zip(ours.times[k], official.times[k], strict=True)
        )
        for k, name in kinds.items()
    }


def run_bench(bench: BenchConfig, log: Callable[[str], None] = lambda _: None) -> dict:
    """Build the model(s), time them, return the figures as one flat dict."""
    device = pick_device(bench.device)
    if bench.threads:
        torch.set_num_threads(bench.threads)
    torch.manual_seed(0)
    cfg = model_config(bench)
    ours = IPT(cfg).to(device)
    scale = cfg.scales[bench.slot]
    x = torch.rand(bench.batch, 3, cfg.patch_size, cfg.patch_size, device=device) * 255
    target = torch.rand(bench.batch, 3, cfg.patch_size * scale, cfg.patch_size * scale,
                        device=device) * 255  # fmt: skip
    result = {
        "device": _device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "scales": list(cfg.scales),
        "n_params": sum(p.numel() for p in ours.parameters()),
        "batch": bench.batch,
        "slot": bench.slot,
        "amp": bench.amp,
        "compile": bench.compile,
        "steps": bench.steps,
        "adam": TRAINING_ADAM,
    }
    runners = [Runner(torch.compile(ours) if bench.compile else ours, bench, x, target)]
    if bench.official_dir is not None:
        official = OfficialIPT(bench.official_dir, cfg).to(device)
        official.inner.load_state_dict(ours.state_dict(), strict=True)
        result["official_max_abs_diff"] = _max_abs_diff(ours, official, x, bench.slot)
        result["official_adam"] = "default"
        runners.append(Runner(official, bench, x, target, adam="default"))
    log(f"timing {len(runners)} model(s): {bench.warmup} warm-up + {bench.steps} steps each")
    run_interleaved(runners, bench)
    result.update(figures("", runners[0], bench.batch))
    if len(runners) == 2:
        result.update(figures("official_", runners[1], bench.batch))
        result.update(paired_ratios(*runners))
    result.update(_flops_figures(ours, bench, x, target, result["train_step_s"], device))
    if bench.tiled_size:
        log(f"timing tiled inference on a {bench.tiled_size}^2 image")
        result.update(bench_tiled(ours, cfg, bench, device))
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _flops_figures(model, bench, x, target, train_step_s, device) -> dict:
    flops = train_step_flops(model, bench, x, target)
    achieved = flops / train_step_s / 1e12
    peak = peak_tflops(device, bench.amp)
    return {
        "train_step_tflop": flops / 1e12,
        "train_tflops_per_s": achieved,
        "mfu": achieved / peak if peak else None,
    }


@torch.no_grad()
def _max_abs_diff(ours, official, x, slot: int) -> float:
    ours.eval()
    official.eval()
    return (ours(x, slot) - official(x.clone(), slot)).abs().max().item()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def model_config(bench: BenchConfig) -> IPTConfig:
    """The model ``bench`` times; a bad preset, scales or slot is a UserError."""
    try:
        cfg = preset_config(bench.preset, scales=parse_scales(bench.scales))
    except ValueError as error:
        raise UserError(str(error)) from None
    if not 0 <= bench.slot < cfg.n_tasks:
        raise UserError(f"--slot {bench.slot} out of range for scales {cfg.scales}")
    TileConfig(tile=cfg.patch_size, overlap=bench.overlap, batch=bench.tile_batch)  # checks them
    return cfg


def parse_scales(text: str) -> tuple[int, ...]:
    """``"2+3+4+1+1+1"`` -> (2, 3, 4, 1, 1, 1), the official ``--scale`` syntax."""
    try:
        return tuple(int(part) for part in text.split("+"))
    except ValueError:
        raise UserError(
            f"scales must be '+'-joined integers like 2+3+4+1+1+1, got {text!r}"
        ) from None


def bench_from_options(
    compare_blends: str | None,
    ckpt: str | None,
    task_name: str,
    log: Callable[[str], None],
    **timing,
) -> dict:
    """The ``ipt-train bench`` command's work: timings, or with ``compare_blends`` the Set5
    scores of both tile blends for a trained checkpoint."""
    task = get_task(task_name)
    if compare_blends:
        return _blend_figures(compare_blends, ckpt, task, timing)
    official = timing.pop("official")
    bench = BenchConfig(
        official_dir=Path(official) if official else None, compile=timing.pop("compile_"), **timing
    )
    return run_bench(bench, log)


def _blend_figures(folder: str, ckpt: str | None, task: Task, timing: dict) -> dict:
    if not ckpt:
        raise UserError("--compare-blends needs --ckpt: randomly initialised weights rank nothing")
    if task.scale == 1:
        raise UserError(f"--compare-blends scores SR tasks on Set5-style folders, not {task.name}")
    from ipt_train.blends import compare_blends

    tiles = TileConfig(overlap=timing["overlap"], batch=timing["tile_batch"])
    scores = compare_blends(ckpt, task.name, folder, tiles, timing["device"])
    return {
        f"{blend}_{name}": value for blend, row in scores.items() for name, value in row.items()
    }
