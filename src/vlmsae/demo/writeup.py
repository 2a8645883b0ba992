"""The demo's tables, figures, findings and report (``README.md`` + ``index.html``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from vlmsae.demo.analysis import SAEScores, Scores
from vlmsae.demo.config import DemoConfig
from vlmsae.demo.truth import Finding, finding_rows, increasing_share, spearman
from vlmsae.report.document import Report, Table

log = logging.getLogger(__name__)


def _nanmax(a: np.ndarray) -> float:
    return float(np.nanmax(a)) if np.isfinite(a).any() else float("nan")


def _nanmean(a: np.ndarray) -> float:
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def _table_saes(cfg: DemoConfig, scores: Scores) -> list[SAEScores]:
    return [s for s in scores.saes if s.run.k == cfg.k]


def sae_rows(cfg: DemoConfig, scores: Scores) -> Table:
    """One row per SAE of the Table grid: reconstruction, sparsity and MS."""
    rows = []
    for s in _table_saes(cfg, scores):
        raw = scores.raw[s.run.hook].ms_clip
        share = float(
            (s.neurons.ms_clip > np.nanmedian(raw)).sum() / np.isfinite(s.neurons.ms_clip).sum()
        )
        rows.append(
            [
                s.run.hook,
                s.run.arch,
                s.run.expansion,
                s.d_sae,
                s.r2,
                s.l0,
                s.dead_fraction,
                _nanmean(s.neurons.ms_clip),
                _nanmax(s.neurons.ms_clip),
                _nanmean(s.neurons.ms_oracle),
                _nanmax(s.neurons.ms_oracle),
                share,
            ]
        )
    cols = [
        "hook",
        "arch",
        "expansion",
        "d_sae",
        "R²",
        "L0",
        "dead",
        "mean MS (CLIP)",
        "max MS (CLIP)",
        "mean MS (oracle)",
        "max MS (oracle)",
        "share > median raw",
    ]
    return Table("saes", cols, rows, "Every SAE at the default k, scored on held-out images")


def paper_table(cfg: DemoConfig, scores: Scores) -> Table:
    """The paper's Table: max MS (toy-CLIP embedding) per hook × arch × expansion."""
    rows = []
    for hook in cfg.hooks:
        raw = scores.raw[hook].ms_clip
        for arch in cfg.archs:
            by_e = {
                s.run.expansion: s
                for s in _table_saes(cfg, scores)
                if s.run.hook == hook and s.run.arch == arch
            }
            rows.append(
                [
                    hook,
                    arch,
                    _nanmax(raw),
                    *(_nanmax(by_e[e].neurons.ms_clip) for e in cfg.expansions),
                ]
            )
    cols = ["hook", "arch", "raw neurons", *(f"×{e}" for e in cfg.expansions)]
    return Table(
        "paper_table", cols, rows, "Max MS per hook × expansion × architecture (the paper's Table)"
    )


def k_sweep_rows(cfg: DemoConfig, scores: Scores) -> tuple[Table, list[SAEScores]]:
    sweep = sorted(
        (
            s
            for s in scores.saes
            if s.run.arch == "batchtopk"
            and s.run.k in cfg.k_sweep
            and s.run.name.startswith(_sweep_prefix(cfg, scores))
        ),
        key=lambda s: s.run.k,
    )
    rows = [
        [s.run.k, s.r2, s.l0, _nanmean(s.neurons.ms_clip), _nanmax(s.neurons.ms_clip)]
        for s in sweep
    ]
    cols = ["K", "R²", "L0", "mean MS (CLIP)", "max MS (CLIP)"]
    return Table("k_sweep", cols, rows, "Sparsity / reconstruction trade-off (BatchTopK)"), sweep


def _sweep_prefix(cfg: DemoConfig, scores: Scores) -> str:
    from vlmsae.demo.stages import planned_saes

    run = next(r for r in planned_saes(cfg) if r.k == cfg.k_sweep[0])
    return f"{run.hook}-{run.arch}-x{run.expansion}-"


def hierarchy_rows(cfg: DemoConfig, scores: Scores) -> Table:
    mats = [s for s in _table_saes(cfg, scores) if s.run.arch == "matryoshka"]
    n_groups = max((len(s.depth_by_group) for s in mats), default=0)
    rows = [[s.run.hook, s.run.expansion, *s.depth_by_group] for s in mats]
    cols = ["hook", "expansion", *(f"group {g + 1}" for g in range(n_groups))]
    return Table(
        "hierarchy",
        cols,
        rows,
        "Mean LCA depth of top images per Matryoshka group (0 = different family, 3 = same leaf)",
    )


def uniqueness_rows(scores: Scores) -> Table:
    rows, thresholds = [], None
    for name, u in scores.uniqueness.items():
        counts = u["pairs_above"]
        thresholds = thresholds or list(counts)
        rows.append([name, *(counts[t] for t in thresholds)])
    cols = ["SAE", *(f"J > {t}" for t in (thresholds or []))]
    return Table(
        "uniqueness", cols, rows, "Pairs of neurons whose top-image sets overlap (Jaccard)"
    )


def findings(cfg: DemoConfig, scores: Scores, sweep: list[SAEScores]) -> tuple[list[Finding], dict]:
    """The paper's claims and the truth checks, measured on this run."""
    table = _table_saes(cfg, scores)
    clip = np.concatenate([s.neurons.ms_clip for s in table])
    oracle = np.concatenate([s.neurons.ms_oracle for s in table])
    purity = np.concatenate([s.neurons.purity for s in table])
    rho_oracle, n_oracle = spearman(clip, oracle)
    rho_purity, n_purity = spearman(clip, purity)
    above = [
        float(
            (s.neurons.ms_clip > np.nanmedian(scores.raw[s.run.hook].ms_clip)).sum()
            / max(1, np.isfinite(s.neurons.ms_clip).sum())
        )
        for s in table
    ]
    growth = {(s.run.hook, s.run.arch): [] for s in table}
    for s in sorted(table, key=lambda s: s.run.expansion):
        growth[(s.run.hook, s.run.arch)].append(_nanmax(s.neurons.ms_clip))
    grow, total = increasing_share({str(k): v for k, v in growth.items()})
    mats = [s for s in table if s.run.arch == "matryoshka" and len(s.depth_by_group) > 1]
    shallower = sum(s.depth_by_group[0] < s.depth_by_group[-1] for s in mats)
    pairs = [
        (m, b)
        for m in table
        for b in table
        if m.run.arch == "matryoshka"
        and b.run.arch == "batchtopk"
        and (m.run.hook, m.run.expansion) == (b.run.hook, b.run.expansion)
    ]
    mat_wins = sum(_nanmean(m.neurons.ms_clip) >= _nanmean(b.neurons.ms_clip) for m, b in pairs)
    k_ms = [_nanmean(s.neurons.ms_clip) for s in sweep]
    k_r2 = [s.r2 for s in sweep]
    out = [
        Finding(
            "MS under toy CLIP tracks MS under the oracle (Spearman ≥ 0.7)",
            rho_oracle >= 0.7,
            f"ρ = {rho_oracle:.3f} over {n_oracle} SAE neurons",
        ),
        Finding(
            "A neuron's MS tracks the label purity of its top images (ρ > 0)",
            rho_purity > 0,
            f"ρ = {rho_purity:.3f} over {n_purity} SAE neurons",
        ),
        Finding(
            "Most SAE neurons score above the median raw neuron",
            float(np.mean(above)) > 0.5,
            f"mean share {np.mean(above):.1%} over {len(above)} SAEs",
        ),
        Finding(
            "Max MS grows with expansion",
            total > 0 and grow > total / 2,
            f"{grow} of {total} hook × arch series grow from ×{min(cfg.expansions)} "
            f"to ×{max(cfg.expansions)}",
        ),
        Finding(
            "Smaller K gives higher MS and lower R²",
            len(sweep) > 1 and k_ms[0] > k_ms[-1] and k_r2[0] < k_r2[-1],
            "K "
            + ", ".join(
                f"{s.run.k}: MS {m:.3f} R² {r:.3f}"
                for s, m, r in zip(sweep, k_ms, k_r2, strict=True)
            ),
        ),
        Finding(
            "Matryoshka's first group is shallower than its last",
            bool(mats) and shallower > len(mats) / 2,
            f"{shallower} of {len(mats)} Matryoshka SAEs",
        ),
        Finding(
            "Matryoshka ≥ BatchTopK in mean MS at equal width",
            bool(pairs) and mat_wins > len(pairs) / 2,
            f"{mat_wins} of {len(pairs)} hook × expansion pairs",
        ),
    ]
    numbers = {
        "spearman_clip_oracle": rho_oracle,
        "spearman_ms_purity": rho_purity,
        "share_above_median_raw": float(np.mean(above)),
        "max_ms_growing_series": grow,
        "series": total,
        "matryoshka_shallower_first_group": shallower,
        "matryoshka_ge_batchtopk": mat_wins,
        "pairs": len(pairs),
    }
    return out, numbers


def _alive_note(cfg: DemoConfig, scores: Scores) -> str:
    """How many latents stay alive, against how many concepts the world has."""
    from vlmsae.toyworld import ATTRIBUTES

    n_concepts = sum(len(v) for k, v in ATTRIBUTES.items() if k != "family")
    alive = [int((s.neurons.n_active > 0).sum()) for s in _table_saes(cfg, scores)]
    return (
        f"Latents active on at least one held-out image: median {int(np.median(alive))} "
        f"per SAE (range {min(alive)}–{max(alive)}), whatever the width. The toy world has "
        f"{n_concepts} concept values (shapes, colours, sizes, backgrounds), so wide SAEs "
        "leave most latents dead here: there is nothing left for them to explain (R² is "
        "high throughout), and AuxK cannot revive latents the residual does not need. "
        '"dead" is the fraction of latents silent on every held-out image.'
    )


def write_report(
    cfg: DemoConfig, scores: Scores, steering: Any, timings: dict
) -> tuple[Path, dict, list[str]]:
    """Write tables, figures and the report; return (index.html, summary, printable lines)."""
    from vlmsae.demo import figures

    out = Path(cfg.out_dir)
    k_table, sweep = k_sweep_rows(cfg, scores)
    found, numbers = findings(cfg, scores, sweep)
    report = Report(
        "vlmsae demo: the paper's experiments on the toy world",
        [
            f"Toy CLIP activations of {cfg.n_train} training images trained "
            f"{len(scores.saes)} SAEs; everything below is measured on {cfg.n_test} "
            "held-out images whose concepts are known."
        ],
    )
    sec = report.section("Findings checked against the truth")
    sec.tables.append(
        Table(
            "findings",
            ["claim", "result", "evidence"],
            finding_rows(found),
            "Each claim of the paper, measured here",
        )
    )
    sec = report.section("Monosemanticity of SAE and raw neurons")
    sec.paragraphs.append(_alive_note(cfg, scores))
    sec.tables += [paper_table(cfg, scores), sae_rows(cfg, scores)]
    sec.figures += figures.ms_figures(cfg, scores, out)
    sec = report.section("Sparsity and reconstruction")
    sec.tables.append(k_table)
    sec.figures.append(figures.k_sweep_figure(sweep, out))
    sec = report.section("Hierarchy and uniqueness")
    sec.tables += [hierarchy_rows(cfg, scores), uniqueness_rows(scores)]
    sec = report.section("Top images")
    sec.paragraphs.append(
        "Each row: a neuron's 16 highest-activating held-out images, with its MS."
    )
    sec.figures += figures.grids(cfg, scores, out)
    if steering is not None:
        sec = report.section("Steering the toy LLaVA")
        sec.paragraphs += steering.paragraphs
        sec.tables += steering.tables
    index = report.write(out)
    summary = {
        "findings": [{"claim": f.claim, "holds": f.holds, "evidence": f.evidence} for f in found],
        "checks": numbers,
        "saes": {
            s.run.name: {
                "r2": s.r2,
                "l0": s.l0,
                "dead_fraction": s.dead_fraction,
                "mean_ms_clip": _nanmean(s.neurons.ms_clip),
                "max_ms_clip": _nanmax(s.neurons.ms_clip),
                "mean_ms_oracle": _nanmean(s.neurons.ms_oracle),
                "depth_by_group": s.depth_by_group,
            }
            for s in scores.saes
        },
        "steering": steering.summary if steering is not None else None,
    }
    lines = [f"[{'ok' if f.holds else '--'}] {f.claim}: {f.evidence}" for f in found]
    return index, summary, lines
