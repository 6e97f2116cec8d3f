"""The cost of SupCon (docs/training.md) at the paper's scale: seconds and TFLOP/s of its forward
and backward for one rank's tokens against every rank's."""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from ipt_train.distributed import synchronize
from ipt_train.losses import supcon_of_anchors


def bench_supcon(images: int, ranks: int, device: str = "cpu", steps: int = 3) -> dict:
    """Seconds and TFLOP/s of SupCon's forward + backward for one rank's ``images`` x 256 body
    tokens (width 576, ipt-full's) against the tokens of ``ranks`` such ranks (random unit
    vectors; no process group: the keys stand for the gathered ones). fp32 matmuls at full
    precision, and on a GPU also with TF32 ("high"), as training runs them."""
    dev, tokens, width = torch.device(device), 256, 576
    torch.manual_seed(0)
    keys = F.normalize(torch.randn(ranks * images * tokens, width, device=dev), dim=1)
    anchors = keys[: images * tokens].clone().requires_grad_()
    keys.requires_grad_()
    flop = 4 * 2 * anchors.shape[0] * keys.shape[0] * width
    result = {"supcon_images": images, "supcon_ranks": ranks, "supcon_tflop": flop / 1e12}
    for precision in ("highest", "high") if dev.type == "cuda" else ("highest",):
        seconds = _time_supcon(anchors, keys, tokens, precision, steps)
        result[f"supcon_step_s_{precision}"] = seconds
        result[f"supcon_tflops_per_s_{precision}"] = flop / seconds / 1e12
    if dev.type == "cuda":
        result["supcon_peak_cuda_memory_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return result


def _time_supcon(anchors, keys, tokens: int, precision: str, steps: int) -> float:
    """Median seconds of SupCon forward + backward (after one warm-up) at a matmul precision."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        times = []
        for _ in range(steps + 1):
            synchronize(keys.device)
            start = time.perf_counter()
            supcon_of_anchors(anchors, keys, 0, tokens).backward()
            synchronize(keys.device)
            times.append(time.perf_counter() - start)
        return statistics.median(times[1:])
    finally:
        torch.set_float32_matmul_precision(previous)
