"""How the ``vlmsae`` command reports failures.

A user's mistake (a :class:`~vlmsae.core.errors.UserError`, an artifact that is missing or
broken, a usage error) ends as one ``Error: <message>`` line on stderr and exit code 2;
anything else is a bug and keeps its traceback. ``vlmsae --debug`` or ``VLMSAE_DEBUG=1``
shows the traceback of user errors too.

Commands raise :class:`UserError` themselves, or wrap a library call whose ``ValueError``
is known to describe the user's input in :func:`user_errors`. Nothing is caught per
command: :class:`ErrorReportingGroup` (the root command group) does it once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from typer.core import TyperGroup

from vlmsae.core.cli_options import escape_help_markup
from vlmsae.core.errors import Interrupted, NonFiniteError, UserError

DEBUG_ENV = "VLMSAE_DEBUG"
EXIT_USER_ERROR = 2
_OS_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)
# typer may vendor its own copy of click: take click's classes from typer's own exceptions.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` describes something the user can fix (shown as one line)."""
    return isinstance(exc, (UserError, NonFiniteError, *_OS_ERRORS))


def error_message(exc: BaseException) -> str:
    """The message of ``exc`` as the user should read it (OS errors name their file)."""
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


@contextmanager
def user_errors(*types: type[BaseException]) -> Iterator[None]:
    """Re-raise ``types`` (default ``ValueError``) raised inside as :class:`UserError`.

    For library calls whose validation errors are about the user's input (a config
    field, an option value): the message is kept, the original stays chained for
    ``--debug``.
    """
    caught = types or (ValueError,)
    try:
        yield
    except UserError:
        raise
    except caught as e:
        raise UserError(error_message(e)) from e


def debug_enabled(ctx: Any = None) -> bool:
    """``--debug`` on the root command or ``VLMSAE_DEBUG`` set to a true value."""
    if os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return True
    return bool(ctx is not None and ctx.find_root().params.get("debug"))


def _report(message: str) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(EXIT_USER_ERROR)


class ErrorReportingGroup(TyperGroup):
    """The root command group: turns user errors into one ``Error:`` line and exit code 2,
    and shows every command's help text as written (no rich markup read from it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        escape_help_markup(self)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise
        except Interrupted as e:  # saved and stopped at a signal: say how to go on
            typer.echo(str(e), err=True)
            raise typer.Exit(e.exit_code) from None
        except _ClickException as e:  # usage errors: one line instead of a panel
            if type(e).__name__ == "NoArgsIsHelpError":  # prints the help, as it should
                raise
            where = f" (see `{e.ctx.command_path} --help`)" if getattr(e, "ctx", None) else ""
            raise _report(e.format_message().rstrip(".") + where) from None
        except Exception as e:
            if not is_user_error(e) or debug_enabled(ctx):
                raise
            raise _report(error_message(e)) from None
