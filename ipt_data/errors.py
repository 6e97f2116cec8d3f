"""Errors a user can cause, and the click group that turns them into one clear line.

Everything a user can get wrong (a missing folder, an unknown task, a bad manifest, an image too
small) raises :class:`UserError` (or a subclass) with a message that names the problem. The CLIs
of both packages use :class:`UserErrorGroup`, which prints ``Error: <message>`` and exits with
status 1 instead of a traceback. Programming errors still raise normally.
"""

from __future__ import annotations

import click


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


class UserErrorGroup(click.Group):
    """A click group whose commands report :class:`UserError` as ``Error: ...`` with exit 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as error:
            raise click.ClickException(str(error)) from None
