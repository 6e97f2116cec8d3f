"""Hostile or broken shard sets served by a real HTTP server on loopback: each is refused with
one clear error naming the bad entry, and nothing is executed or written outside the
destination."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import resource
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from loopback_servers import copy_set, http_server, tiny_set
from PIL import Image

from ipt_data.cli import main
from ipt_data.errors import UserError
from ipt_data.manifest import read_set_manifest
from ipt_data.png import encode_png
from ipt_data.remote import open_location, read_shard
from ipt_data.safety import (
    MAX_MANIFEST_BYTES,
    MAX_MEMBER_BYTES,
    MAX_PNG_SIDE,
    check_png_header,
    read_samples,
    refuse_foreign_members,
)
from ipt_data.transfer import pull


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory) -> Path:
    return tiny_set(tmp_path_factory)


class MarkerFile:
    """Unpickling this creates ``path``: the stand-in for code a hostile pickle would run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def tar_bytes(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    """A tar of (name, data) regular files and prepared TarInfo headers (links, devices)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return buffer.getvalue()


def good_sample(key: str) -> list[tuple[str, bytes]]:
    png = encode_png(np.full((48, 48, 3), 128, np.uint8))
    return [(f"{key}.input.png", png), (f"{key}.target.png", png), (f"{key}.json", b"{}")]


def png_bomb(side: int = 20_000) -> bytes:
    """A real decompression bomb: a side x side 1-bit PNG of zeros, ~20 kB on disk, 400 Mpx."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def hostile_site(shard_set: Path, site: Path, task: str, shards: list[dict]) -> Path:
    """A copy of the tiny set whose ``task`` lists ``shards`` instead of its own."""
    copy_set(shard_set, site)
    manifest = json.loads((site / "manifest.json").read_bytes())
    manifest["tasks"][task]["shards"] = shards
    (site / "manifest.json").write_text(json.dumps(manifest))
    return site


def entry(path: str, data: bytes, samples: int) -> dict:
    return {
        "path": path,
        "samples": samples,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


@pytest.mark.parametrize(
    "bad_path",
    [
        "../../evil.tar",
        "sr_x2/../../../evil.tar",
        "/tmp/ipt-hostile/evil.tar",
        "OTHER_HOST/evil.tar",
        "s3://someone-elses-bucket/evil.tar",
        "sr_x2\\..\\..\\evil.tar",
        "C:/evil.tar",
        "sr_x2//evil.tar",
        "",
    ],
)
def test_shard_paths_leaving_the_set_are_refused(shard_set, tmp_path, bad_path):
    evil = tar_bytes(good_sample("k0"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "evil.tar").write_bytes(evil)
    with http_server(tmp_path / "other") as other_host:
        bad_path = bad_path.replace("OTHER_HOST", other_host.url)
        good = json.loads((shard_set / "manifest.json").read_bytes())["tasks"]["sr_x2"]["shards"]
        site = hostile_site(
            shard_set, tmp_path / "site", "sr_x2", [good[0], entry(bad_path, evil, 1)]
        )
        with http_server(site) as server:
            with pytest.raises(UserError) as refused:
                pull(server.url, tmp_path / "work" / "dest")
            assert repr(bad_path) in str(refused.value)
            run = CliRunner().invoke(main, ["pull", server.url, str(tmp_path / "work" / "cli")])
            remote = [CliRunner().invoke(main, [cmd, server.url]) for cmd in ("info", "verify")]
        local = [CliRunner().invoke(main, [cmd, str(site)]) for cmd in ("info", "verify")]
        for refused_run in (run, *remote, *local):  # the local set is someone else's, too
            assert refused_run.exit_code == 1 and refused_run.output.startswith("Error: ")
            assert repr(bad_path) in refused_run.output and "bad manifest" in refused_run.output
            assert "Traceback" not in refused_run.output
        assert sum(other_host.hits.values()) == 0  # the other host was never contacted
    assert not (tmp_path / "work").exists()  # refused before anything was written
    assert list(tmp_path.rglob("evil.tar")) == [tmp_path / "other" / "evil.tar"]
    assert not Path("/tmp/ipt-hostile").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sha256": "0" * 64}, "sha256 differs from the manifest"),
        ({"bytes": -1}, "negative count"),
        ("smaller", "more than"),
        ("larger", "only"),
        ({"samples": 5}, "4 samples, manifest says 5"),
    ],
)
def test_a_shard_disagreeing_with_the_manifest_is_named_and_refused(
    shard_set, tmp_path, change, message
):
    shards = json.loads((shard_set / "manifest.json").read_bytes())["tasks"]["sr_x2"]["shards"]
    bad = dict(shards[1])
    if change == "smaller":
        bad["bytes"] -= 512
    elif change == "larger":
        bad["bytes"] += 512
    else:
        bad.update(change)
    site = hostile_site(shard_set, tmp_path / "site", "sr_x2", [shards[0], bad, shards[2]])
    dest = tmp_path / "work" / "dest"
    with http_server(site) as server, pytest.raises(UserError, match=message) as refused:
        pull(server.url, dest)
    assert bad["path"] in str(refused.value)
    assert not (dest / "manifest.json").exists() and not (dest / bad["path"]).exists()
    written = [path.relative_to(dest).as_posix() for path in dest.rglob("*.tar")]
    # the good shards copied concurrently may be in place: only verified shards, never the bad one
    assert all((dest / path).read_bytes() == (site / path).read_bytes() for path in written)


@pytest.mark.parametrize(
    "foreign",
    [
        "pickle",
        "symlink",
        "hardlink",
        "device",
        "folder",
        "absolute",
        "dotdot",
        "bomb",
        "huge",
    ],
)
def test_foreign_members_are_refused_without_reading_them(shard_set, tmp_path, foreign):
    marker = tmp_path / "pwned"
    members = good_sample("k0")
    if foreign == "pickle":
        members.append(("k0.pyd", pickle.dumps(MarkerFile(marker))))
    elif foreign == "bomb":
        members[0] = ("k0.input.png", png_bomb())
    elif foreign == "huge":
        members.append(("k1.json", b" " * (MAX_MEMBER_BYTES + 1)))
    else:
        header = tarfile.TarInfo("k1.input.png")
        kinds = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "device": tarfile.CHRTYPE}
        header.type = kinds.get(
            foreign, tarfile.DIRTYPE if foreign == "folder" else tarfile.REGTYPE
        )
        header.linkname = "/etc/passwd"
        header.name = {"absolute": "/tmp/k1.json", "dotdot": "../k1.json"}.get(foreign, header.name)
        members.append(header)
    shard = tar_bytes(members)
    site = hostile_site(shard_set, tmp_path / "site", "sr_x2", [entry("sr_x2/evil.tar", shard, 1)])
    (site / "sr_x2" / "evil.tar").write_bytes(shard)
    with http_server(site) as server, pytest.raises(UserError, match="refused") as refused:
        pull(server.url, tmp_path / "work" / "dest")
    assert "sr_x2/evil.tar" in str(refused.value)
    assert not (tmp_path / "work" / "dest" / "sr_x2" / "evil.tar").exists()
    assert not (tmp_path / "work" / "dest" / "manifest.json").exists()
    assert not marker.exists() and not Path("/tmp/k1.json").exists()
    with pytest.raises(UserError, match="refused"):
        list(read_samples(io.BytesIO(shard), "evil.tar"))
    with pytest.raises(UserError, match="refused"):  # the one shard stream (the loader's too)
        list(read_shard(open_location(site), entry("sr_x2/evil.tar", shard, 1)))
    assert not marker.exists()


@pytest.mark.parametrize("foreign", ["pickle", "bomb"])
def test_verify_refuses_a_hostile_shard_with_a_matching_hash(shard_set, tmp_path, foreign):
    """The manifest is the attacker's too: the hash matches, and verify still decodes nothing
    foreign (no unpickling, no 400 Mpx allocation), locally and over http."""
    marker = tmp_path / "pwned"
    members = good_sample("k0")
    if foreign == "pickle":
        members.insert(2, ("k0.pyd", pickle.dumps(MarkerFile(marker))))
    else:
        members[1] = ("k0.target.png", png_bomb())
    shard = tar_bytes(members)
    site = hostile_site(shard_set, tmp_path / "site", "sr_x2", [entry("sr_x2/evil.tar", shard, 1)])
    (site / "sr_x2" / "evil.tar").write_bytes(shard)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    local = CliRunner().invoke(main, ["verify", str(site), "--workers", "1"])
    with http_server(site) as server:
        remote = CliRunner().invoke(main, ["verify", server.url, "--workers", "1"])
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    expected = "member 'k0.pyd' is not <key>" if foreign == "pickle" else "20000x20000 pixels"
    for run in (local, remote):
        assert run.exit_code == 1 and "Error: 1 of 4 shards are bad" in run.output
        bad = [line for line in run.output.splitlines() if line.startswith("BAD ")]
        assert len(bad) == 1 and bad[0].startswith("BAD sr_x2/evil.tar: ") and expected in bad[0]
    assert not marker.exists()
    assert grown_mib < 100  # decoding the bomb would allocate 400 MB at least


def test_webdataset_guard_stops_a_pickle_before_decoding(tmp_path):
    import webdataset as wds

    marker = tmp_path / "pwned"
    shard = tmp_path / "evil.tar"
    shard.write_bytes(tar_bytes([*good_sample("k0"), ("k0.pyd", pickle.dumps(MarkerFile(marker)))]))

    def dataset():
        return wds.WebDataset(str(shard), shardshuffle=False, empty_check=False)

    with pytest.raises(UserError, match=r"has members \['input.png', 'json', 'pyd'"):
        next(iter(dataset().compose(refuse_foreign_members).decode("rgb8")))
    assert not marker.exists()
    # Why the guard is needed: webdataset's default decoders unpickle .pyd members.
    next(iter(dataset().decode("rgb8")))
    assert marker.exists()


def test_png_bomb_is_refused_from_its_header(tmp_path):
    bomb = png_bomb()
    assert len(bomb) < 100_000
    with pytest.raises(Image.DecompressionBombError):  # PIL, too, reads 400 Mpx from its header
        Image.open(io.BytesIO(bomb))
    with pytest.raises(UserError, match="20000x20000 pixels, over the 1024x1024 limit"):
        check_png_header(bomb, "k0.input.png")
    sample = {
        "__key__": "k0",
        "__url__": "x.tar",
        "input.png": bomb,
        "target.png": bomb,
        "json": b"{}",
    }
    with pytest.raises(UserError, match=r"x\.tar: sample k0: input\.png: PNG header says"):
        list(refuse_foreign_members([sample]))
    edge = png_bomb(MAX_PNG_SIDE)
    assert check_png_header(edge, "edge") == (MAX_PNG_SIDE, MAX_PNG_SIDE)
    with pytest.raises(UserError, match="not a PNG"):
        check_png_header(b"GIF89a" + bytes(40), "fake")


def _mutated(manifest: dict, change: str) -> object:
    shard = manifest["tasks"]["sr_x2"]["shards"][0]
    if change == "list":
        return [manifest]
    if change == "no_tasks":
        manifest.pop("tasks")
    elif change == "version":
        manifest["format_version"] = 99
    elif change == "version_3":
        manifest["format_version"] = 3
    elif change == "version_true":
        manifest["format_version"] = True
    elif change == "no_sha":
        shard.pop("sha256")
    elif change == "bad_sha":
        shard["sha256"] = "not-a-hash"
    elif change == "samples_text":
        shard["samples"] = "4"
    elif change == "twice":
        manifest["tasks"]["sr_x2"]["shards"].append(dict(shard))
    elif change == "samples_true":
        shard["samples"] = True
    elif change == "no_seed":
        manifest["params"].pop("seed")
    elif change == "no_skipped":
        manifest["images"].pop("skipped")
    elif change == "task_samples_text":
        manifest["tasks"]["sr_x2"]["samples"] = "many"
    elif change == "no_input_size":
        manifest["tasks"]["sr_x2"].pop("input_size")
    elif change == "task_name_escape":
        manifest["tasks"]["x\x1b[2J"] = manifest["tasks"].pop("denoise_30")
    elif change == "subset_without_selection":
        manifest["subset_of"] = {"source": "https://example.org/set"}
    return manifest


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("not_json", "not JSON"),
        ("list", "not an ipt-data shard set manifest"),
        ("no_tasks", "missing 'tasks'"),
        ("version", "format version 99"),
        ("version_3", r"format version 3, this tool reads 1 and 2 \(a set written by a newer"),
        ("version_true", "format version True"),  # true == 1 in Python: it passed before
        ("no_sha", "lacks path/samples/bytes/sha256"),
        ("bad_sha", "has no valid sha256"),
        ("samples_text", "lacks path/samples/bytes/sha256"),
        ("twice", "listed twice"),
        ("samples_true", "lacks path/samples/bytes/sha256"),
        # fields that info, verify and the loader read: refused up front, not a KeyError later
        ("no_seed", "'params.seed' is missing or not an integer"),
        ("no_skipped", "'images.skipped' is missing or not an object"),
        ("task_samples_text", "task 'sr_x2': 'samples' is missing or not an integer"),
        ("no_input_size", "task 'sr_x2': 'input_size' is missing"),
        # a task name is printed by info: no terminal escape sequences in it
        ("task_name_escape", "is not letters, digits and underscores"),
        # pull's summary reads the selection: a finished copy ended in a KeyError traceback
        ("subset_without_selection", "'subset_of' lacks source/manifest_sha256/selection"),
    ],
)
def test_malformed_manifests_are_one_clear_error(shard_set, tmp_path, change, message):
    site = copy_set(shard_set, tmp_path / "site")
    manifest = json.loads((site / "manifest.json").read_bytes())
    text = "{not json" if change == "not_json" else json.dumps(_mutated(manifest, change))
    (site / "manifest.json").write_text(text)
    with pytest.raises(UserError, match=f"bad manifest: .*{message}"):
        read_set_manifest(open_location(site))
    for command in ("info", "verify"):
        run = CliRunner().invoke(main, [command, str(site)])
        assert run.exit_code == 1 and run.output.startswith("Error: "), run.output
        assert "bad manifest" in run.output and "Traceback" not in run.output
    with http_server(site) as server:
        run = CliRunner().invoke(main, ["pull", server.url, str(tmp_path / "dest")])
    assert run.exit_code == 1 and run.output.startswith(f"Error: {server.url}/manifest.json: bad")
    assert "Traceback" not in run.output and not (tmp_path / "dest").exists()


def test_info_escapes_what_it_prints_from_a_manifest(shard_set, tmp_path):
    """Strings from someone else's manifest reached the terminal as they were: an escape
    sequence in tool_version or a skip reason could rewrite the screen."""
    site = copy_set(shard_set, tmp_path / "site")
    manifest = json.loads((site / "manifest.json").read_bytes())
    manifest["tool_version"] = "0.1\x1b[2J"
    manifest["images"]["skipped"] = {"odd\x07reason": 1}
    (site / "manifest.json").write_text(json.dumps(manifest))
    run = CliRunner().invoke(main, ["info", str(site)], color=True)  # no ANSI stripping
    assert run.exit_code == 0, run.output
    assert "\x1b" not in run.output and "\x07" not in run.output
    assert "ipt-data 0.1\\x1b[2J)" in run.output and "odd\\x07reason 1" in run.output


def test_pull_summary_and_error_lines_escape_control_characters(shard_set, tmp_path):
    """C1 controls (U+009B is a one-byte CSI on many terminals) are escaped like C0 ones, in the
    summary of a pull and in every Error line."""
    site = copy_set(shard_set, tmp_path / "site")
    manifest = json.loads((site / "manifest.json").read_bytes())
    selection = {"tasks": "all", "shards": "0:"}
    manifest["subset_of"] = {"source": "x\x9b2J", "manifest_sha256": "0", "selection": selection}
    (site / "manifest.json").write_text(json.dumps(manifest))
    with http_server(site) as server:
        run = CliRunner().invoke(main, ["pull", server.url, str(tmp_path / "dest")], color=True)
    assert run.exit_code == 0, run.output
    assert "\x9b" not in run.output and "of x\\x9b2J;" in run.output
    missing = CliRunner().invoke(main, ["info", str(tmp_path / "gone\x1b[2J\x9b")], color=True)
    assert missing.exit_code == 1 and missing.output.startswith("Error: ")
    assert "\x1b" not in missing.output and "\x9b" not in missing.output
    assert "gone\\x1b[2J\\x9b" in missing.output


def test_a_manifest_larger_than_any_real_one_is_refused(shard_set, tmp_path):
    """A manifest.json of MAX_MANIFEST_BYTES + 1 bytes (a URL serving something else, or a
    hostile one): one error, over a folder (which reads only the first MAX_MANIFEST_BYTES + 1)
    and over loopback HTTP (python's server ignores ranges: read whole, then refused), and a
    pull writes nothing. A large legitimate manifest still reads whole over HTTP."""
    served = copy_set(shard_set, tmp_path / "served")
    manifest = served / "manifest.json"
    with manifest.open("ab") as file:  # 4 MB, in many stream reads: read whole, still JSON
        file.write(b" " * (4_000_000 - manifest.stat().st_size))
    with http_server(served) as server:
        assert read_set_manifest(open_location(server.url))[1] == manifest.read_bytes()
    with manifest.open("ab") as file:  # a valid manifest padded with spaces: JSON, too large
        file.write(b" " * (MAX_MANIFEST_BYTES + 1 - manifest.stat().st_size))
    assert manifest.stat().st_size > MAX_MANIFEST_BYTES
    too_large = f"larger than {MAX_MANIFEST_BYTES:,} bytes, the most ipt-data reads here"
    with pytest.raises(UserError, match=too_large):
        read_set_manifest(open_location(served))
    with http_server(served) as server:
        result = CliRunner().invoke(main, ["pull", server.url, str(tmp_path / "copy")])
    assert result.exit_code == 1 and too_large in result.output, result.output
    assert not (tmp_path / "copy").exists()
