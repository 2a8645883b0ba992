"""Progress of long loops, readable on a terminal and in a log file.

Every long loop of vlmsae calls :func:`progress` (a drop-in for ``tqdm(...)``) instead of
``tqdm`` itself. What it shows depends on the process-wide *mode*:

- ``bar``: a tqdm bar (carriage-return frames; meant for a terminal or a notebook);
- ``log``: a plain line at every 10 % of the loop, and at least every
  :data:`LOG_INTERVAL_S` seconds, never more often than :data:`MIN_INTERVAL_S` seconds
  (so a log file stays a few lines per loop), plus a last line with the total time
  (left out for a loop shorter than that which printed nothing);
- ``none``: nothing;
- ``auto`` (the default): ``bar`` when stderr is a terminal or in a notebook, else ``log``.

In ``log`` mode a *heartbeat* also runs while a loop or an :func:`activity` (a named stage
with no loop of its own, e.g. ``with activity("demo: score"):``) is open: when nothing was
logged for 90 % of :data:`LOG_INTERVAL_S` it logs the innermost one's line (its count and eta,
or "still running" with the time so far), so a log file is never silent for longer than that
(``VLMSAE_PROGRESS_HEARTBEAT`` sets the interval in seconds). :func:`warn_once` logs a
warning once per process (a sweep of 18 SAEs warns about a shared setting once, not 18 times).

The mode is set once per process (``set_mode``, the ``--progress`` and ``--quiet`` options
of every long command, or the ``VLMSAE_PROGRESS`` environment variable); ``TQDM_DISABLE=1``
turns ``auto`` off as it does for tqdm. A loop's own ``disable=True`` always wins.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from vlmsae.core.numbers import fmt

MODES = ("auto", "bar", "log", "none")
LOG_INTERVAL_S = 30.0
"""In ``log`` mode, the longest time between two lines while a loop runs."""
MIN_INTERVAL_S = 2.0
"""In ``log`` mode, the shortest time between two lines (the final line excepted); the
environment variable ``VLMSAE_PROGRESS_MIN_INTERVAL`` (seconds) overrides it."""

_clock = time.monotonic  # tests replace it with a fake clock
HEARTBEAT_THREAD = True
"""Whether the heartbeat polls in a thread (tests with a fake clock call its ``tick``)."""
_mode: ContextVar[str | None] = ContextVar("vlmsae_progress_mode", default=None)
log = logging.getLogger("vlmsae.progress")


def _check(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r} is not one of {', '.join(MODES)}")
    return mode


def set_mode(mode: str | None) -> None:
    """Set the progress mode of this process (``None``: back to the environment's)."""
    _mode.set(None if mode is None else _check(mode))


@contextlib.contextmanager
def progress_mode(mode: str | None) -> Iterator[None]:
    """Use ``mode`` inside the ``with`` block only."""
    token = _mode.set(None if mode is None else _check(mode))
    try:
        yield
    finally:
        _mode.reset(token)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def get_mode() -> str:
    """The mode in force: ``bar``, ``log`` or ``none`` (``auto`` resolved)."""
    mode = _mode.get() or _check(os.environ.get("VLMSAE_PROGRESS", "auto").strip() or "auto")
    if mode == "auto":
        if _env_flag("TQDM_DISABLE"):
            return "none"
        return "bar" if _interactive() else "log"
    return mode


def _interactive() -> bool:
    if "ipykernel" in sys.modules:  # a notebook: tqdm.auto draws a widget
        return True
    stream = sys.stderr
    return stream is not None and hasattr(stream, "isatty") and stream.isatty()


def progress(
    iterable: Iterable | None = None,
    *,
    desc: str | None = None,
    total: float | None = None,
    initial: float = 0,
    unit: str = "it",
    disable: bool = False,
    **bar_kwargs: Any,
) -> Any:
    """A progress indicator over ``iterable`` (or updated by hand): the ``tqdm`` interface
    (iteration, ``update(n)``, ``set_postfix(...)``, ``close()``, ``with``) in the process's
    mode. Extra keyword arguments go to tqdm in ``bar`` mode and are ignored otherwise."""
    mode = "none" if disable else get_mode()
    if mode == "bar":
        from tqdm.auto import tqdm as bar

        return bar(iterable, desc=desc, total=total, initial=initial, unit=unit, **bar_kwargs)
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    return LogProgress(iterable, desc=desc, total=total, initial=initial, unit=unit,
                       silent=mode == "none")  # fmt: skip


tqdm = progress_bar = progress
"""Aliases: ``from vlmsae.core.progress import tqdm`` replaces ``from tqdm.auto import tqdm``."""


class LogProgress:
    """tqdm's interface, reporting in plain lines (or not at all when ``silent``)."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        desc: str | None = None,
        total: float | None = None,
        initial: float = 0,
        unit: str = "it",
        silent: bool = False,
    ) -> None:
        self.iterable, self.desc, self.total, self.unit = iterable, desc or "progress", total, unit
        self.n = self._start = initial
        self.silent, self.postfix = silent, ""
        self._t0 = self._last = _clock()
        self._next_tenth = self._tenth(initial) + 1
        self._closed, self._lines = False, 0
        self._min_interval = float(os.environ.get("VLMSAE_PROGRESS_MIN_INTERVAL", MIN_INTERVAL_S))
        if not silent:
            _HEART.enter(self)

    def _tenth(self, n: float) -> int:
        return int(10 * n // self.total) if self.total else 0

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("progress() was given no iterable to iterate over")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        """Count ``n`` more units done; print a line when one is due."""
        self.n += n
        if self.silent:
            return
        now = _clock()
        since = now - self._last
        if self.total and self.n >= self.total:
            return  # the final line, at close(), says it
        crossed = self.total is not None and self._tenth(self.n) >= self._next_tenth
        if (crossed and since >= self._min_interval) or since >= LOG_INTERVAL_S:
            self._emit(self._line(now))
            self._lines += 1
            self._last = now
            self._next_tenth = self._tenth(self.n) + 1

    def set_postfix(
        self, ordered_dict: dict | None = None, refresh: bool = True, **kw: Any
    ) -> None:
        """Values shown after the count (like tqdm's postfix), e.g. the current loss."""
        items = {**(ordered_dict or {}), **kw}
        self.postfix = ", ".join(f"{k}={_short(v)}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or self.desc

    def refresh(self) -> None:
        """Nothing to redraw in a log (tqdm compatibility)."""

    def write(self, text: str) -> None:
        if not self.silent:
            self._emit(text)

    def close(self) -> None:
        """Print the final line (count, time, rate) once."""
        if self._closed:
            return
        self._closed = True
        _HEART.leave(self)
        now = _clock()
        # a loop of under MIN_INTERVAL_S that printed nothing stays silent: a log file
        # should not fill with the ends of many short inner loops
        if (
            not self.silent
            and self.n > self._start
            and (self._lines or now - self._t0 >= self._min_interval)
        ):
            self._emit(self._line(now, final=True))

    def _line(self, now: float, final: bool = False) -> str:
        elapsed = now - self._t0
        done = self.n - self._start
        rate = done / elapsed if elapsed > 0 else 0.0
        count = f"{_count(self.n)}/{_count(self.total)}" if self.total else _count(self.n)
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        parts = [f"{self.desc}: {count} {self.unit}{pct}", f"{_duration(elapsed)}"]
        if rate > 0:
            parts.append(f"{_short(rate)} {self.unit}/s")
        if not final and self.total and rate > 0:
            parts.append(f"eta {_duration((self.total - self.n) / rate)}")
        line = ", ".join(parts) + ("" if not final else ", done")
        return f"{line} [{self.postfix}]" if self.postfix else line

    @staticmethod
    def _emit(line: str) -> None:
        # through logging when the program configured it (the CLI does), else plain stderr
        _HEART.last = _clock()
        if logging.getLogger().handlers and log.isEnabledFor(logging.INFO):
            log.info("%s", line)
        elif sys.stderr is not None:
            print(line, file=sys.stderr, flush=True)

    def heartbeat_line(self, now: float) -> str:
        """The line the heartbeat logs for this loop (its usual progress line)."""
        self._last = now
        self._lines += 1
        return self._line(now)


class _Activity:
    """A named stage the heartbeat speaks for (see :func:`activity`)."""

    def __init__(self, desc: str) -> None:
        self.desc, self._t0 = desc, _clock()

    def heartbeat_line(self, now: float) -> str:
        return f"{self.desc}: still running, {_duration(now - self._t0)} so far"


class _Heartbeat:
    """The process's heartbeat: logs the innermost open loop or activity when nothing was
    logged for ``interval`` seconds (log mode only). A daemon thread polls; any log record
    (a handler on the root logger notes its time) or progress line resets the wait."""

    def __init__(self) -> None:
        self.open: list[Any] = []
        self.last = _clock()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    @staticmethod
    def interval() -> float:
        """The longest silence allowed; the heartbeat speaks after 90 % of it, so that
        polling and a busy process keep the gap under it."""
        return float(os.environ.get("VLMSAE_PROGRESS_HEARTBEAT", LOG_INTERVAL_S))

    def enter(self, item: Any) -> None:
        with self.lock:
            if not self.open:
                self.last = _clock()
            self.open.append(item)
            _install_record_clock()
            if not HEARTBEAT_THREAD:
                return
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="vlmsae-heartbeat",
                                               daemon=True)  # fmt: skip
                self.thread.start()

    def leave(self, item: Any) -> None:
        with self.lock:
            if item in self.open:
                self.open.remove(item)

    def tick(self) -> str | None:
        """Log the innermost open item's line if one is due; returns the line."""
        with self.lock:
            now = _clock()
            if not self.open or now - self.last < 0.9 * self.interval():
                return None
            line = self.open[-1].heartbeat_line(now)
        LogProgress._emit(line)
        return line

    def _run(self) -> None:
        while True:
            time.sleep(max(0.05, min(1.0, self.interval() / 20)))
            with self.lock:
                if not self.open:
                    self.thread = None
                    return
            self.tick()


_HEART = _Heartbeat()


class _RecordClock(logging.Handler):
    """Notes the time of every log record, for the heartbeat (writes nothing)."""

    def emit(self, record: logging.LogRecord) -> None:
        _HEART.last = _clock()


def _install_record_clock() -> None:
    root = logging.getLogger()
    if not any(isinstance(h, _RecordClock) for h in root.handlers) and root.handlers:
        root.addHandler(_RecordClock())


@contextlib.contextmanager
def activity(desc: str) -> Iterator[None]:
    """A named stage with no loop of its own: in ``log`` mode the heartbeat logs
    "DESC: still running, T so far" whenever nothing was logged for the interval."""
    if get_mode() != "log":
        yield
        return
    item = _Activity(desc)
    _HEART.enter(item)
    try:
        yield
    finally:
        _HEART.leave(item)


_warned: set[tuple[str, str]] = set()


def warn_once(logger: logging.Logger, msg: str, *args: Any) -> None:
    """``logger.warning(msg, *args)`` the first time this text is warned in the process."""
    key = (logger.name, msg % args if args else msg)
    if key in _warned:
        return
    _warned.add(key)
    logger.warning(msg, *args)


def _count(n: float | None) -> str:
    return "?" if n is None else (f"{n:,.0f}" if float(n).is_integer() else f"{n:,.1f}")


def _short(v: Any) -> str:
    return fmt(v) if isinstance(v, float) else str(v)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


def model_label(name: str | Path) -> str:
    """A short name of a model for progress labels: the repo name of a hub id
    (``openai/clip-vit-large-patch14-336`` → ``clip-vit-large-patch14-336``), the folder of
    a local model, and for a hub-cache snapshot (``.../models--org--name/snapshots/<hash>``)
    the model's name instead of the hash."""
    parts = [p for p in Path(str(name)).parts if p not in ("/", "")]
    if not parts:
        return str(name)
    for i, part in enumerate(parts):
        if part.startswith("models--") and i + 1 < len(parts) and parts[i + 1] == "snapshots":
            return part.split("--")[-1]
    return parts[-1]
