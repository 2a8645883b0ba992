"""Small file helpers shared by every stage: atomic writes, JSON, and output errors.

Every file is written to a temporary sibling ``.NAME.XXXXXXXX.tmp`` and renamed over
``NAME``; :func:`remove_stale_temps` clears the ones a killed process left behind.
A full disk, a read-only file system, a missing permission or a file where a folder is
expected ends as an :class:`OutputError`: a :class:`~vlmsae.core.errors.UserError` (one
``Error:`` line in the CLI) that is still an ``OSError`` with its ``errno``.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from vlmsae.core.errors import OutputError

TEMP_SUFFIX = ".tmp"
_OUTPUT_HINTS = {
    errno.ENOSPC: "the disk is full: free space and run again (with --resume where the "
    "command has it)",
    errno.EDQUOT: "the disk quota is exceeded: free space and run again (with --resume where "
    "the command has it)",
    errno.EROFS: "the file system is read-only: choose another --out",
    errno.EACCES: "permission denied: choose another --out or fix its permissions",
    errno.EPERM: "operation not permitted: choose another --out or fix its permissions",
    errno.ENOTDIR: "a file stands where a folder is expected: choose another --out or move "
    "that file",
    errno.EEXIST: "a file stands where a folder is expected: choose another --out or move "
    "that file",
}


def output_error(path: str | Path, error: OSError) -> OSError:
    """``error`` as an :class:`OutputError` that names ``path`` and says how to fix it, or
    ``error`` itself when it is not one of the conditions a user can fix."""
    hint = _OUTPUT_HINTS.get(error.errno)  # type: ignore[arg-type]
    if hint is None or isinstance(error, OutputError):
        return error
    assert error.errno is not None
    return OutputError(error.errno, f"cannot write {path} ({os.strerror(error.errno)}); {hint}")


def _raise_output_error(path: str | Path, error: OSError) -> None:
    converted = output_error(path, error)
    if converted is error:
        raise error
    raise converted from error


def ensure_dir(path: str | Path) -> Path:
    """Create the folder ``path`` (and its parents); an :class:`OutputError` when it cannot."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _raise_output_error(path, e)
    return path


def _new_temp(path: Path) -> Path:
    """Create an empty temporary sibling of ``path``. Created with ``os.open(..., 0o666)``,
    so the umask decides its mode (``mkstemp`` would force 0600 on every output)."""
    for _ in range(100):
        tmp_path = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp_path
    raise FileExistsError(errno.EEXIST, f"no free temporary name next to {path}")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` in one rename.

    A crash (or a full disk) never leaves a half-written ``path`` behind: either the old
    file is still there or the new one is complete. The temporary file is removed on any
    error; one left by a killed process is removed by :func:`remove_stale_temps`.
    """
    path = Path(path)
    ensure_dir(path.parent)
    try:
        tmp_path = _new_temp(path)
    except OSError as e:
        _raise_output_error(path, e)
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    except BaseException as e:
        tmp_path.unlink(missing_ok=True)
        if isinstance(e, OSError):
            _raise_output_error(path, e)
        raise


class _Writer:
    """A file object with only ``write``: ``np.save`` then writes in chunks through it,
    so a full disk raises ``OSError(ENOSPC)`` (``tofile`` raises one without an errno)."""

    def __init__(self, f: Any) -> None:
        self.write = f.write


def save_npy(path: Path, arr: Any) -> None:
    """Atomic ``np.save`` without pickle (``np.save`` on a path would append ``.npy``)."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(_Writer(f), arr, allow_pickle=False)

    atomic_write(path, write)


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files (``.NAME.*.tmp``) that interrupted atomic writes left in
    ``folder``. Call it only while this process owns ``folder`` (see ``vlmsae.core.lock``)."""
    removed = []
    folder = Path(folder)
    if folder.is_dir():
        for f in folder.glob(f".*{TEMP_SUFFIX}"):
            if f.is_file() and not f.is_symlink():
                f.unlink(missing_ok=True)
                removed.append(f)
    return removed


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically, in standard JSON (see :func:`to_json`)."""
    atomic_write_text(path, to_json(obj) + "\n")


def to_json(obj: Any, indent: int | None = 2) -> str:
    """``obj`` as standard JSON text at full precision: numpy values become plain ones, and
    a NaN or infinity (which strict JSON readers refuse) becomes ``null``, with the reason in
    a sibling field ``<key>_reason`` unless the caller wrote one (see :func:`finite_json`)."""
    return json.dumps(finite_json(obj), indent=indent, sort_keys=False, allow_nan=False)


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def finite_json(obj: Any) -> Any:
    """A copy of ``obj`` made of plain JSON values, with every NaN / ±inf replaced by None.

    In a dict, a replaced value ``d[key]`` gets ``d[key + "_reason"]`` (kept when present,
    so a caller can say *why*, e.g. ``"undefined: every neuron is dead"``); a list holding
    replaced values gets one reason for the list. Numpy scalars and arrays, paths and tuples
    are converted; anything else raises ``TypeError``.
    """
    obj = _plain(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            key = str(key)
            clean = finite_json(value)
            out[key] = clean
            reason = _non_finite_reason(_plain(value))
            if reason is not None and f"{key}_reason" not in obj:
                out[f"{key}_reason"] = reason
        return out
    if isinstance(obj, list):
        return [finite_json(v) for v in obj]
    return obj


def _non_finite_reason(value: Any) -> str | None:
    """Why a value written as null is null (None when nothing was replaced)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN: undefined for these data" if math.isnan(value) else f"{value}: not finite"
    if isinstance(value, list) and any(
        isinstance(v, float) and not math.isfinite(v) for v in map(_plain, value)
    ):
        return "null entries are NaN or infinite: undefined for these data"
    return None


def _plain(obj: Any) -> Any:
    """Numpy / torch scalars and arrays, paths and tuples as plain Python values."""
    if obj is None or isinstance(obj, (bool, int, float, str, dict, list)):
        return obj
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays and scalars, tensors
        return obj.tolist()
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


_PLAIN_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def csv_cell(value: Any) -> Any:
    """``value`` safe for a spreadsheet: a text cell starting with ``= + - @``, a tab or a
    carriage return gets a leading ``'`` (so does one that starts with ``'``, which keeps the
    escape reversible: :func:`csv_uncell`). Numbers are left alone (``-0.5`` stays a number),
    and so is text that is a plain decimal number (``"-0.029"``: a spreadsheet reads it as the
    number, never as a formula)."""
    if (
        isinstance(value, str)
        and value.startswith((*_FORMULA_START, "'"))
        and not _PLAIN_NUMBER.fullmatch(value)
    ):
        return "'" + value
    return value


def csv_uncell(text: str) -> str:
    """The text :func:`csv_cell` escaped, as it was."""
    return text[1:] if text.startswith("'") else text


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A CSV document (``csv`` module quoting) whose text cells are escaped by :func:`csv_cell`."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([csv_cell(h) for h in header])
    writer.writerows([csv_cell(v) for v in row] for row in rows)
    return buf.getvalue()
