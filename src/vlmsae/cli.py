"""The ``vlmsae`` command: a thin layer over the library.

Each pipeline stage registers its own commands (``vlmsae/<stage>/cli.py`` defines
``register(app)``); heavy imports happen inside the commands so that ``vlmsae --help``
and ``vlmsae inspect`` start fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging

import typer

from vlmsae import __version__
from vlmsae.core.cli_errors import DEBUG_ENV, ErrorReportingGroup
from vlmsae.core.cli_options import hf_bars_off_terminal

# Stages that contribute commands, in the order `vlmsae --help` lists them.
STAGES = (
    "encoders",
    "data",
    "train",
    "formats",
    "metrics",
    "toyworld",
    "steer",
    "evaluate",
    "report",
    "demo",
    "explore",
)

app = typer.Typer(
    name="vlmsae",
    help="Sparse autoencoders for vision-language models.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    cls=ErrorReportingGroup,  # a user's mistake: one `Error:` line, exit code 2
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vlmsae {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
    debug: bool = typer.Option(  # read by ErrorReportingGroup from the root context
        False,
        "--debug",
        help=f"Show the traceback of user errors too (or set {DEBUG_ENV}=1).",
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    hf_bars_off_terminal()  # no carriage-return frames of library bars in a log file


for _stage in STAGES:
    if importlib.util.find_spec(f"vlmsae.{_stage}.cli") is not None:
        importlib.import_module(f"vlmsae.{_stage}.cli").register(app)


def main() -> None:
    """Run the ``vlmsae`` command (user errors: one ``Error:`` line, exit code 2; see
    :mod:`vlmsae.core.cli_errors`)."""
    app()
