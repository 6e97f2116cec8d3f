"""The dataset card (README.md): written by every build and by ``ipt-data card``, known to
verify, copied by pull and push, and read by Hugging Face ``datasets`` itself (a subprocess with
the real library, offline), for every task of a set built from the sample photographs, one of
whose tasks has an empty first shard."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import pytest
import yaml
from click.testing import CliRunner
from loopback_servers import BIN, copy_set, http_server

from ipt_data.card import filled_shards, render_card
from ipt_data.cli import main
from ipt_data.fileio import encode_image
from ipt_data.remote import open_location, read_shard
from ipt_data.transfer import pull, push
from ipt_data.verify import verify_shard_set

TASK_NAMES = ["sr_x2", "sr_x3", "sr_x4", "derain", "denoise_30", "denoise_50"]


def first_in_build_order(ids: list[str], seed: int, candidates) -> str:
    """The first candidate id that the build order (docs/format.md#build-order) puts before
    every id of ``ids``."""

    def key(image_id: str) -> bytes:
        return hashlib.sha256(f"{seed}\0{image_id}".encode()).digest()

    smallest = min(key(image_id) for image_id in ids)
    return next(candidate for candidate in candidates if key(candidate) < smallest)


@pytest.fixture(scope="module")
def card_set(tmp_path_factory) -> Path:
    """Six tasks from the sample photographs plus a 100x150 crop of one, built one image per
    shard; the crop comes first in build order and is too small for sr_x3 and sr_x4, whose
    first shard is therefore empty."""
    root = tmp_path_factory.mktemp("card")
    listed = subprocess.run(
        [BIN / "ipt-data", "sample", str(root / "src")], check=True, capture_output=True, text=True
    )
    photos = [Path(line).relative_to(root / "src").as_posix() for line in listed.stdout.split()]
    crop_name = first_in_build_order(
        photos, 0, (f"n00000003/crop_{number}.JPEG" for number in range(1000))
    )
    photo = cv2.imread(str(root / "src" / photos[0]))[:100, :150, ::-1]
    (root / "src" / crop_name).parent.mkdir()
    (root / "src" / crop_name).write_bytes(encode_image(photo, ".jpg"))
    options = "--patches-per-image 2 --images-per-shard 1 --workers 1 --no-progress"
    command = [BIN / "ipt-data", "build", "--src", root / "src", "--out", root / "set"]
    subprocess.run([*command, *options.split()], check=True, capture_output=True, timeout=300)
    return root / "set"


def manifest_of(shard_set: Path) -> dict:
    return json.loads((shard_set / "manifest.json").read_bytes())


def card_header(shard_set: Path) -> dict:
    text = (shard_set / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_the_build_writes_the_card_and_its_configs_list_the_shards_with_samples(card_set):
    manifest = manifest_of(card_set)
    assert [entry["shards"][0]["samples"] for entry in manifest["tasks"].values()] == [
        2, 0, 0, 2, 2, 2
    ]  # fmt: skip
    header = card_header(card_set)
    assert [config["config_name"] for config in header["configs"]] == TASK_NAMES
    for config in header["configs"]:
        task = manifest["tasks"][config["config_name"]]
        (split,) = config["data_files"]
        expected = [shard["path"] for shard in task["shards"] if shard["samples"]]
        assert split == {"split": "train", "path": expected}
        assert len(expected) == (6 if config["config_name"] in ("sr_x3", "sr_x4") else 7)
    assert [info["config_name"] for info in header["dataset_info"]] == TASK_NAMES
    assert header["license"] == "other"
    body = (card_set / "README.md").read_text()
    assert "keep the source images' terms" in body and "ImageNet terms" in body
    assert "Apache License 2.0" in body and "@inproceedings{chen2021ipt" in body
    assert "docs/corruptions.md#matlab-exact-bicubic" in body
    assert "| `sr_x4` | 48×48 | 192×192 | 12 | 7 (6) |" in body


def test_ipt_data_card_writes_the_same_bytes_and_touches_no_shard(card_set, tmp_path):
    shard_set = copy_set(card_set, tmp_path / "set")
    written = (shard_set / "README.md").read_bytes()
    (shard_set / "README.md").unlink()
    before = {path: path.stat().st_mtime_ns for path in shard_set.rglob("*.tar")}
    result = CliRunner().invoke(main, ["card", str(shard_set)])
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {shard_set}/README.md\n"
    assert (shard_set / "README.md").read_bytes() == written
    assert {path: path.stat().st_mtime_ns for path in shard_set.rglob("*.tar")} == before
    printed = CliRunner().invoke(main, ["card", str(shard_set), "--stdout"])
    assert printed.output.encode() == written


def test_verify_knows_the_card(card_set, tmp_path):
    shard_set = copy_set(card_set, tmp_path / "set")
    (shard_set / "README.md").write_text("edited by hand\n")  # a changed card disturbs nothing
    (shard_set / "stray.txt").write_text("x")
    result = CliRunner().invoke(main, ["verify", str(shard_set), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "UNLISTED stray.txt: not in the manifest (readers ignore it)",
        "OK: 42 shards, 80 samples",
    ]


def test_pull_and_push_copy_the_card_byte_for_byte(card_set, tmp_path):
    card = (card_set / "README.md").read_bytes()
    with http_server(card_set) as server:
        pull(server.url, tmp_path / "pulled")
    assert (tmp_path / "pulled" / "README.md").read_bytes() == card
    push(tmp_path / "pulled", tmp_path / "pushed")
    assert (tmp_path / "pushed" / "README.md").read_bytes() == card
    no_card = copy_set(card_set, tmp_path / "old")  # a set built before cards: none is made
    (no_card / "README.md").unlink()
    pull(no_card, tmp_path / "old-copy")
    assert not (tmp_path / "old-copy" / "README.md").exists()


def test_a_subset_gets_the_card_of_its_own_manifest(card_set, tmp_path):
    pull(card_set, tmp_path / "sub", tasks="sr_x4,denoise_30", shards="0:3")
    manifest = manifest_of(tmp_path / "sub")
    assert (tmp_path / "sub" / "README.md").read_text() == render_card(manifest)
    header = card_header(tmp_path / "sub")
    listed = {entry["config_name"]: entry["data_files"][0]["path"] for entry in header["configs"]}
    assert listed == {
        "sr_x4": ["sr_x4/sr_x4-000001.tar", "sr_x4/sr_x4-000002.tar"],
        "denoise_30": [f"denoise_30/denoise_30-00000{index}.tar" for index in range(3)],
    }
    assert "This is a subset" in (tmp_path / "sub" / "README.md").read_text()
    assert verify_shard_set(tmp_path / "sub", workers=1).unlisted == ()


def test_a_manifest_without_task_parameters_gets_a_card_without_features(card_set):
    manifest = manifest_of(card_set)
    manifest["params"]["tasks"] = 5  # not checked by readers: another writer may put anything
    text = render_card(manifest)
    header = yaml.safe_load(text.split("---\n")[1])
    assert [config["config_name"] for config in header["configs"]] == TASK_NAMES
    assert "dataset_info" not in header  # datasets infers the features then
    assert "- `sr_x2`: the target is a 96×96 crop; corruption {}." in text


def test_filled_shards_skips_empty_ones():
    task = {"shards": [{"path": "a", "samples": 0}, {"path": "b", "samples": 3}]}
    assert filled_shards(task) == ["b"]


# What `datasets` reports of each task, loaded (1) from the card's shards with the webdataset
# builder, in Arrow and streaming mode, and (2) as a config of the set by its card.
DATASETS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import datasets

    root, tasks = sys.argv[1], json.loads(sys.argv[2])

    def rows(dataset):
        return [
            [row["__key__"], row["input.png"].size, row["target.png"].size,
             row["json"]["image_seed"], row["json"]["task"]["name"]]
            for row in dataset
        ]

    report = {"configs": datasets.get_dataset_config_names(root)}
    for name, paths in tasks.items():
        files = {"train": [f"{root}/{path}" for path in paths]}
        report[name] = {
            "arrow": rows(datasets.load_dataset("webdataset", data_files=files, split="train")),
            "streaming": rows(
                datasets.load_dataset("webdataset", data_files=files, split="train", streaming=True)
            ),
            "card": rows(datasets.load_dataset(root, name, split="train")),
        }
    print(json.dumps(report))
    """
)


def test_hugging_face_datasets_loads_every_task(card_set, tmp_path):
    manifest = manifest_of(card_set)
    tasks = {name: filled_shards(task) for name, task in manifest["tasks"].items()}
    environment = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),  # the datasets cache: fresh, and not the user's
        "HF_HUB_OFFLINE": "1",  # a local set needs no Hub; nothing may be fetched
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    }
    run = subprocess.run(
        [sys.executable, "-c", DATASETS_SCRIPT, str(card_set), json.dumps(tasks)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["configs"] == TASK_NAMES
    location = open_location(card_set)
    for name, task in manifest["tasks"].items():
        side = task["target_size"]
        expected = [
            [
                sample["__key__"],
                [48, 48],
                [side, side],
                json.loads(sample["json"])["image_seed"],
                name,
            ]
            for shard in task["shards"]
            for sample in read_shard(location, shard)
        ]
        assert len(expected) == task["samples"] == (12 if name in ("sr_x3", "sr_x4") else 14)
        assert isinstance(expected[0][3], str) and int(expected[0][3]) >= 0
        for mode in ("arrow", "streaming", "card"):
            assert report[name][mode] == expected, (name, mode)
