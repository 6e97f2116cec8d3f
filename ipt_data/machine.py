"""The machine a figure was measured on: the CPU model that the benchmark commands print in their
header, so that a record made from their output names it (benchmarks/README.md)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model: its name in ``/proc/cpuinfo`` with the family and model numbers beside
    it where the file gives them ("Intel(R) Xeon(R) Processor, family 6 model 167": a virtual
    machine's name can be that vague); else lscpu's model name; else the platform's processor
    or machine name ("arm", "x86_64")."""
    fields: dict[str, str] = {}
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.split("\n\n", 1)[0].splitlines():  # the first processor's entry
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name")
    if name:
        numbers = [f"{label} {fields[key]}" for key, label in FAMILY_FIELDS if fields.get(key)]
        return ", ".join([name, " ".join(numbers)] if numbers else [name])
    return _lscpu_model() or platform.processor() or platform.machine() or "unknown CPU"


# /proc/cpuinfo's keys of the numbers that tell models of one name apart (x86), as printed
FAMILY_FIELDS = (("cpu family", "family"), ("model", "model"))


def _lscpu_model() -> str | None:
    try:
        listing = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in listing.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name" and value.strip():
            return value.strip()
    return None
