"""What ``vlmsae evaluate`` writes: the per-concept and per-latent tables, a one-screen
summary, and the figures (best-F1 histogram, probing accuracy against k)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from vlmsae.core.io import atomic_write_text
from vlmsae.core.numbers import fmt, pct
from vlmsae.evaluate.run import ConceptEvaluation
from vlmsae.report.figures import pyplot, save_figure

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
LABELS = {"sae": "SAE", "raw": "raw neurons", "untrained": "untrained SAE"}


def safe_cell(text: str) -> str:
    """A text cell a spreadsheet shows as text: one starting like a formula (``= + - @``,
    tab, carriage return) gets a leading ``'`` (the OWASP rule against CSV injection)."""
    return f"'{text}" if text.startswith(FORMULA_START) else text


def _num(x: Any) -> str:
    """A number at full precision (shortest round-trip repr); empty when NaN."""
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x)).lower()
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    x = float(x)
    return "" if math.isnan(x) else repr(x)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow([safe_cell(c) if isinstance(c, str) else _num(c) for c in row])
    return buf.getvalue()


def write_concepts_csv(path: Path, ev: ConceptEvaluation) -> None:
    """One row per concept: the SAE's best detector, its splitting, the F1 of a detector
    active on every image (``2p / (1 + p)`` at prevalence ``p``: what a best F1 must beat),
    the baselines' best F1 and every probe's held-out balanced accuracy."""
    det, names = ev.detection["sae"], ev.labels.names
    claims = ev.claims()
    reps = list(ev.probing)
    header = ["concept", "set", "value", "n_images", "best_latent", "best_f1", "precision",
              "recall", "auroc", "n_latents_claiming", "split", "always_on_f1"]  # fmt: skip
    header += [f"{r}_best_f1" for r in ev.detection if r != "sae"]
    header += [f"{r}_probe_k{k}" for r in reps for k in ev.probing[r].k_values]
    rows = []
    for c, name in enumerate(names):
        row = [name, ev.labels.sets[c], ev.labels.values[c], det.n_positive[c],
               det.best_latent[c], det.best_f1[c], det.precision[c], det.recall[c],
               det.auroc[c], claims[c], bool(claims[c] > 1),
               2 * det.n_positive[c] / (det.n_images + det.n_positive[c])]  # fmt: skip
        row += [d.best_f1[c] for r, d in ev.detection.items() if r != "sae"]
        row += [v for r in reps for v in ev.probing[r].balanced_accuracy[c]]
        rows.append(row)
    atomic_write_text(path, _table(header, rows))


def write_latents_csv(path: Path, ev: ConceptEvaluation) -> None:
    """One row per SAE latent: its activity, the concept it detects best, that F1, and
    whether other latents claim the same concept (splitting)."""
    det, names = ev.detection["sae"], ev.labels.names
    claims = ev.claims()
    rows = []
    for s in range(len(det.latent_f1)):
        c = int(det.latent_concept[s])
        detecting = c >= 0 and det.latent_f1[s] >= ev.config.threshold
        n_claims = int(claims[c]) if c >= 0 else 0
        rows.append([s, det.n_active[s], names[c] if c >= 0 else "", det.latent_f1[s],
                     n_claims, bool(detecting and n_claims > 1)])  # fmt: skip
    header = ["latent", "n_active", "best_concept", "f1", "n_latents_claiming", "split"]
    atomic_write_text(path, _table(header, rows))


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """A one-screen account of a ``vlmsae evaluate`` summary."""
    c = summary["concepts"]
    thr = c["config"]["threshold"]
    out = [f"{c['n_images']:,} images, {c['n_concepts']:,} concepts ({c['labels']}; "
           f"{c['n_concepts_dropped']} held by no or every image left out)"]  # fmt: skip
    out.append(f"concept detection, best single latent (detected: F1 >= {fmt(thr)}):")
    for r, d in c["detection"].items():
        out.append(
            f"  {LABELS[r]:<14} {d['n_detected']:>5}/{d['n_concepts']} detected "
            f"({pct(d['share_detected'])}), mean best F1 {fmt(d['mean_best_f1'])}, "
            f"mean AUROC {fmt(d['mean_auroc'])}"
        )
    sae = c["detection"]["sae"]
    out.append(f"  SAE latents: {sae['n_latents_detecting']:,} of {sae['n_latents']:,} detect "
               f"a concept at F1 >= {fmt(thr)}; {sae['n_concepts_split']} concepts split over "
               "several latents")  # fmt: skip
    if len(c["concept_sets"]) > 1:
        out.append("  per set (SAE): " + ", ".join(
            f"{s} {pct(v['share_detected'])} (F1 {fmt(v['mean_best_f1'])})"
            for s, v in c["concept_sets"].items()))  # fmt: skip
    probing = c["probing"]
    if probing:
        ks = [k for k in next(iter(probing.values())) if k not in ("n_train", "n_test")]
        first = next(iter(probing.values()))
        out.append(f"k-sparse probing, held-out balanced accuracy ({first['n_train']:,} train / "
                   f"{first['n_test']:,} test images), k = {', '.join(ks)}:")  # fmt: skip
        for r, p in probing.items():
            accs = "  ".join(fmt(p[k]["mean_balanced_accuracy"]) for k in ks)
            out.append(f"  {LABELS[r]:<14} {accs}")
    return out


def f1_histogram(path: Path, ev: ConceptEvaluation) -> Path:
    """Histogram of every concept's best single-latent F1, per representation."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5), dpi=150)
    edges = np.linspace(0, 1, 21)
    for r, d in ev.detection.items():
        ax.hist(d.best_f1, bins=edges, histtype="step", linewidth=1.5, label=LABELS[r])
    ax.axvline(ev.config.threshold, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("best single-latent F1 of a concept")
    ax.set_ylabel("concepts")
    ax.legend(frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


def probing_figure(path: Path, ev: ConceptEvaluation) -> Path:
    """Mean held-out balanced accuracy of the k-sparse probes against k, per representation."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5), dpi=150)
    for r, p in ev.probing.items():
        ok = np.isfinite(p.balanced_accuracy).all(1)
        mean = p.balanced_accuracy[ok].mean(0) if ok.any() else np.full(len(p.k_values), np.nan)
        ax.plot(p.k_values, mean, marker="o", label=LABELS[r])
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xticks(ev.config.probing.k_values, [str(k) for k in ev.config.probing.k_values])
    ax.set_xlabel("k (latents per probe)")
    ax.set_ylabel("held-out balanced accuracy")
    ax.legend(frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)
