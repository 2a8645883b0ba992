"""Did the demo's SAEs stop improving? Validation R² over training, per configuration.

Every SAE of the demo logs its validation R² (held-out images, inference encoding) at
``log_every`` steps in its ``metrics.jsonl``. A run has converged where R² changed by less
than ``cfg.converge_tol`` over the last quarter of training (from the log point at 3/4 of the
steps to the end); a configuration where every seed has. This is measured, never assumed:
the report shows it for every configuration, and a finding drawn from SAEs that have not
converged says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vlmsae.demo.config import DemoConfig
from vlmsae.demo.stages import SAERun
from vlmsae.metrics.stats import mean_std
from vlmsae.report.document import Table


class Curve(NamedTuple):
    """Validation R² of one SAE at its log points."""

    steps: list[int]
    r2: list[float]

    def at(self, step: float) -> tuple[int, float]:
        """The log point nearest ``step`` and its R²."""
        i = int(np.argmin(np.abs(np.asarray(self.steps) - step)))
        return self.steps[i], self.r2[i]


def val_curve(run_dir: Path) -> Curve:
    """The validation R² at every log point of the run in ``run_dir`` (``metrics.jsonl``)."""
    from vlmsae.train.state import METRICS_FILE, MetricsLog

    path = Path(run_dir) / METRICS_FILE
    records = MetricsLog.read(path) if path.exists() else []
    pts = [(int(m["step"]), float(m["val"]["r2"])) for m in records if m.get("val")]
    return Curve([s for s, _ in pts], [r for _, r in pts])


def run_convergence(run: SAERun, steps: int, tol: float) -> dict[str, Any]:
    """R² at 3/4 of training and at the end, their change, and whether it is below ``tol``."""
    curve = val_curve(run.path)
    if not curve.steps:
        nan = float("nan")
        return {"step_3q": None, "r2_3q": nan, "step_end": None, "r2_end": nan,
                "change": nan, "converged": False}  # fmt: skip
    s3, r3 = curve.at(0.75 * steps)
    s_end, r_end = curve.steps[-1], curve.r2[-1]
    return {
        "step_3q": s3,
        "r2_3q": r3,
        "step_end": s_end,
        "r2_end": r_end,
        "change": r_end - r3,
        "converged": bool(s_end >= steps and s3 < s_end and abs(r_end - r3) < tol),
        "curve": {"steps": curve.steps, "r2": curve.r2},
    }


def convergence(cfg: DemoConfig, runs: list[SAERun]) -> dict[str, Any]:
    """Per configuration (all seeds): R² at 3/4 and at the end (mean, std), the change (mean
    and the largest over seeds), converged (every seed); and per SAE its curve."""
    per_run = {r.name: run_convergence(r, cfg.steps, cfg.converge_tol) for r in runs}
    configs: dict[str, Any] = {}
    for r in runs:
        configs.setdefault(r.config, []).append(per_run[r.name])
    out = {}
    for c, rs in configs.items():
        change = np.array([x["change"] for x in rs], np.float64)
        out[c] = {
            "seeds": len(rs),
            "r2_3q": mean_std([x["r2_3q"] for x in rs]).to_dict(),
            "r2_end": mean_std([x["r2_end"] for x in rs]).to_dict(),
            "change": mean_std(change).to_dict(),
            "max_abs_change": float(np.nanmax(np.abs(change)))
            if np.isfinite(change).any()
            else float("nan"),  # fmt: skip
            "converged": all(x["converged"] for x in rs),
        }
    return {
        "tol": cfg.converge_tol,
        "steps": cfg.steps,
        "all_converged": all(v["converged"] for v in out.values()),
        "configs": out,
        "saes": per_run,
    }


def convergence_table(conv: dict[str, Any]) -> Table:
    """One row per configuration: R² at 3/4 of training and at the end, change, converged."""
    rows = []
    for c, v in conv["configs"].items():
        rows.append([
            c, v["seeds"],
            f"{v['r2_3q']['mean']:.4f} ± {v['r2_3q']['std']:.4f}",
            f"{v['r2_end']['mean']:.4f} ± {v['r2_end']['std']:.4f}",
            f"{v['change']['mean']:+.4f}", f"{v['max_abs_change']:.4f}",
            "yes" if v["converged"] else "NO",
        ])  # fmt: skip
    cols = ["config", "seeds", "val R² at 3/4", "val R² at end", "change (mean)",
            "largest |change| over seeds", "converged"]  # fmt: skip
    return Table(
        "convergence",
        cols,
        rows,
        f"Validation R² (held-out images) at 3/4 of the {conv['steps']} training steps and at "
        f"the end, mean ± std over seeds: a configuration has converged where every seed's R² "
        f"changed by less than {conv['tol']} over the last quarter",
    )


def convergence_note(conv: dict[str, Any]) -> str:
    """One paragraph: how many configurations converged, and what that means for the rest."""
    cs = conv["configs"]
    bad = [c for c, v in cs.items() if not v["converged"]]
    head = (
        f"{len(cs) - len(bad)} of {len(cs)} configurations converged (validation R² changed "
        f"by < {conv['tol']} over the last quarter of {conv['steps']} steps, every seed)."
    )
    if not bad:
        return head
    return head + (
        f" Not converged: {', '.join(bad)}; their findings describe SAEs still improving, "
        "not the method."
    )
