"""pull and push against real servers on loopback: an HTTP server serving a built shard set
(with connections dropped part-way) and moto's S3-compatible server."""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from loopback_servers import BIN, copy_set, http_server, s3_server, tiny_set

from ipt_data.cli import main
from ipt_data.errors import UserError
from ipt_data.layout import MARKER
from ipt_data.manifest import read_set_manifest
from ipt_data.remote import open_location, read_shard
from ipt_data.transfer import pull, push
from ipt_data.verify import verify_shard_set


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory) -> Path:
    return tiny_set(tmp_path_factory)


@pytest.fixture
def server(shard_set):
    with http_server(shard_set) as running:
        yield running


def shard_paths(shard_set: Path) -> list[str]:
    manifest = json.loads((shard_set / "manifest.json").read_bytes())
    return [shard["path"] for task in manifest["tasks"].values() for shard in task["shards"]]


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "_build" not in path.parts
    }


def test_pull_over_http_copies_the_set_exactly(shard_set, server, tmp_path):
    result = pull(server.url, tmp_path / "copy")
    assert (result.copied, result.skipped) == (6, 0)
    assert tree_hashes(tmp_path / "copy") == tree_hashes(shard_set)  # manifest bytes included
    assert all(server.hits[f"/{path}"] == 1 for path in shard_paths(shard_set))
    assert verify_shard_set(tmp_path / "copy", workers=1).ok


def test_interrupted_pull_is_clearly_incomplete_and_resumes(shard_set, server, tmp_path):
    dest = tmp_path / "copy"
    paths = shard_paths(shard_set)
    server.drops[f"/{paths[0]}"] = 1  # one dropped connection: retried within the call
    server.drops[f"/{paths[3]}"] = 3  # dropped on every attempt: that shard fails
    with pytest.raises(UserError, match=rf"{paths[3]}: transfer failed after 3 attempts"):
        pull(server.url, dest)
    assert not (dest / "manifest.json").exists()
    assert json.loads((dest / MARKER).read_bytes())["source"] == server.url
    others = [path for path in paths if path != paths[3]]  # copied, whatever the order
    assert sorted(tree_hashes(dest)) == sorted([MARKER, *others])  # no partial file left
    assert server.hits[f"/{paths[0]}"] == 2

    server.hits.clear()
    result = pull(server.url, dest)
    assert (result.copied, result.skipped) == (1, 5)
    assert [server.hits[f"/{path}"] for path in paths] == [0, 0, 0, 1, 0, 0]
    assert tree_hashes(dest) == tree_hashes(shard_set)  # marker gone, manifest identical


def test_failed_shards_are_named_in_one_error_and_the_rest_are_kept(shard_set, server, tmp_path):
    dest = tmp_path / "copy"
    paths = shard_paths(shard_set)
    for failing in (paths[1], paths[4]):
        server.drops[f"/{failing}"] = 3
    run = CliRunner().invoke(main, ["pull", server.url, str(dest), "--jobs", "3", "--no-progress"])
    assert run.exit_code == 1 and "Traceback" not in run.output
    assert run.output.startswith("Error: 2 of 6 shards could not be copied")
    named = [line.strip().partition(": ")[0] for line in run.output.splitlines()[1:]]
    assert named == [f"{server.url}/{paths[1]}", f"{server.url}/{paths[4]}"]
    kept = tree_hashes(dest)
    source = tree_hashes(shard_set)
    assert sorted(kept) == sorted([MARKER, *paths[:1], *paths[2:4], *paths[5:]])
    assert all(kept[path] == source[path] for path in kept if path != MARKER)


def test_shards_are_copied_concurrently(shard_set, server, tmp_path):
    dest = tmp_path / "copy"
    paths = shard_paths(shard_set)
    server.stalls.add(f"/{paths[0]}")  # half-sent, then held until released
    done = {}
    thread = threading.Thread(target=lambda: done.update(result=pull(server.url, dest, jobs=2)))
    thread.start()
    try:
        assert server.stalled.wait(timeout=60)
        deadline = time.monotonic() + 30
        while not all((dest / path).exists() for path in paths[1:]):
            assert time.monotonic() < deadline, "the other shards waited for the stalled one"
            time.sleep(0.05)
        assert not (dest / "manifest.json").exists() and not (dest / paths[0]).exists()
    finally:
        server.release.set()
        thread.join(timeout=60)
    assert (done["result"].copied, done["result"].skipped) == (6, 0)
    assert tree_hashes(dest) == tree_hashes(shard_set)


def test_jobs_below_one_is_refused(server, tmp_path):
    with pytest.raises(UserError, match="--jobs must be at least 1"):
        pull(server.url, tmp_path / "copy", jobs=0)
    run = CliRunner().invoke(main, ["pull", server.url, str(tmp_path / "d"), "--jobs", "0"])
    assert run.exit_code == 2 and "--jobs" in run.output
    assert not (tmp_path / "copy").exists() and not (tmp_path / "d").exists()


def test_pull_killed_part_way_resumes(shard_set, server, tmp_path):
    dest = tmp_path / "copy"
    paths = shard_paths(shard_set)
    server.stalls.add(f"/{paths[2]}")
    command = [BIN / "ipt-data", "pull", server.url, str(dest), "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert server.stalled.wait(timeout=60)
        deadline = time.monotonic() + 20
        while not list(dest.glob("sr_x2/.*.part")) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        process.kill()  # SIGKILL: no cleanup runs
        process.wait(timeout=30)
    assert list(dest.glob("sr_x2/.*.part"))  # a half-written shard, under a temporary name
    assert not (dest / "manifest.json").exists() and (dest / MARKER).is_file()
    assert not (dest / paths[2]).exists()
    source = tree_hashes(shard_set)
    final = [path for path in tree_hashes(dest) if not Path(path).name.startswith(".")]
    assert set(final) <= {MARKER, *paths}  # under final names: verified shards only
    assert all(tree_hashes(dest)[path] == source[path] for path in final if path != MARKER)

    server.stalls.clear()
    result = pull(server.url, dest)
    assert result.copied >= 1 and result.copied + result.skipped == 6
    assert tree_hashes(dest) == tree_hashes(shard_set)  # partial removed, marker gone


def test_resume_recopies_a_damaged_shard(shard_set, server, tmp_path):
    dest = tmp_path / "copy"
    pull(server.url, dest)
    damaged = dest / shard_paths(shard_set)[1]
    data = bytearray(damaged.read_bytes())
    data[700] ^= 0xFF
    damaged.write_bytes(bytes(data))
    result = pull(server.url, dest)
    assert (result.copied, result.skipped) == (1, 5)
    assert tree_hashes(dest) == tree_hashes(shard_set)


def test_subset_manifest_describes_only_what_was_copied(shard_set, server, tmp_path):
    dest = tmp_path / "subset"
    run = CliRunner().invoke(
        main,
        ["pull", server.url, str(dest), "--tasks", "sr_x2", "--shards", "1:3", "--no-progress"],
    )
    assert run.exit_code == 0, run.output
    assert "copied 2 shards" in run.output
    source = json.loads((shard_set / "manifest.json").read_bytes())
    subset = json.loads((dest / "manifest.json").read_bytes())
    assert list(subset["tasks"]) == ["sr_x2"]
    assert subset["tasks"]["sr_x2"]["shards"] == source["tasks"]["sr_x2"]["shards"][1:3]
    assert subset["tasks"]["sr_x2"]["samples"] == sum(
        shard["samples"] for shard in source["tasks"]["sr_x2"]["shards"][1:3]
    )
    assert subset["subset_of"]["source"] == server.url
    manifest_sha = hashlib.sha256((shard_set / "manifest.json").read_bytes()).hexdigest()
    assert subset["subset_of"]["manifest_sha256"] == manifest_sha
    assert subset["params"] == source["params"] and subset["source"] == source["source"]
    expected = ["README.md", "manifest.json", *shard_paths(shard_set)[1:3]]  # the subset's card
    assert sorted(tree_hashes(dest)) == expected
    report = verify_shard_set(dest, workers=1)
    assert report.ok and (report.shards, report.samples) == (2, 8)
    info = CliRunner().invoke(main, ["info", str(dest)])
    assert info.exit_code == 0, info.output
    assert f"subset of {server.url} (tasks ['sr_x2'], shards 1:3; " in info.output
    assert f"source manifest sha256 {manifest_sha[:16]})" in info.output

    other = CliRunner().invoke(main, ["pull", server.url, str(dest), "--no-progress"])
    assert other.exit_code == 1 and "already holds another shard set" in other.output


def test_a_task_named_twice_is_still_a_subset(shard_set, server, tmp_path):
    result = pull(server.url, tmp_path / "d", tasks="sr_x2,sr_x2")
    assert result.copied == 3 and list(result.manifest["tasks"]) == ["sr_x2"]
    assert result.manifest["subset_of"]["selection"] == {"tasks": ["sr_x2"], "shards": ":"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--tasks", "derain"], "the set has no task"),
        (["--shards", "5:9"], "picks no shard"),
        (["--shards", "two"], "expected START:STOP"),
        (["--shards", "-2:"], "expected START:STOP"),
    ],
)
def test_bad_selections_are_one_clear_error(server, tmp_path, options, message):
    run = CliRunner().invoke(main, ["pull", server.url, str(tmp_path / "d"), *options])
    assert run.exit_code == 1 and "Error: " in run.output and message in run.output
    assert not (tmp_path / "d").exists()


def test_pull_refuses_a_folder_holding_other_files(server, tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty and not a shard set"):
        pull(server.url, tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mine.txt"]


@pytest.mark.parametrize("where", ["file", "file/below"])
def test_a_destination_that_is_a_file_is_one_clear_error(shard_set, tmp_path, where):
    """push and pull into a file, or a path under one (a NotADirectoryError traceback before)."""
    (tmp_path / "file").write_bytes(b"mine")
    for command in (["push", str(shard_set)], ["pull", str(shard_set)]):
        run = CliRunner().invoke(main, [*command, str(tmp_path / where)])
        assert run.exit_code != 0 and "Traceback" not in run.output, run.output
        assert "is a file" in run.output
    assert (tmp_path / "file").read_bytes() == b"mine"


def test_push_refuses_http(shard_set):
    with pytest.raises(UserError, match="cannot write to an http"):
        push(shard_set, "http://127.0.0.1:9/set")


def test_push_to_s3_resumes_and_the_set_reads_back(shard_set, tmp_path):
    import s3fs

    local = copy_set(shard_set, tmp_path / "local")
    paths = shard_paths(shard_set)
    damaged = local / paths[4]
    original = damaged.read_bytes()
    damaged.write_bytes(original[:600] + bytes([original[600] ^ 1]) + original[601:])
    with s3_server("sets"):
        url = "s3://sets/ipt/tiny"
        runner = CliRunner()
        failed = runner.invoke(main, ["push", str(local), url, "--no-progress"])
        assert failed.exit_code == 1 and f"{paths[4]}: sha256 differs" in failed.output
        store = s3fs.S3FileSystem()
        listed = sorted(name.removeprefix("sets/ipt/tiny/") for name in store.find("sets/ipt/tiny"))
        others = [path for path in paths if path != paths[4]]
        assert listed == sorted([MARKER, *others])  # no manifest: clearly incomplete

        damaged.write_bytes(original)
        stale = f"sets/ipt/tiny/{paths[0].replace('/', '/.')}.0123456789ab.part"
        store.pipe_file(stale, b"left by a killed push")
        resumed = runner.invoke(main, ["push", str(local), url, "--no-progress"])
        assert resumed.exit_code == 0, resumed.output
        assert "copied 1 shards" in resumed.output and "5 were already in place" in resumed.output
        listed = sorted(name.removeprefix("sets/ipt/tiny/") for name in store.find("sets/ipt/tiny"))
        assert listed == sorted(["README.md", "manifest.json", *paths])  # the card too

        manifest, data = read_set_manifest(open_location(url))
        assert (
            manifest["tasks"]["sr_x2"]["samples"] == 12
            and data == (shard_set / "manifest.json").read_bytes()
        )
        result = pull(url, tmp_path / "back")
        assert result.copied == 6
        location, shards = open_location(url), manifest["tasks"]["denoise_30"]["shards"]
        streamed = [sample for shard in shards for sample in read_shard(location, shard)]
        assert len(streamed) == manifest["tasks"]["denoise_30"]["samples"] == 12
    assert tree_hashes(tmp_path / "back") == tree_hashes(shard_set)


def test_push_without_credentials_is_one_clear_error(shard_set, tmp_path, monkeypatch):
    import s3fs

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing leaves this machine
    s3fs.S3FileSystem.clear_instance_cache()
    run = CliRunner().invoke(main, ["push", str(shard_set), "s3://sets/x", "--no-progress"])
    s3fs.S3FileSystem.clear_instance_cache()
    assert run.exit_code == 1 and "Traceback" not in run.output
    assert run.output.startswith(f"Error: {shard_set} -> s3://sets/x: NoCredentialsError")


def test_a_format_1_set_is_pulled_and_pushed_as_it_is(shard_set, tmp_path):
    """Sets written before format 2 still copy: byte for byte when whole, and as a subset whose
    new manifest keeps format_version 1; every copy verifies as a format-1 set."""
    from test_verify import as_format_1

    old = as_format_1(copy_set(shard_set, tmp_path / "v1"))
    with http_server(old) as server:
        assert pull(server.url, tmp_path / "pulled").copied == 6
        subset = pull(server.url, tmp_path / "subset", tasks="denoise_30", shards="1:")
    assert tree_hashes(tmp_path / "pulled") == tree_hashes(old)
    assert subset.copied == 2 and subset.manifest["format_version"] == 1
    assert json.loads((tmp_path / "subset" / "manifest.json").read_bytes())["format_version"] == 1
    assert push(old, str(tmp_path / "pushed")).copied == 6
    assert tree_hashes(tmp_path / "pushed") == tree_hashes(old)
    for copy in ("pulled", "subset", "pushed"):
        assert verify_shard_set(tmp_path / copy, workers=1).ok
