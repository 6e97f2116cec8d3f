"""`ipt-data build` as a user runs it: a build killed with SIGKILL part-way and rerun, and a build
through `--address` on a real two-node Ray cluster on this machine (one of its workers killed
mid-task), both give the bytes of an uninterrupted local build."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from loopback_servers import free_port
from test_build import make_source_tree, shard_hashes

IPT_DATA = str(Path(sys.executable).parent / "ipt-data")
RAY = str(Path(sys.executable).parent / "ray")
BUILD_OPTIONS = ["--patches-per-image", "2", "--images-per-shard", "1", "--no-progress"]
CHUNKS = 15  # one per image with an image extension in make_source_tree
# The test cluster is private to this test: no auth token to share between its processes.
CLUSTER_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory, sample_photos) -> Path:
    return make_source_tree(tmp_path_factory.mktemp("src"), sample_photos)


def _start_group(command: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start ``command`` as the leader of a new process group (killed as a group later)."""
    with open(log, "wb") as output:
        return subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the group this test started (the process and everything it spawned)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _done_chunks(out: Path) -> int:
    return len(list((out / "_build").glob("chunk-*.json")))


def _build(tree: Path, out: Path, *extra: str, env: dict | None = None) -> str:
    command = [IPT_DATA, "build", "--src", str(tree), "--out", str(out), *BUILD_OPTIONS, *extra]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Token authentication" not in result.stderr  # Ray's warning, in every build's output
    return result.stdout


@pytest.fixture(scope="module")
def killed_and_resumed(tree, tmp_path_factory) -> tuple[Path, str]:
    """A one-worker build SIGKILLed (driver and local Ray) after its first chunks, then rerun;
    returns the output and the rerun's summary. (A Ray worker leads its own process group, so
    the chunk it was running may still finish after the kill: its files are complete either way.)
    """
    out = tmp_path_factory.mktemp("killed") / "set"
    command = [IPT_DATA, "build", "--src", str(tree), "--out", str(out), "--workers", "1"]
    build = _start_group(command + BUILD_OPTIONS, out.parent / "build.log")
    try:
        _wait_for(lambda: _done_chunks(out) >= 2 or build.poll() is not None, 120, "2 chunks")
    finally:
        _kill_group(build)
    return out, _build(tree, out, "--workers", "2")


@pytest.fixture(scope="module")
def uninterrupted(tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "set"
    _build(tree, out, "--workers", "2")
    return out


def test_killed_build_resumes_to_the_uninterrupted_bytes(killed_and_resumed, uninterrupted):
    out, summary = killed_and_resumed
    run_now, done_before = map(
        int, re.search(r"built (\d+) of 15 .*\((\d+) were", summary).groups()
    )
    assert 2 <= done_before < CHUNKS, "the kill must land part-way through the build"
    assert run_now + done_before == CHUNKS
    assert not list(out.glob("*/.*.part"))  # temporary files (layout.PARTIAL_SUFFIX)
    result = subprocess.run([IPT_DATA, "verify", str(out)], capture_output=True, text=True)
    assert result.returncode == 0 and "OK: 90 shards" in result.stdout, result.stdout
    assert (out / "manifest.json").read_bytes() == (uninterrupted / "manifest.json").read_bytes()
    assert shard_hashes(out) == shard_hashes(uninterrupted)


@pytest.mark.parametrize(
    ("stop", "status", "head"),
    [
        pytest.param(lambda pid: os.killpg(pid, signal.SIGINT), 130, "interrupted", id="ctrl-c"),
        pytest.param(
            lambda pid: os.kill(pid, signal.SIGTERM), 143, "stopped by SIGTERM", id="sigterm"
        ),
    ],
)
def test_interrupted_then_rerun_resumes_to_the_uninterrupted_bytes(
    tree, uninterrupted, tmp_path, stop, status, head
):
    """SIGINT to the build's process group (a terminal's Ctrl-C), or SIGTERM to the build (a
    scheduler's time limit), after its first chunks: one Error line saying what was kept, exit
    128 + the signal (130, 143), no manifest; the rerun finishes the same bytes. (Before:
    click's bare "Aborted!" with exit 1; for SIGTERM, Ray's stack report and exit 15.)"""
    out = tmp_path / "set"
    command = [IPT_DATA, "build", "--src", str(tree), "--out", str(out), "--workers", "1"]
    build = _start_group(command + BUILD_OPTIONS, tmp_path / "build.log")
    try:
        _wait_for(lambda: _done_chunks(out) >= 2 or build.poll() is not None, 120, "2 chunks")
        stop(build.pid)
        assert build.wait(timeout=60) == status
    finally:
        _kill_group(build)
    log = (tmp_path / "build.log").read_text()
    assert "Traceback" not in log and log.strip().splitlines()[-1] == (
        f"Error: {head}; the chunks finished so far are kept, no manifest was written: "
        "rerun to resume"
    )
    assert not (out / "manifest.json").exists() and _done_chunks(out) < CHUNKS
    summary = _build(tree, out, "--workers", "1")
    assert "were done before" in summary and not list(out.glob("*/.*.part"))
    assert (out / "manifest.json").read_bytes() == (uninterrupted / "manifest.json").read_bytes()
    assert shard_hashes(out) == shard_hashes(uninterrupted)


@pytest.fixture()
def two_node_cluster(tmp_path):
    """`ray start --head` plus a second `ray start --address`, one CPU each, separate ports;
    both process groups are killed at teardown whatever happens."""
    port = free_port()
    common = ["--block", "--num-cpus=1", "--object-store-memory=100000000"]
    common += ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    nodes = []
    try:
        for index, role in enumerate(
            [
                ["--head", f"--port={port}", "--include-dashboard=false"],
                [f"--address=127.0.0.1:{port}"],
            ]
        ):
            ports = [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"]
            ports.append(f"--dashboard-agent-listen-port={free_port()}")
            log = tmp_path / f"node{index}.log"
            nodes.append(_start_group([RAY, "start", *role, *common, *ports], log, CLUSTER_ENV))
            _wait_for(lambda log=log: b"block forever" in log.read_bytes(), 120, f"node {index}")
        yield f"127.0.0.1:{port}", nodes
    finally:
        for node in reversed(nodes):
            _kill_group(node)
        _forget_cluster(port)


def _forget_cluster(port: int) -> None:
    """`ray start --head` records its address for a later bare `ray.init()`; remove that record
    when it names this test's (now dead) cluster, so that nobody tries to join it."""
    record = Path("/tmp/ray/ray_current_cluster")
    try:
        if record.read_text().strip().endswith(f":{port}"):
            record.unlink()
    except OSError:
        pass


def _kill_one_running_task(nodes: list[subprocess.Popen]) -> bool:
    """SIGKILL one Ray worker process of this cluster while it runs a chunk. Ray workers lead
    their own process group; their parent, a raylet, is in one of the nodes' groups."""
    groups = {node.pid for node in nodes}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "cmdline").read_bytes().startswith(b"ray::run_chunk_reporting"):
                continue
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if os.getpgid(parent) in groups:
                os.kill(int(entry.name), signal.SIGKILL)
                return True
        except (OSError, ValueError):
            continue
    return False


def test_two_node_cluster_build_gives_the_same_bytes(
    two_node_cluster, uninterrupted, tree, tmp_path
):
    address, nodes = two_node_cluster
    out = tmp_path / "cluster"
    command = [IPT_DATA, "build", "--src", str(tree), "--out", str(out), "--address", address]
    build = _start_group(command + BUILD_OPTIONS, tmp_path / "build.log", CLUSTER_ENV)
    try:
        _wait_for(lambda: _done_chunks(out) >= 1, 120, "the first chunk on the cluster")
        _wait_for(lambda: _kill_one_running_task(nodes), 60, "a running task to kill")
        assert build.wait(timeout=300) == 0, (tmp_path / "build.log").read_text()
    finally:
        _kill_group(build)
    reference = uninterrupted
    assert (out / "manifest.json").read_bytes() == (reference / "manifest.json").read_bytes()
    assert shard_hashes(out) == shard_hashes(reference)
    assert "will be retried" in (tmp_path / "build.log").read_text()
    temporaries = list(out.glob("*/.*.part"))  # layout.PARTIAL_SUFFIX
    assert not temporaries, "the killed worker's temporaries are cleaned up"
