"""Real servers on 127.0.0.1 for the remote-set tests, and the tiny shard set they serve.

* :func:`http_server`: Python's http.server in a thread, serving a folder; it counts GETs per
  path, can drop the connection half-way through chosen files (``server.drops``), answer 503
  instead (``server.unavailable``), serve other bytes once a drop is done (``server.changed``),
  or stall half-way until released (``server.stalls``), and can wait ``server.latency``
  seconds before answering each request (a distant object store's time to first byte).
* :func:`s3_server`: moto's S3-compatible server in a thread, emptied, with dummy credentials and
  its endpoint in ``AWS_*`` variables for the duration.
* :func:`free_port`: a TCP port nobody listens on now (for Ray, torchrun and their kin).
* :func:`tiny_set`: a shard set built once per test session by ``ipt-data build`` (real Ray) from
  the sample photographs: tasks sr_x2 and denoise_30, 2 patches per image, 3 shards per task.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self.server.hits[self.path] += 1
        time.sleep(self.server.latency)
        if self.server.unavailable.get(self.path, 0) > 0:
            self.server.unavailable[self.path] -= 1
            self.send_error(503, "Service Unavailable")
            return
        if self.path in self.server.changed and not self.server.drops.get(self.path):
            data = self.server.changed[self.path]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        super().do_GET()

    def do_HEAD(self) -> None:
        time.sleep(self.server.latency)
        super().do_HEAD()

    def copyfile(self, source, outputfile) -> None:
        dropped = self.server.drops.get(self.path, 0) > 0
        if dropped or self.path in self.server.stalls:
            half = source.read(os.fstat(source.fileno()).st_size // 2)
            for start in range(0, len(half), 1 << 16):  # in pieces, as a network delivers,
                outputfile.write(half[start : start + (1 << 16)])  # so the client reads
                outputfile.flush()  # most of the half before it learns of the drop
                time.sleep(0.002)
        if dropped:
            self.server.drops[self.path] -= 1
            self.close_connection = True  # the client was promised the whole file
            return
        if self.path in self.server.stalls:
            self.server.stalled.set()
            self.server.release.wait(timeout=60)
        super().copyfile(source, outputfile)


class LoopbackHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, folder: Path) -> None:
        super().__init__(("127.0.0.1", 0), functools.partial(_Handler, directory=str(folder)))
        self.hits: Counter[str] = Counter()
        self.drops: dict[str, int] = {}  # path -> how many more GETs to cut off half-way
        self.unavailable: dict[str, int] = {}  # path -> how many more GETs to answer 503
        self.changed: dict[str, bytes] = {}  # path -> bytes served once its drops are done
        self.stalls: set[str] = set()  # paths whose GETs send half, then wait for `release`
        self.stalled, self.release = threading.Event(), threading.Event()
        self.latency = 0.0  # seconds each request waits before it is answered
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request, client_address) -> None:
        pass  # a client killed or cut off mid-response is what these tests do on purpose


@contextlib.contextmanager
def http_server(folder: Path) -> Iterator[LoopbackHTTPServer]:
    server = LoopbackHTTPServer(folder)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextlib.contextmanager
def s3_server(bucket: str) -> Iterator[str]:
    """Yields the endpoint of a fresh moto S3 server holding an empty ``bucket``."""
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto keeps its buckets in memory per process, shared by every server started in it
    reset = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    urllib.request.urlopen(reset, timeout=10).close()
    settings = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in settings.items():
                patch.setenv(name, value)
            s3fs.S3FileSystem.clear_instance_cache()  # no client bound to an older endpoint
            s3fs.S3FileSystem().mkdir(bucket)
            yield endpoint
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny shard set (built on first use); callers must not modify it."""
    root = tmp_path_factory.getbasetemp() / "tiny_shard_set"
    out = root / "set"
    if not (out / "manifest.json").is_file():
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run([BIN / "ipt-data", "sample", str(root / "src")], check=True, timeout=120)
        command = [BIN / "ipt-data", "build", "--src", str(root / "src"), "--out", str(out)]
        options = "--tasks sr_x2,denoise_30 --patches-per-image 2 --images-per-shard 2"
        command += [*options.split(), "--workers", "1", "--no-progress"]
        subprocess.run(command, check=True, timeout=300, capture_output=True)
    return out


def copy_set(source: Path, dest: Path) -> Path:
    """A private, modifiable copy of a shard set (manifest and shards only)."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("_build"))
    return dest
