"""build_shards on a real local Ray instance: an ImageNet-style tree of the sample photographs
plus broken and odd files -> shard sets read back with the real webdataset library."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ipt_data.build import BuildConfig, build_shards
from ipt_data.decode import decode_image
from ipt_data.distributor import RayConfig
from ipt_data.errors import UserError
from ipt_data.imresize import downscale
from ipt_data.layout import PARAMS_NAME, stats_name
from ipt_data.manifest import UNRECORDED_ENCODER
from ipt_data.png import decode_png, encoder_identity
from ipt_data.rain import Rain
from ipt_data.sources import open_sources, walk_sources
from ipt_data.tasks import TASKS, Task
from ipt_data.verify import describe_shard_set
from ipt_data.worker import ChunkJob, process_chunk

PATCHES = 3
IMAGES_PER_SHARD = 4
# What make_source_tree writes: 6 photographs + 9 files with image names, one text file.
EXPECTED_SKIPPED = {"empty": 1, "non_image_file": 1, "not_an_image": 1, "truncated": 1}
EXPECTED_DECODED = 12
EXPECTED_TOO_SMALL = {"sr_x3": 1, "sr_x4": 1}  # the 120x120 image


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def make_source_tree(root: Path, photos: dict[str, np.ndarray]) -> Path:
    """``root/nXXXXXXXX/*.JPEG`` (the photographs, JPEG q90, two per class) and a class folder
    of broken and odd files; returns ``root``."""
    for number, (name, photo) in enumerate(photos.items()):
        path = root / f"n{number // 2:08d}" / f"{name}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_encoded(Image.fromarray(photo), "JPEG", quality=90))
    odd = root / "n99999999"
    odd.mkdir()
    crop = photos["coffee"][100:300, 200:400]  # 200x200: holds every task's target crop
    jpeg = _encoded(Image.fromarray(crop), "JPEG", quality=90)
    wide = cv2.cvtColor(crop.astype(np.uint16) * 257, cv2.COLOR_RGB2BGR)
    files = {
        "truncated.JPEG": jpeg[: len(jpeg) // 2],
        "empty.JPEG": b"",
        "text.JPEG": b"this is not an image\n" * 20,
        "cmyk.JPEG": _encoded(Image.fromarray(crop).convert("CMYK"), "JPEG", quality=90),
        "gray.JPEG": _encoded(Image.fromarray(crop[..., 1]), "JPEG", quality=90),
        "rgba.PNG": _encoded(Image.fromarray(np.dstack([crop, crop[..., :1]])), "PNG"),
        "deep.png": cv2.imencode(".png", wide)[1].tobytes(),
        "png_named.JPEG": _encoded(Image.fromarray(crop), "PNG"),
        "tiny.jpg": _encoded(Image.fromarray(crop[:120, :120]), "JPEG", quality=90),
        "notes.txt": b"class folder notes\n",
    }
    for name, data in files.items():
        (odd / name).write_bytes(data)
    return root


def shard_hashes(out: Path) -> dict[str, str]:
    """sha256 of every tar under ``out``, by relative path."""
    return {
        path.relative_to(out).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(out.glob("*/*.tar"))
    }


def read_with_webdataset(out: Path, task: str) -> list[dict]:
    import webdataset as wds

    urls = [str(path) for path in sorted((out / task).glob("*.tar"))]
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8")
    return list(dataset)


@pytest.fixture(scope="module")
def ray_instance():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tree(tmp_path_factory, sample_photos) -> Path:
    return make_source_tree(tmp_path_factory.mktemp("src"), sample_photos)


def _config(workers: int, **changes) -> BuildConfig:
    values = {"patches_per_image": PATCHES, "images_per_shard": IMAGES_PER_SHARD}
    return BuildConfig(**{**values, **changes}, ray=RayConfig(workers=workers, progress=False))


@pytest.fixture(scope="module")
def built(ray_instance, tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("built") / "set"
    build_shards(walk_sources(tree), out, _config(workers=2))
    return out


def build_order(ids, seed: int) -> list[str]:
    """docs/format.md#build-order, written out again from the page: ids sorted by the sha256 of
    f"{seed}\\0{id}" (UTF-8, undecodable bytes as they are), ties by id."""

    def key(image_id: str) -> tuple[bytes, str]:
        text = f"{seed}\0{image_id}".encode("utf-8", "surrogateescape")
        return hashlib.sha256(text).digest(), image_id

    return sorted(ids, key=key)


def test_sources_are_sorted_and_non_images_counted(tree, tmp_path):
    sources = walk_sources(tree)
    assert list(sources.ids) == sorted(sources.ids) and len(sources.ids) == 15
    assert sources.non_image_files == 1 and "n99999999/rgba.PNG" in sources.ids
    assert walk_sources(tree, limit=4).ids == sources.ids[:4]
    listed = tmp_path / "list.txt"
    listed.write_text("# two images\nn00000000/chelsea.JPEG\nn00000000/astronaut.JPEG\n")
    from_list = open_sources(tree, listed)
    assert from_list.ids == ("n00000000/chelsea.JPEG", "n00000000/astronaut.JPEG")
    assert from_list.fingerprint != walk_sources(tree, limit=2).fingerprint
    with pytest.raises(UserError, match="no such folder"):
        walk_sources(tree / "missing")


def test_the_build_order_is_a_seeded_hash_of_the_ids(tree):
    """Format 2 builds the selected ids in the order of sha256(seed, id): whatever order they
    came in, another order per seed, and --limit picks the first ids by name before it."""
    sources = walk_sources(tree)
    ordered = sources.in_build_order(0)
    assert list(ordered.ids) == build_order(sources.ids, 0) != list(sources.ids)
    assert ordered.in_build_order(0) == ordered  # ordering twice changes nothing
    shuffled = dataclasses.replace(sources, ids=tuple(reversed(sources.ids)))
    assert shuffled.in_build_order(0) == ordered
    assert ordered.fingerprint != sources.fingerprint
    other = sources.in_build_order(1)
    assert list(other.ids) == build_order(sources.ids, 1)
    assert other.ids != ordered.ids and sorted(other.ids) == sorted(ordered.ids)
    assert other.fingerprint != ordered.fingerprint
    first_four = set(sources.ids[:4])  # the first four by name, whatever the seed
    for seed in (0, 1, 2**63 - 1, -5):
        limited = walk_sources(tree, limit=4).in_build_order(seed)
        assert set(limited.ids) == first_four and list(limited.ids) == build_order(first_four, seed)


def test_manifest_counts_sizes_and_hashes(built):
    manifest = json.loads((built / "manifest.json").read_text())
    assert "configs:" in (built / "README.md").read_text()  # build_shards writes the card too
    images = manifest["images"]
    assert images["listed"] == 15 and images["decoded"] == EXPECTED_DECODED
    assert images["skipped"] == EXPECTED_SKIPPED
    assert manifest["params"]["seed"] == 0 and manifest["params"]["patches_per_image"] == PATCHES
    assert list(manifest["tasks"]) == list(TASKS)
    for name, task in manifest["tasks"].items():
        too_small = EXPECTED_TOO_SMALL.get(name, 0)
        assert task["too_small"] == too_small
        assert task["samples"] == (EXPECTED_DECODED - too_small) * PATCHES
        assert [shard["path"] for shard in task["shards"]] == [
            f"{name}/{name}-{index:06d}.tar" for index in range(4)
        ]
        for shard in task["shards"]:
            data = (built / shard["path"]).read_bytes()
            assert len(data) == shard["bytes"]
            assert hashlib.sha256(data).hexdigest() == shard["sha256"]
    assert not list(built.glob("*/.*.tmp"))


@pytest.mark.parametrize("name", list(TASKS))
def test_webdataset_reads_aligned_pairs(built, tree, name):
    task = TASKS[name]
    samples = read_with_webdataset(built, name)
    manifest = json.loads((built / "manifest.json").read_text())
    assert len(samples) == manifest["tasks"][name]["samples"]
    keys = [sample["__key__"] for sample in samples]
    assert len(set(keys)) == len(keys) and not any("." in key for key in keys)
    sources = {}
    for sample in samples:
        meta = sample["json"]
        source = meta["source"]
        if source not in sources:
            sources[source] = decode_image((tree / source).read_bytes(), source)
        image, (top, left, height, width) = sources[source], meta["box"]
        assert meta["task"] == task.params() and meta["seed"] == 0
        low, high = sample["input.png"], sample["target.png"]
        assert low.shape == (48, 48, 3) and high.shape == (task.target_size,) * 2 + (3,)
        np.testing.assert_array_equal(high, image[top : top + height, left : left + width])
        _assert_corrupted(task, low, high)


def _assert_corrupted(task, low: np.ndarray, high: np.ndarray) -> None:
    if task.scale > 1:
        # The whole-image downscale sees pixels outside the target: equal away from the border.
        expected = downscale(high, task.scale)
        inner = np.abs(low.astype(int) - expected)[2:-2, 2:-2]
        assert inner.max() <= 1 and (inner == 0).mean() > 0.99
    elif task.name == "derain":
        assert (low >= high).all() and (low > high).any()  # streaks only add light
        rain = low.astype(int) - high
        unclipped = low.max(axis=2) < 255
        assert (rain[..., 0] == rain[..., 1])[unclipped].all()  # one gray layer
    else:
        sigma = task.corruption.params()["sigma"]
        residual = (low.astype(float) - high)[(high > 60) & (high < 195)]
        assert 0.85 * sigma < residual.std() < 1.1 * sigma


def sample_places(out: Path, task: str) -> list[tuple[int, int, str]]:
    """(shard index, key number, source) of every sample of ``task``'s shards, in shard order."""
    manifest = json.loads((out / "manifest.json").read_bytes())
    places = []
    for index, shard in enumerate(manifest["tasks"][task]["shards"]):
        with tarfile.open(out / shard["path"]) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    source = json.loads(tar.extractfile(member).read())["source"]
                    places.append((index, int(member.name[:8]), source))
    return places


def test_chunks_and_keys_follow_the_seeded_hash_order(built, tree, tmp_path):
    """Shard i holds images i*N .. i*N+N-1 of the hash order and a key's number is the image's
    place in it (a skipped image keeps its place); another seed deals other images to the
    shards, by the same rule."""
    other = tmp_path / "seed1"
    config = _config(workers=2, seed=1, tasks=(TASKS["derain"],), patches_per_image=1)
    build_shards(walk_sources(tree), other, config)
    chunks = {}
    for out, seed, task in ((built, 0, "sr_x2"), (built, 0, "derain"), (other, 1, "derain")):
        order = build_order(walk_sources(tree).ids, seed)
        places = sample_places(out, task)
        numbers = [number for _, number, _ in places]
        assert numbers == sorted(numbers)
        for shard, number, source in places:
            assert order[number] == source and shard == number // IMAGES_PER_SHARD
        assert len({source for _, _, source in places}) == EXPECTED_DECODED
        chunks[seed] = [{source for shard, _, source in places if shard == i} for i in range(4)]
    assert chunks[0] != chunks[1]


def test_one_worker_gives_the_same_bytes(built, tree, tmp_path):
    out = tmp_path / "one"
    result = build_shards(walk_sources(tree), out, _config(workers=1))
    assert result.chunks_run == 4
    assert (out / "manifest.json").read_bytes() == (built / "manifest.json").read_bytes()
    assert shard_hashes(out) == shard_hashes(built)


def test_resume_runs_only_missing_chunks(built, tree, tmp_path):
    out = tmp_path / "resumed"
    sources = walk_sources(tree)
    build_shards(sources, out, _config(workers=2, tasks=(TASKS["derain"],)))
    for path in (out / "derain").glob("*-000002.tar"):
        path.unlink()
    (out / stats_name(2)).unlink()
    leftovers = [  # by a killed worker (a shard, a stats file) and a killed driver (manifest)
        out / "derain" / ".derain-000003.tar.0123456789ab.part",
        out / "_build" / ".chunk-000001.json.0123456789ab.part",
        out / ".manifest.json.0123456789ab.part",
    ]
    for leftover in leftovers:
        leftover.write_bytes(b"left half-written")
    result = build_shards(sources, out, _config(workers=2, tasks=(TASKS["derain"],)))
    assert (result.chunks_run, result.chunks_total) == (1, 4)
    expected = {
        path: digest for path, digest in shard_hashes(built).items() if path.startswith("derain/")
    }
    assert shard_hashes(out) == expected
    assert not list(out.rglob(".*.part"))
    # A shard lost after its chunk was done (its stats file stays): the rerun writes that chunk
    # again instead of a manifest listing a file that is not there (exit 0 before).
    (out / "derain" / "derain-000001.tar").unlink()
    result = build_shards(sources, out, _config(workers=2, tasks=(TASKS["derain"],)))
    assert (result.chunks_run, result.chunks_total) == (1, 4)
    assert shard_hashes(out) == expected


def test_other_parameters_into_the_same_output_are_refused(built, tree, tmp_path):
    before = shard_hashes(built)
    with pytest.raises(UserError, match=r"params\.seed: 0 -> 1"):
        build_shards(walk_sources(tree), built, _config(workers=2, seed=1))
    with pytest.raises(UserError, match=r"source\.fingerprint"):
        build_shards(walk_sources(tree, limit=5), built, _config(workers=2))
    assert shard_hashes(built) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="not an empty folder"):
        build_shards(walk_sources(tree), foreign, _config(workers=2))


def test_the_manifest_names_the_png_encoder_and_info_shows_it(built):
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["png_encoder"] == encoder_identity()
    assert manifest["png_encoder"].startswith("ipt-png 1 (Up filter, libdeflate level 1, deflate")
    assert f"PNG encoder: {encoder_identity()}" in describe_shard_set(built)


def test_a_format_1_set_is_not_continued(built, tree, tmp_path):
    """A set of format 1 (name-ordered chunks, integer image_seed) is not resumed by this
    builder, whose chunks would hold other images: one Error line asking for a new folder,
    nothing written."""
    from click.testing import CliRunner
    from test_verify import as_format_1

    from ipt_data.cli import main

    out = as_format_1(shutil.copytree(built, tmp_path / "v1"))
    (out / "sr_x2" / "sr_x2-000003.tar").unlink()  # an unfinished chunk to resume
    (out / "manifest.json").unlink()
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    options = ["--patches-per-image", str(PATCHES), "--images-per-shard", str(IMAGES_PER_SHARD)]
    command = ["build", "--src", str(tree), "--out", str(out), *options, "--no-progress"]
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output == (
        f"Error: {out} holds a shard set of format version 1, and this ipt-data builds version "
        "2; a build does not continue a set of another version: build into a new folder "
        "(another --out)\n"
    )
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


@pytest.mark.parametrize(
    "earlier", ["ipt-png 1 (Up filter, libdeflate level 1, deflate 0.1)", None]
)
def test_a_set_written_with_another_png_encoder_is_not_continued(built, tree, tmp_path, earlier):
    """Resuming (or re-running into) a set whose PNGs another encoder wrote would mix two
    encoders' bytes in one set; the refusal names both, in full. A set from before the encoder
    was recorded (no field) counts as OpenCV's."""
    out = tmp_path / "set"
    shutil.copytree(built, out)
    params = json.loads((out / PARAMS_NAME).read_text())
    if earlier is None:
        del params["png_encoder"]
    else:
        params["png_encoder"] = earlier
    (out / PARAMS_NAME).write_text(json.dumps(params))
    before = shard_hashes(out)
    named = re.escape(earlier or UNRECORDED_ENCODER)
    ours = re.escape(encoder_identity())
    message = f"written with PNG encoder '{named}'; this ipt-data writes '{ours}'"
    with pytest.raises(UserError, match=message):
        build_shards(walk_sources(tree), out, _config(workers=2))
    assert shard_hashes(out) == before


def test_a_worker_with_another_png_encoder_refuses_its_chunk(tree, tmp_path):
    job = ChunkJob(0, 0, ("n00000000/astronaut.JPEG",), str(tree), str(tmp_path / "o"),
                   (TASKS["sr_x2"],), 2, 0, "libdeflate", "ipt-png 1 (other)")  # fmt: skip
    with pytest.raises(UserError, match=r"this worker's PNG encoder is .*, the build's is "):
        process_chunk(job)
    assert not (tmp_path / "o").exists()


def test_a_set_built_with_isal_is_reproducible_and_not_continued_with_libdeflate(
    ray_instance, tree, tmp_path
):
    """The opt-in ISA-L encoder: the same bytes with 1 and 2 workers, its identity in the
    manifest, pixels equal to the default encoder's set, and no mixing of the two in one set."""
    tasks = (TASKS["sr_x2"], TASKS["denoise_30"])
    isal_config = _config(workers=2, tasks=tasks, png_encoder="isal")
    result = build_shards(walk_sources(tree), tmp_path / "two", isal_config)
    assert result.manifest["png_encoder"] == encoder_identity("isal")
    one = dataclasses.replace(isal_config, ray=RayConfig(workers=1, progress=False))
    build_shards(walk_sources(tree), tmp_path / "one", one)
    assert shard_hashes(tmp_path / "one") == shard_hashes(tmp_path / "two")
    portable = build_shards(walk_sources(tree), tmp_path / "default", _config(2, tasks=tasks))
    for name in ("sr_x2", "denoise_30"):
        fast, default = result.manifest["tasks"][name], portable.manifest["tasks"][name]
        assert fast["shards"] != default["shards"]
        assert decoded_members(tmp_path / "two" / name) == decoded_members(
            tmp_path / "default" / name
        )
    earlier, now = encoder_identity("isal"), encoder_identity()
    message = re.escape(f"written with PNG encoder '{earlier}'; this ipt-data writes '{now}'")
    with pytest.raises(UserError, match=message):
        build_shards(walk_sources(tree), tmp_path / "two", _config(workers=2, tasks=tasks))


def decoded_members(folder: Path) -> dict[str, bytes]:
    """Every PNG member of the shards in ``folder`` as raw pixel bytes (every other member as
    it is), by member name."""
    members = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                data = tar.extractfile(member).read()
                members[member.name] = (
                    decode_png(data).tobytes() if member.name.endswith(".png") else data
                )
    return members


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--out", "{tmp}/o"], "give the images: --src FOLDER, or --files LIST"),
        (["--src", "{tmp}/missing", "--out", "{tmp}/o"], "no such folder"),
        (["--src", "{tree}", "--out", "{tmp}/o", "--tasks", "sr_x5"], "unknown task 'sr_x5'"),
        (["--src", "{tree}", "--out", "{tmp}/o", "--patches-per-image", "0"], "at least 1"),
        (["--files", "{tmp}/none.txt", "--out", "{tmp}/o"], "cannot read the file list"),
        (["--src", "{tree}", "--out", "{tmp}/o", "--address", "127.0.0.1:1"], "cannot reach"),
        # 0 used to mean "the default" (1000 per shard), negative workers reached ray.init
        (["--src", "{tree}", "--out", "{tmp}/o", "--images-per-shard", "0"], "at least 1, got 0"),
        (["--src", "{tree}", "--out", "{tmp}/o", "--workers", "0"], "--workers must be at least"),
        (["--src", "{tree}", "--out", "{tmp}/o", "--workers", "-1"], "--workers must be at least"),
        (["--src", "{tree}", "--out", "{tmp}/o", "--limit", "-1"], "--limit must be at least 1"),
        # every sample's JSON holds the seed: it stays within Arrow's int64
        (["--src", "{tree}", "--out", "{tmp}/o", "--seed", str(2**63)], "--seed must be a 64-bit"),
        # a file where the output folder (or one of its parents) should be: was a traceback
        (["--src", "{tree}", "--out", "{file}"], "it is a file; a shard set is a folder"),
        (["--src", "{tree}", "--out", "{file}/o"], "file; a shard set is a folder"),
        (["--src", "{file}", "--out", "{tmp}/o"], "is a file, not a folder"),
        # --files with a --src that is not a folder: every image would be skipped as missing
        (["--src", "{tmp}/missing", "--files", "{list}", "--out", "{tmp}/o"], "no such folder"),
        # the rerun of a build into its own source folder refused to resume (the walk counted
        # its shards as source files: "built differently (source.non_image_files: 0 -> 4)")
        (["--src", "{tree}", "--out", "{tree}/shards"], "is inside the source folder"),
        # a traceback before (UnicodeDecodeError)
        (["--src", "{tree}", "--files", "{binary}", "--out", "{tmp}/o"], "is not UTF-8 text"),
    ],
)
def test_build_command_user_errors_are_one_line(tree, tmp_path, arguments, message):
    from click.testing import CliRunner

    from ipt_data.cli import main

    (tmp_path / "a_file").write_bytes(b"not a folder")
    (tmp_path / "list.txt").write_text("n00000000/astronaut.JPEG\n")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00n0/a.JPEG\n")
    paths = {"file": tmp_path / "a_file", "list": tmp_path / "list.txt"}
    paths["binary"] = tmp_path / "binary.txt"
    filled = [arg.format(tmp=tmp_path, tree=tree, **paths) for arg in arguments]
    result = CliRunner().invoke(main, ["build", *filled])
    assert result.exit_code == 1 and message in result.output, result.output
    assert result.output.startswith("Error: ") and "Traceback" not in result.output
    assert not (tmp_path / "o").exists() and paths["file"].read_bytes() == b"not a folder"
    assert not (tree / "shards").exists()


def test_a_file_list_is_built_in_hash_order_whatever_its_own_order(ray_instance, tree, tmp_path):
    """A --files list's order decides which images --limit keeps, no longer the chunks: the
    same images listed in another order give the same set, byte for byte."""
    names = ["n00000001/rocket.JPEG", "n00000000/chelsea.JPEG", "n00000002/motorcycle_left.JPEG"]
    config = _config(workers=2, tasks=(TASKS["denoise_30"],), images_per_shard=1)
    manifests = []
    for number, listed_names in enumerate((names, names[::-1])):
        listed = tmp_path / f"list{number}.txt"
        listed.write_text("\n".join([*listed_names, "n99999999/notes.txt", ""]))
        sources = open_sources(tree, listed)
        out = tmp_path / f"listed{number}"
        manifest = build_shards(sources, out, config).manifest
        assert manifest["images"] == {"listed": 3, "decoded": 3, "skipped": {"non_image_file": 1}}
        assert manifest["source"]["fingerprint"] == sources.in_build_order(0).fingerprint
        firsts = [
            first_sample_source(out / shard["path"])
            for shard in manifest["tasks"]["denoise_30"]["shards"]
        ]
        assert firsts == build_order(names, 0)
        manifests.append((out / "manifest.json").read_bytes())
    assert manifests[0] == manifests[1]
    assert shard_hashes(tmp_path / "listed0") == shard_hashes(tmp_path / "listed1")
    # --limit takes the list's first images, then orders them
    limited = open_sources(tree, tmp_path / "list1.txt", limit=2).in_build_order(0)
    assert list(limited.ids) == build_order(names[::-1][:2], 0)


def test_a_task_built_from_the_python_api_uses_its_own_parameters(built, tree, tmp_path):
    """The workers build the task objects the caller gave, whose parameters the manifest
    records: heavy rain is heavy, not the table's light rain under a heavy-rain manifest."""
    heavy = Task("derain", 3, Rain(heavy=True))
    out = tmp_path / "heavy"
    manifest = build_shards(walk_sources(tree), out, _config(workers=2, tasks=(heavy,))).manifest
    assert manifest["params"]["tasks"]["derain"]["corruption"]["heavy"] is True

    def rain_strength(folder: Path) -> float:
        pairs = read_with_webdataset(folder, "derain")
        return np.mean([np.abs(p["input.png"] - p["target.png"].astype(int)).mean() for p in pairs])

    assert rain_strength(out) > 2 * rain_strength(built)


def first_sample_source(path: Path) -> str:
    """The source of the first sample of one shard."""
    import webdataset as wds

    dataset = wds.WebDataset([str(path)], shardshuffle=False).decode()
    return next(iter(dataset))["json"]["source"]


def test_missing_listed_images_are_counted_and_an_empty_task_fails(ray_instance, tree, tmp_path):
    """A --files list naming a missing image counts it as missing_file; a task that gets no
    sample at all (the one image is too small for sr_x4) fails the command after the complete
    manifest is written (exit 0 hid it before)."""
    from click.testing import CliRunner

    from ipt_data.cli import main

    listed = tmp_path / "list.txt"
    listed.write_text("n99999999/tiny.jpg\nn00000000/gone.JPEG\n")
    out = tmp_path / "set"
    options = ["--tasks", "derain,sr_x4", "--patches-per-image", "1", "--no-progress"]
    command = ["build", "--src", str(tree), "--files", str(listed), "--out", str(out), *options]
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.splitlines()[-1] == (
        "Error: the shard set holds no sr_x4 samples (1 of 2 images decoded; skipped and "
        "too-small counts above)"
    )
    manifest = json.loads((out / "manifest.json").read_bytes())
    assert manifest["images"] == {"listed": 2, "decoded": 1, "skipped": {"missing_file": 1}}
    assert manifest["tasks"]["sr_x4"]["too_small"] == 1
    assert manifest["tasks"]["derain"]["samples"] == 1


def test_an_output_in_use_by_another_build_is_refused(ray_instance, tree, tmp_path):
    """A second build into a folder that a running build (another process) holds is one clear
    error and writes nothing; two builds there used to delete each other's partial shards."""
    from test_data_cli_errors import held_by_another_process

    out = tmp_path / "busy"
    config = _config(workers=1, tasks=(TASKS["derain"],))
    with held_by_another_process(out), pytest.raises(UserError, match="in use by another"):
        build_shards(walk_sources(tree, limit=1), out, config)
    assert list(out.iterdir()) == []


def test_a_file_name_that_is_not_utf8_is_built(ray_instance, tree, tmp_path):
    """A source whose file name is not UTF-8 (possible on Linux) crashed its chunk in the
    seeding (UnicodeEncodeError) on every retry, failing the build; now it is an image like any
    other, seeded from its name's own bytes."""
    src = tmp_path / "src"
    (src / "n0").mkdir(parents=True)
    name = os.fsdecode(b"caf\xe9.JPEG")  # Latin-1 bytes: a surrogate escape in Python
    (src / "n0" / name).write_bytes((tree / "n00000000" / "astronaut.JPEG").read_bytes())
    config = _config(workers=1, tasks=(TASKS["derain"],))
    manifest = build_shards(walk_sources(src), tmp_path / "set", config).manifest
    assert manifest["images"]["decoded"] == 1
    assert manifest["tasks"]["derain"]["samples"] == PATCHES


def test_symlinked_folders_are_walked_once(tree, tmp_path):
    """A class folder linked from elsewhere was silently left out (os.walk does not follow
    links); now it is walked, and a link back up the tree or a second link to the same folder
    is not walked again (no loop, no image twice)."""
    root = tmp_path / "linked"
    (root / "real").mkdir(parents=True)
    (root / "n0").symlink_to(tree / "n00000000", target_is_directory=True)
    (root / "real" / "again").symlink_to(tree / "n00000000", target_is_directory=True)
    (root / "real" / "up").symlink_to(root, target_is_directory=True)
    (root / "real" / "x.png").write_bytes(b"")
    sources = walk_sources(root)
    assert sources.ids == ("n0/astronaut.JPEG", "n0/chelsea.JPEG", "real/x.png")


def test_a_chunk_that_cannot_write_its_shards_is_one_error_and_leaves_no_file(tree, tmp_path):
    """A worker whose disk fills up (here: a real EFBIG from RLIMIT_FSIZE, in its own process)
    raised a bare OSError, and its temporary shard stayed on the full disk (the close in abort
    failed too, so the discard never ran); now it is one UserError and nothing is left."""
    script = """
import resource, signal, sys
from ipt_data.errors import UserError
from ipt_data.tasks import TASKS
from ipt_data.png import decode_png, encoder_identity
from ipt_data.worker import ChunkJob, process_chunk
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # let the write fail with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
tasks = (TASKS["sr_x4"],)
job = ChunkJob(
    0, 0, ("n00000000/astronaut.JPEG",), sys.argv[1], sys.argv[2], tasks, 8, 0, "libdeflate",
    encoder_identity(),
)
try:
    process_chunk(job)
except UserError as error:
    print(error)
"""
    out = tmp_path / "set"
    command = [sys.executable, "-c", script, str(tree), str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{out}: cannot write the shards of chunk 0 (File too large)\n"
    assert [path for path in out.rglob("*") if path.is_file()] == []
