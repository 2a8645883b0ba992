"""What this machine offers to a run (kept import-light: the CLI reads it for its help)."""

from __future__ import annotations

import os


def default_workers(cap: int = 8) -> int:
    """Image-decoding workers to use by default: the CPUs this process may run on, at most
    ``cap`` (more workers than CPUs only add start-up time and a DataLoader warning)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    return max(1, min(n, cap))
