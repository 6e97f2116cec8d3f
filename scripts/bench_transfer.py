"""Time ``ipt-data pull`` over the tests' real loopback HTTP server, with a per-request latency
standing in for a distant object store, at several ``--jobs`` values in one run.

    .venv/bin/python scripts/bench_transfer.py [--latency 0.05] [--jobs 1,8] [--repeats 3]
        [--stats-files N]

The shard set is built once (cached under --work) by the real ``ipt-data build`` from the
sample photographs, one image per shard: 6 images x 6 tasks = 36 small shards, so the time is
dominated by requests, as it is for a large set on S3. Prints seconds per pull (best of
--repeats) and each one's speed-up over the first --jobs value. With --stats-files N it also
times how the build reads the stats files of N chunks done before (a resumed build's manifest):
one request at a time, as it did, against :func:`ipt_data.remote.read_many`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from loopback_servers import BIN, http_server  # noqa: E402

from ipt_data.remote import open_location, read_bytes, read_many  # noqa: E402
from ipt_data.transfer import pull  # noqa: E402


def build_set(work: Path) -> Path:
    out = work / "set"
    if not (out / "manifest.json").is_file():
        shutil.rmtree(work, ignore_errors=True)
        sample = [BIN / "ipt-data", "sample", str(work / "src")]
        subprocess.run(sample, check=True, capture_output=True)
        build = [BIN / "ipt-data", "build", "--src", str(work / "src"), "--out", str(out)]
        build += ["--images-per-shard", "1", "--patches-per-image", "2", "--no-progress"]
        subprocess.run(build, check=True, capture_output=True)
    return out


def timed_pull(url: str, jobs: int | None) -> float:
    with tempfile.TemporaryDirectory(prefix="ipt-bench-pull-") as scratch:
        start = time.perf_counter()
        result = pull(url, Path(scratch) / "copy", **({} if jobs is None else {"jobs": jobs}))
        seconds = time.perf_counter() - start
    assert result.skipped == 0 and result.copied > 0
    return seconds


def time_stats_reads(files: int, latency: float) -> None:
    with tempfile.TemporaryDirectory(prefix="ipt-bench-stats-") as scratch:
        names = [f"_build/chunk-{index:06d}.json" for index in range(files)]
        Path(scratch, "_build").mkdir()
        for index, name in enumerate(names):
            Path(scratch, name).write_text(f'{{"chunk": {index}}}')
        with http_server(Path(scratch)) as server:
            server.latency = latency
            location = open_location(server.url)
            start = time.perf_counter()
            one_by_one = [read_bytes(location, name) for name in names]
            middle = time.perf_counter()
            together = read_many(location, names)
            end = time.perf_counter()
    assert one_by_one == together
    before, after = middle - start, end - middle
    print(
        f"{files} stats files, {latency * 1000:.0f} ms per request: one at a time {before:.2f} s, "
        f"read_many {after:.2f} s (x{before / after:.1f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per request")
    parser.add_argument("--jobs", default="1,8", help="comma-separated; 'default': no --jobs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stats-files", type=int, default=0, help="also time stats reads")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ipt-bench-xfer")
    args = parser.parse_args()
    shard_set = build_set(args.work)
    shards = len(list(shard_set.rglob("*.tar")))
    settings = [None if part == "default" else int(part) for part in args.jobs.split(",")]
    with http_server(shard_set) as server:
        server.latency = args.latency
        best = {
            jobs: min(timed_pull(server.url, jobs) for _ in range(args.repeats))
            for jobs in settings
        }
    print(f"pull of {shards} shards over loopback HTTP, {args.latency * 1000:.0f} ms per request")
    reference = best[settings[0]]
    for jobs, seconds in best.items():
        print(f"jobs {jobs or 'default'}: {seconds:.2f} s (x{reference / seconds:.2f})")
    if args.stats_files:
        time_stats_reads(args.stats_files, args.latency)


if __name__ == "__main__":
    main()
