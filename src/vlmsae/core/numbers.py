"""Numbers for people: what the CLI prints rounds to 3 significant digits.

JSON output keeps full precision (see :func:`vlmsae.core.io.write_json`); only text meant to be
read is rounded, with :func:`fmt`.
"""

from __future__ import annotations

import math
from typing import Any


def fmt(x: Any, digits: int = 3) -> str:
    """``x`` with ``digits`` significant digits, trailing zeros kept so that columns line
    up: ``0.52034`` → ``0.520``, ``30`` → ``30.0``, ``123.4`` → ``123``; large numbers whole,
    with thousands separators (``1234.5`` → ``1,234``); tiny values in exponent form
    (``3.2e-05`` → ``3.20e-05``). Integers print exactly (``12,345``), ``None`` and NaN as
    ``-``; other values go through ``str``."""
    if x is None:
        return "-"
    if hasattr(x, "item") and not isinstance(x, (int, float)):
        x = x.item()  # numpy / torch scalars
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if math.isnan(x):
        return "-"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    text = f"{x:#.{digits}g}"  # '#' keeps trailing zeros: 0.500, 30.0 line up in tables
    if "e" in text and abs(x) >= 1:
        return f"{x:,.0f}"  # 12345.6 -> 12,346 rather than 1.23e+04
    return text.rstrip(".")  # 123. -> 123


def pct(x: Any, digits: int = 3) -> str:
    """A fraction as a percentage with ``digits`` significant digits (``0.8123`` → ``81.2%``)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{fmt(100 * float(x), digits)}%"
