"""`ipt-data bench --corruptions`: what each stage costs per ImageNet-size image on one core.

Input: the sample photographs at 500x375, JPEG q90 (``imagenet_like_jpegs``). Per image it times
the JPEG decode, each whole-image MATLAB downscale, the rain corruption, the Gaussian noise of the
patches produced, and the PNG encoding (the shard writer's settings) of all patch pairs produced
(6 tasks x N patches). It reports the ratios the project targets: each downscale <= 2x the
decode, and the whole corruption stage <= the PNG encoding of its outputs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from ipt_data.bench import one_core
from ipt_data.decode import decode_image
from ipt_data.patches import cut_pairs
from ipt_data.png import encode_png
from ipt_data.sample import imagenet_like_jpegs
from ipt_data.tasks import TASKS


def _median_ms(function: Callable[[], object], repeats: int) -> float:
    function()  # warm caches (kernel tables, allocator)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _stage_times(jpeg: bytes, patches: int, repeats: int) -> dict[str, float]:
    """Milliseconds of each stage for one image."""
    image = decode_image(jpeg, "bench.jpg")
    rng = np.random.default_rng(0)
    times = {"decode": _median_ms(lambda: decode_image(jpeg, "bench.jpg"), repeats)}
    for name in ("sr_x2", "sr_x3", "sr_x4", "derain"):
        task = TASKS[name]
        height, width = image.shape[0] // task.scale, image.shape[1] // task.scale
        cropped = image[: height * task.scale, : width * task.scale]
        times[name] = _median_ms(lambda task=task, img=cropped: task.corruption(img, rng), repeats)
    targets = [pair.target for pair in cut_pairs(image, TASKS["denoise_30"], rng, patches)]
    for name in ("denoise_30", "denoise_50"):
        noise = TASKS[name].corruption
        times[name] = _median_ms(lambda noise=noise: [noise(t, rng) for t in targets], repeats)
    pairs = [pair for task in TASKS.values() for pair in cut_pairs(image, task, rng, patches)]

    def encode_all() -> list[bytes]:
        return [encode_png(p.input) + encode_png(p.target) for p in pairs]

    times["png_encode"] = _median_ms(encode_all, repeats)
    return times


def benchmark_corruptions(patches: int, repeats: int = 5) -> dict[str, float]:
    """Median over the sample images of each stage's ms per image, on one core, plus ratios."""
    with one_core():
        per_image = [
            _stage_times(jpeg, patches, repeats) for jpeg in imagenet_like_jpegs().values()
        ]
    figures = {key: statistics.median(t[key] for t in per_image) for key in per_image[0]}
    corruption = sum(figures[name] for name in TASKS)
    figures["corruption_total"] = corruption
    for name in ("sr_x2", "sr_x3", "sr_x4"):
        figures[f"{name}_over_decode"] = figures[name] / figures["decode"]
    figures["corruption_over_png_encode"] = corruption / figures["png_encode"]
    return figures
