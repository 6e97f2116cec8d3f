"""Time ``ipt-data pull`` over a loopback HTTP server with a per-request latency standing in for a
distant object store, at several ``--jobs`` values in one run.

    .venv/bin/python benchmarks/transfer.py [--latency 0.05] [--jobs 1,8] [--repeats 3]
        [--stats-files N]

The shard set is built once (cached under --work) by the real ``ipt-data build`` from the
sample photographs, one image per shard: 6 images x 6 tasks = 36 small shards, so the time is
dominated by requests, as it is for a large set on S3. Prints seconds per pull (best of
--repeats) and each one's speed-up over the first --jobs value. With --stats-files N it also
times how the build reads the stats files of N chunks done before (a resumed build's manifest):
one request at a time against :func:`ipt_data.remote.read_many`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ipt_data import cpu_model
from ipt_data.remote import open_location, read_bytes, read_many
from ipt_data.transfer import pull

BIN = Path(sys.executable).parent


class SlowHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder, answering each request ``server.latency`` seconds late."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        time.sleep(self.server.latency)
        super().do_GET()

    def do_HEAD(self) -> None:
        time.sleep(self.server.latency)
        super().do_HEAD()


@contextlib.contextmanager
def slow_http_server(folder: Path, latency: float) -> Iterator[str]:
    """Yields the URL of a threaded HTTP server on 127.0.0.1 serving ``folder``."""
    handler = functools.partial(SlowHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads, server.latency = True, latency
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


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
        with slow_http_server(Path(scratch), latency) as url:
            location = open_location(url)
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
    with slow_http_server(shard_set, args.latency) as url:
        best = {jobs: min(timed_pull(url, jobs) for _ in range(args.repeats)) for jobs in settings}
    print(f"cpu: {cpu_model()}")
    print(f"pull of {shards} shards over loopback HTTP, {args.latency * 1000:.0f} ms per request")
    reference = best[settings[0]]
    for jobs, seconds in best.items():
        print(f"jobs {jobs or 'default'}: {seconds:.2f} s (x{reference / seconds:.2f})")
    if args.stats_files:
        time_stats_reads(args.stats_files, args.latency)


if __name__ == "__main__":
    main()
