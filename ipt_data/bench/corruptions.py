"""`ipt-data bench --corruptions`: what each stage of a build costs per ImageNet-size image on
one core.

Input: the sample photographs at 500x375, JPEG q90 (``imagenet_like_jpegs``). Per image it times
the JPEG decode, each whole-image MATLAB downscale, the rain corruption, the Gaussian noise of the
patches produced, ``cut_pairs`` for all six tasks (the corruptions included: the difference is
the patch cutting), the PNG encoding (the build's ``--png-encoder``) of all patch pairs produced
(6 tasks x N patches), their sample JSON, and writing them into a tar shard (headers, sha256,
file writes; a shard of 20 images' samples, per image). It reports the ratios the project
targets: each downscale <= 2x the decode, and the whole corruption stage <= the PNG encoding of
its outputs.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np

from ipt_data.bench import one_core
from ipt_data.decode import decode_image
from ipt_data.patches import PatchPair, cut_pairs
from ipt_data.png import encode_png
from ipt_data.remote import open_location
from ipt_data.sample import imagenet_like_jpegs
from ipt_data.shardwriter import ShardWriter, sample_json
from ipt_data.tasks import TASKS


def _median_ms(function: Callable[[], object], repeats: int) -> float:
    function()  # warm caches (kernel tables, allocator)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _stage_times(jpeg: bytes, patches: int, encoder: str, repeats: int) -> dict[str, float]:
    """Milliseconds of each stage for one image."""
    image = decode_image(jpeg, "bench.jpg")
    rng = np.random.default_rng(0)
    times = {"decode": _median_ms(lambda: decode_image(jpeg, "bench.jpg"), repeats)}
    for name in ("sr_x2", "sr_x3", "sr_x4", "derain"):
        task = TASKS[name]
        height, width = image.shape[0] // task.scale, image.shape[1] // task.scale
        cropped = image[: height * task.scale, : width * task.scale]
        times[name] = _median_ms(lambda task=task, img=cropped: task.corruption(img, rng), repeats)
    targets = np.stack([p.target for p in cut_pairs(image, TASKS["denoise_30"], rng, patches)])
    for name in ("denoise_30", "denoise_50"):
        noise = TASKS[name].corruption
        times[name] = _median_ms(lambda noise=noise: noise(targets, rng), repeats)

    def cut_all() -> list:
        return [pair for task in TASKS.values() for pair in cut_pairs(image, task, rng, patches)]

    times["cut_pairs_all_tasks"] = _median_ms(cut_all, repeats)
    pairs = cut_all()

    def encode_all() -> list[tuple[bytes, bytes]]:
        return [(encode_png(p.input, encoder), encode_png(p.target, encoder)) for p in pairs]

    times["png_encode"] = _median_ms(encode_all, repeats)
    metadata = [_metadata(image, pair, number) for number, pair in enumerate(pairs)]
    times["sample_json"] = _median_ms(lambda: [sample_json(m) for m in metadata], repeats)
    samples = [(*png, sample_json(m)) for png, m in zip(encode_all(), metadata, strict=True)]
    with tempfile.TemporaryDirectory() as scratch:
        shard_ms = _median_ms(lambda: _write_tar(scratch, samples, _IMAGES_PER_TAR), repeats)
    times["tar_sha256_write"] = shard_ms / _IMAGES_PER_TAR
    return times


# A build's shard holds many images' samples, so a file's own costs (create, rename) are spread
# over them; the tar stage is timed over a shard of this many copies of the image's samples.
_IMAGES_PER_TAR = 20


def _metadata(image: np.ndarray, pair: PatchPair, number: int) -> dict:
    """A sample's JSON fields as the worker writes them (the values are stand-ins)."""
    return {
        "source": "n01440764/n01440764_10026.JPEG",
        "image_size": list(image.shape[:2]),
        "box": list(pair.box),
        "task": TASKS["sr_x2"].params(),
        "seed": 0,
        "image_seed": str(2**63 + number),  # decimal digits, as format 2 writes it
        "patch": number % 8,
    }


def _write_tar(folder: str, samples: list[tuple[bytes, bytes, bytes]], copies: int) -> None:
    with ShardWriter(open_location(folder), "bench.tar") as writer:
        for copy in range(copies):
            for number, (low, high, metadata) in enumerate(samples):
                members = {"input.png": low, "target.png": high, "json": metadata}
                writer.write(f"{copy:08d}_bench_image_p{number}", members)
        writer.close()


def benchmark_corruptions(patches: int, encoder: str, repeats: int = 5) -> dict[str, float]:
    """Median over the sample images of each stage's ms per image, on one core, plus ratios;
    ``encoder`` is the PNG encoder timed."""
    with one_core():
        per_image = [
            _stage_times(jpeg, patches, encoder, repeats) for jpeg in imagenet_like_jpegs().values()
        ]
    figures = {key: statistics.median(t[key] for t in per_image) for key in per_image[0]}
    corruption = sum(figures[name] for name in TASKS)
    figures["corruption_total"] = corruption
    figures["patch_cutting"] = figures["cut_pairs_all_tasks"] - corruption
    for name in ("sr_x2", "sr_x3", "sr_x4"):
        figures[f"{name}_over_decode"] = figures[name] / figures["decode"]
    figures["corruption_over_png_encode"] = corruption / figures["png_encode"]
    return figures
