"""Options shared by the long CLI commands: ``--progress`` and ``--quiet``; help text.

``@progress_options`` (or ``app.command("x")(progress_options(x))``) adds both options to a
command without touching its signature, and runs the command under the chosen mode.
:func:`escape_help_markup` keeps rich from reading bracketed help text (``[grid]``,
``ORG/NAME[/SUBFOLDER]``) as markup; the root command group applies it to every command.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, Literal

import typer

from vlmsae.core.progress import get_mode, progress_mode

ProgressChoice = Literal["auto", "bar", "log", "none"]

_PROGRESS_HELP = (
    "auto: a bar on a terminal, else a log line every 10% (and at least every 30 s); "
    "bar; log; none. TQDM_DISABLE=1 turns auto off."
)
_QUIET_HELP = "No progress and no INFO log lines (warnings, errors and results still print)."


def progress_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--progress auto|bar|log|none`` and ``--quiet`` to a typer command."""

    @functools.wraps(command)
    def run(*args: Any, progress: str = "auto", quiet: bool = False, **kwargs: Any) -> Any:
        with progress_mode("none" if quiet else progress), _quiet_logs(quiet), _hf_bars():
            return command(*args, **kwargs)

    signature = inspect.signature(command, eval_str=True)
    extra = [
        inspect.Parameter(
            "progress",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option("auto", "--progress", help=_PROGRESS_HELP),
            annotation=ProgressChoice,
        ),
        inspect.Parameter(
            "quiet",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(False, "--quiet", "-q", help=_QUIET_HELP, metavar=""),
            annotation=bool,
        ),
    ]
    params = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        else p
        for p in signature.parameters.values()
    ]
    run.__signature__ = signature.replace(parameters=params + extra)  # type: ignore[attr-defined]
    run.__annotations__ = {**command.__annotations__, "progress": ProgressChoice, "quiet": bool}
    return run


class _quiet_logs:
    """Raise the ``vlmsae`` loggers to WARNING inside the block when ``quiet``."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.logger, self.level = quiet, logging.getLogger("vlmsae"), 0

    def __enter__(self) -> None:
        if self.quiet:
            self.level = self.logger.level
            self.logger.setLevel(logging.WARNING)

    def __exit__(self, *exc: object) -> None:
        if self.quiet:
            self.logger.setLevel(self.level)


@contextlib.contextmanager
def _hf_bars() -> Iterator[None]:
    """Outside ``bar`` mode, silence the progress bars of transformers and huggingface_hub
    (weight loading, downloads) too: they would put carriage-return frames in a log."""
    if get_mode() == "bar":
        yield
        return
    env_key, env_old = (
        "HF_HUB_DISABLE_PROGRESS_BARS",
        os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS"),
    )
    hf_logging = sys.modules.get("transformers.utils.logging")  # already imported: switch it
    was_on = hf_logging is not None and hf_logging.is_progress_bar_enabled()
    os.environ[env_key] = "1"  # read when transformers / huggingface_hub are imported
    if was_on:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if env_old is None:
            os.environ.pop(env_key, None)
        else:
            os.environ[env_key] = env_old
        if was_on:
            hf_logging.enable_progress_bar()


def escape_help_markup(command: Any) -> None:
    """Escape what rich would read as markup in the help of ``command`` and every command
    under it (``[grid]``, ``[/SUBFOLDER]``), so that help shows its text as written."""
    if importlib.util.find_spec("rich") is None:  # typer prints plain help then
        return
    from rich.markup import escape

    for attr in ("help", "short_help", "epilog"):
        if getattr(command, attr, None):
            setattr(command, attr, escape(getattr(command, attr)))
    for param in getattr(command, "params", ()):
        if getattr(param, "help", None):
            param.help = escape(param.help)
    for sub in getattr(command, "commands", {}).values():
        escape_help_markup(sub)


def hf_bars_off_terminal() -> None:
    """For the whole process, outside ``bar`` mode (stderr not a terminal): turn off the
    progress bars of transformers and huggingface_hub ("Loading weights", downloads), which
    write carriage-return frames into a log file. The root command calls it, so commands
    without ``--progress`` (steer, explore, label) log no frames either."""
    if get_mode() == "bar":
        return
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when the libraries are imported
    if "huggingface_hub" in sys.modules:  # imported already: its constant was read
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:
        hf_logging.disable_progress_bar()
