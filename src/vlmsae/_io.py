"""Small file helpers shared by every stage: atomic writes and JSON."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` in one rename.

    A crash (or a full disk) never leaves a half-written ``path`` behind: either the old
    file is still there or the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


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
