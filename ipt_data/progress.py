"""Progress bars for every command: a live tqdm bar on a terminal, a few plain lines in a log.

On a terminal a bar redraws itself in place, so frequent redraws cost the reader nothing. Sent
to a file or a pipe (a CI log, the demo's log) every redraw stays: tqdm's default of one redraw
per 0.1 s, plus one per ``set_postfix`` call, turns an hour's run into tens of thousands of
carriage-return-joined updates. There a bar prints one plain line at most every
:data:`LOG_SECONDS` (its first when it starts), and its final line when it closes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO

from tqdm import tqdm

LOG_SECONDS = 30.0  # at most one line this often where the output is not a terminal


def progress_bar(
    iterable: Iterable | None = None,
    *,
    enabled: bool = True,
    file: IO[str] | None = None,
    **options,
) -> tqdm:
    """A tqdm bar over ``iterable`` (or a manual one: pass ``total=``) written to ``file``
    (default: stderr as it is now), redrawn in place on a terminal and as a plain line at most
    every :data:`LOG_SECONDS` elsewhere; ``enabled`` False shows nothing. ``options`` go to
    tqdm (``desc``, ``unit``, ``total``, ``initial``, ...)."""
    stream = sys.stderr if file is None else file
    kind = tqdm if _is_terminal(stream) else LogProgress
    return kind(iterable, disable=not enabled, file=stream, **options)


class LogProgress(tqdm):
    """A tqdm bar for logs: each display is one plain ``\\n``-ended line, at most one per
    ``mininterval`` (default :data:`LOG_SECONDS`), refreshes forced by ``set_postfix``
    included; the final line (overall rate) is always printed at close."""

    def __init__(self, *args, **options) -> None:
        self._shown_at: float | None = None  # read by the first refresh, inside tqdm's init
        options.setdefault("mininterval", LOG_SECONDS)
        super().__init__(*args, **{**options, "leave": False})  # close prints the last line

    def refresh(self, nolock: bool = False, lock_args: tuple | None = None) -> bool | None:
        if self.disable:
            return None
        now = self._time()
        if self._shown_at is not None and now - self._shown_at < self.mininterval:
            return False
        self._shown_at = now
        return super().refresh(nolock, lock_args)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "":  # tqdm clearing its line on close: a log has no line to clear
            return False
        self.fp.write(f"{self if msg is None else msg}\n")
        self.fp.flush()
        return True

    def close(self) -> None:
        if not getattr(self, "disable", True):  # as tqdm's: init may have failed early
            self._ema_dt = lambda: None  # the last line gives the overall rate, as tqdm's does
            self.display()
        super().close()


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
