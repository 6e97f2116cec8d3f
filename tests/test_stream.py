"""The training stream on a real shard set (read by the real webdataset library for reference):
one global order whatever the cluster's shape, every sample once per epoch, checks before use."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import webdataset as wds
from test_train_support import build_train_shards

from ipt_data.errors import UserError
from ipt_data.tasks import TASKS, parse_tasks
from ipt_train.configs import LoaderConfig
from ipt_train.schedule import TaskMix
from ipt_train.stream.loader import StepStream, make_loader, pixel_digest
from ipt_train.stream.order import EpochBlocks, TaskOrder, augment_codes
from ipt_train.stream.shardset import ShardSet, decode_pair

BIN = Path(sys.executable).parent
MIX = TaskMix.uniform(parse_tasks("sr_x2,sr_x4,denoise_30"))
MIX_NAMES = [task.name for task in MIX.tasks]
SEED = 5


@pytest.fixture(scope="session")
def train_shards(tmp_path_factory):
    return build_train_shards(tmp_path_factory)


def stream(shards, steps=range(0, 6), rank=0, world=1, batch=8, mix=MIX, **config):
    settings = {"micro_batch": 4, "workers": 0, "shuffle_block": 16, **config}
    source = shards if isinstance(shards, ShardSet) else ShardSet.open(shards)
    return StepStream(source, mix, SEED, steps, batch, rank, world, LoaderConfig(**settings))


def global_batches(shards, steps, world, **config) -> dict[int, list[bytes]]:
    """step -> its global batch as the sorted pixel bytes of its samples (all ranks' units)."""
    batches: dict[int, list[bytes]] = {}
    for rank in range(world):
        for unit in make_loader(stream(shards, steps, rank, world, **config)):
            for x, y in zip(unit["input"], unit["target"], strict=True):
                batches.setdefault(unit["step"], []).append(
                    x.numpy().tobytes() + y.numpy().tobytes()
                )
    return {step: sorted(samples) for step, samples in batches.items()}


def all_pairs(shards, task: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """key -> (input, target) of every sample of ``task``, read by webdataset."""
    urls = sorted(str(p) for p in (shards / task).glob("*.tar"))
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8")
    return {s["__key__"]: (s["input.png"], s["target.png"]) for s in dataset}


def dihedral(image: np.ndarray) -> list[np.ndarray]:
    return [
        np.rot90(image, k)[:, ::-1] if f else np.rot90(image, k) for k in range(4) for f in (0, 1)
    ]


def test_units_arrive_in_order_with_the_drawn_task_and_aligned_pairs(train_shards):
    units = list(make_loader(stream(train_shards, workers=2)))
    assert [u["step"] for u in units] == [s for s in range(6) for _ in range(2)]
    assert [u["task"] for u in units] == [MIX.task_at(SEED, u["step"]).name for u in units]
    originals = {name: list(all_pairs(train_shards, name).values()) for name in MIX_NAMES}
    for unit in units:
        scale = TASKS[unit["task"]].scale
        assert unit["input"].shape == (4, 3, 48, 48) and unit["input"].dtype == torch.uint8
        assert unit["target"].shape == (4, 3, 48 * scale, 48 * scale)
        for x, y in zip(unit["input"], unit["target"], strict=True):
            x, y = x.permute(1, 2, 0).numpy(), y.permute(1, 2, 0).numpy()
            # the pair is one of the set's pairs under one flip/rotation applied to both
            assert any(
                any(
                    np.array_equal(x, a) and np.array_equal(y, b)
                    for a, b in zip(dihedral(ox), dihedral(oy), strict=True)
                )
                for ox, oy in originals[unit["task"]]
            )


def test_global_batches_are_the_same_on_every_shape(train_shards):
    """Steps 0-30 pixel for pixel, flips included: 1 process with 2 loader workers, 2 processes
    with 1, 1 process with none, 2 processes with micro-batches of 1; and a resume at step 7."""
    steps = range(0, 31)
    reference = global_batches(train_shards, steps, 1, workers=2, micro_batch=4)
    assert len(reference) == 31 and all(len(batch) == 8 for batch in reference.values())
    assert global_batches(train_shards, steps, 2, workers=1, micro_batch=2) == reference
    assert global_batches(train_shards, steps, 1, workers=0, micro_batch=8) == reference
    assert global_batches(train_shards, steps, 2, workers=0, micro_batch=1) == reference
    resumed = global_batches(train_shards, range(7, 31), 2, workers=1, micro_batch=4)
    assert resumed == {step: reference[step] for step in range(7, 31)}
    other_seed = StepStream(
        ShardSet.open(train_shards), MIX, SEED + 1, steps, 8, 0, 1, LoaderConfig(workers=0)
    )
    assert (
        next(iter(other_seed))["digest"].tolist()
        != next(iter(stream(train_shards)))["digest"].tolist()
    )


def test_unit_digests_add_up_to_the_global_batch_digest(train_shards):
    """What log.csv records per step: the ranks' digest sums, equal to the digest of the
    whole batch however it was cut."""
    whole = {u["step"]: u for u in stream(train_shards, range(0, 4), micro_batch=8)}
    halves: dict[int, torch.Tensor] = {}
    for rank in (0, 1):
        for unit in stream(train_shards, range(0, 4), rank, 2, micro_batch=2):
            halves[unit["step"]] = halves.get(unit["step"], 0) + unit["digest"]
    for step, unit in whole.items():
        inputs = unit["input"].permute(0, 2, 3, 1).numpy()
        targets = unit["target"].permute(0, 2, 3, 1).numpy()
        assert unit["digest"].tolist() == pixel_digest(inputs, targets).tolist()
        assert halves[step].tolist() == unit["digest"].tolist()


def test_every_sample_once_per_epoch_whatever_the_segments(train_shards):
    """sr_x2 alone: 48 samples in 3 shards of 16, a shuffle block larger than a shard. Steps
    of 4 samples: steps 0-11 are one epoch, each sample once; read in segments of 3 steps (as
    a run that checkpoints every 3 steps and is resumed each time) they are the same; steps
    12-23 are the next epoch, another permutation."""
    mix = TaskMix.uniform(parse_tasks("sr_x2"))
    keys = {x.tobytes(): key for key, (x, _) in all_pairs(train_shards, "sr_x2").items()}

    def read(steps: range) -> list[str]:
        units = stream(train_shards, steps, batch=4, mix=mix, shuffle_block=20, augment=False)
        return [keys[x.permute(1, 2, 0).numpy().tobytes()] for u in units for x in u["input"]]

    epoch = read(range(0, 12))
    assert sorted(epoch) == sorted(keys.values()) and len(set(epoch)) == 48
    assert [k for start in range(0, 12, 3) for k in read(range(start, start + 3))] == epoch
    second = read(range(12, 24))
    assert sorted(second) == sorted(epoch) and second != epoch


def test_task_order_is_a_permutation_of_blocks_per_epoch():
    counts = [5, 9, 1, 7, 3, 12, 4]
    order = TaskOrder(counts, seed=3, task_index=2, block=10)
    total = sum(counts)
    for epoch in (0, 1, 5):
        shards, samples = order.locate(np.arange(epoch * total, (epoch + 1) * total))
        assert sorted(zip(shards.tolist(), samples.tolist(), strict=True)) == [
            (s, i) for s, n in enumerate(counts) for i in range(n)
        ]
        blocks = order.epoch_blocks(epoch)
        sizes = np.diff(blocks.sample_bounds)
        assert sizes.sum() == total and (sizes >= 10).all()
        for b in range(len(sizes)):  # a block's positions come from its shards only
            first = epoch * total + int(blocks.sample_bounds[b])
            inside = order.locate(np.arange(first, first + int(sizes[b])))[0]
            assert set(inside.tolist()) == set(order.block_shards(first).tolist())
            assert order.block_end(first) == first + sizes[b]
    one = EpochBlocks(np.asarray(counts), np.arange(len(counts)), 1000)  # the whole epoch
    assert one.sample_bounds.tolist() == [0, total]


def test_flips_are_fixed_by_the_position_not_the_reader():
    positions = np.arange(4090, 4110)  # across a block of generator draws
    codes = augment_codes(1, 3, positions)
    assert codes.tolist() == [int(augment_codes(1, 3, np.array([p]))[0]) for p in positions]
    assert set(augment_codes(1, 3, np.arange(800)).tolist()) == set(range(8))
    assert augment_codes(2, 3, positions).tolist() != codes.tolist()


def test_resuming_far_into_an_imagenet_sized_set_reads_nothing_and_stays_small(tmp_path):
    """6 tasks x 1,281 shards x 8,000 samples, resumed at step 1.5M: the positions of that
    step's batch come from the manifest's counts alone (the shards do not exist here) in a
    few MB (the time is a benchmark figure: ipt-train bench --resume-cost)."""
    manifest = imagenet_sized_manifest()
    mix = TaskMix.uniform(parse_tasks("all"))
    tracemalloc.start()
    counts = mix.steps_before(0, 1_500_000)
    located = []
    for slot, task in enumerate(mix.tasks):
        sizes = [s["samples"] for s in manifest["tasks"][task.name]["shards"]]
        order = TaskOrder(sizes, 0, task.index, LoaderConfig().shuffle_block)
        first = int(counts[slot]) * 256
        located.append(order.locate(np.arange(first, first + 256)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100e6, peak
    assert counts.sum() == 1_500_000
    for shards, samples in located:
        assert (shards >= 0).all() and (shards < 1281).all() and (samples < 8000).all()


def imagenet_sized_manifest() -> dict:
    entry = lambda task, i: {  # noqa: E731
        "path": f"{task}/{task}-{i:06d}.tar",
        "samples": 8000,
        "bytes": 1,
        "sha256": "0" * 64,
    }
    return {"tasks": {t: {"shards": [entry(t, i) for i in range(1281)]} for t in TASKS}}


def test_foreign_member_is_refused_before_decoding(train_shards, tmp_path):
    """The manifest is the attacker's too: its sizes and hashes match the shards, and the
    member gate still refuses the foreign member."""
    copy = tmp_path / "set"
    shutil.copytree(train_shards, copy)
    manifest = json.loads((copy / "manifest.json").read_bytes())
    for shard in manifest["tasks"]["sr_x2"]["shards"]:
        path = copy / shard["path"]
        with tarfile.open(path, "a") as tar:
            payload = b"not really a pickle"
            info = tarfile.TarInfo("evil.pyd")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        data = path.read_bytes()
        shard.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="evil"):
        for _ in stream(copy, range(0, 30)):
            pass


def test_shard_listed_but_gone_is_one_clear_error_in_a_worker_too(train_shards, tmp_path):
    copy = tmp_path / "set"
    shutil.copytree(train_shards, copy)
    for path in (copy / "sr_x4").glob("*.tar"):
        path.unlink()
    with pytest.raises(UserError, match=r"sr_x4-00000.\.tar: cannot read the shard"):
        for _ in stream(copy, range(0, 30)):
            pass
    units = make_loader(stream(copy, range(0, 30), workers=1))
    reported = [unit["error"] for unit in units if "error" in unit]  # raised by check_unit
    assert len(reported) == 1 and "cannot read the shard" in reported[0]


def test_task_missing_from_the_set_is_one_clear_error(train_shards):
    with pytest.raises(UserError, match="no derain samples"):
        stream(train_shards, mix=TaskMix.uniform(parse_tasks("derain")))
    with pytest.raises(UserError, match="no manifest"):
        ShardSet.open(train_shards / "sr_x2")


def test_shard_set_at_a_url_gives_the_same_batches(train_shards):
    from loopback_servers import http_server

    local = global_batches(train_shards, range(0, 6), 1)
    with http_server(train_shards) as server:
        assert global_batches(server.url, range(0, 6), 1, workers=1) == local
        assert any(path.endswith(".tar") for path in server.hits)
        by_manifest = ShardSet.open(f"{server.url}/manifest.json")  # as copied from a browser
        assert by_manifest.manifest == ShardSet.open(train_shards).manifest


def test_decode_pair_gives_opencvs_pixels_for_our_pngs_and_older_sets(train_shards, tmp_path):
    """The loader decodes with ipt_data.png; its pixels are OpenCV's, for the PNGs the build
    writes now and for those older sets hold (OpenCV's level-1 encoding, adaptive filters)."""

    def opencv(data: bytes) -> np.ndarray:
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]

    def older(rgb: np.ndarray) -> bytes:
        return cv2.imencode(".png", rgb[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()

    reader = ShardSet.open(train_shards).reader(0, LoaderConfig(cache=str(tmp_path)))
    for task in (TASKS["sr_x4"], TASKS["denoise_30"]):
        entry = reader.order(task)[1][0]
        for x, y, key in reader.store.read(entry, [0, 1, 2, 3]):
            expected = [opencv(x), opencv(y)]
            old = [older(rgb) for rgb in expected]
            for decoded in (decode_pair(x, y, key, "s", task), decode_pair(*old, key, "s", task)):
                assert [a.tobytes() for a in decoded] == [e.tobytes() for e in expected]


@pytest.fixture(scope="module")
def eight_classes(tmp_path_factory, sample_photos) -> Path:
    """8 class folders of 40 photographs each (64x64 crops of the sample photographs), built
    into denoise_30 shards of 4 images (2 pairs each): 80 shards."""
    root = tmp_path_factory.mktemp("classes")
    photos = list(sample_photos.values())
    for number in range(320):
        photo = photos[number % len(photos)]
        top, left = (37 * number) % (photo.shape[0] - 64), (53 * number) % (photo.shape[1] - 64)
        folder = root / "photos" / f"class{number // 40}"
        folder.mkdir(parents=True, exist_ok=True)
        crop = photo[top : top + 64, left : left + 64, ::-1]
        cv2.imwrite(str(folder / f"img{number:03d}.png"), crop)
    build = [BIN / "ipt-data", "build", "--src", root / "photos", "--out", root / "shards"]
    build += ["--tasks", "denoise_30", "--images-per-shard", "4", "--patches-per-image", "2"]
    subprocess.run([*build, "--workers", "1", "--no-progress"], check=True, capture_output=True)
    return root / "shards"


def test_micro_batches_mix_the_classes_about_as_uniform_sampling_does(eight_classes, tmp_path):
    """Images are dealt to shards by a seeded hash (format 2) and blocks of 8 shards (64
    samples, a tenth of the set) are shuffled together: a micro-batch of 8 holds on average at
    least 90% of the distinct classes that 8 uniform draws give (8 (1 - (7/8)^8) = 5.25).
    Shards in name order (each one class) would give about 80% at this block size."""
    task = TASKS["denoise_30"]
    reader = ShardSet.open(eight_classes).reader(
        11, LoaderConfig(shuffle_block=64, cache=str(tmp_path))
    )
    order, entries = reader.order(task)
    assert len(entries) == 80 and order.epoch_samples == 640
    distinct = []
    for first in range(0, 2 * 640, 8):  # two epochs of micro-batches
        shards, samples = order.locate(np.arange(first, first + 8))
        keys = [
            reader.store.read(entries[s], [int(i)])[0][2]
            for s, i in zip(shards, samples, strict=True)
        ]
        distinct.append(len({key.split("_")[1] for key in keys}))  # <number>_class<c>_img...
    uniform = 8 * (1 - (7 / 8) ** 8)
    assert np.mean(distinct) >= 0.9 * uniform, np.mean(distinct)
    reader.close()
