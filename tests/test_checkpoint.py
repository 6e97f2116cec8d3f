"""Reading, converting and exporting checkpoints (official layout and ours)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

from ipt_data.errors import UserError
from ipt_data.tasks import get_task
from ipt_train.checkpoint import (
    config_from_state_dict,
    export_official,
    load_model,
    read_checkpoint,
    save_checkpoint,
    slot_for_task,
    to_multi_task,
    to_single_task,
)
from ipt_train.cli import main
from ipt_train.model import IPT, ipt_tiny


@pytest.fixture(scope="module")
def tiny6() -> IPT:
    torch.manual_seed(0)  # 4 heads, not the presets' 12: files that do not record them need it
    return IPT(replace(ipt_tiny(), num_heads=4)).eval()


def outputs(model: IPT, slot: int) -> torch.Tensor:
    """The model's output for a fixed input. Compared with ``torch.equal``: the same weights and
    input through the same kernels in one process are bit-identical by construction."""
    torch.manual_seed(1)
    with torch.no_grad():
        return model(torch.rand(1, 3, 48, 48) * 255, slot)


def test_export_official_round_trips(tiny6, tmp_path):
    path = tmp_path / "IPT_tiny.pt"
    export_official(tiny6, path)
    state = torch.load(path, weights_only=True)  # a plain state_dict, as the official files
    assert list(state) == list(tiny6.state_dict())
    model = load_model(path, num_heads=4)
    for slot in range(6):
        assert torch.equal(outputs(model, slot), outputs(tiny6, slot))


def test_a_preset_exported_plain_loads_back_as_the_same_model(tmp_path):
    """model.pt of a run is a plain state_dict without the head count: every preset's must load
    back with the default (an ipt-tiny one once came back as 12 heads of its 4)."""
    torch.manual_seed(0)
    trained = IPT(ipt_tiny()).eval()
    export_official(trained, tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt")
    assert loaded.cfg == trained.cfg
    for slot in range(6):
        assert torch.equal(outputs(loaded, slot), outputs(trained, slot))


def test_our_checkpoint_keeps_config_and_extras(tiny6, tmp_path):
    path = tmp_path / "ours.pt"
    save_checkpoint(path, tiny6, step=7)
    _, config = read_checkpoint(path)
    assert config["num_heads"] == 4 and torch.load(path, weights_only=True)["step"] == 7
    model = load_model(path)  # heads from the saved config
    assert model.cfg == tiny6.cfg
    assert torch.equal(outputs(model, 2), outputs(tiny6, 2))


def test_wrapper_prefixes_are_stripped(tiny6, tmp_path):
    path = tmp_path / "ddp.pt"
    torch.save({f"module._orig_mod.{k}": v for k, v in tiny6.state_dict().items()}, path)
    assert list(read_checkpoint(path)[0]) == list(tiny6.state_dict())


@pytest.mark.parametrize("slot", range(6))
def test_six_task_to_single_task_and_back(tiny6, slot):
    single_state = to_single_task(tiny6.state_dict(), slot)
    cfg = config_from_state_dict(single_state, num_heads=4)
    assert cfg.scales == (tiny6.cfg.scales[slot],)
    single = IPT(cfg).eval()
    single.load_state_dict(single_state, strict=True)
    assert torch.equal(outputs(single, 0), outputs(tiny6, slot))

    torch.manual_seed(5)
    other = IPT(tiny6.cfg).state_dict()
    merged = to_multi_task(single_state, slot, base=other)
    assert list(merged) == list(other)
    back = IPT(tiny6.cfg).eval()
    back.load_state_dict(merged, strict=True)
    assert torch.equal(outputs(back, slot), outputs(tiny6, slot))
    assert torch.equal(
        to_multi_task(single_state, slot, base=tiny6.state_dict())["tail.0.1.bias"],
        tiny6.state_dict()["tail.0.1.bias"],
    )


def test_single_task_does_not_fit_a_slot_of_another_scale(tiny6):
    x3 = to_single_task(tiny6.state_dict(), 1)
    with pytest.raises(UserError, match="does not fit slot 0"):
        to_multi_task(x3, 0, base=tiny6.state_dict())


def test_task_slots_for_six_task_and_single_task_layouts(tiny6):
    assert slot_for_task(tiny6.cfg, get_task("denoise_50")) == 5
    x3 = tiny6.cfg.single_task(1)
    assert slot_for_task(x3, get_task("sr_x3")) == 0
    with pytest.raises(UserError, match="single-task x3 model; task sr_x2 needs a x2"):
        slot_for_task(x3, get_task("sr_x2"))


def test_corrupt_foreign_and_misfit_files_are_user_errors(tiny6, tmp_path):
    missing = tmp_path / "missing.pt"
    with pytest.raises(UserError, match="no such checkpoint"):
        load_model(missing)
    truncated = tmp_path / "truncated.pt"
    export_official(tiny6, truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(UserError, match=r"checkpoint \(truncated or corrupt"):
        load_model(truncated)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(UserError, match=r"checkpoint \(not a PyTorch file"):
        load_model(text)
    pickled = tmp_path / "object.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, pickled)  # a module, refused by weights_only
    with pytest.raises(UserError, match="holds pickled Python objects") as refused:
        load_model(pickled)
    # torch's own message suggests weights_only=False and carries terminal escape codes.
    assert "weights_only" not in str(refused.value) and "\x1b" not in str(refused.value)
    with pytest.raises(UserError, match="a folder, not a checkpoint file"):
        load_model(tmp_path)
    foreign = tmp_path / "resnet.pt"
    torch.save(torch.nn.Linear(3, 3).state_dict(), foreign)
    with pytest.raises(UserError, match="not an IPT state_dict"):
        load_model(foreign)
    misshapen = tmp_path / "misshapen.pt"
    state = dict(tiny6.state_dict())
    state["body.encoder.layers.0.linear1.bias"] = torch.zeros(3)
    torch.save(state, misshapen)
    with pytest.raises(UserError, match="does not fit the IPT layout"):
        load_model(misshapen, num_heads=4)


def test_convert_command_exports_splits_and_merges(tiny6, tmp_path):
    """``ipt-train convert``: ours -> official plain state_dict; one task's slot -> single-task;
    that single-task file back into a 6-task base gives the original weights."""

    def convert(*args):
        return CliRunner().invoke(main, ["convert", *map(str, args)])

    ours = tmp_path / "ours.pt"
    save_checkpoint(ours, tiny6, step=3)
    result = convert(ours, "-o", tmp_path / "official.pt")
    assert result.exit_code == 0, result.output
    official = torch.load(tmp_path / "official.pt", weights_only=True)
    assert list(official) == list(tiny6.state_dict())  # a plain state_dict, nothing else
    assert convert(ours, "-o", tmp_path / "sr3.pt", "--task", "sr_x3").exit_code == 0
    single = load_model(tmp_path / "sr3.pt", num_heads=4)
    assert single.cfg.scales == (3,) and torch.equal(outputs(single, 0), outputs(tiny6, 1))
    merged = tmp_path / "merged.pt"
    torch.manual_seed(9)
    save_checkpoint(tmp_path / "base.pt", IPT(ipt_tiny()))
    args = ("--task", "sr_x3", "--into", tmp_path / "base.pt", "--num-heads", 4)
    assert convert(tmp_path / "sr3.pt", "-o", merged, *args).exit_code == 0
    back = load_model(merged, num_heads=4)
    assert torch.equal(outputs(back, 1), outputs(tiny6, 1))
    assert not torch.equal(outputs(back, 0), outputs(tiny6, 0))  # other slots: the base's
    result = convert(tmp_path / "sr3.pt", "-o", tmp_path / "x.pt", "--task", "sr_x2")
    assert result.exit_code == 1 and result.output.startswith("Error: ")
    assert "task sr_x2 needs a x2 model" in result.output and not (tmp_path / "x.pt").exists()
