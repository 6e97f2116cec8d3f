"""ipt_data.remote: shard-set locations (folders, http on loopback), safe set-relative paths,
atomic writes, streamed reads, the manifest read from a URL."""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from fsspec.implementations.http import HTTPFileSystem
from fsspec.implementations.local import LocalFileSystem
from loopback_servers import copy_set, http_server, tiny_set

from ipt_data.cli import main
from ipt_data.errors import UserError
from ipt_data.fileio import write_bytes_atomic, write_whole
from ipt_data.manifest import read_set_manifest
from ipt_data.remote import (
    file_size,
    open_location,
    open_read,
    read_bytes,
    read_many,
    read_shard,
    remove_partials,
    write_bytes,
)
from ipt_data.safety import safe_relative_path
from ipt_data.verify import verify_shard_set


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory) -> Path:
    return tiny_set(tmp_path_factory)


@pytest.mark.parametrize("good", ["sr_x2/sr_x2-000000.tar", "a.tar", "x/y/z-1.tar"])
def test_paths_inside_the_set_are_kept(good):
    assert safe_relative_path(good) == good


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("../evil.tar", "leaves the set"),
        ("sr_x2/../../evil.tar", "leaves the set"),
        ("/etc/passwd", "absolute"),
        ("http://other-host/evil.tar", "URL"),
        ("s3://bucket/evil.tar", "URL"),
        ("file:/etc/passwd", "URL"),
        ("c:/evil.tar", "drive"),
        ("sr_x2\\evil.tar", "backslash"),
        ("sr_x2//evil.tar", "empty"),
        ("./evil.tar", "empty or '.'"),
        ("sr_x2/", "empty"),
        ("", "non-empty string"),
        (None, "non-empty string"),
        ("sr_x2/evil\n.tar", "control character"),
    ],
)
def test_paths_leaving_the_set_are_refused_by_name(bad, reason):
    with pytest.raises(
        UserError, match=f"shard path {re.escape(repr(bad))} is refused: .*{reason}"
    ):
        safe_relative_path(bad)


def test_locations(tmp_path):
    local = open_location(tmp_path)
    assert isinstance(local.fs, LocalFileSystem) and local.is_local
    assert local.root == str(tmp_path) and local.path("a/b.tar") == f"{tmp_path}/a/b.tar"
    web = open_location("http://127.0.0.1:9/sets/tiny/")
    assert isinstance(web.fs, HTTPFileSystem) and not web.is_local
    assert web.path("a/b.tar") == "http://127.0.0.1:9/sets/tiny/a/b.tar"
    with pytest.raises(UserError, match="refused"):
        web.path("../../other/set.tar")
    with pytest.raises(UserError, match="nosuchscheme://x: cannot open this location"):
        open_location("nosuchscheme://x")


def test_local_writes_are_atomic_and_partials_removable(tmp_path):
    location = open_location(tmp_path / "set")
    write_bytes(location, "sr_x2/a.tar", b"first")
    write_bytes(location, "sr_x2/a.tar", b"second")
    assert read_bytes(location, "sr_x2/a.tar") == b"second"
    assert sorted(path.name for path in (tmp_path / "set" / "sr_x2").iterdir()) == ["a.tar"]
    (tmp_path / "set" / "sr_x2" / ".b.tar.0123456789ab.part").write_bytes(b"half")
    assert remove_partials(location, "sr_x2") == 1
    assert remove_partials(location, "missing") == 0
    assert sorted(path.name for path in (tmp_path / "set" / "sr_x2").iterdir()) == ["a.tar"]
    assert file_size(location, "sr_x2/a.tar") == 6 and file_size(location, "sr_x2/b.tar") is None
    with pytest.raises(UserError, match=r"sr_x2/b\.tar: not found"):
        read_bytes(location, "sr_x2/b.tar")


def test_http_reads_stream_from_a_plain_server(shard_set):
    name = "sr_x2/sr_x2-000000.tar"
    with http_server(shard_set) as server:
        location = open_location(server.url)
        with open_read(location, name) as stream:
            head = stream.read(1000)
            data = head + stream.read()
        manifest, manifest_bytes = read_set_manifest(location)
        with pytest.raises(UserError, match="no manifest"):
            read_set_manifest(open_location(f"{server.url}/sr_x2"))
    assert data == (shard_set / name).read_bytes()
    assert manifest_bytes == (shard_set / "manifest.json").read_bytes()
    assert manifest == json.loads(manifest_bytes)


def test_info_and_verify_read_a_set_over_http(shard_set):
    local = [CliRunner().invoke(main, [command, str(shard_set)]) for command in ("info", "verify")]
    with http_server(shard_set) as server:
        info = CliRunner().invoke(main, ["info", server.url])
        verify = CliRunner().invoke(main, ["verify", server.url, "--workers", "2"])
        missing = CliRunner().invoke(main, ["info", f"{server.url}/sr_x2"])
    assert info.exit_code == 0 and verify.exit_code == 0, info.output + verify.output
    assert info.output.splitlines()[1:] == local[0].output.splitlines()[1:]
    assert info.output.startswith(f"shard set {server.url} (format 2, ")
    assert verify.stdout == local[1].stdout == "OK: 6 shards, 24 samples\n"  # progress: stderr
    # each shard fetched once, the manifest once per command, nothing else asked for
    shards = {f"/{path}": 1 for path in _paths(shard_set)}
    assert server.hits == {"/manifest.json": 2, "/sr_x2/manifest.json": 1, **shards}
    assert missing.exit_code == 1 and "no manifest" in missing.output
    assert "Traceback" not in missing.output


def test_verify_over_http_names_each_bad_shard(shard_set, tmp_path, monkeypatch):
    # verify streams each shard and keeps nothing: no temporary copy either
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    site = copy_set(shard_set, tmp_path / "site")
    flipped, mismatched = "sr_x2/sr_x2-000000.tar", "sr_x2/sr_x2-000002.tar"
    deleted = "denoise_30/denoise_30-000001.tar"
    data = bytearray((site / flipped).read_bytes())
    data[2000] ^= 0x01
    (site / flipped).write_bytes(bytes(data))
    (site / deleted).unlink()
    manifest = json.loads((site / "manifest.json").read_bytes())
    manifest["tasks"]["sr_x2"]["target_size"] = 144  # the hash matches, the samples do not
    manifest["tasks"]["sr_x2"]["shards"] = manifest["tasks"]["sr_x2"]["shards"][::2]
    (site / "manifest.json").write_text(json.dumps(manifest))
    with http_server(site) as server:
        report = verify_shard_set(server.url, workers=2)
        run = CliRunner().invoke(main, ["verify", server.url])
    assert (report.shards, report.samples) == (5, 20)
    assert (
        report.problems[flipped]
        == f"{server.url}/{flipped}: sha256 differs from the manifest; refused"
    )
    assert report.problems[mismatched].startswith("unreadable: sample ")
    assert "target.png header is not 144x144" in report.problems[mismatched]
    assert report.problems[deleted] == f"{server.url}/{deleted}: not found (listed in the manifest)"
    assert len(report.problems) == 3
    assert run.exit_code == 1 and "Error: 3 of 5 shards are bad" in run.output
    assert not list((tmp_path / "scratch").iterdir())


def _paths(shard_set: Path) -> list[str]:
    manifest = json.loads((shard_set / "manifest.json").read_bytes())
    return [shard["path"] for task in manifest["tasks"].values() for shard in task["shards"]]


def test_webdataset_streams_checked_samples_from_a_url(shard_set):
    import webdataset as wds

    with http_server(shard_set) as server:
        location = open_location(server.url)
        manifest, _ = read_set_manifest(location)
        shards = [dict(shard) for shard in manifest["tasks"]["sr_x2"]["shards"]]

        def raw() -> Iterator[dict]:
            for shard in shards:
                yield from read_shard(location, shard)

        samples = list(wds.DataPipeline(raw, wds.decode("rgb8")))
        assert [server.hits[f"/sr_x2/sr_x2-00000{n}.tar"] for n in range(3)] == [1, 1, 1]
        shards[1]["sha256"] = "0" * 64
        with pytest.raises(UserError, match=r"sr_x2-000001\.tar: sha256 differs"):
            list(wds.DataPipeline(raw))
    assert samples[0]["__url__"] == f"{server.url}/sr_x2/sr_x2-000000.tar"
    assert len(samples) == manifest["tasks"]["sr_x2"]["samples"] == 12
    assert {sample["input.png"].shape for sample in samples} == {(48, 48, 3)}
    assert {sample["target.png"].shape for sample in samples} == {(96, 96, 3)}
    assert all(isinstance(sample["json"], dict) for sample in samples)


def test_read_many_keeps_the_order_and_names_a_missing_file(shard_set):
    names = sorted(
        path.relative_to(shard_set).as_posix() for path in shard_set.glob("_build/chunk-*.json")
    )
    assert len(names) == 3
    with http_server(shard_set) as server:
        server.latency = 0.05
        location = open_location(server.url)
        wanted = [names[2], names[0], names[1]] * 6
        assert read_many(location, wanted) == [(shard_set / name).read_bytes() for name in wanted]
        assert sum(server.hits.values()) == len(wanted)  # one GET per file
        with pytest.raises(UserError, match=r"_build/chunk-000009\.json: not found"):
            read_many(location, [names[0], "_build/chunk-000009.json", names[1]])


def test_local_files_are_written_by_the_same_atomic_mechanism(tmp_path):
    target = tmp_path / "out" / "deep" / "x:1 \\ odd.png"  # legal local names; no set-path gate
    write_bytes_atomic(target, b"first")
    write_bytes_atomic(target, memoryview(b"second"))  # checkpoints pass a buffer
    assert target.read_bytes() == b"second"
    assert [path.name for path in target.parent.iterdir()] == [target.name]  # no temporary left
    with pytest.raises(UserError, match=r"inner\.png: cannot write"):
        write_bytes_atomic(target / "inner.png", b"x")  # a file where a folder should be
    with pytest.raises(UserError, match="cannot write"):
        write_bytes(open_location(target), "inner.png", b"x")
    assert [path.name for path in target.parent.iterdir()] == [target.name]
    with pytest.raises(TypeError):  # a write failing half-way: nothing published, nothing left
        write_whole(LocalFileSystem(), f"{target.parent}/broken.png", "not bytes")
    assert [path.name for path in target.parent.iterdir()] == [target.name]
