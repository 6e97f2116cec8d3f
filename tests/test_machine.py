"""The CPU model the benchmark commands print in their header (ipt_data.machine)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from ipt_data import cpu_model
from ipt_data.cli import main

XEON = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 167
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu avx2 avx512f

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Another Processor
"""


def test_the_model_name_comes_with_its_family_and_model_numbers(tmp_path):
    (tmp_path / "cpuinfo").write_text(XEON)
    assert cpu_model(tmp_path / "cpuinfo") == "Intel(R) Xeon(R) Processor, family 6 model 167"
    (tmp_path / "cpuinfo").write_text("model name\t: AMD EPYC 9B14\n")
    assert cpu_model(tmp_path / "cpuinfo") == "AMD EPYC 9B14"


def test_without_a_model_name_another_source_names_the_cpu(tmp_path):
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nCPU implementer\t: 0x41\n")  # aarch64
    assert cpu_model(tmp_path / "cpuinfo")
    assert cpu_model(tmp_path / "missing")


def test_ipt_data_bench_names_the_cpu_first():
    result = CliRunner().invoke(main, ["bench", "--corruptions", "--patches", "1"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == f"cpu: {cpu_model()}"
    result = CliRunner().invoke(main, ["bench", "--corruptions", "--patches", "1", "--json"])
    assert json.loads(result.output)["cpu"] == cpu_model()
