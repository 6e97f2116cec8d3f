"""The byte-level promises do not depend on the CPU: a small shard set (one photograph through all
six tasks, so every corruption, with the default PNG encoder) built under other vector kernels
has the same sha256 sums: shards, manifest and dataset card alike (docs/building.md, docs/png.md).

Each build is the real ``ipt-data build`` in a child process; its Ray workers inherit the
environment, and each library reads its setting when it loads: NumPy's NPY_DISABLE_CPU_FEATURES,
OpenCV's OPENCV_CPU_DISABLE, libjpeg-turbo's JSIMD_FORCENONE (Pillow's JPEG decoder), torch's
ATEN_CPU_CAPABILITY and oneDNN's DNNL_MAX_CPU_ISA (ipt_data never imports torch: those two must
change nothing, and are tried because CI tries them on the numerics tests).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
# What NumPy dispatches to on this CPU, and OpenCV's feature line (the dispatched ones marked *,
# those turned off marked ?), as a child process with a given environment sees them.
PROBE = """
import json, cv2
from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
numpy = [name for name in __cpu_dispatch__ if __cpu_features__[name]]
print(json.dumps({"numpy": numpy, "opencv": cv2.getCPUFeaturesLine()}))
"""


def probe(env: dict[str, str]) -> dict:
    run = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(run.stdout)


def opencv_dispatched(line: str) -> list[str]:
    """The features of OpenCV's feature line that it dispatches to and has not turned off."""
    return [name[1:] for name in line.split() if name.startswith("*") and not name.endswith("?")]


def build(source: Path, out: Path, env: dict[str, str]) -> dict[str, str]:
    """sha256 of every file of a one-image, two-pair build of ``source``: those at the top (the
    manifest, the card) and the shards."""
    command = [BIN / "ipt-data", "build", "--src", source, "--out", out, "--limit", "1"]
    command += ["--patches-per-image", "2", "--workers", "1", "--no-progress"]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=300)
    files = [*sorted(p for p in out.iterdir() if p.is_file()), *sorted(out.glob("*/*.tar"))]
    return {
        path.relative_to(out).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in files
    }


def test_a_small_build_has_the_same_bytes_under_other_cpu_kernels(tmp_path):
    subprocess.run([BIN / "ipt-data", "sample", tmp_path / "photos"], check=True)
    native = probe(dict(os.environ))
    avx512 = [name for name in native["numpy"] if "512" in name or name == "X86_V4"]
    settings = {
        "torch's portable kernels": {"ATEN_CPU_CAPABILITY": "default"},
        "oneDNN up to AVX2": {"DNNL_MAX_CPU_ISA": "AVX2"},
        "NumPy without AVX-512": {"NPY_DISABLE_CPU_FEATURES": " ".join(avx512)},
        "no vector kernels in NumPy, OpenCV or libjpeg-turbo": {
            "NPY_DISABLE_CPU_FEATURES": " ".join(native["numpy"]),
            "OPENCV_CPU_DISABLE": ",".join(opencv_dispatched(native["opencv"])),
            "JSIMD_FORCENONE": "1",
        },
    }
    expected = build(tmp_path / "photos", tmp_path / "native", dict(os.environ))
    assert "manifest.json" in expected and len(expected) >= 1 + 6  # and a shard per task
    for number, (name, setting) in enumerate(settings.items()):
        env = {**os.environ, **setting}
        seen = probe(env)  # the setting took: its names are ones these libraries know
        if "NPY_DISABLE_CPU_FEATURES" in setting:
            off = setting["NPY_DISABLE_CPU_FEATURES"].split()
            assert not set(seen["numpy"]) & set(off), (name, seen)
        if "OPENCV_CPU_DISABLE" in setting:
            assert opencv_dispatched(seen["opencv"]) == [], (name, seen)
        assert build(tmp_path / "photos", tmp_path / f"set{number}", env) == expected, name
