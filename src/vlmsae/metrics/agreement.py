"""Agreement of the MS with people: the paper's pairwise user-study benchmark.

Each row of the benchmark CSV is a pair of neurons ``k_x, k_y`` shown to users, the users'
preference ``R_user`` and the scores of both neurons (``MS_x_dino, MS_y_dino, MS_x_clip,
MS_y_clip``). ``R_user`` is read as the share of users preferring ``x`` (x preferred when
> 0.5); when it has negative values it is read as a signed preference (x when > 0).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
REQUIRED = ("k_x", "k_y", "R_user")


class Pairs(NamedTuple):
    k_x: np.ndarray
    k_y: np.ndarray
    r_user: np.ndarray
    scores: dict[str, tuple[np.ndarray, np.ndarray]]
    """Score name (``dino``, ``clip``) → (MS of x, MS of y)."""


def read_pairs(path: str | Path) -> Pairs:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path} has no rows")
    missing = [c for c in REQUIRED if c not in rows[0]]
    if missing:
        raise ValueError(
            f"{path} lacks columns {missing}; expected k_x, k_y, R_user, MS_x_*, MS_y_*"
        )
    col = {c: np.array([float(r[c]) for r in rows]) for c in rows[0] if r_ok(rows, c)}
    names = sorted({c[5:] for c in col if c.startswith("MS_x_") and f"MS_y_{c[5:]}" in col})
    scores = {n: (col[f"MS_x_{n}"], col[f"MS_y_{n}"]) for n in names}
    return Pairs(col["k_x"].astype(np.int64), col["k_y"].astype(np.int64), col["R_user"], scores)


def r_ok(rows: list[dict[str, str]], c: str) -> bool:
    try:
        [float(r[c]) for r in rows]
    except (TypeError, ValueError):
        return False
    return True


def agreement(
    ms_x: np.ndarray, ms_y: np.ndarray, r_user: np.ndarray, bins: tuple[float, ...] = BINS
) -> dict[str, Any]:
    """How often the neuron with the higher MS is the one users preferred, overall and by
    ``|ΔMS|`` bin. Pairs with tied scores or tied preferences are left out."""
    ms_x, ms_y, r = (np.asarray(a, np.float64) for a in (ms_x, ms_y, r_user))
    centre = 0.0 if (r < 0).any() else 0.5
    ok = (r != centre) & (ms_x != ms_y) & ~np.isnan(ms_x) & ~np.isnan(ms_y)
    hit = (ms_x > ms_y) == (r > centre)
    delta = np.abs(ms_x - ms_y)
    out: dict[str, Any] = {
        "n_pairs": int(len(r)),
        "n_used": int(ok.sum()),
        "agreement": float(hit[ok].mean()) if ok.any() else None,
        "bins": [],
    }
    edges = np.asarray(bins)
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        last = i == len(edges) - 2
        inb = ok & (delta >= lo) & ((delta <= hi) if last else (delta < hi))
        out["bins"].append(
            {
                "lo": float(lo),
                "hi": float(hi),
                "n": int(inb.sum()),
                "agreement": float(hit[inb].mean()) if inb.any() else None,
            }
        )
    return out


def agreement_markdown(results: dict[str, dict[str, Any]]) -> str:
    """One table: a column per score source, a row per |ΔMS| bin plus the overall row."""
    names = list(results)
    lines = ["| abs(ΔMS) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    first = results[names[0]]
    for i, b in enumerate(first["bins"]):
        cells = [
            _pct(results[n]["bins"][i]["agreement"], results[n]["bins"][i]["n"]) for n in names
        ]
        lines.append(f"| {b['lo']:.1f}–{b['hi']:.1f} | " + " | ".join(cells) + " |")
    cells = [_pct(results[n]["agreement"], results[n]["n_used"]) for n in names]
    lines.append("| all | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pct(v: float | None, n: int) -> str:
    return "–" if v is None else f"{100 * v:.1f} % (n={n})"
