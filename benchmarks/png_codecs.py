"""PNG encoders and decoders side by side on the build's patches, on one core.

    .venv/bin/python benchmarks/png_codecs.py [--repeats 7] [--candidates isal,zlib-ng,fpng,pyspng]

The input of one round is what the build encodes per source image: the 96 PNGs of 8 pairs x 6
tasks (48x48 inputs; 96², 144², 192², 48², 48² targets; 2.10 MB of pixels) cut by the real
``cut_pairs`` from each of the six sample photographs at 500x375, JPEG quality 90 (the input of
``ipt-data bench``). For every encoder it prints the ms per source image to encode them, the
speed-up over the build's former encoder (OpenCV at zlib level 1), the bytes against that
encoder's, and the ms to decode them with ``cv2.imdecode`` (what the loader did),
``ipt_data.png.decode_png`` and, with ``--candidates pyspng``, ``pyspng.load``; then the
loader's unit, one sr_x4 sample (a 48² input and a 192² target), decoded as before and as now,
and the chosen encoder's bytes per task. Every output is first checked to decode to exactly its
pixels through OpenCV, Pillow, webdataset's ``decode("rgb8")`` handler and ``decode_png``; a
mismatch is printed and makes the exit status 1.

Timings are medians over ``--repeats`` rounds x 6 images, each round running every codec in
turn (interleaved), OpenCV and the BLAS pools limited to one thread, so that load from elsewhere
hits all codecs alike; compare ratios across machines rather than milliseconds.

``--candidates`` adds codecs from packages that are not the project's dependencies, each
written with the PNG framing of ``ipt_data.png`` (``isal``: ISA-L level 1, Up and Sub filters;
``zlib-ng``: level 1, Up, with the default strategy, run-lengths only and Huffman codes only;
``fpng``: its own encoder; ``pyspng``: a decoder). Install them first (``pip install isal
zlib-ng fpng pyspng``); a named candidate that cannot be imported is an error.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import io
import os
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import deflate
import numpy as np
from PIL import Image

from ipt_data import (
    TASKS,
    cpu_model,
    cut_pairs,
    decode_image,
    decode_png,
    encode_image,
    encode_png,
)
from ipt_data.bench import one_core
from ipt_data.png import assemble_png, encoder_identity, up_filtered
from ipt_data.sample import imagenet_like_jpegs

# The shard writer's settings before ipt_data.png: OpenCV (libpng) at zlib level 1, default
# strategy, libpng's adaptive filters. The baseline every ratio is taken against.
OPENCV_LEVEL_1 = (cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, 0)
BASELINE = "OpenCV, zlib level 1 (the build before)"
CHOSEN = "ipt-png: Up + libdeflate 1 (chosen)"
PAIRS_PER_TASK = 8
CANDIDATES = ("isal", "zlib-ng", "fpng", "pyspng")

Encode = Callable[[np.ndarray], bytes]
Decode = Callable[[bytes], np.ndarray]


@dataclass(frozen=True)
class Patches:
    """One source image's PNG inputs: task name -> its pairs' images (input, target, ...)."""

    by_task: dict[str, list[np.ndarray]]

    @property
    def images(self) -> list[np.ndarray]:
        return [image for images in self.by_task.values() for image in images]


def source_patches() -> list[Patches]:
    """The 96 images per sample photograph that a build PNG-encodes (8 pairs x 6 tasks)."""
    sources = []
    for number, jpeg in enumerate(imagenet_like_jpegs().values()):
        image = decode_image(jpeg, "bench.jpg")
        by_task = {}
        for task in TASKS.values():
            pairs = cut_pairs(image, task, np.random.default_rng(number), PAIRS_PER_TASK)
            by_task[task.name] = [side for pair in pairs for side in (pair.input, pair.target)]
        sources.append(Patches(by_task))
    return sources


def sub_filtered(pixels: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> PNG scanlines with filter type 1 (Sub): each byte minus the byte of the
    pixel to its left, modulo 256 (a candidate next to ipt_data.png's Up)."""
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, width * 3)
    scanlines = np.empty((height, width * 3 + 1), np.uint8)
    scanlines[:, 0] = 1
    scanlines[:, 1:4] = rows[:, :3]
    np.subtract(rows[:, 3:], rows[:, :-3], out=scanlines[:, 4:])
    return scanlines


def png_writer(
    scanlines: Callable[[np.ndarray], np.ndarray], compress: Callable[[np.ndarray], bytes]
) -> Encode:
    """An encoder: ``scanlines`` filters the pixels, ``compress`` makes their zlib stream, and
    ipt_data.png frames it."""

    def encode(pixels: np.ndarray) -> bytes:
        return assemble_png(pixels.shape[0], pixels.shape[1], compress(scanlines(pixels)))

    return encode


def opencv_decode(data: bytes) -> np.ndarray:
    """What the loader did: cv2.imdecode to BGR, then a view in RGB order."""
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]


def codecs(candidates: list[str]) -> tuple[dict[str, Encode], dict[str, Decode], list[str]]:
    """(encoders, decoders, the version line of every library) for the project's codecs and
    the named candidates."""
    encoders: dict[str, Encode] = {
        BASELINE: lambda pixels: encode_image(pixels, ".png", OPENCV_LEVEL_1),
        "OpenCV, no parameters": lambda pixels: encode_image(pixels, ".png"),
        CHOSEN: encode_png,
        "Up + libdeflate 2": png_writer(
            up_filtered, functools.partial(deflate.zlib_compress, compresslevel=2)
        ),
        "Sub + libdeflate 1": png_writer(
            sub_filtered, functools.partial(deflate.zlib_compress, compresslevel=1)
        ),
        "Up + zlib 1 (Python's zlib)": png_writer(
            up_filtered, functools.partial(zlib.compress, level=1)
        ),
    }
    decoders: dict[str, Decode] = {"cv2.imdecode": opencv_decode, "decode_png": decode_png}
    versions = [
        f"OpenCV {cv2.__version__}, deflate {deflate.__version__}, Python zlib "
        f"{zlib.ZLIB_RUNTIME_VERSION}, NumPy {np.__version__}",
        f"encoder identity: {encoder_identity()}",
    ]
    for name in candidates:
        module = _import_candidate(name)
        versions.append(f"{name} {getattr(module, '__version__', '(no version attribute)')}")
        if name == "isal":
            compress = functools.partial(module.isal_zlib.compress, level=1)
            encoders["Up + ISA-L 1"] = png_writer(up_filtered, compress)
            encoders["Sub + ISA-L 1"] = png_writer(sub_filtered, compress)
        elif name == "zlib-ng":
            compress = functools.partial(module.zlib_ng.compress, level=1)
            encoders["Up + zlib-ng 1"] = png_writer(up_filtered, compress)
            for strategy in ("Z_RLE", "Z_HUFFMAN_ONLY"):
                compress = functools.partial(_compress_with_strategy, module.zlib_ng, strategy)
                encoders[f"Up + zlib-ng 1, {strategy}"] = png_writer(up_filtered, compress)
        elif name == "fpng":
            encoders["fpng"] = module.from_ndarray
        else:
            decoders["pyspng.load"] = module.load
    return encoders, decoders, versions


def _compress_with_strategy(library, strategy: str, data: np.ndarray) -> bytes:
    """A zlib stream at level 1 with a zlib strategy: run-lengths only (matches at distance
    one, what OpenCV's default PNG setting uses) or Huffman codes only (no matches)."""
    compressor = library.compressobj(1, library.DEFLATED, 15, 9, getattr(library, strategy))
    return compressor.compress(data) + compressor.flush()


def _import_candidate(name: str):
    module_name = {"isal": "isal.isal_zlib", "zlib-ng": "zlib_ng.zlib_ng"}.get(name, name)
    try:
        importlib.import_module(module_name)
    except ImportError as error:
        raise SystemExit(f"Error: --candidates {name}: {error}; pip install {name} first") from None
    return importlib.import_module(name.replace("-", "_"))


def mismatches(
    encoded: dict[str, list[dict[str, list[bytes]]]], sources: list[Patches]
) -> list[str]:
    """Every (encoder, reader) whose decoding of some output is not exactly its pixels."""
    from webdataset.autodecode import ImageHandler  # imports torch: only when checking

    webdataset_rgb8 = ImageHandler("rgb8")
    readers: dict[str, Decode] = {
        "OpenCV": opencv_decode,
        "Pillow": lambda data: np.asarray(Image.open(io.BytesIO(data)).convert("RGB")),
        "webdataset rgb8": lambda data: webdataset_rgb8("x.png", data),
        "decode_png": decode_png,
    }
    bad = []
    for name, per_source in encoded.items():
        outputs = [
            (data, pixels)
            for files, patches in zip(per_source, sources, strict=True)
            for task, images in patches.by_task.items()
            for data, pixels in zip(files[task], images, strict=True)
        ]
        for reader, decode in readers.items():
            if not all(np.array_equal(decode(data), pixels) for data, pixels in outputs):
                bad.append(f"{name} through {reader}")
    return bad


@dataclass(frozen=True)
class Results:
    """What one run measured; ms are medians (see the module doc)."""

    task_bytes: dict[tuple[str, str], int]  # (encoder, task) -> bytes over all source images
    encode_ms: dict[str, float]  # encoder -> ms per source image
    decode_ms: dict[tuple[str, str, str], float]  # (encoder, decoder, task) -> ms per image
    mismatches: list[str]  # "(encoder) through (reader)" for every output not bit-exact

    def bytes(self, encoder: str, tasks: list[str]) -> int:
        return sum(self.task_bytes[(encoder, task)] for task in tasks)


def run(
    encoders: dict[str, Encode], decoders: dict[str, Decode], sources: list[Patches], repeats: int
) -> Results:
    """Encode everything, check it, then time it all, interleaved as the module doc says."""
    encoded = {
        name: [_by_task(encode, patches) for patches in sources]
        for name, encode in encoders.items()
    }
    task_bytes = {
        (name, task): sum(len(data) for files in per_source for data in files[task])
        for name, per_source in encoded.items()
        for task in sources[0].by_task
    }
    bad = mismatches(encoded, sources)
    encode_times: dict[str, list[float]] = {name: [] for name in encoders}
    decode_times: dict[tuple[str, str, str], list[float]] = {}
    with one_core():
        for _ in range(repeats):
            for name, encode in encoders.items():
                for patches in sources:
                    encode_times[name].append(_seconds(encode, patches.images))
            for name in encoders:
                for decoder, decode in decoders.items():
                    for files in encoded[name]:
                        for task, block in files.items():
                            seconds = _seconds(decode, block)
                            decode_times.setdefault((name, decoder, task), []).append(seconds)
    return Results(
        task_bytes,
        {name: 1e3 * statistics.median(times) for name, times in encode_times.items()},
        {key: 1e3 * statistics.median(times) for key, times in decode_times.items()},
        bad,
    )


def _by_task(encode: Encode, patches: Patches) -> dict[str, list[bytes]]:
    return {task: [encode(image) for image in images] for task, images in patches.by_task.items()}


def _seconds(function: Callable, items: list) -> float:
    """Seconds to call ``function`` on each of ``items`` in turn."""
    start = time.perf_counter()
    for item in items:
        function(item)
    return time.perf_counter() - start


def report(results: Results, encoders: list[str], decoders: list[str], tasks: list[str]) -> str:
    """The table, the loader's sr_x4 sample, the chosen encoder's bytes per task, the check."""
    lines = [
        "| encoder | encode ms / image | speed-up | bytes | "
        + " | ".join(f"decode ms / image, {decoder}" for decoder in decoders)
        + " |",
        "|---|---:|---:|---:|" + "---:|" * len(decoders),
    ]
    baseline_ms, baseline_bytes = results.encode_ms[BASELINE], results.bytes(BASELINE, tasks)
    for name in encoders:
        decode = [sum(results.decode_ms[(name, d, task)] for task in tasks) for d in decoders]
        encode_ms = results.encode_ms[name]
        lines.append(
            f"| {name} | {encode_ms:.2f} | {baseline_ms / encode_ms:.2f}"
            f" | {results.bytes(name, tasks) / baseline_bytes:.3f} | "
            + " | ".join(f"{ms:.2f}" for ms in decode)
            + " |"
        )
    before = results.decode_ms[(BASELINE, "cv2.imdecode", "sr_x4")] / PAIRS_PER_TASK
    after = results.decode_ms[(CHOSEN, "decode_png", "sr_x4")] / PAIRS_PER_TASK
    per_task = ", ".join(
        f"{task} {results.bytes(CHOSEN, [task]) / results.bytes(BASELINE, [task]):.3f}"
        for task in tasks
    )
    return "\n".join(
        [
            *lines,
            "",
            "speed-up and bytes: against the first row.",
            f"sr_x4 sample (48² input + 192² target) decode: {1e3 * before:.0f} µs before "
            f"(first row's files, cv2.imdecode), {1e3 * after:.0f} µs now (chosen encoder's "
            f"files, decode_png): {before / after:.2f}× faster",
            f"bytes of the chosen encoder against the first row, per task: {per_task}",
            "bit-exact through OpenCV, Pillow, webdataset rgb8 and decode_png: "
            + (
                "every output" if not results.mismatches else "NO: " + "; ".join(results.mismatches)
            ),
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument(
        "--candidates", default="", help=f"comma-separated, any of: {', '.join(CANDIDATES)}"
    )
    args = parser.parse_args()
    candidates = [name for name in args.candidates.split(",") if name]
    unknown = sorted(set(candidates) - set(CANDIDATES))
    if unknown:
        parser.error(f"unknown candidate(s) {', '.join(unknown)}; known: {', '.join(CANDIDATES)}")
    encoders, decoders, versions = codecs(candidates)
    sources = source_patches()
    load_before = os.getloadavg()[0]
    results = run(encoders, decoders, sources, args.repeats)
    print(f"cpu: {cpu_model()}")
    print("\n".join(versions))
    print(
        f"{len(sources)} source images x {len(sources[0].images)} PNGs "
        f"({sum(image.nbytes for image in sources[0].images):,} bytes of pixels each), "
        f"{args.repeats} interleaved rounds, one thread; 1-minute load average "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after\n"
    )
    print(report(results, list(encoders), list(decoders), list(sources[0].by_task)))
    return 1 if results.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
