"""Fine-tuning from a pretrained ipt-tiny: shards, clean folders and rain pairs, end to end."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_train_support import build_train_shards, tiny_checkpoint

from ipt_data.benchsets import image_files
from ipt_data.errors import UserError
from ipt_data.fileio import file_sha256
from ipt_data.tasks import get_task
from ipt_train.checkpoint import load_model, official_state_dict, save_checkpoint, to_single_task
from ipt_train.configs import EvalConfig, FinetuneConfig, LoaderConfig, TrainConfig
from ipt_train.evaluate import evaluate
from ipt_train.finetune import finetune, initial_model, starting_model
from ipt_train.stream.folders import CleanFolder, PairedFolder, TrainingSource
from ipt_train.stream.shardset import ShardSet
from ipt_train.trainstate import load_train_state

BIN = Path(sys.executable).parent
LOADER = LoaderConfig(micro_batch=2, workers=0, shuffle_block=16)


@pytest.fixture(scope="session")
def train_shards(tmp_path_factory):
    return build_train_shards(tmp_path_factory)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory, "pretrained")


def short_run(out: Path) -> TrainConfig:
    return TrainConfig(out=str(out), steps=2, batch=2, checkpoint_every=2, progress=False)


def test_initial_model_is_the_task_slot_alone(pretrained, tmp_path):
    model = initial_model(pretrained, get_task("sr_x4"))
    assert model.cfg.scales == (4,)
    expected = to_single_task(official_state_dict(load_model(pretrained)), 2)
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    save_checkpoint(tmp_path / "x4.pt", model)
    assert initial_model(tmp_path / "x4.pt", get_task("sr_x4")).cfg.scales == (4,)
    with pytest.raises(UserError, match="cannot start sr_x2"):
        initial_model(tmp_path / "x4.pt", get_task("sr_x2"))


def test_finetune_from_clean_images_writes_an_evaluable_single_task_model(
    pretrained, train_shards, tmp_path, refdata
):
    photos = train_shards.parent / "photos"
    command = [BIN / "ipt-train", "finetune", "--init", pretrained, "--task", "sr_x2"]
    command += ["--clean", photos, "--out", tmp_path / "ft", "--steps", "2", "--batch", "2"]
    command += ["--micro-batch", "2", "--workers", "0", "--shuffle-block", "16", "--no-progress"]
    subprocess.run(command, check=True)
    model = load_model(tmp_path / "ft" / "model.pt")
    assert model.cfg.scales == (2,)
    before = initial_model(pretrained, get_task("sr_x2")).state_dict()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "tail.0.1.weight" in changed and "body.linear_encoding.weight" in changed
    bench = tmp_path / "bench" / "HR"
    bench.mkdir(parents=True)
    hr = cv2.imread(str(refdata / "Set5" / "HR" / "baby.png"))[:96, :96]
    cv2.imwrite(str(bench / "baby.png"), hr)
    report = evaluate(
        tmp_path / "ft" / "model.pt", "sr_x2", bench.parent, EvalConfig(progress=False)
    )
    assert np.isfinite(report["psnr_y"])


def test_finetune_from_shards_and_from_rain_pairs(
    pretrained, train_shards, tmp_path, sample_photos
):
    result = finetune(
        short_run(tmp_path / "shards"),
        FinetuneConfig(str(pretrained), "denoise_30", shards=str(train_shards), loader=LOADER),
    )
    assert result.step == 2 and [task for _, task in result.trained] == ["denoise_30"] * 2
    pairs = tmp_path / "rain100l"
    pairs.mkdir()
    for number, name in enumerate(("astronaut", "coffee"), 1):
        clean = sample_photos[name][:100, :120]
        rainy = np.clip(clean.astype(int) + 60 * (np.arange(120) % 7 == 0)[:, None], 0, 255)
        cv2.imwrite(str(pairs / f"norain-{number}.png"), clean[:, :, ::-1])
        cv2.imwrite(str(pairs / f"rain-{number}.png"), rainy.astype(np.uint8)[:, :, ::-1])
    result = finetune(
        short_run(tmp_path / "rain"),
        FinetuneConfig(str(pretrained), "derain", pairs=str(pairs), loader=LOADER),
    )
    assert result.step == 2 and np.isfinite(result.last_loss)
    cv2.imwrite(str(pairs / "rain-3.png"), np.zeros((40, 60, 3), np.uint8))
    cv2.imwrite(str(pairs / "norain-3.png"), np.zeros((40, 60, 3), np.uint8))
    with pytest.raises(UserError, match=r"rain-3\.png is 60x40, smaller than the 48x48"):
        finetune(
            short_run(tmp_path / "rain-small"),
            FinetuneConfig(str(pretrained), "derain", pairs=str(pairs), loader=LOADER),
        )
    with pytest.raises(UserError, match="exactly one"):
        finetune(short_run(tmp_path / "x"), FinetuneConfig(str(pretrained), "derain"))


def test_sources_are_training_sources_reading_folders_as_eval_does(
    train_shards, tmp_path, sample_photos
):
    photos = train_shards.parent / "photos"
    clean = CleanFolder(photos)
    assert clean.names == [path.relative_to(photos).as_posix() for path in image_files(photos)]
    for number, name in ((1, "astronaut"), (20, "coffee")):  # rain-001 pairs with norain-1
        image = sample_photos[name][:60, :70]
        cv2.imwrite(str(tmp_path / f"norain-{number}.png"), image[:, :, ::-1])
        cv2.imwrite(str(tmp_path / f"rain-{number:03d}.png"), (255 - image)[:, :, ::-1])
    paired = PairedFolder(tmp_path)
    report = evaluate(None, "derain", tmp_path, EvalConfig(progress=False))
    assert paired.names == [row["name"] for row in report["images"]] == ["rain-001", "rain-020"]
    assert np.array_equal(paired.pairs[1][1], sample_photos["coffee"][:60, :70])
    for source in (ShardSet.open(train_shards), clean, paired):
        assert isinstance(source, TrainingSource)


def test_resume_refuses_an_init_checkpoint_whose_content_changed(
    pretrained, train_shards, tmp_path
):
    init = tmp_path / "init.pt"
    init.write_bytes(pretrained.read_bytes())
    run = tmp_path / "run"

    def resume(path: Path, steps: int):
        config = TrainConfig(str(run), steps, batch=2, checkpoint_every=2, resume=steps > 2)
        setup = FinetuneConfig(str(path), "sr_x2", shards=str(train_shards), loader=LOADER)
        return finetune(replace(config, progress=False), setup)

    resume(init, 2)
    assert load_train_state(run / "checkpoint.pt").run["init_sha256"] == file_sha256(pretrained)
    moved = tmp_path / "moved.pt"  # the same weights elsewhere: the same run
    moved.write_bytes(init.read_bytes())
    assert resume(moved, 4).step == 4
    state = torch.load(init, weights_only=True)
    state["model"]["tail.0.1.bias"] += 1  # the file retrained or replaced since the run began
    torch.save(state, init)
    with pytest.raises(UserError, match="started differently") as refused:
        resume(init, 6)
    for named in (moved, init, file_sha256(moved), file_sha256(init)):
        assert str(named) in str(refused.value)
    assert load_train_state(run / "checkpoint.pt").step == 4


@pytest.mark.parametrize("source", ["clean", "pairs"])
def test_resume_refuses_folder_images_edited_under_the_same_names(
    pretrained, tmp_path, sample_photos, source
):
    folder, run = tmp_path / "images", tmp_path / "run"
    folder.mkdir()
    for number, name in ((1, "astronaut"), (2, "coffee")):
        image = sample_photos[name][:96, :96, ::-1]  # BGR for cv2
        if source == "clean":
            cv2.imwrite(str(folder / f"{name}.png"), image)
        else:
            cv2.imwrite(str(folder / f"norain-{number}.png"), image)
            cv2.imwrite(str(folder / f"rain-{number}.png"), 255 - image)

    def resume(steps: int):
        config = TrainConfig(str(run), steps, batch=2, checkpoint_every=2, resume=steps > 2)
        task = "sr_x2" if source == "clean" else "derain"
        setup = FinetuneConfig(str(pretrained), task, loader=LOADER, **{source: str(folder)})
        return finetune(replace(config, progress=False), setup)

    resume(2)
    assert resume(4).step == 4  # the same files: the same run
    edited = folder / ("coffee.png" if source == "clean" else "rain-2.png")
    image = cv2.imread(str(edited))
    image[0, 0] ^= 1  # one value changed; the same name and dimensions
    cv2.imwrite(str(edited), image)
    with pytest.raises(UserError, match=r"started differently.*\bdata\b"):
        resume(6)
    assert load_train_state(run / "checkpoint.pt").step == 4


def test_clean_folder_of_images_too_small_is_an_error_not_a_hang(pretrained, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    for name in ("a", "b"):
        cv2.imwrite(str(small / f"{name}.png"), np.full((60, 90, 3), 128, np.uint8))
    setup = FinetuneConfig(str(pretrained), "sr_x2", clean=str(small), loader=LOADER)
    with pytest.raises(UserError, match="every image is too small for sr_x2"):
        finetune(short_run(tmp_path / "run"), setup)
    assert not (tmp_path / "run").exists()


def test_finetune_without_init_starts_from_a_seeded_random_preset(train_shards, tmp_path):
    """The from-scratch arm of an ablation: same seed, same start; another seed, another."""
    setup = FinetuneConfig(None, "sr_x2", shards=str(train_shards), loader=LOADER)
    result = finetune(short_run(tmp_path / "a"), setup)
    assert result.step == 2
    model = load_model(tmp_path / "a" / "model.pt")
    assert model.cfg.scales == (2,)
    task = get_task("sr_x2")
    first = starting_model(setup, task, seed=0)[0].state_dict()
    again = starting_model(setup, task, seed=0)[0].state_dict()
    other = starting_model(setup, task, seed=1)[0].state_dict()
    assert all(torch.equal(v, again[k]) for k, v in first.items())
    assert not all(torch.equal(v, other[k]) for k, v in first.items())
    assert load_train_state(tmp_path / "a" / "checkpoint.pt").run["init"] == "random ipt-tiny"
