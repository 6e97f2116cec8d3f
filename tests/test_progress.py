"""Progress bars: live on a terminal (a real pty), a few plain lines in a log (a file, a pipe)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time

from loopback_servers import BIN, http_server, tiny_set
from tqdm import tqdm

from ipt_data.progress import LOG_SECONDS, LogProgress, progress_bar


def updates(text: str) -> list[str]:
    """What a reader of the log sees: every carriage return or newline starts an update."""
    return [part for part in re.split(r"[\r\n]", text) if part.strip()]


def busy_loop(bar: tqdm, steps: int) -> None:
    """A training loop's pattern: a postfix (which tqdm redraws at once) and a step, often."""
    with bar:
        for step in range(steps):
            time.sleep(0.002)
            bar.set_postfix(loss=1 / (step + 1))
            bar.update()


def test_a_log_gets_its_first_and_last_line_only(tmp_path):
    with open(tmp_path / "plain.log", "w") as log:
        busy_loop(tqdm(total=300, file=log), 300)
    with open(tmp_path / "helper.log", "w") as log:
        bar = progress_bar(total=300, desc="train", file=log)
        assert isinstance(bar, LogProgress)
        busy_loop(bar, 300)
    assert len(updates((tmp_path / "plain.log").read_text())) > 250  # what the helper avoids
    text = (tmp_path / "helper.log").read_text()
    assert "\r" not in text and text.endswith("\n")
    first, last = text.splitlines()
    assert first.startswith("train:   0%") and "300/300" in last and "loss=0.00333" in last


def test_a_disabled_bar_writes_nothing(tmp_path):
    with open(tmp_path / "log", "w") as log:
        assert list(progress_bar(range(5), enabled=False, file=log)) == [0, 1, 2, 3, 4]
    assert (tmp_path / "log").read_text() == ""


def test_a_terminal_gets_the_live_bar():
    controller, terminal = os.openpty()
    with os.fdopen(terminal, "w") as screen:
        bar = progress_bar(total=3, desc="copy", file=screen, mininterval=0)
        assert type(bar) is tqdm
        for _ in range(3):
            bar.update()
        bar.close()
    shown = b""
    with contextlib.suppress(OSError):  # Linux: EIO once the terminal's side is closed and read
        while block := os.read(controller, 1 << 16):
            shown += block
    os.close(controller)
    shown = shown.decode()
    assert shown.count("\r") >= 4 and "3/3" in shown  # redrawn in place, one update a step


def test_pull_into_a_log_prints_a_handful_of_lines(tmp_path_factory, tmp_path):
    with http_server(tiny_set(tmp_path_factory)) as server:
        server.latency = 0.1  # each shard takes longer than tqdm's 0.1 s between redraws
        command = [BIN / "ipt-data", "pull", server.url, str(tmp_path / "copy"), "--jobs", "1"]
        run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = updates(run.stderr)
    assert len(lines) == 2 and "\r" not in run.stderr, run.stderr
    assert lines[0].startswith("shards:   0%") and "6/6" in lines[1]
    assert run.stdout.startswith("copied 6 shards")


def test_pretraining_into_a_log_prints_two_bar_lines(tmp_path_factory, tmp_path):
    shards = tiny_set(tmp_path_factory)
    command = [BIN / "ipt-train", "pretrain", "--shards", shards, "--out", tmp_path / "run"]
    command += ["--tasks", "sr_x2,denoise_30", "--steps", "20", "--batch", "2"]
    command += ["--micro-batch", "2", "--checkpoint-every", "20", "--workers", "0"]
    command += ["--shuffle-block", "16", "--seed", "1"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    elapsed = time.monotonic() - start
    assert run.returncode == 0, run.stderr
    assert "\r" not in run.stderr  # each step's set_postfix used to redraw the bar
    bar = [line for line in updates(run.stderr) if "sample/s" in line]
    # The first line and the last; on a loaded machine a run past LOG_SECONDS adds one a period.
    assert 2 <= len(bar) <= 2 + elapsed // LOG_SECONDS, run.stderr
    assert "40.0/40.0" in bar[-1] and "sr_x2=" in bar[-1], run.stderr
