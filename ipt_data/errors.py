"""Errors a user can cause.

Everything a user can get wrong (a missing folder, an unknown task, a bad manifest, an image too
small) raises :class:`UserError` (or a subclass) with a message that names the problem. The CLIs
of both packages turn it into one ``Error: <message>`` line and exit status 1 instead of a
traceback (:class:`ipt_data.clickgroup.UserErrorGroup`). Programming errors still raise normally.
This module imports nothing beyond the standard library, so that every module may use it.

Stopping is handled here too. SIGINT (Ctrl-C) raises KeyboardInterrupt in Python's main thread;
while a command runs, SIGTERM (a scheduler's time limit, ``docker stop``, Kubernetes) and SIGUSR1
(SLURM's ``--signal``) raise :class:`Stop`, a KeyboardInterrupt too, so that the code that cleans
up after Ctrl-C (temporary files removed, copies and Ray stopped) runs for them as well. The
command then ends in one ``Error:`` line saying what was kept and how to go on, with exit status
128 + the signal's number, as a shell reports a process ended by it: 130 (SIGINT), 143
(SIGTERM), 138 (SIGUSR1).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

# Signals that stop a command cleanly. SIGINT is Python's KeyboardInterrupt already.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class UserError(Exception):
    """An error caused by the user's input; its message is shown as is, without a traceback."""


class UnreadableImage(UserError):
    """An input file that cannot be decoded as an image; ``reason`` is a short stable tag
    (``empty``, ``truncated``, ``not_an_image``, ...) used to count skips in the manifest."""

    def __init__(self, source: str, reason: str, detail: str = "") -> None:
        self.source = source
        self.reason = reason
        message = f"{source}: unreadable image ({reason})"
        super().__init__(f"{message}: {detail}" if detail else message)


class Interrupted(UserError):
    """The command was stopped by a signal (Ctrl-C, SIGTERM, ...); exits with 128 + its number,
    as a shell reports a process ended by it (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class Stop(KeyboardInterrupt):
    """SIGTERM or SIGUSR1, raised in the main thread as Ctrl-C raises KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def raise_stop(signum: int, frame: object) -> None:
    """A signal handler: raise :class:`Stop` for the signal."""
    raise Stop(signum)


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGUSR1 raise :class:`Stop` (SIGINT raises
    KeyboardInterrupt as usual); the handlers before are restored after. Only in the main
    thread, where Python runs signal handlers; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, raise_stop) for signum in STOP_SIGNALS[1:]}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def interrupted(error: KeyboardInterrupt, what_now: str = "") -> Interrupted:
    """The :class:`Interrupted` of Ctrl-C or a :class:`Stop`: ``interrupted; WHAT_NOW`` for
    SIGINT, ``stopped by SIGTERM; WHAT_NOW`` for the others."""
    signum = getattr(error, "signum", signal.SIGINT)
    head = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    return Interrupted(f"{head}; {what_now}" if what_now else head, signum)


@contextlib.contextmanager
def interrupted_then(what_now: str) -> Iterator[None]:
    """Turn Ctrl-C or a :class:`Stop` under this block into :class:`Interrupted` saying
    ``what_now`` (what was kept, how to go on)."""
    try:
        yield
    except KeyboardInterrupt as error:
        raise interrupted(error, what_now) from None


def printable(text: str) -> str:
    """``text`` with non-printable characters (C0 and C1 controls, ...) escaped, newlines kept:
    strings from someone else's manifest or tar members reach messages, and must not send
    escape sequences to the user's terminal."""
    return "".join(
        char if char.isprintable() or char == "\n" else repr(char)[1:-1] for char in text
    )
