"""`ipt-data bench --build`: the whole build's throughput next to its floor, measured in one run.

Input: ``images`` ImageNet-size JPEGs (the six sample photographs at 500x375, q90, repeated
under distinct names), built with all six tasks x ``patches`` pairs by the real engine on a
local Ray instance (started outside the timings, workers warmed up by a small build first).

- **build**: wall time of ``build_shards`` with 1 and with 2 workers, best of two alternating
  runs -> images/s per core; also the workers' CPU ms per image, and the 1-minute load average
  of the machine, since on a shared machine the wall-clock speedup is only as good as the free
  cores.
- **floor** (one core, in this process, alternated with the builds, best of two): the JPEG
  decode of every input, plus the PNG encoding of exactly the pairs the build wrote (read back
  from its shards, untimed) and the writing of them as tar shards. Everything the build does
  beyond that is corruption, patch cutting and orchestration; the target is build <= 1.5x
  floor in wall time. The same ratio in CPU time (workers' vs this process's) is printed too:
  it is what contention on a shared machine disturbs least.
- **memory**: the largest peak RSS of a Ray worker, for a fresh Ray instance building
  ``images`` and 10x ``images`` inputs; the target is the same figure for both, under 1 GiB.

From the one-worker rate it projects core-hours and shard bytes per task for ImageNet-1k train.
"""

from __future__ import annotations

import dataclasses
import os
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ipt_data.bench import one_core
from ipt_data.build import BuildConfig, build_shards
from ipt_data.decode import decode_image
from ipt_data.distributor import RayConfig, ray_session
from ipt_data.png import decode_png, encode_png
from ipt_data.remote import open_location
from ipt_data.sample import imagenet_like_jpegs
from ipt_data.shardwriter import ShardWriter
from ipt_data.sources import SourceList, walk_sources

IMAGENET_TRAIN_IMAGES = 1_281_167


def write_inputs(folder: Path, images: int) -> SourceList:
    """``images`` JPEGs as ``nXXXXXXXX/img_NNNNNN.JPEG``, 100 per class folder."""
    jpegs = list(imagenet_like_jpegs().values())
    for number in range(images):
        path = folder / f"n{number // 100:08d}" / f"img_{number:06d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpegs[number % len(jpegs)])
    return walk_sources(folder)


def _timed_build(sources: SourceList, out: Path, config: BuildConfig, workers: int):
    config = dataclasses.replace(config, ray=RayConfig(workers=workers, progress=False))
    start = time.perf_counter()
    result = build_shards(sources, out, config)
    return time.perf_counter() - start, result


class _Stopwatch:
    """Wall and CPU seconds of the timed blocks only."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    @contextmanager
    def timing(self) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu


def floor_seconds(
    sources: SourceList, built: Path, manifest: dict, encoder: str
) -> tuple[float, float]:
    """One core: decode every input JPEG, then PNG-encode the built pairs (with ``encoder``)
    and write them as tars. Returns (wall, CPU) seconds."""
    watch = _Stopwatch()
    with one_core(), tempfile.TemporaryDirectory() as scratch:
        for image_id in sources.ids:
            data = (sources.root / image_id).read_bytes()
            with watch.timing():
                decode_image(data, image_id)
        for task in manifest["tasks"].values():
            for shard in task["shards"]:
                samples = _decoded_samples(built / shard["path"])
                with watch.timing():
                    _rewrite(samples, Path(scratch) / "floor.tar", encoder)
    return watch.wall, watch.cpu


def _decoded_samples(path: Path) -> list[tuple[str, np.ndarray, np.ndarray, bytes]]:
    """(key, input RGB, target RGB, json bytes) of every sample of a shard."""
    members = {}
    with tarfile.open(path) as tar:
        for member in tar:
            members[member.name] = tar.extractfile(member).read()
    keys = list(dict.fromkeys(name.split(".", 1)[0] for name in members))  # in shard order

    pixels = {name: decode_png(data) for name, data in members.items() if name.endswith(".png")}
    return [
        (key, pixels[f"{key}.input.png"], pixels[f"{key}.target.png"], members[f"{key}.json"])
        for key in keys
    ]


def _rewrite(samples, path: Path, encoder: str) -> None:
    with ShardWriter(open_location(path.parent), path.name) as writer:
        for key, low, high, metadata in samples:
            writer.write(
                key,
                {
                    "input.png": encode_png(low, encoder),
                    "target.png": encode_png(high, encoder),
                    "json": metadata,
                },
            )
        writer.close()


def _peak_rss_fresh_ray(sources: SourceList, out: Path, config: BuildConfig) -> int:
    """Largest worker peak RSS (bytes) of a 2-worker build on a freshly started Ray."""
    with ray_session(RayConfig(workers=2)):
        _seconds, result = _timed_build(sources, out, config, 2)
    return result.peak_worker_rss_bytes


def _best_runs(sources: SourceList, scratch: Path, config: BuildConfig) -> dict:
    """Alternate 1-worker build, 2-worker build and floor twice on a warm Ray instance; keep
    the fastest of each (the least disturbed on a shared machine)."""
    runs = {"one": [], "two": [], "floor": []}
    with ray_session(RayConfig(workers=2)):
        warmup = dataclasses.replace(config, images_per_shard=1)
        _timed_build(walk_sources(sources.root, limit=4), scratch / "warmup", warmup, 2)
        for attempt in range(2):
            for name, workers in (("one", 1), ("two", 2)):
                out = scratch / f"{name}_{attempt}"
                runs[name].append(_timed_build(sources, out, config, workers))
            built = runs["one"][-1][1]
            built_at = Path(built.manifest_path).parent
            floor = floor_seconds(sources, built_at, built.manifest, config.png_encoder)
            runs["floor"].append(floor)
    return {name: min(results, key=lambda run: run[0]) for name, results in runs.items()}


def benchmark_build(images: int, patches: int, encoder: str) -> dict[str, float]:
    """Measure the build (PNG encoder ``encoder``) against its floor and across worker counts;
    see the module docstring."""
    config = BuildConfig(
        patches_per_image=patches, images_per_shard=max(1, images // 10), png_encoder=encoder
    )
    figures: dict[str, float] = {"images": images, "patches_per_image": patches}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        sources = write_inputs(scratch / "src", images)
        figures["load_average_before"] = os.getloadavg()[0]
        best = _best_runs(sources, scratch, config)
        (one, result), (two, result_two) = best["one"], best["two"]
        floor_wall, floor_cpu = best["floor"]
        figures.update(
            load_average_after=os.getloadavg()[0],
            build_img_per_s_1_worker=images / one,
            build_img_per_s_2_workers=images / two,
            floor_img_per_s_1_core=images / floor_wall,
            build_over_floor=one / floor_wall,
            cpu_ms_per_img_1_worker=1e3 * result.worker_cpu_seconds / images,
            cpu_ms_per_img_2_workers=1e3 * result_two.worker_cpu_seconds / images,
            floor_cpu_ms_per_img=1e3 * floor_cpu / images,
            build_over_floor_cpu=result.worker_cpu_seconds / floor_cpu,
            speedup_2_over_1_workers=one / two,
            core_hours_imagenet_1k=IMAGENET_TRAIN_IMAGES * one / images / 3600,
        )
        decoded = result.manifest["images"]["decoded"]
        for name, task in result.manifest["tasks"].items():
            figures[f"gb_imagenet_1k_{name}"] = (
                task["bytes"] / decoded * IMAGENET_TRAIN_IMAGES / 1e9
            )
        for count in (images, 10 * images):
            inputs = write_inputs(scratch / f"src_{count}", count)
            peak = _peak_rss_fresh_ray(inputs, scratch / f"rss_{count}", config)
            figures[f"worker_peak_rss_mib_{count}_images"] = peak / 2**20
    return figures
