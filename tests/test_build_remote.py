"""`ipt-data build --out s3://…`: a build with no shared filesystem writes its shards, done-markers
and manifest to an S3-compatible server (moto, on loopback) and resumes from there; the bytes
equal a local build's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from loopback_servers import BIN, s3_server, tiny_set

from ipt_data.build import BuildConfig, build_shards
from ipt_data.errors import UserError
from ipt_data.sources import walk_sources

# The options tiny_set builds with (one worker there, two here: the bytes must not care).
OPTIONS = "--tasks sr_x2,denoise_30 --patches-per-image 2 --images-per-shard 2 --no-progress"


@pytest.fixture(scope="module")
def local_set(tmp_path_factory) -> Path:
    return tiny_set(tmp_path_factory)


def ipt_data(*arguments: str) -> subprocess.CompletedProcess:
    """The real CLI in its own process: its Ray workers inherit the S3 endpoint variables."""
    command = [str(BIN / "ipt-data"), *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def build(src: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    return ipt_data("build", "--src", str(src), "--out", url, *OPTIONS.split(), *extra)


def stored(fs, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix`` by its relative key."""
    fs.invalidate_cache()
    return {key[len(prefix) + 1 :]: fs.cat_file(key) for key in fs.find(prefix)}


def _without_timings(objects: dict[str, bytes]) -> dict[str, bytes]:
    """All but the chunk stats files, which record how long their chunk took."""
    return {key: data for key, data in objects.items() if not key.startswith("_build/chunk-")}


def test_build_to_s3_resumes_and_equals_a_local_build(local_set):
    import s3fs

    src = local_set.parent / "src"
    local = {
        path.relative_to(local_set).as_posix(): path.read_bytes()
        for path in local_set.rglob("*")
        if path.is_file() and "_build" not in path.parts
    }
    with s3_server("sets"):
        fs = s3fs.S3FileSystem()
        first = build(src, "s3://sets/tiny", "--workers", "2")
        assert first.returncode == 0, first.stderr
        assert "built 3 of 3 chunks now" in first.stdout
        assert "manifest: s3://sets/tiny/manifest.json" in first.stdout
        objects = stored(fs, "sets/tiny")
        assert {key: data for key, data in objects.items() if "_build" not in key} == local
        assert sorted(key for key in objects if key.startswith("_build/")) == [
            "_build/chunk-000000.json",
            "_build/chunk-000001.json",
            "_build/chunk-000002.json",
            "_build/params.json",
        ]

        # As if killed part-way: chunk 1 not done, a worker's partial upload left, no manifest.
        for key in ("_build/chunk-000001.json", "sr_x2/sr_x2-000001.tar", "manifest.json"):
            fs.rm_file(f"sets/tiny/{key}")
        fs.pipe_file("sets/tiny/sr_x2/.sr_x2-000001.tar.0123456789ab.part", b"half a shard")
        resumed = build(src, "s3://sets/tiny", "--workers", "1")
        assert resumed.returncode == 0, resumed.stderr
        assert "built 1 of 3 chunks now (2 were done before)" in resumed.stdout
        again = stored(fs, "sets/tiny")
        assert sorted(again) == sorted(objects)  # the partial is gone, the marker is back
        assert _without_timings(again) == _without_timings(objects)  # the same bytes

        refused = build(src, "s3://sets/tiny", "--seed", "1")
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        # the seed orders the images too (docs/format.md#build-order): the fingerprint differs
        assert "built differently (params.seed: 0 -> 1; source.fingerprint: " in refused.stderr
        verified = ipt_data("verify", "s3://sets/tiny")
        assert verified.returncode == 0 and verified.stdout == "OK: 6 shards, 24 samples\n"
        assert stored(fs, "sets/tiny") == again
    assert json.loads(objects["manifest.json"])["source"]["images"] == 6


def test_build_to_a_read_only_url_is_refused_before_any_work(local_set):
    config = BuildConfig()
    with pytest.raises(UserError, match="cannot write to an http"):
        build_shards(walk_sources(local_set.parent / "src"), "http://127.0.0.1:9/set", config)
