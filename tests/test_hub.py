"""hf:// sets against a stand-in for the Hugging Face Hub on loopback (tests/loopback_hub.py):
pull, verify, info and pretraining read a dataset repository through huggingface_hub's own
client; push uploads a set in batched commits, the manifest in the last; Hub errors (401, 403,
a missing repository or revision, a failed commit) are one Error line.

huggingface_hub reads HF_ENDPOINT and HF_TOKEN when it is imported, so every call that reaches
the stand-in runs as a command, with the stand-in's environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from loopback_hub import READ_TOKEN, WRITE_TOKEN, Repository, hub_server
from loopback_servers import BIN, copy_set, free_port, tiny_set

from ipt_data.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory) -> Path:
    return tiny_set(tmp_path_factory)  # sr_x2 and denoise_30, 3 shards each, with its card


@pytest.fixture
def hub(shard_set, tmp_path):
    with hub_server() as server:
        server.state.add_folder("ipt/tiny", shard_set)  # _build/ too, as `hf upload` would
        server.home = tmp_path / "hf-home"  # no token or cache of the user's
        yield server


def run(hub, command: list, token: str | None = READ_TOKEN) -> subprocess.CompletedProcess:
    """A command (``ipt-data ...``, ``ipt-train ...``, ``python ...``) against the stand-in."""
    environment = {**ENV, **hub.environment(token), "HF_HOME": str(hub.home)}
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )


def files_of(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "_build" not in path.parts
    }


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: ")
    return line


def test_pull_verify_and_info_read_a_set_on_the_hub(hub, shard_set, tmp_path):
    url = "hf://datasets/ipt/tiny"
    pulled = run(hub, [BIN / "ipt-data", "pull", url, tmp_path / "copy", "--no-progress"])
    assert pulled.returncode == 0, pulled.stderr
    assert "copied 6 shards" in pulled.stdout
    assert files_of(tmp_path / "copy") == files_of(shard_set)  # shards, manifest, card
    verified = run(hub, [BIN / "ipt-data", "verify", f"{url}/manifest.json", "--no-progress"])
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout == "OK: 6 shards, 24 samples\n"
    head = hub.state.commits("ipt/tiny")[-1].oid
    info = run(hub, [BIN / "ipt-data", "info", f"{url}@{head}"], token=None)  # a public set
    assert info.returncode == 0, info.stderr
    assert "sr_x2" in info.stdout and "denoise_30" in info.stdout
    shard_gets = [p for m, p in hub.state.requests if m == "GET" and p.endswith(".tar")]
    assert len(shard_gets) == 12  # each shard fetched once by pull, once by verify


def test_pretraining_streams_a_set_from_the_hub(hub, tmp_path):
    command = [BIN / "ipt-train", "pretrain", "--shards", "hf://datasets/ipt/tiny"]
    command += ["--out", tmp_path / "run", "--tasks", "sr_x2,denoise_30", "--steps", "2"]
    command += ["--batch", "4", "--micro-batch", "4", "--workers", "1", "--shuffle-block", "8"]
    command += ["--no-progress", "--seed", "5"]
    trained = run(hub, command)
    assert trained.returncode == 0, trained.stderr
    assert "step 2: loss" in trained.stdout
    assert (tmp_path / "run" / "model.pt").is_file()
    fetched = {p for m, p in hub.state.requests if m == "GET" and p.endswith(".tar")}
    assert fetched and all(p.startswith("/datasets/ipt/tiny/resolve/main/") for p in fetched)


PUSH_SCRIPT = """
import sys
from ipt_data.hub import push_to_hub, summary_line
print(summary_line(push_to_hub(sys.argv[1], sys.argv[2], commit_files=int(sys.argv[3]))))
"""


def test_push_uploads_in_batched_commits_the_manifest_last(hub, shard_set, tmp_path):
    url = "hf://datasets/me/pushed"
    pushed = run(hub, [sys.executable, "-c", PUSH_SCRIPT, shard_set, url, 4], WRITE_TOKEN)
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.endswith("; 3 commits\n"), pushed.stdout
    commits = hub.state.commits("me/pushed")
    manifest = json.loads((shard_set / "manifest.json").read_bytes())
    shards = [shard["path"] for task in manifest["tasks"].values() for shard in task["shards"]]
    files = len(shards) + 2  # the shards, the card and the manifest
    assert len(commits) == 3 <= -(-files // 4) + 1
    assert [commit.added for commit in commits] == [
        shards[:4],
        shards[4:],
        ["README.md", "manifest.json"],
    ]
    assert {path: blob.data for path, blob in commits[-1].files.items()} == files_of(shard_set)
    assert all(commits[-1].files[path].lfs for path in shards)  # tars as LFS files

    again = run(hub, [BIN / "ipt-data", "push", shard_set, url, "--no-progress"], WRITE_TOKEN)
    assert again.returncode == 0, again.stderr
    assert "copied 0 shards" in again.stdout and again.stdout.endswith("; 0 commits\n")
    assert len(hub.state.commits("me/pushed")) == 3

    pulled = run(hub, [BIN / "ipt-data", "pull", url, tmp_path / "back", "--no-progress"])
    assert pulled.returncode == 0, pulled.stderr
    assert files_of(tmp_path / "back") == files_of(shard_set)


def test_the_cli_pushes_a_small_set_in_two_commits_into_a_new_private_repository(hub, shard_set):
    command = [BIN / "ipt-data", "push", shard_set, "hf://datasets/me/new", "--private"]
    pushed = run(hub, [*command, "--no-progress"], WRITE_TOKEN)
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.endswith("manifest: hf://datasets/me/new/manifest.json; 2 commits\n")
    # 8 files: at most ceil(8 / 100) + 1 commits, the manifest last in the last
    assert [commit.added[-1] for commit in hub.state.commits("me/new")] == [
        "denoise_30/denoise_30-000002.tar",
        "manifest.json",
    ]
    assert hub.state.repos["me/new"].private


def test_a_failed_commit_is_one_error_and_a_rerun_commits_only_what_is_missing(hub, shard_set):
    url = "hf://datasets/me/interrupted"
    command = [BIN / "ipt-data", "push", shard_set, url, "--no-progress"]
    run(hub, [sys.executable, "-c", PUSH_SCRIPT, shard_set, url, 4], WRITE_TOKEN)
    commits = hub.state.commits("me/interrupted")
    assert len(commits) == 3
    del commits[1:]  # as if the push had stopped after its first commit
    hub.state.failing_commits = 1
    failed = run(hub, command, WRITE_TOKEN)
    assert "HTTP 500" in one_error_line(failed)
    assert len(hub.state.commits("me/interrupted")) == 1
    resumed = run(hub, command, WRITE_TOKEN)
    assert resumed.returncode == 0, resumed.stderr
    assert "copied 2 shards" in resumed.stdout and "4 were already in place" in resumed.stdout
    assert [len(commit.added) for commit in hub.state.commits("me/interrupted")] == [4, 2, 2]


def test_push_checks_every_shard_before_uploading_any(hub, shard_set, tmp_path):
    local = copy_set(shard_set, tmp_path / "local")
    damaged = local / "denoise_30" / "denoise_30-000001.tar"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\1")
    failed = run(hub, [BIN / "ipt-data", "push", local, "hf://datasets/me/bad"], WRITE_TOKEN)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "Error: 1 of 6 shards are bad; nothing was uploaded:" in failed.stderr
    assert "denoise_30-000001.tar: sha256 differs from the manifest" in failed.stderr
    assert "me/bad" not in hub.state.repos  # not even created


def test_push_refuses_a_repository_holding_another_set(hub, shard_set):
    command = [BIN / "ipt-data", "push", shard_set, "hf://datasets/ipt/tiny", "--tasks", "sr_x2"]
    command.append("--no-progress")
    line = one_error_line(run(hub, command, WRITE_TOKEN))
    assert line == (
        "Error: hf://datasets/ipt/tiny already holds another shard set (its manifest.json "
        "differs); choose another repository"
    )


@pytest.mark.parametrize(
    ("command", "token", "expected"),
    [
        ("pull", "hf_unknown", "HTTP 401 Unauthorized: Invalid credentials in Authorization"),
        ("pull", None, "repository not found, or not readable with your token"),
        ("verify", READ_TOKEN, "no such revision in the repository"),
        ("push", READ_TOKEN, "HTTP 403 Forbidden: You don't have the rights to write"),
        ("push", None, "HTTP 401 Unauthorized"),
    ],
)
def test_hub_errors_are_one_line(hub, shard_set, tmp_path, command, token, expected):
    hub.state.repos["ipt/tiny"].private = True
    hub.state.repos["ipt/empty"] = Repository()  # a push into it needs to write
    url = "hf://datasets/ipt/tiny" + ("@v9" if command == "verify" else "")
    arguments = {
        "pull": [url, tmp_path / "copy"],
        "verify": [url],
        "push": [copy_set(shard_set, tmp_path / "set"), "hf://datasets/ipt/empty"],
    }[command]
    command = [BIN / "ipt-data", command, *arguments, "--no-progress"]
    line = one_error_line(run(hub, command, token))
    assert expected in line, line
    assert not (tmp_path / "copy").exists()


def test_an_unreachable_hub_is_one_error_line(hub, tmp_path):
    hub.url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    line = one_error_line(run(hub, [BIN / "ipt-data", "info", "hf://datasets/ipt/tiny"]))
    assert line.startswith("Error: hf://datasets/ipt/tiny: ConnectError: "), line


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["info", "hf://ipt/tiny"], "a shard set on the Hugging Face Hub is a whole dataset"),
        (["info", "hf://datasets/ipt/tiny/sr_x2"], "hf://datasets/OWNER/NAME@REVISION"),
        (["card", "hf://datasets/ipt/tiny"], "the Hub is written only by push"),
        (["pull", "hf://spaces/a/b", "x"], "is a whole dataset repository"),
    ],
)
def test_hub_urls_of_the_wrong_shape_are_refused_before_any_request(arguments, message):
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 1 and message in result.output, result.output
