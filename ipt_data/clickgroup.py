"""The click group of both CLIs: :class:`ipt_data.errors.UserError` as one ``Error:`` line.

Kept apart from :mod:`ipt_data.errors` so that raising a UserError never imports click.
"""

from __future__ import annotations

import click

from ipt_data.errors import UserError, interrupted, printable, stop_signals_raise


class UserErrorGroup(click.Group):
    """A click group whose commands report :class:`UserError` as ``Error: ...`` with exit 1, or
    with the error's ``exit_code``, instead of a traceback. While a command runs, SIGTERM and
    SIGUSR1 stop it as Ctrl-C does (:func:`ipt_data.errors.stop_signals_raise`); a stop the
    command does not handle itself ends in ``Error: interrupted`` (exit 130) or ``Error:
    stopped by SIGTERM`` (143), never in click's bare ``Aborted!``. A UserError without a
    message exits with its code and prints nothing (another process has said what happened)."""

    def invoke(self, ctx: click.Context):
        with stop_signals_raise():
            try:
                return super().invoke(ctx)
            except KeyboardInterrupt as stopped:
                error = interrupted(stopped)
            except UserError as caught:
                error = caught
        raise _click_error(error) from None  # with the signals as before: a late one is no Stop


def _click_error(error: UserError) -> click.ClickException | click.exceptions.Exit:
    """The click exception that prints ``Error: <message>`` (escaped: :func:`printable`) and exits
    with the error's code; for an error without a message, the exit alone."""
    code = getattr(error, "exit_code", 1)
    if not str(error):
        return click.exceptions.Exit(code)
    failure = click.ClickException(printable(str(error)))
    failure.exit_code = code
    return failure
