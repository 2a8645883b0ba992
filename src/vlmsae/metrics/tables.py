"""Tables over a set of scored SAEs: the paper's max-MS table and the sparsity /
reconstruction trade-off, from the ``summary.json`` that ``vlmsae score`` writes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vlmsae._human import fmt


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "–"
    return fmt(100 * v) if pct else fmt(v)


def ms_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown: max MS per (architecture, layer) row × expansion factor column.

    Each record has ``arch``, ``layer``, ``expansion`` and ``max_ms`` (records with equal
    keys keep the largest score)."""
    cells: dict[tuple, float] = {}
    for r in records:
        key = (str(r.get("arch", "-")), str(r.get("layer", "-")), r.get("expansion", "-"))
        if r.get("max_ms") is not None:
            cells[key] = max(cells.get(key, float("-inf")), float(r["max_ms"]))
    rows = sorted({(a, lay) for a, lay, _ in cells})
    cols = sorted({e for _, _, e in cells}, key=lambda e: (isinstance(e, str), e))
    head = "| architecture | layer | " + " | ".join(f"×{e}" for e in cols) + " |"
    lines = [head, "|---|---|" + "---|" * len(cols)]
    for a, lay in rows:
        vals = [_fmt(cells.get((a, lay, e))) for e in cols]
        lines.append(f"| {a} | {lay} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def tradeoff_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown: sparsity (k, L0) against reconstruction (R², %) and mean MS, one row per SAE."""
    lines = ["| SAE | k | L0 | R² (%) | mean MS | max MS |", "|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r.get("k") is None, r.get("k") or 0)):
        l0 = _fmt(r.get("l0"))
        lines.append(
            f"| {r.get('name', '-')} | {r.get('k', '–')} | {l0} | {_fmt(r.get('r2'), True)} | "
            f"{_fmt(r.get('mean_ms'))} | {_fmt(r.get('max_ms'))} |"
        )
    return "\n".join(lines) + "\n"
