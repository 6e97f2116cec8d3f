"""ipt-train tables: the paper's four tables from a folder of sets (refdata's Set5 and small sets
of scikit-image photographs), their input rows those of eval --baseline, the model rows those of
eval, and every bad folder or option one Error line before anything is evaluated."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_eval import write_png
from test_train_support import tiny_checkpoint

from ipt_train.checkpoint import load_model, official_state_dict, save_checkpoint, to_single_task
from ipt_train.cli import main
from ipt_train.configs import EvalConfig, TablesConfig
from ipt_train.evaluate import evaluate
from ipt_train.model import IPT, ipt_tiny
from ipt_train.tables import format_tables, run_tables

QUIET = EvalConfig(progress=False)
PUBLISHED_SET5_BICUBIC = {"sr_x2": 33.66, "sr_x3": 30.39, "sr_x4": 28.42}


@pytest.fixture(scope="module")
def bench(tmp_path_factory, refdata, sample_photos) -> Path:
    """Set5 as published, and Urban100, CBSD68 and Rain100L of two small photograph crops each;
    no Set14 and no B100."""
    root = tmp_path_factory.mktemp("bench")
    shutil.copytree(refdata / "Set5", root / "Set5")
    for number, name in enumerate(("astronaut", "coffee"), 1):
        photo = sample_photos[name]
        # one 48x48 tile per model pass: the model rows cost seconds on a CPU
        write_png(root / "Urban100" / "HR" / f"img_{number:03d}.png", photo[:48, :48])
        write_png(root / "CBSD68" / f"{name}.png", photo[100:164, 100:150])
        clean = photo[:48, :48]
        streaks = 50 * (np.arange(48) % 9 == 0)[None, :, None]
        write_png(root / "Rain100L" / f"norain-{number}.png", clean)
        write_png(root / "Rain100L" / f"rain-{number}.png", np.clip(clean + streaks, 0, 255))
    return root


def markdown_tables(text: str) -> dict[str, list[list[str]]]:
    """{title: rows of cells} of the Markdown ``text``, the separator row left out."""
    tables = {}
    for block in text.split("### ")[1:]:
        title, *lines = block.strip().splitlines()
        rows = [line.strip("|").split("|") for line in lines if line.startswith("|")]
        tables[title] = [[cell.strip() for cell in row] for row in rows if "---" not in row[0]]
    return tables


def test_baseline_tables_have_the_paper_s_shapes_and_the_published_set5_row(bench, tmp_path):
    notes: list[str] = []
    config = TablesConfig(str(bench), baseline=True, evaluation=QUIET, json=str(tmp_path / "t"))
    results = run_tables(config, notes.append)
    assert len(notes) == 1 and "no Set14, B100 in" in notes[0]
    assert json.loads((tmp_path / "t").read_text()) == results
    assert results["models"] == {} and all(cell["model"] is None for cell in results["cells"])
    by = {(cell["set"], cell["task"]): cell["input"] for cell in results["cells"]}
    for task, published in PUBLISHED_SET5_BICUBIC.items():
        # not rounding: 2-decimal published figures and MATLAB's .5 ties (test_imresize.py)
        assert by["Set5", task]["psnr_y"] == pytest.approx(published, abs=0.03)
    for set_name, task in (("Urban100", "sr_x3"), ("CBSD68", "denoise_50"), ("Rain100L", "derain")):
        alone = evaluate(None, task, bench / set_name, QUIET)  # ipt-train eval --baseline
        means = {key: value for key, value in alone.items() if key not in ("task", "images")}
        assert by[set_name, task] == {"images": 2, **means}
    sigmas = [by["CBSD68", f"denoise_{sigma}"]["psnr_y"] for sigma in (10, 30, 50, 70)]
    assert sigmas == sorted(sigmas, reverse=True)

    tables = markdown_tables(format_tables(results))
    assert [title[:7] for title in tables] == ["Table 1", "Table 2", "Table 3", "Table 4"]
    one, two, three, four = tables.values()
    assert one[0] == ["Method", "Scale", "Set5", "Urban100"]
    assert [row[:2] for row in one[1:]] == [["Bicubic", "×2"], ["Bicubic", "×3"], ["Bicubic", "×4"]]
    x2 = by["Set5", "sr_x2"]
    assert one[1][2] == f"{x2['psnr_y']:.2f} / {x2['ssim_y']:.4f}"
    assert re.fullmatch(r"\d\d\.\d\d / 0\.\d{4}", one[3][3])
    columns = ["CBSD68 σ=30", "CBSD68 σ=50", "Urban100 σ=30", "Urban100 σ=50"]
    assert two == [["Method", *columns], ["Noisy input", *two[1][1:]]] and len(two[1]) == 5
    assert four[0] == ["Method", *(c.replace("30", "10").replace("50", "70") for c in columns)]
    rain = by["Rain100L", "derain"]
    assert three == [
        ["Method", "Input"],
        ["PSNR (dB)", f"{rain['psnr_y']:.2f}"],
        ["SSIM", f"{rain['ssim_y']:.4f}"],
    ]


def test_model_rows_are_eval_s_with_a_checkpoint_per_task_where_named(bench, tmp_path_factory):
    tiny = tiny_checkpoint(tmp_path_factory, "tables_tiny")
    single = tiny.parent / "denoise50.pt"  # the sigma 50 slot alone, as IPT_noise50.pt
    model = IPT(ipt_tiny(scales=(1,)))
    model.load_state_dict(to_single_task(official_state_dict(load_model(tiny)), 5))
    save_checkpoint(single, model)
    out = tiny.parent / "tables.json"
    args = ["tables", "--bench", str(bench), "--sets", "Rain100L,Urban100"]
    args += ["--ckpt", str(tiny), "--ckpt-for", f"denoise_70={single}", "--json", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    results = json.loads(out.read_text())
    assert results["sets"] == ["Urban100", "Rain100L"]
    models = results["models"]
    assert models.pop("denoise_70") == str(single) and set(models.values()) == {str(tiny)}
    by = {(cell["set"], cell["task"]): cell["model"] for cell in results["cells"]}
    for set_name, task in (
        ("Urban100", "sr_x4"),
        ("Urban100", "denoise_30"),
        ("Rain100L", "derain"),
    ):
        alone = evaluate(tiny, task, bench / set_name, QUIET)  # ipt-train eval --ckpt
        assert by[set_name, task]["psnr_y"] == alone["psnr_y"]
    images = sum(2 * cell["input"]["images"] for cell in results["cells"])
    assert f"{images}/{images}" in result.stderr  # one progress bar over the whole run
    tables = markdown_tables(result.stdout)
    assert [row[0] for row in tables[next(iter(tables))][1:]] == ["Bicubic", "Model"] * 3
    assert list(tables.values())[2][0] == ["Method", "Input", "Model"]
    assert f"`{single}` (denoise_70)" in result.stdout and "Model: `" in result.stdout


def test_a_bad_set_or_option_is_one_error_line_before_any_evaluation(bench, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(bench / "Set5", broken / "Set5")
    shutil.copytree(bench / "Rain100L", broken / "Rain100L")
    (broken / "Rain100L" / "norain-2.png").rename(broken / "Rain100L" / "norain-3.png")
    (tmp_path / "broken.pt").write_bytes(b"")
    json_out = tmp_path / "out.json"
    base = ["tables", "--bench", str(bench), "--json", str(json_out)]
    for args, expected in (
        ([*base, "--baseline", "--sets", "Set5,B100"], "B100: no such folder (named by --sets)"),
        ([*base, "--baseline", "--sets", "Set5,Set6"], "--sets 'Set5,Set6': the sets are"),
        (["tables", "--bench", str(broken), "--baseline"], "rain-2.png: no matching norain-N"),
        (["tables", "--bench", str(tmp_path / "none"), "--baseline"], "none: no such folder"),
        ([*base], "give --ckpt and/or --ckpt-for TASK=CKPT, or --baseline alone"),
        ([*base, "--baseline", "--ckpt", str(tmp_path / "broken.pt")], "or --baseline alone"),
        ([*base, "--ckpt", str(tmp_path / "missing.pt")], "missing.pt: no such checkpoint"),
        ([*base, "--ckpt-for", "sr_x5=a.pt"], "--ckpt-for 'sr_x5=a.pt': give TASK=CKPT"),
        ([*base, "--ckpt", str(tmp_path / "broken.pt"), "--device", "tpu"], "unknown device"),
    ):
        result = CliRunner().invoke(main, args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1, (args, result.output)
        assert lines[0].startswith("Error: ") and expected in lines[0], (args, lines)
        assert not json_out.exists()
