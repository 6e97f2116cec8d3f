"""`ipt-data` as a hostile user drives it: a place in use by another process, Ctrl-C part-way
through a transfer, and the promise that ``ipt_data`` never pulls in torch or ``ipt_train``."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import json
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from loopback_servers import BIN, http_server, tiny_set

from ipt_data.cli import main
from ipt_data.png import encode_png

IPT_DATA = str(BIN / "ipt-data")
# Holds a shard-set folder the way a running build or transfer does, until its stdin closes.
HOLDER = """
import sys
from ipt_data.remote import open_location, sole_writer
with sole_writer(open_location(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


class FailingShardsHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder, but answers every shard (``*.tar``) with HTTP 500."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.endswith(".tar"):
            self.send_error(500)
        else:
            super().do_GET()


@contextlib.contextmanager
def failing_shards_server(folder: Path) -> Iterator[str]:
    with served(functools.partial(FailingShardsHandler, directory=str(folder))) as url:
        yield url


@contextlib.contextmanager
def served(handler) -> Iterator[str]:
    """A threading HTTP server on loopback with this request handler; yields its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory) -> Path:
    return tiny_set(tmp_path_factory)


@contextlib.contextmanager
def held_by_another_process(folder: Path) -> Iterator[None]:
    """``folder`` held by a separate Python process (as a running build holds its output)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_ipt_data_never_imports_torch_or_ipt_train():
    """Every ipt_data module, and the CLI's help, in a fresh interpreter: no torch, no
    ipt_train, no webdataset (which imports torch)."""
    script = """
import importlib, pkgutil, sys
import ipt_data
from click.testing import CliRunner
for module in pkgutil.iter_modules(ipt_data.__path__):
    importlib.import_module(f"ipt_data.{module.name}")
from ipt_data.cli import main
for command in [[], *([name] for name in main.commands)]:
    assert CliRunner().invoke(main, [*command, "--help"]).exit_code == 0
print(sorted({name.split(".")[0] for name in sys.modules} & {"torch", "ipt_train", "webdataset"}))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_destination_in_use_by_another_transfer_is_refused(shard_set, tmp_path):
    """Two transfers into one folder swept up each other's temporary files; now the second is
    refused with one line and writes nothing."""
    dest = tmp_path / "dest"
    with held_by_another_process(dest):
        run = CliRunner().invoke(main, ["pull", str(shard_set), str(dest), "--no-progress"])
    assert run.exit_code == 1, run.output
    assert run.output.startswith(f"Error: {dest} is in use by another ipt-data build or transfer")
    assert list(dest.iterdir()) == []
    run = CliRunner().invoke(main, ["pull", str(shard_set), str(dest), "--no-progress"])
    assert run.exit_code == 0 and (dest / "manifest.json").is_file(), run.output


def test_ctrl_c_during_a_pull_is_one_error_line_and_a_rerun_resumes(shard_set, tmp_path):
    """SIGINT part-way through a pull: exit 130 with one Error line saying what was kept, no
    manifest and no temporary file; the rerun copies only the rest (was click's "Aborted!")."""
    dest = tmp_path / "dest"
    with http_server(shard_set) as server:
        server.latency = 0.4  # every request waits: the pull is still running when interrupted
        command = [IPT_DATA, "pull", server.url, str(dest), "--jobs", "1", "--no-progress"]
        pull = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not list(dest.glob("*/*.tar")) and time.monotonic() < deadline:
            time.sleep(0.05)
        pull.send_signal(signal.SIGINT)
        _, stderr = pull.communicate(timeout=60)
        assert pull.returncode == 130, stderr
        assert stderr.strip().splitlines() == [
            "Error: interrupted; the shards copied so far are kept, no manifest was written: "
            "rerun to resume"
        ]
        assert not (dest / "manifest.json").exists() and not list(dest.rglob("*.part"))
        kept = len(list(dest.glob("*/*.tar")))
        server.latency = 0
        rerun = CliRunner().invoke(main, ["pull", server.url, str(dest), "--no-progress"])
    assert rerun.exit_code == 0, rerun.output
    assert f"{kept} were already in place" in rerun.output and 1 <= kept < 6
    source = json.loads((shard_set / "manifest.json").read_bytes())
    assert json.loads((dest / "manifest.json").read_bytes()) == source


def test_a_malformed_ray_address_is_one_clear_error(shard_set, tmp_path):
    """--address that Ray cannot parse ended in Ray's ValueError traceback."""
    src = shard_set.parent / "src"  # the photographs tiny_set was built from
    command = [IPT_DATA, "build", "--src", str(src), "--out", str(tmp_path / "o"), "--address"]
    result = subprocess.run([*command, "foo"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: --address foo: Invalid address format: foo"
    )
    assert not (tmp_path / "o").exists()


def test_a_server_error_on_every_shard_is_named_shortly(shard_set, tmp_path):
    """HTTP 500 on the shards: pull names each shard with "HTTP 500 Internal Server Error" (each
    line was a ~600-character repr of aiohttp's error, request headers included), writes no
    manifest; verify reports each shard bad the same way."""
    with failing_shards_server(shard_set) as url:
        pull = CliRunner().invoke(main, ["pull", url, str(tmp_path / "d"), "--no-progress"])
        verify = CliRunner().invoke(main, ["verify", url, "--workers", "2"])
    assert pull.exit_code == 1 and pull.output.startswith("Error: 6 of 6 shards could not")
    reasons = pull.output.splitlines()[1:]
    assert len(reasons) == 6 and all(
        line.endswith("transfer failed after 3 attempts (HTTP 500 Internal Server Error)")
        and len(line) < 150
        for line in reasons
    ), pull.output
    assert not (tmp_path / "d" / "manifest.json").exists()
    assert verify.exit_code == 1 and verify.output.count("(HTTP 500 Internal Server Error)") == 6
    assert verify.output.splitlines()[-1] == "Error: 6 of 6 shards are bad"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        # a ValueError traceback from numpy, and a "no such folder" about a temporary folder
        (["bench", "--corruptions", "--patches", "-3"], "'--patches': -3 is not in the range"),
        (["bench", "--build", "--images", "0"], "'--images': 0 is not in the range"),
        (
            ["build", "--src", "{src}", "--out", "{tmp}/o", "--png-encoder", "zopfli"],
            "'zopfli' is not one of 'libdeflate', 'isal'",
        ),
        # an empty --out was taken as the current folder ("Error:  exists and is not ...")
        (["build", "--src", "{src}", "--out", ""], "an empty path or URL"),
        (["info", ""], "an empty path or URL"),
        (["pull", "", "{tmp}/d"], "an empty path or URL"),
    ],
)
def test_quick_argument_errors_are_one_clear_line(shard_set, tmp_path, arguments, message):
    filled = [arg.format(src=shard_set.parent / "src", tmp=tmp_path) for arg in arguments]
    result = CliRunner().invoke(main, filled)
    assert result.exit_code in (1, 2) and message in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert list(tmp_path.iterdir()) == []


class ThrottledHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder at about 640 kB/s: 64 kB every 0.1 s (a slow link)."""

    def log_message(self, *args) -> None:
        pass

    def copyfile(self, source, outputfile) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up
            while block := source.read(64 * 1024):
                outputfile.write(block)
                outputfile.flush()
                time.sleep(0.1)


def big_shard(samples: int) -> bytes:
    """A valid sr_x2 shard of noise patches, about 34 kB per sample (PNG cannot shrink noise)."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for index in range(samples):
            members = {
                "input.png": encode_png(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)),
                "target.png": encode_png(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)),
                "json": b"{}",
            }
            for extension, data in members.items():
                info = tarfile.TarInfo(f"k{index:04d}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_ctrl_c_stops_a_large_shard_under_way(shard_set, tmp_path):
    """Ctrl-C while a 4 MB shard crawls in at 640 kB/s: the copy under way stops within a
    block and its temporary file is removed, instead of the command waiting for the shard to
    finish (minutes for a real 500 MB shard on a slow link)."""
    site = tmp_path / "site"
    site.mkdir()
    data = big_shard(120)
    (site / "sr_x2").mkdir()
    (site / "sr_x2" / "big.tar").write_bytes(data)
    manifest = json.loads((shard_set / "manifest.json").read_bytes())
    entry = {"path": "sr_x2/big.tar", "samples": 120, "bytes": len(data)}
    entry["sha256"] = hashlib.sha256(data).hexdigest()
    manifest["tasks"] = {"sr_x2": {**manifest["tasks"]["sr_x2"], "shards": [entry]}}
    (site / "manifest.json").write_text(json.dumps(manifest))
    dest = tmp_path / "dest"
    handler = functools.partial(ThrottledHandler, directory=str(site))
    with served(handler) as url:
        command = [IPT_DATA, "pull", url, str(dest), "--no-progress"]
        pull = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not list(dest.rglob("*.part")) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # a few blocks in: ~6 s of the shard still to come
        interrupted = time.monotonic()
        pull.send_signal(signal.SIGINT)
        _, stderr = pull.communicate(timeout=60)
        waited = time.monotonic() - interrupted
    assert pull.returncode == 130 and stderr.startswith("Error: interrupted"), stderr
    assert waited < 3, f"Ctrl-C took {waited:.1f} s to end the pull"
    assert sorted(path.name for path in dest.rglob("*") if path.is_file()) == ["source.json"]


def test_a_set_named_by_its_manifest_url_is_read(shard_set, tmp_path):
    """info, verify and pull of ``<url>/manifest.json`` (what a browser shows) looked for
    ``<url>/manifest.json/manifest.json`` and said there was no manifest."""
    with http_server(shard_set) as server:
        url = f"{server.url}/manifest.json"
        info = CliRunner().invoke(main, ["info", url])
        verify = CliRunner().invoke(main, ["verify", url, "--no-progress"])
        pull = CliRunner().invoke(main, ["pull", url, str(tmp_path / "d"), "--no-progress"])
    assert info.exit_code == 0 and "sr_x2" in info.output, info.output
    assert verify.exit_code == 0 and verify.output == "OK: 6 shards, 24 samples\n"
    assert pull.exit_code == 0 and "copied 6 shards" in pull.output, pull.output
    assert (tmp_path / "d" / "manifest.json").read_bytes() == (
        shard_set / "manifest.json"
    ).read_bytes()


def test_a_server_that_goes_silent_is_a_clear_error_not_a_hang(shard_set, tmp_path, monkeypatch):
    """A server that accepts and never answers kept info silent for aiohttp's 5 minutes (a
    limit on the whole request, which also cut off large shards on slow links); now silence
    is the limit (60 s; 1 s here), the whole transfer has none. A shard that stalls half-way
    fails each attempt and is named; the other shards are copied."""
    monkeypatch.setattr("ipt_data.remote.HTTP_SILENCE_SECONDS", 1.0)
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(4)
        started = time.monotonic()
        info = CliRunner().invoke(main, ["info", f"http://127.0.0.1:{mute.getsockname()[1]}"])
        assert time.monotonic() - started < 20
    assert info.exit_code == 1 and "cannot read (timed out: nothing received for 1 s" in (
        info.output
    ), info.output
    stalled = json.loads((shard_set / "manifest.json").read_bytes())["tasks"]["sr_x2"]["shards"][0]
    with http_server(shard_set) as server:
        server.stalls.add(f"/{stalled['path']}")
        pull = CliRunner().invoke(main, ["pull", server.url, str(tmp_path / "d"), "--no-progress"])
    assert pull.exit_code == 1 and pull.output.startswith("Error: 1 of 6 shards could not")
    assert f"{stalled['path']}: transfer failed after 3 attempts (timed out:" in pull.output
    assert len(list((tmp_path / "d").glob("*/*.tar"))) == 5
