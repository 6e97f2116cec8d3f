"""The click group of both CLIs: :class:`ipt_data.errors.UserError` as one ``Error:`` line.

Kept apart from :mod:`ipt_data.errors` so that raising a UserError never imports click.
"""

from __future__ import annotations

import click

from ipt_data.errors import Interrupted, UserError, printable


class UserErrorGroup(click.Group):
    """A click group whose commands report :class:`UserError` as ``Error: ...`` with exit 1
    (:class:`Interrupted`, and a Ctrl-C not handled by the command: ``Error: interrupted...``
    with exit 130) instead of a traceback or click's bare ``Aborted!``."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise _click_error(Interrupted("interrupted")) from None
        except UserError as error:
            raise _click_error(error) from None


def _click_error(error: UserError) -> click.ClickException:
    """The click exception that prints ``Error: <message>`` (escaped: :func:`printable`) and exits
    with the error's code."""
    failure = click.ClickException(printable(str(error)))
    failure.exit_code = getattr(error, "exit_code", failure.exit_code)
    return failure
