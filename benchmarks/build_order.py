"""What the build order of format 2 costs and what it buys, on ImageNet-1k-sized id lists.

    .venv/bin/python benchmarks/build_order.py [--classes 1000] [--per-class 1281]
        [--images-per-shard 1000] [--repeats 3]

Makes ``classes x per-class`` ImageNet-style ids (``n00000042/n00000042_17.JPEG``), sorted by
name as a folder walk gives them, and prints: the seconds ``SourceList.in_build_order`` takes to
put them in the seeded hash order (docs/format.md#build-order) and the seconds of the
fingerprint of the result (best of ``--repeats``, on one core, in the driver, before any chunk
runs); and how many classes a chunk of ``--images-per-shard`` images holds in name order
(format 1) and in the build order (format 2): smallest, median and largest over the full chunks.
No file is read or written.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from ipt_data import SourceList


def _best_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def _classes_per_chunk(sources: SourceList, images_per_shard: int) -> dict[str, int]:
    full = [chunk for chunk in sources.chunks(images_per_shard) if len(chunk) == images_per_shard]
    counts = [len({image_id.partition("/")[0] for image_id in chunk}) for chunk in full]
    return {"min": min(counts), "median": statistics.median(counts), "max": max(counts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=1281)
    parser.add_argument("--images-per-shard", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ids = sorted(
        f"n{label:08d}/n{label:08d}_{number}.JPEG"
        for label in range(args.classes)
        for number in range(args.per_class)
    )
    by_name = SourceList(root=Path("."), ids=tuple(ids), non_image_files=0, walked=True)
    ordered = by_name.in_build_order(0)
    figures = {
        "images": len(ids),
        "order_seconds": _best_seconds(lambda: by_name.in_build_order(0), args.repeats),
        "fingerprint_seconds": _best_seconds(lambda: ordered.fingerprint, args.repeats),
        "classes_per_chunk_format_1": _classes_per_chunk(by_name, args.images_per_shard),
        "classes_per_chunk_format_2": _classes_per_chunk(ordered, args.images_per_shard),
    }
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
