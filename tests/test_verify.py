"""`ipt-data verify` and `ipt-data info` on a real built shard set, intact and damaged."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from ipt_data.build import BuildConfig, build_shards
from ipt_data.cli import main
from ipt_data.distributor import RayConfig
from ipt_data.layout import PARAMS_NAME
from ipt_data.manifest import dump_json
from ipt_data.remote import open_location
from ipt_data.shardwriter import ShardWriter, sample_json
from ipt_data.sources import walk_sources
from ipt_data.tasks import parse_tasks
from ipt_data.verify import verify_shard_set


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory, sample_photos) -> Path:
    """sr_x2 and denoise_30 from three photographs, one image per shard."""
    from test_build import make_source_tree

    tree = make_source_tree(tmp_path_factory.mktemp("src"), sample_photos)
    config = BuildConfig(
        tasks=tuple(parse_tasks("sr_x2,denoise_30")),
        patches_per_image=2,
        images_per_shard=1,
        ray=RayConfig(workers=2, progress=False),
    )
    out = tmp_path_factory.mktemp("set") / "shards"
    build_shards(walk_sources(tree, limit=3), out, config)
    return out


def tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    """A shard's samples as key -> {extension: bytes}, in the shard's order."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, _, extension = member.name.partition(".")
            samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return samples


def rewrite_sample_json(
    root: Path, edit: Callable[[dict], dict], paths: list[str] | None = None
) -> None:
    """Rewrite each sample JSON of the shards at ``paths`` (default: every shard) of the set at
    ``root`` as ``edit`` returns it, through the builder's own shard writer and canonical JSON,
    and give the manifest their new sizes and sha256."""
    manifest = json.loads((root / "manifest.json").read_bytes())
    for task in manifest["tasks"].values():
        for entry in task["shards"]:
            if paths is not None and entry["path"] not in paths:
                continue
            samples = tar_samples(root / entry["path"])
            with ShardWriter(open_location(root), entry["path"]) as writer:
                for key, members in samples.items():
                    members["json"] = sample_json(edit(json.loads(members["json"])))
                    writer.write(key, members)
                info = writer.close()
            entry.update(bytes=info.bytes, sha256=info.sha256)
    (root / "manifest.json").write_bytes(dump_json(manifest))


def as_format_1(root: Path) -> Path:
    """Turn the (copied) format-2 set at ``root`` into a format-1 set, as ipt-data wrote them
    before version 2: ``image_seed`` a JSON integer, ``format_version`` 1 in the manifest and in
    ``_build/params.json`` (if any). Its images stay in hash order, which no reader looks at
    (docs/format.md#reading-older-versions)."""
    rewrite_sample_json(root, lambda meta: {**meta, "image_seed": int(meta["image_seed"])})
    for name in ("manifest.json", PARAMS_NAME):
        if (root / name).exists():
            data = json.loads((root / name).read_bytes())
            (root / name).write_bytes(dump_json({**data, "format_version": 1}))
    return root


@pytest.fixture()
def damaged(shard_set, tmp_path) -> Path:
    """A copy with one shard byte-flipped, one truncated and one deleted."""
    copy = tmp_path / "copy"
    shutil.copytree(shard_set, copy)
    flipped = copy / "sr_x2/sr_x2-000000.tar"
    data = bytearray(flipped.read_bytes())
    data[2000] ^= 0x01  # inside the first PNG
    flipped.write_bytes(bytes(data))
    truncated = copy / "denoise_30/denoise_30-000001.tar"
    truncated.write_bytes(truncated.read_bytes()[:5000])
    (copy / "sr_x2/sr_x2-000002.tar").unlink()
    return copy


def test_intact_set_verifies_and_info_reports_it(shard_set):
    result = CliRunner().invoke(main, ["verify", str(shard_set)])
    assert result.exit_code == 0, result.output
    assert "OK: 6 shards, 12 samples" in result.output
    assert "verify: 100%" in result.output and "6/6" in result.output  # progress, on stderr
    info = CliRunner().invoke(main, ["info", str(shard_set)])
    assert info.exit_code == 0
    assert "seed 0, 2 patches per image, 1 images per shard" in info.output
    lines = {line.split()[0]: line.split() for line in info.output.splitlines() if line}
    assert lines["sr_x2"][1:5] == ["48", "96", "6", "3"]
    assert lines["denoise_30"][1:5] == ["48", "48", "6", "3"]


def test_verify_names_each_bad_shard(damaged):
    result = CliRunner().invoke(main, ["verify", str(damaged), "--workers", "2"])
    assert result.exit_code == 1
    bad = {line.split()[1].rstrip(":") for line in result.output.splitlines() if "BAD" in line}
    assert bad == {
        "sr_x2/sr_x2-000000.tar",
        "denoise_30/denoise_30-000001.tar",
        "sr_x2/sr_x2-000002.tar",
    }
    assert "sr_x2/sr_x2-000002.tar: not found (listed in the manifest)" in result.output
    assert "Error: 3 of 6 shards are bad" in result.output


def test_samples_are_checked_not_only_hashes(shard_set, tmp_path):
    """A shard whose manifest entry was updated to a bad file is still caught by decoding."""
    copy = tmp_path / "copy"
    shutil.copytree(shard_set, copy)
    shard = copy / "denoise_30/denoise_30-000000.tar"
    data = bytearray(shard.read_bytes())
    data[1600] ^= 0xFF  # inside the first sample's PNG
    shard.write_bytes(bytes(data))
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = manifest["tasks"]["denoise_30"]["shards"][0]
    entry["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    report = verify_shard_set(copy, workers=1)
    assert list(report.problems) == ["denoise_30/denoise_30-000000.tar"]


def test_bad_manifest_is_one_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text('{"format": "something else"}')
    result = CliRunner().invoke(main, ["verify", str(tmp_path)])
    assert result.exit_code == 1 and "bad manifest" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(main, ["info", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "no manifest" in result.output


def test_unlisted_files_are_named_but_do_not_fail_the_set(shard_set, tmp_path):
    """A stray shard-named tar, a leftover .part and other files are reported (silently ignored
    before); the build's own bookkeeping is not."""
    copy = tmp_path / "copy"
    shutil.copytree(shard_set, copy)
    shutil.copy(copy / "sr_x2/sr_x2-000000.tar", copy / "sr_x2/sr_x2-000099.tar")
    (copy / "denoise_30/.denoise_30-000000.tar.0123.part").write_bytes(b"half")
    (copy / "NOTES").write_text("mine")
    result = CliRunner().invoke(main, ["verify", str(copy), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert [line.split()[1] for line in result.output.splitlines() if "UNLISTED" in line] == [
        "NOTES:",
        "denoise_30/.denoise_30-000000.tar.0123.part:",
        "sr_x2/sr_x2-000099.tar:",
    ]
    assert result.output.splitlines()[-1] == "OK: 6 shards, 12 samples"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--workers", "0"], "--workers must be at least 1, got 0"),  # -1 was a traceback
        (["--workers", "-1"], "--workers must be at least 1, got -1"),
    ],
)
def test_verify_bad_arguments_are_one_clear_error(shard_set, arguments, message):
    result = CliRunner().invoke(main, ["verify", str(shard_set), *arguments])
    assert result.exit_code == 1 and result.output == f"Error: {message}\n"


def test_verify_and_info_of_a_file_are_one_clear_error(tmp_path):
    (tmp_path / "a_file").write_bytes(b"x")
    for command in ("verify", "info"):
        result = CliRunner().invoke(main, [command, str(tmp_path / "a_file")])
        assert result.exit_code == 1 and "is a file; a shard set is a folder" in result.output


def test_sample_json_holds_image_seed_as_decimal_digits(shard_set):
    """Format 2 writes image_seed as a string of decimal digits (a JSON number past 2**63
    overflowed Arrow's int64): the same value as the generator's seed, spelt canonically."""
    from ipt_data.seeding import image_rng

    seeds = []
    for shard in sorted(shard_set.glob("*/*.tar")):
        for members in tar_samples(shard).values():
            meta = json.loads(members["json"])
            assert isinstance(meta["image_seed"], str)
            assert meta["image_seed"] == str(image_rng(0, meta["source"], meta["task"]["name"])[1])
            seeds.append(int(meta["image_seed"]))
    assert len(seeds) == 12 and all(0 <= seed < 2**64 for seed in seeds)
    assert (shard_set / "manifest.json").read_text().count('"format_version": 2') == 1


@pytest.mark.parametrize(
    ("seed", "shown"),
    [
        ("12a", '"12a"'),
        ("-1", '"-1"'),  # a sign
        ("007", '"007"'),  # leading zeros: not the canonical spelling
        (" 7", '" 7"'),
        ("1_000", '"1_000"'),  # int() would take it
        ("\u0663", '"\\u0663"'),  # ARABIC-INDIC DIGIT THREE: str.isdigit() would take it
        (str(2**64), f'"{2**64}"'),
        ("", '""'),
        (7, "7"),  # the format-1 spelling in a format-2 set
        (None, "null"),
    ],
)
def test_verify_refuses_an_image_seed_that_is_not_decimal_digits(shard_set, tmp_path, seed, shown):
    copy = tmp_path / "copy"
    shutil.copytree(shard_set, copy)
    shard = "sr_x2/sr_x2-000001.tar"
    rewrite_sample_json(copy, lambda meta: {**meta, "image_seed": seed}, [shard])
    report = verify_shard_set(copy, workers=1)
    assert list(report.problems) == [shard]
    expected = "format 2 writes a string of decimal digits below 2**64"
    assert f"json image_seed is {shown}, {expected}" in report.problems[shard]


def test_a_format_1_set_verifies_and_info_names_its_version(shard_set, tmp_path):
    """Sets written before format 2 (integer image_seed) are still read: verify checks their
    JSON as version 1 wrote it, and refuses the version-2 spelling in them."""
    old = as_format_1(shutil.copytree(shard_set, tmp_path / "v1"))
    meta = json.loads(next(iter(tar_samples(old / "sr_x2/sr_x2-000000.tar").values()))["json"])
    assert isinstance(meta["image_seed"], int) and meta["image_seed"] >= 0
    result = CliRunner().invoke(main, ["verify", str(old), "--no-progress"])
    assert result.exit_code == 0 and result.output.endswith("OK: 6 shards, 12 samples\n")
    info = CliRunner().invoke(main, ["info", str(old)])
    assert info.exit_code == 0 and f"shard set {old} (format 1, ipt-data" in info.output
    shard = "denoise_30/denoise_30-000002.tar"
    rewrite_sample_json(old, lambda meta: {**meta, "image_seed": str(meta["image_seed"])}, [shard])
    report = verify_shard_set(old, workers=1)
    assert list(report.problems) == [shard]
    assert "format 1 writes an integer from 0 to 2**64-1" in report.problems[shard]
