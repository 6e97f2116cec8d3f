"""The streaming loader on a real shard set read with the real webdataset library."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from itertools import islice

import cv2
import numpy as np
import pytest
import torch
import webdataset as wds
from test_train_support import build_train_shards

from ipt_data.errors import UserError
from ipt_data.tasks import TASKS, parse_tasks
from ipt_train.configs import LoaderConfig
from ipt_train.data import (
    PretrainStream,
    ShardSet,
    decode_pair,
    make_loader,
    samples_from,
    shard_sequence,
)
from ipt_train.schedule import TaskMix

MIX = TaskMix.uniform(parse_tasks("sr_x2,sr_x4,denoise_30"))


@pytest.fixture(scope="session")
def train_shards(tmp_path_factory):
    return build_train_shards(tmp_path_factory)


def stream(shards, steps=range(0, 6), rank=0, world=1, **config) -> PretrainStream:
    settings = {"micro_batch": 4, "workers": 0, "shuffle_buffer": 8, **config}
    return PretrainStream(shards, MIX, 5, steps, 2, rank, world, LoaderConfig(**settings))


def all_pairs(shards, task: str) -> list[tuple[np.ndarray, np.ndarray]]:
    urls = sorted(str(p) for p in (shards / task).glob("*.tar"))
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8")
    return [(s["input.png"], s["target.png"]) for s in dataset]


def dihedral(image: np.ndarray) -> list[np.ndarray]:
    return [
        np.rot90(image, k)[:, ::-1] if f else np.rot90(image, k) for k in range(4) for f in (0, 1)
    ]


def test_units_arrive_in_order_with_the_drawn_task_and_aligned_pairs(train_shards):
    loader = make_loader(stream(train_shards, workers=2))
    batches = list(loader)
    assert [b["step"] for b in batches] == [s for s in range(6) for _ in range(2)]
    assert [b["task"] for b in batches] == [MIX.task_at(5, b["step"]).name for b in batches]
    originals = {name: all_pairs(train_shards, name) for name in ("sr_x2", "sr_x4", "denoise_30")}
    for batch in batches:
        scale = TASKS[batch["task"]].scale
        assert batch["input"].shape == (4, 3, 48, 48) and batch["input"].dtype == torch.uint8
        assert batch["target"].shape == (4, 3, 48 * scale, 48 * scale)
        for x, y in zip(batch["input"], batch["target"], strict=True):
            x, y = x.permute(1, 2, 0).numpy(), y.permute(1, 2, 0).numpy()
            # the pair is one of the set's pairs under one flip/rotation applied to both
            assert any(
                any(
                    np.array_equal(x, a) and np.array_equal(y, b)
                    for a, b in zip(dihedral(ox), dihedral(oy), strict=True)
                )
                for ox, oy in originals[batch["task"]]
            )


def test_same_seed_and_steps_same_data_other_rank_other_data(train_shards):
    first = list(stream(train_shards, world=2))
    again = list(stream(train_shards, world=2))
    other = list(stream(train_shards, rank=1, world=2))
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a["input"], b["input"]) and torch.equal(a["target"], b["target"])
    assert [a["task"] for a in first] == [c["task"] for c in other]
    assert not all(torch.equal(a["input"], c["input"]) for a, c in zip(first, other, strict=True))


def test_uneven_shards_never_run_dry(train_shards):
    # 3 shards per task over 2 ranks x 2 workers (4 readers); 40 units of 4 = 160 samples per
    # rank, three times what one task's shards hold: readers cycle, none ends or waits.
    for rank in (0, 1):
        batches = list(make_loader(stream(train_shards, range(0, 20), rank, 2, workers=2)))
        assert len(batches) == 40


def test_segments_go_on_through_the_shards_instead_of_rereading_their_start(train_shards):
    """A run is read in segments that end at checkpoints; each must continue where the last
    stopped. Here 12 segments of 2 steps (4 samples each, one reader, one task) read the whole
    48-sample task as one 24-step segment does, not the first samples of a shard 12 times."""
    mix = TaskMix.uniform(parse_tasks("sr_x2"))
    config = LoaderConfig(micro_batch=2, workers=0, shuffle_buffer=1, augment=False)

    def inputs(steps: range) -> list[bytes]:
        units = PretrainStream(train_shards, mix, 5, steps, 1, 0, 1, config)
        return [x.numpy().tobytes() for unit in units for x in unit["input"]]

    whole = inputs(range(0, 24))
    segmented = [x for start in range(0, 24, 2) for x in inputs(range(start, start + 2))]
    assert len(set(whole)) == 48  # one epoch: every sample once
    assert segmented == whole  # (with a 1-sample buffer; a larger one reshuffles per segment)
    assert inputs(range(6, 8)) == segmented[12:16]  # each segment a pure function of its start


def test_samples_from_skips_whole_shards_by_count_then_samples(train_shards):
    shard_set = ShardSet.open(train_shards)
    task = TASKS["sr_x4"]
    counts = shard_set.counts(task)
    keys = lambda position: [  # noqa: E731
        s["__key__"]
        for s in islice(
            samples_from(shard_set, shard_sequence(list(counts), (1,), 0, 1), counts, position),
            30,
        )
    ]
    start = keys(0)
    for position in (5, 16, 21):
        assert keys(position)[: 30 - position] == start[position:]


def test_shard_sequence_splits_each_epoch_between_readers():
    shards = [f"s{i}" for i in range(5)]
    taken = [list(zip(range(6), shard_sequence(shards, (1,), r, 2), strict=False)) for r in (0, 1)]
    first_epoch = [name for _, name in taken[0][:3]] + [name for _, name in taken[1][:2]]
    assert sorted(first_epoch) == shards
    lone = shard_sequence(shards[:1], (1,), 3, 4)
    assert [next(lone) for _ in range(3)] == ["s0"] * 3


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
        for _ in stream(copy, range(0, 30), shuffle_buffer=1):
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
    mix = TaskMix.uniform(parse_tasks("derain"))
    with pytest.raises(UserError, match="no derain samples"):
        PretrainStream(train_shards, mix, 0, range(2), 1, 0, 1, LoaderConfig())
    with pytest.raises(UserError, match="no manifest"):
        ShardSet.open(train_shards / "sr_x2")


def test_shard_set_at_a_url_streams_the_same_batches(train_shards):
    from loopback_servers import http_server

    local = list(stream(train_shards, range(0, 3)))
    with http_server(train_shards) as server:
        remote = list(stream(server.url, range(0, 3)))
        assert any(path.endswith(".tar") for path in server.hits)
        by_manifest = ShardSet.open(f"{server.url}/manifest.json")  # as copied from a browser
        assert by_manifest.manifest == ShardSet.open(train_shards).manifest
    for a, b in zip(local, remote, strict=True):
        assert (a["step"], a["task"]) == (b["step"], b["task"])
        assert torch.equal(a["input"], b["input"]) and torch.equal(a["target"], b["target"])


def test_decode_pair_gives_opencvs_pixels_for_our_pngs_and_older_sets(train_shards):
    """The loader decodes with ipt_data.png; its pixels are OpenCV's, for the PNGs the build
    writes now and for those older sets hold (OpenCV's level-1 encoding, adaptive filters)."""
    members = ("input.png", "target.png")

    def opencv(data: bytes) -> np.ndarray:
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]

    def older(rgb: np.ndarray) -> bytes:
        return cv2.imencode(".png", rgb[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()

    shard_set = ShardSet.open(train_shards)
    for task in (TASKS["sr_x4"], TASKS["denoise_30"]):
        counts = shard_set.counts(task)
        for sample in islice(samples_from(shard_set, iter(counts), counts, 0), 4):
            expected = [opencv(sample[member]) for member in members]
            old_sample = {
                **sample,
                **{m: older(rgb) for m, rgb in zip(members, expected, strict=True)},
            }
            for decoded in (decode_pair(sample, task), decode_pair(old_sample, task)):
                assert [a.tobytes() for a in decoded] == [e.tobytes() for e in expected]
