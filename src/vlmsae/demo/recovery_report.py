"""The concept-recovery and Matryoshka-contents tables and figure of the demo's report.

Per hook × architecture × width (default k): trained SAEs (mean ± std over seeds and a
bootstrap interval over seeds), their untrained baselines (``init``, ``random``) and the raw
neurons of the hook, on the same concepts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vlmsae.demo.baselines import KINDS
from vlmsae.demo.config import DemoConfig
from vlmsae.demo.numbers import Numbers, by_config
from vlmsae.demo.recovery import PROBE_K
from vlmsae.metrics.stats import bootstrap
from vlmsae.report.document import Table

COLUMNS = {
    "concepts_detected": "share of concepts detected (F1 ≥ 0.5)",
    "mean_best_f1": "mean best F1",
    **{f"probe{k}_balanced_accuracy": f"probe k={k}, balanced acc." for k in PROBE_K},
    "recovered_cosine_mean": "fraction recovered: cosine (mean abl.)",
    "recovered_knn_accuracy_mean": "fraction recovered: k-NN acc. (mean abl.)",
}
"""The numbers of the concept-recovery table (keys of ``summary.json``'s SAE records)."""


def _configs(cfg: DemoConfig, nums: Numbers) -> list[tuple[str, Any]]:
    return [(c, r[0].run) for c, r in by_config(nums.scores.saes).items() if r[0].run.k == cfg.k]


def _f(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) and np.isfinite(v) else "–"


def recovery_intervals(cfg: DemoConfig, nums: Numbers) -> dict[str, Any]:
    """Per configuration: per number, the interval over seeds (trained), the untrained
    baselines' values and the raw neurons' value."""
    raw = nums.scores.raw_recovery or {}
    out: dict[str, Any] = {}
    for c, run in _configs(cfg, nums):
        out[c] = {}
        for key in COLUMNS:
            vals = nums.seed_values(c, key)
            if not np.isfinite(np.asarray(vals, np.float64)).any():
                continue
            out[c][key] = {
                "trained": bootstrap(vals, seed=cfg.seed, n_boot=cfg.n_boot).to_dict(),
                **{k: nums.baseline.get(c, {}).get(k, {}).get(key) for k in KINDS},
                "raw": raw.get(run.hook, {}).get(key),
            }
    return out


def recovery_table(cfg: DemoConfig, nums: Numbers) -> Table:
    """One row per configuration and representation (trained, untrained, raw neurons)."""
    raw = nums.scores.raw_recovery or {}
    rows, seen_raw = [], set()
    for c, run in _configs(cfg, nums):
        agg = nums.configs[c]
        cells = []
        for key in COLUMNS:
            iv = bootstrap(nums.seed_values(c, key), seed=cfg.seed, n_boot=cfg.n_boot)
            cell = agg[key].format(3) if key in agg else "–"
            if np.isfinite(iv.lo):
                cell += f" [{iv.lo:.3f}, {iv.hi:.3f}]"
            cells.append(cell)
        rows.append([run.hook, run.arch, run.expansion, f"trained ({agg['r2'].n} seeds)", *cells])
        for kind in KINDS:
            base = nums.baseline.get(c, {}).get(kind, {})
            rows.append([run.hook, run.arch, run.expansion, f"untrained ({kind})",
                         *(_f(base.get(k)) for k in COLUMNS)])  # fmt: skip
        if run.hook not in seen_raw and run.hook in raw:
            seen_raw.add(run.hook)
            rows.append([run.hook, "–", "–", "raw neurons", *(_f(raw[run.hook].get(k))
                                                                for k in COLUMNS)])  # fmt: skip
    concepts = nums.scores.labels.concepts
    sets = ", ".join(dict.fromkeys(concepts.sets)) if concepts else "none"
    return Table(
        "concept_recovery",
        ["hook", "arch", "expansion", "SAE", *COLUMNS.values()],
        rows,
        f"Concept recovery on held-out images against the world's truth (concept sets: "
        f"{sets}): share of concepts whose best single latent reaches "
        "F1 ≥ 0.5, mean best F1, held-out balanced accuracy of k-sparse probes, and the "
        "fractions recovered with the SAE spliced into the toy CLIP (1 = as the untouched "
        "model, 0 = as the mean ablation); trained: mean ± std over seeds [95% bootstrap "
        "interval over seeds]; untrained SAEs of the same configuration and the raw neurons "
        "of the hook beside them",
    )


def groups_table(cfg: DemoConfig, nums: Numbers) -> Table:
    """Per Matryoshka configuration and group: what its kept neurons detect best (counts per
    taxonomy level, per other concept set, mixed), their mean level and object depth."""
    levels = cfg.toy_world.taxonomy_levels
    concepts = nums.scores.labels.concepts
    others = [s for s in dict.fromkeys(concepts.sets if concepts else ()) if s not in levels]
    kinds = ("trained", *KINDS)
    rows = []
    for c, run in _configs(cfg, nums):
        if run.arch != "matryoshka":
            continue
        for kind in kinds:
            src = nums.configs[c] if kind == "trained" else nums.baseline.get(c, {}).get(kind, {})
            for g in range(1, len(cfg.group_fractions) + 1):
                keys = [f"n_{w}" for w in (*levels, *others, "mixed")]
                keys += ["object_level", "object_depth", "depth"]
                vals = [src.get(f"{key}_group{g}") for key in keys]
                rows.append([run.hook, run.expansion, kind, g,
                             *(_f(getattr(v, "mean", v)) for v in vals)])  # fmt: skip
    cols = ["hook", "expansion", "SAE", "group",
            *(f"{lv} neurons" for lv in levels),
            *(f"{s} neurons" for s in others),
            "mixed neurons (no concept at F1 ≥ 0.5)", "mean level detected (0 = top)",
            "LCA depth, object neurons", "LCA depth, all kept (the paper's)"]  # fmt: skip
    return Table(
        "matryoshka_groups",
        cols,
        rows,
        f"What each Matryoshka group's neurons (active on ≥ {cfg.min_active} images) detect "
        f"best: counted per taxonomy level, per other concept set "
        f"({', '.join(others) or 'none'}), or nothing at F1 ≥ 0.5 (mixed); the mean taxonomy "
        "level of the object "
        "neurons; the LCA depth of their top images over object neurons alone and, as the "
        "paper computes it, over every kept neuron (where background-only and mixed neurons "
        "count as depth 0); trained: mean over seeds",
    )


def seed_bars(values: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Per point, the mean over seeds and ``[2, P]`` error bars down to the smallest and up
    to the largest seed, never negative (the mean of equal values can exceed them by an
    ulp: 3 seeds of 0.1 average 0.10000000000000002)."""
    mean = np.array([np.nanmean(v) for v in values])
    err = np.array(
        [[m - np.nanmin(v), np.nanmax(v) - m] for m, v in zip(mean, values, strict=True)]
    )
    return mean, np.clip(err, 0.0, None).T


def recovery_figure(cfg: DemoConfig, nums: Numbers) -> tuple[str, str]:
    """Share of concepts detected against expansion: trained (mean, bars over seeds),
    untrained init and random, and the raw neurons, one panel per hook."""
    from vlmsae.demo.figures import _plt, _save

    plt = _plt()
    hooks = list(cfg.hooks)
    fig, axes = plt.subplots(1, len(hooks), figsize=(3.6 * len(hooks), 3.2), squeeze=False)
    raw = nums.scores.raw_recovery or {}
    configs = _configs(cfg, nums)
    for ax, hook in zip(axes[0], hooks, strict=True):
        for arch, style in zip(cfg.archs, ("-o", "-s"), strict=False):
            cs = sorted((r.expansion, c) for c, r in configs if r.hook == hook and r.arch == arch)
            if not cs:
                continue
            es = [e for e, _ in cs]
            mean, err = seed_bars([nums.seed_values(c, "concepts_detected") for _, c in cs])
            ax.errorbar(es, mean, yerr=err, fmt=style, capsize=3, label=f"{arch} (trained)")
            for kind, ls in zip(KINDS, (":", "--"), strict=True):
                base = [nums.baseline.get(c, {}).get(kind, {}).get("concepts_detected", np.nan)
                        for _, c in cs]  # fmt: skip
                ax.plot(es, base, ls, color="grey", label=f"untrained ({kind})" if arch ==
                        cfg.archs[0] else None)  # fmt: skip
        if hook in raw:
            ax.axhline(raw[hook]["concepts_detected"], color="black", lw=0.8, label="raw neurons")
        ax.set_xscale("log", base=2)
        ax.set_title(hook)
        ax.set_xlabel("expansion")
    axes[0][0].set_ylabel("share of concepts detected")
    axes[0][-1].legend(fontsize=7, frameon=False)
    return (
        _save(fig, Path(cfg.out_dir), "concept_recovery.png"),
        "Share of the world's concepts whose best single latent detects them at F1 ≥ 0.5, "
        "against expansion: trained SAEs (mean over seeds, bars min–max), untrained SAEs of "
        "the same configuration and the raw neurons of the hook",
    )


EMBEDDER_NAMES = {
    "dino": "toy DINOv2 (independent)",
    "clip": "toy CLIP (the decomposed model)",
    "oracle": "oracle (true attributes)",
}
"""The embeddings MS is scored with, in the order of the columns."""


def ms_embedders_table(cfg: DemoConfig, nums: Numbers) -> Table:
    """Per configuration: mean MS, and the median and 90th percentile over neurons active on
    ≥ ``min_active`` images, under each embedder; trained (mean ± std over seeds) beside the
    untrained ``init`` SAE."""
    stats = (("mean_ms", "mean"), ("p50_ms_active", "median"), ("p90_ms_active", "p90"))
    rows = []
    for c, run in _configs(cfg, nums):
        agg, init = nums.configs[c], nums.baseline.get(c, {}).get("init", {})
        cells = []
        for emb in EMBEDDER_NAMES:
            for key, _ in stats:
                got = agg.get(f"{key}_{emb}")
                cells.append(f"{got.format(3)} (untrained {_f(init.get(f'{key}_{emb}'))})"
                             if got is not None else "–")  # fmt: skip
        rows.append([run.hook, run.arch, run.expansion, *cells])
    cols = ["hook", "arch", "expansion"]
    cols += [f"{label} MS, {name}" for name in EMBEDDER_NAMES.values() for _, label in stats]
    return Table(
        "ms_embedders",
        cols,
        rows,
        "MS of the SAE neurons under each embedder: the independent toy DINOv2 (every "
        "finding's MS), the toy CLIP's own embedding, the oracle; mean over all neurons, "
        f"median and 90th percentile over neurons active on ≥ {cfg.min_active} images; "
        "trained: mean ± std over seeds, the untrained (init) SAE in brackets",
    )
