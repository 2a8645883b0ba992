"""Small helpers the sources share: what a key is, the files a ``--data`` pattern names, and
the optional packages a source needs (a leaf module: the sources import it, never back)."""

from __future__ import annotations

import glob
import importlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmsae.core.errors import UserError

KEY_SCHEME = re.compile(r"^(hf|arrow|parquet|tar):")
"""Keys that are not file paths (never made absolute; :func:`vlmsae.data.sources.open_image`
opens them)."""


def is_key(name: str) -> bool:
    """Whether ``name`` is a source key (``tar:``, ``hf:``, ...) rather than a file path."""
    return bool(KEY_SCHEME.match(name))


def require(module: str, extra: str) -> Any:
    """Import an optional dependency, or refuse with the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"this source needs the '{module}' package: pip install 'vlmsae[{extra}]'"
        ) from None


def expand_files(pattern: str, suffix: str) -> list[str]:
    """The files a ``--data`` pattern names, absolute and in order: a folder (its ``*suffix``
    files by name), brace syntax (``{000..099}``, in the order written), a glob (sorted) or
    one file. Raises :class:`UserError` when none exist."""
    path = Path(pattern)
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.name.lower().endswith(suffix))
    else:
        expanded = _braces(pattern) if "{" in pattern else [pattern]
        files = []
        for item in expanded:
            found = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
            files.extend(found)
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise UserError(f"--data {pattern}: no file {missing[0]}{more}")
    if not files:
        raise UserError(f"--data {pattern}: no {suffix} files found")
    return [os.path.abspath(f) for f in files]


def _braces(pattern: str) -> list[str]:
    """WebDataset's brace syntax, expanded by the library it uses (``braceexpand``)."""
    braceexpand = require("braceexpand", "wds")
    return list(braceexpand.braceexpand(pattern))


def file_list(files: Sequence[str]) -> list[dict[str, Any]]:
    """``[{"file", "bytes"}]`` of ``files`` (a source's identity: its shards and their sizes)."""
    return [{"file": f, "bytes": os.path.getsize(f)} for f in files]
