"""Errors a user can cause.

Everything a user can get wrong (a missing folder, an unknown task, a bad manifest, an image too
small) raises :class:`UserError` (or a subclass) with a message that names the problem. The CLIs
of both packages turn it into one ``Error: <message>`` line and exit status 1 instead of a
traceback (:class:`ipt_data.clickgroup.UserErrorGroup`). Programming errors still raise normally.
This module imports nothing beyond the standard library, so that every module may use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


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
    """The user stopped the command (Ctrl-C, SIGINT); exits with 128 + SIGINT as shells do."""

    exit_code = 130


@contextlib.contextmanager
def interrupted_then(what_now: str) -> Iterator[None]:
    """Turn Ctrl-C under this block into :class:`Interrupted` saying ``what_now`` (what was
    kept, how to go on)."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; {what_now}") from None


def printable(text: str) -> str:
    """``text`` with non-printable characters (C0 and C1 controls, ...) escaped, newlines kept:
    strings from someone else's manifest or tar members reach messages, and must not send
    escape sequences to the user's terminal."""
    return "".join(
        char if char.isprintable() or char == "\n" else repr(char)[1:-1] for char in text
    )
