"""``ipt-data`` commands stopped by a signal, as a scheduler stops them: SIGTERM ends ``pull``
(real HTTP on loopback) and ``verify`` (its processes, and its threads on a remote set)
promptly, in one ``Error:`` line saying how to go on, with exit status 143; the rerun of the
pull gives the bytes of an uninterrupted one. After ``kill -9`` of ``verify`` or of ``build``
(a real local Ray instance), none of their processes is left. (``build`` stopped by SIGTERM and
rerun: tests/test_build_cli.py.)"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from loopback_servers import BIN, http_server, tiny_set
from test_build import make_source_tree
from test_data_cli_errors import big_shard
from test_train import descendants

IPT_DATA = str(BIN / "ipt-data")
BIG_SHARDS = 400  # hard links to one 4 MB shard: several seconds of checking on two processes


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory) -> Path:
    return tiny_set(tmp_path_factory)


@pytest.fixture(scope="module")
def big_set(tmp_path_factory, shard_set) -> Path:
    """A set of BIG_SHARDS sr_x2 shards of 120 noise samples each (hard links to one file)."""
    root = tmp_path_factory.mktemp("big") / "set"
    (root / "sr_x2").mkdir(parents=True)
    data = big_shard(120)
    (root / "shard.bin").write_bytes(data)
    entry = {"samples": 120, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    shards = []
    for index in range(BIG_SHARDS):
        path = f"sr_x2/sr_x2-{index:06d}.tar"
        os.link(root / "shard.bin", root / path)
        shards.append({"path": path, **entry})
    (root / "shard.bin").unlink()
    manifest = json.loads((shard_set / "manifest.json").read_bytes())
    task = manifest["tasks"]["sr_x2"]
    task.update(shards=shards, samples=120 * BIG_SHARDS, bytes=len(data) * BIG_SHARDS)
    manifest["tasks"] = {"sr_x2": task}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def start(command: list, log: Path) -> subprocess.Popen:
    """``command`` leading a process group of its own (signalled as a group, as a terminal or a
    scheduler does), its output in ``log``."""
    with open(log, "wb") as output:
        return subprocess.Popen(command, stdout=output, stderr=output, start_new_session=True)


def wait_until(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def still_running(pids: list[int], within: float) -> list[int]:
    deadline = time.monotonic() + within
    while (alive := [pid for pid in pids if Path(f"/proc/{pid}").exists()]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
    return alive


def stop_and_wait(process: subprocess.Popen, signum: int) -> float:
    """Send ``signum`` to the process; the seconds it took to end."""
    sent = time.monotonic()
    process.send_signal(signum)
    process.wait(timeout=60)
    return time.monotonic() - sent


def test_sigterm_stops_a_pull_and_the_rerun_gives_the_same_bytes(shard_set, tmp_path):
    dest = tmp_path / "dest"
    with http_server(shard_set) as server:
        server.latency = 0.4  # every request waits: the pull is still running when stopped
        command = [IPT_DATA, "pull", server.url, str(dest), "--jobs", "1", "--no-progress"]
        pull = start(command, tmp_path / "pull.log")
        wait_until(lambda: list(dest.glob("*/*.tar")), "the first shard")
        waited = stop_and_wait(pull, signal.SIGTERM)
        assert pull.returncode == 143 and waited < 3
        assert (tmp_path / "pull.log").read_text().strip().splitlines() == [
            "Error: stopped by SIGTERM; the shards copied so far are kept, no manifest was "
            "written: rerun to resume"
        ]
        assert not (dest / "manifest.json").exists() and not list(dest.rglob("*.part"))
        kept = len(list(dest.glob("*/*.tar")))
        server.latency = 0
        rerun = [IPT_DATA, "pull", server.url, str(dest), "--no-progress"]
        rerun = subprocess.run(rerun, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{kept} were already in place" in rerun.stdout and 1 <= kept < 6
    manifest = (shard_set / "manifest.json").read_bytes()
    assert (dest / "manifest.json").read_bytes() == manifest
    for task in json.loads(manifest)["tasks"].values():
        for shard in task["shards"]:
            copy, original = dest / shard["path"], shard_set / shard["path"]
            assert copy.read_bytes() == original.read_bytes(), shard["path"]
    assert not list(dest.rglob("*.part")) and not (dest / "_transfer").exists()


@pytest.mark.parametrize(
    ("signum", "status", "head"),
    [(signal.SIGTERM, 143, "stopped by SIGTERM"), (signal.SIGINT, 130, "interrupted")],
    ids=["sigterm", "ctrl-c"],
)
def test_a_signal_to_verify_and_its_processes_ends_it_at_once(
    big_set, tmp_path, signum, status, head
):
    """The signal goes to verify's whole process group (a terminal's Ctrl-C, a scheduler's
    SIGTERM): the main process stops the checks, its processes end with it, nobody prints a
    traceback (they printed one each; SIGTERM left them running, holding the terminal)."""
    command = [IPT_DATA, "verify", str(big_set), "--workers", "2", "--no-progress"]
    verify = start(command, tmp_path / "verify.log")
    wait_until(lambda: len(descendants(verify.pid)) >= 2, "the checking processes")
    time.sleep(0.2)
    helpers = descendants(verify.pid)
    sent = time.monotonic()
    os.killpg(verify.pid, signum)
    assert verify.wait(timeout=60) == status
    assert time.monotonic() - sent < 3
    assert (tmp_path / "verify.log").read_text().strip().splitlines() == [
        f"Error: {head}; nothing was written: rerun verify to check the set"
    ]
    assert not still_running(helpers, within=5)


def test_verify_processes_end_with_a_killed_verify(big_set, tmp_path):
    command = [IPT_DATA, "verify", str(big_set), "--workers", "2", "--no-progress"]
    verify = start(command, tmp_path / "verify.log")
    wait_until(lambda: len(descendants(verify.pid)) >= 2, "the checking processes")
    helpers = descendants(verify.pid)
    verify.kill()
    verify.wait()
    assert not still_running(helpers, within=5)


def test_sigterm_stops_a_remote_verify_within_a_request(shard_set, tmp_path):
    """A remote set is checked in threads: those under way stop, the others are not begun."""
    with http_server(shard_set) as server:
        server.latency = 1.0
        command = [IPT_DATA, "verify", server.url, "--workers", "2", "--no-progress"]
        verify = start(command, tmp_path / "verify.log")
        wait_until(lambda: any(path.endswith(".tar") for path in server.hits), "a shard request")
        waited = stop_and_wait(verify, signal.SIGTERM)
    assert verify.returncode == 143 and waited < 3
    assert (tmp_path / "verify.log").read_text().strip().splitlines()[-1] == (
        "Error: stopped by SIGTERM; nothing was written: rerun verify to check the set"
    )


def test_nothing_of_a_build_is_left_after_kill_9(tmp_path, sample_photos):
    """SIGKILL of the build alone (not its group): Ray's core processes and workers end with
    it, and its dashboard and runtime-env agents, which took 60 s, are ended by the build's
    guard process at once; the guard ends too."""
    tree = make_source_tree(tmp_path / "src", sample_photos)
    out = tmp_path / "set"
    command = [IPT_DATA, "build", "--src", str(tree), "--out", str(out), "--workers", "1"]
    command += ["--patches-per-image", "2", "--images-per-shard", "1", "--no-progress"]
    build = start(command, tmp_path / "build.log")
    done = lambda: len(list((out / "_build").glob("chunk-*.json")))  # noqa: E731
    wait_until(lambda: done() >= 2 or build.poll() is not None, "2 chunks")
    assert build.poll() is None, (tmp_path / "build.log").read_text()
    everything = descendants(build.pid)
    build.kill()
    build.wait()
    left = still_running(everything, within=15)
    names = [Path(f"/proc/{pid}/cmdline").read_bytes()[:60] for pid in left]
    assert not left, names
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "were done before" in rerun.stdout, rerun.stderr
    assert not list(out.rglob("*.part"))
