"""Tables over a set of scored SAEs: the paper's max-MS table and the sparsity /
reconstruction trade-off, from the ``summary.json`` that ``vlmsae score`` writes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vlmsae.core.numbers import fmt
from vlmsae.metrics.maxms import KEYS, LABELS


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "–"
    return fmt(100 * v) if pct else fmt(v)


def ms_table(records: Sequence[dict[str, Any]], stat: str = "max") -> str:
    """Markdown: one MS statistic per (architecture, layer) row × expansion factor column.

    ``stat``: ``"max"`` (the paper's max over all neurons, key ``max_ms``), ``"max_active"``
    (over neurons active on >= ``min_active`` images, ``max_ms_active``) or ``"p99"``
    (``p99_ms``). Each record has ``arch``, ``layer``, ``expansion`` and the statistic; a
    cell shows ``n_active=``: the active images of the neuron attaining it, where the record has
    ``<key>_n_active``. Records with equal keys keep the largest score."""
    if stat not in KEYS:
        raise ValueError(f"stat must be one of {sorted(KEYS)}, got {stat!r}")
    key = KEYS[stat]
    cells: dict[tuple, tuple[float, Any]] = {}
    for r in records:
        cell = (str(r.get("arch", "-")), str(r.get("layer", "-")), r.get("expansion", "-"))
        if r.get(key) is not None and float(r[key]) > cells.get(cell, (float("-inf"),))[0]:
            cells[cell] = (float(r[key]), r.get(f"{key}_n_active"))
    rows = sorted({(a, lay) for a, lay, _ in cells})
    cols = sorted({e for _, _, e in cells}, key=lambda e: (isinstance(e, str), e))
    head = "| architecture | layer | " + " | ".join(f"×{e}" for e in cols) + " |"
    lines = [head, "|---|---|" + "---|" * len(cols)]
    for a, lay in rows:
        vals = []
        for e in cols:
            v, n = cells.get((a, lay, e), (None, None))
            vals.append(_fmt(v) + ("" if n is None or v is None else f" (n_active={n})"))
        lines.append(f"| {a} | {lay} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def ms_tables(records: Sequence[dict[str, Any]]) -> str:
    """Markdown: the paper's max-MS table and its robust companions, each headed by its rule."""
    min_active = next((r["min_active"] for r in records if r.get("min_active")), 16)
    parts = []
    for stat in KEYS:
        if stat != "max" and not any(r.get(KEYS[stat]) is not None for r in records):
            continue  # summaries written before the robust statistics existed
        label = LABELS[stat].format(min_active=min_active)
        parts.append(f"### {label[0].upper()}{label[1:]}\n\n" + ms_table(records, stat))
    return "\n".join(parts)


def tradeoff_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown: sparsity (k, L0) against reconstruction (R², %) and MS, one row per SAE."""
    lines = [
        "| SAE | k | L0 | R² (%) | mean MS | max MS | max MS (active) | p99 MS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: (r.get("k") is None, r.get("k") or 0)):
        l0 = _fmt(r.get("l0"))
        lines.append(
            f"| {r.get('name', '-')} | {r.get('k', '–')} | {l0} | {_fmt(r.get('r2'), True)} | "
            f"{_fmt(r.get('mean_ms'))} | {_fmt(r.get('max_ms'))} | "
            f"{_fmt(r.get('max_ms_active'))} | {_fmt(r.get('p99_ms'))} |"
        )
    return "\n".join(lines) + "\n"
