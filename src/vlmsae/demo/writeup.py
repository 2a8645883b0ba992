"""The demo's tables, figures, findings and report (``README.md`` + ``index.html``).

Every number of a trained configuration is a mean ± std over its seeds; every MS statistic
has the untrained SAEs of the same configuration beside it; every finding an interval.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmsae.demo import alive
from vlmsae.demo.analysis import Scores
from vlmsae.demo.config import DemoConfig
from vlmsae.demo.findings import findings
from vlmsae.demo.numbers import Numbers, by_config
from vlmsae.demo.truth import finding_rows
from vlmsae.demo.validity import add_validity_sections
from vlmsae.metrics.maxms import max_ms_stats
from vlmsae.metrics.stats import MeanStd
from vlmsae.report.document import Report, Table

if TYPE_CHECKING:
    from vlmsae.toyworld.base import World

log = logging.getLogger(__name__)


def _ms_stat_rows(cfg: DemoConfig) -> list[tuple[str, str]]:
    return [
        ("max_ms", "max, all neurons (the paper's)"),
        ("max_ms_active", f"max, neurons active on ≥ {cfg.min_active} images"),
        ("p99_ms", "99th percentile"),
    ]


def _cell(agg: dict[str, MeanStd], key: str, digits: int = 3) -> str:
    got = agg.get(key)
    return "–" if got is None else got.format(digits)


def _with_n(agg: dict[str, MeanStd], key: str) -> str:
    """``mean ± std`` and the mean active-image count of the neurons attaining it."""
    n = agg.get(f"{key}_n_active")
    text = _cell(agg, key)
    if n is None or not np.isfinite(n.mean) or text == "–":
        return text
    return f"{text} (n_active {n.mean:.0f})"


def _table_configs(cfg: DemoConfig, nums: Numbers) -> list[tuple[str, Any]]:
    """``(config, a run of it)`` for the Table grid (default k), in planned order."""
    return [
        (c, runs[0].run)
        for c, runs in by_config(nums.scores.saes).items()
        if runs[0].run.k == cfg.k
    ]


def _base(nums: Numbers, config: str, kind: str, key: str) -> float:
    return nums.baseline.get(config, {}).get(kind, {}).get(key, float("nan"))


def sae_rows(cfg: DemoConfig, nums: Numbers) -> Table:
    """One row per configuration of the Table grid: mean ± std over seeds, and baselines."""
    rows = []
    for c, run in _table_configs(cfg, nums):
        agg = nums.configs[c]
        rows.append(
            [
                run.hook,
                run.arch,
                run.expansion,
                agg["r2"].n,
                _cell(agg, "r2"),
                _cell(agg, "l0"),
                _cell(agg, "dead_fraction"),
                _cell(agg, "alive_share"),
                _cell(agg, "mean_ms_clip"),
                _with_n(agg, "max_ms_clip"),
                _with_n(agg, "max_ms_active_clip"),
                _with_n(agg, "p99_ms_clip"),
                _cell(agg, "mean_ms_oracle"),
                _cell(agg, "share_above_median_raw"),
                _base(nums, c, "init", "mean_ms_clip"),
                _base(nums, c, "init", "max_ms_active_clip"),
                _base(nums, c, "random", "mean_ms_clip"),
            ]
        )
    cols = [
        "hook",
        "arch",
        "expansion",
        "seeds",
        "R²",
        "L0",
        "dead",
        "alive share",
        "mean MS (toy CLIP)",
        "max MS (toy CLIP)",
        f"max MS (toy CLIP), active ≥ {cfg.min_active}",
        "p99 MS (toy CLIP)",
        "mean MS (oracle)",
        "share with MS (toy CLIP) > median raw",
        "untrained init: mean MS (toy CLIP)",
        f"untrained init: max MS (toy CLIP) ≥ {cfg.min_active}",
        "untrained random: mean MS (toy CLIP)",
    ]
    return Table(
        "saes",
        cols,
        rows,
        "Every configuration at the default k on held-out images: mean ± std over seeds "
        "(n_active: images the neuron attaining a max fires on), beside untrained SAEs",
    )


def paper_table(cfg: DemoConfig, scores: Scores, nums: Numbers) -> Table:
    """The paper's Table (max MS per hook × arch × expansion) and its robust companions,
    each beside the same statistic of untrained SAEs."""
    rows = []
    configs = {(r.hook, r.arch, r.expansion): c for c, r in _table_configs(cfg, nums)}
    for hook in cfg.hooks:
        raw = scores.raw[hook]
        raw_stats = max_ms_stats(raw.ms_dino, raw.n_active, cfg.min_active)
        for key, label in _ms_stat_rows(cfg):
            got = raw_stats[{"max_ms": "max", "max_ms_active": "max_active", "p99_ms": "p99"}[key]]
            raw_cell = "–" if got.value is None else f"{got.value:.3f} (n_active {got.n_active})"
            for arch in cfg.archs:
                cs = [configs.get((hook, arch, e)) for e in cfg.expansions]
                cells = [_with_n(nums.configs[c], f"{key}_dino") if c else "–" for c in cs]
                rows.append([hook, arch, label, raw_cell, *cells])
            cs = [configs.get((hook, cfg.archs[0], e)) for e in cfg.expansions]
            for kind in ("init", "random"):
                cells = [_base(nums, c, kind, f"{key}_dino") if c else None for c in cs]
                rows.append([hook, f"untrained ({kind})", label, raw_cell, *cells])
    cols = ["hook", "SAE", "statistic", "raw neurons", *(f"×{e}" for e in cfg.expansions)]
    return Table(
        "paper_table",
        cols,
        rows,
        "MS (toy DINOv2, in the paper's DINOv2 role) per hook × expansion × architecture: "
        "the paper's max over "
        f"all neurons, the max over neurons active on ≥ {cfg.min_active} images and the 99th "
        "percentile, mean ± std over seeds, beside untrained SAEs of the same width and k",
    )


def k_sweep_rows(cfg: DemoConfig, nums: Numbers) -> Table:
    groups = by_config(s for s in nums.scores.saes if s.run.arch == "batchtopk")
    sweep = sorted(
        ((c, runs[0].run) for c, runs in groups.items() if runs[0].run.k in cfg.k_sweep),
        key=lambda cr: cr[1].k,
    )
    sweep_name = next((r for c, r in sweep if r.k == cfg.k_sweep[0]), None)
    sweep = [
        (c, r)
        for c, r in sweep
        if sweep_name and (r.hook, r.expansion) == (sweep_name.hook, sweep_name.expansion)
    ]
    rows = [
        [
            r.k,
            _cell(nums.configs[c], "r2"),
            _cell(nums.configs[c], "l0"),
            _cell(nums.configs[c], "mean_ms_clip"),
            _with_n(nums.configs[c], "max_ms_clip"),
            _with_n(nums.configs[c], "max_ms_active_clip"),
            _base(nums, c, "init", "mean_ms_clip"),
        ]
        for c, r in sweep
    ]
    cols = [
        "K",
        "R²",
        "L0",
        "mean MS (toy CLIP)",
        "max MS (toy CLIP)",
        f"max MS (toy CLIP), active ≥ {cfg.min_active}",
        "untrained init: mean MS (toy CLIP)",
    ]
    return Table(
        "k_sweep",
        cols,
        rows,
        "Sparsity / reconstruction trade-off (BatchTopK), mean ± std over seeds",
    )


def _taxonomy_scale(world_name: str | World) -> str:
    """What the LCA depths mean in ``world_name``'s taxonomy."""
    from vlmsae.toyworld.worlds import get_world

    levels = get_world(world_name).taxonomy_levels
    return (
        f"0 = different {levels[0]}, "
        + ", ".join(f"{d} = same {level}" for d, level in enumerate(levels[:-1], 1))
        + f", {len(levels)} = same leaf ({levels[-1]})"
    )


def hierarchy_rows(cfg: DemoConfig, nums: Numbers) -> Table:
    mats = [(c, r) for c, r in _table_configs(cfg, nums) if r.arch == "matryoshka"]
    n_groups = len(cfg.group_fractions)
    rows = []
    for c, r in mats:
        groups = [f"depth_group{g + 1}" for g in range(n_groups)]
        rows.append([r.hook, r.expansion, "trained", *(_cell(nums.configs[c], g) for g in groups)])
        for kind in ("init", "random"):
            rows.append(
                [
                    r.hook,
                    r.expansion,
                    f"untrained ({kind})",
                    *(_base(nums, c, kind, g) for g in groups),
                ]
            )
    cols = ["hook", "expansion", "SAE", *(f"group {g + 1}" for g in range(n_groups))]
    return Table(
        "hierarchy",
        cols,
        rows,
        "Mean LCA depth of top images per Matryoshka group against the world's taxonomy "
        f"({_taxonomy_scale(cfg.toy_world)}), as the paper computes it: neurons active on "
        f"≥ {cfg.min_active} images, each neuron's mean depth rounded; mean ± std over seeds",
    )


def uniqueness_rows(cfg: DemoConfig, nums: Numbers) -> Table:
    rows, thresholds = [], None
    for c, _ in _table_configs(cfg, nums):
        agg = nums.configs[c]
        thresholds = thresholds or [
            k.removeprefix("jaccard_above_") for k in agg if k.startswith("jaccard_above_")
        ]
        rows.append(
            [
                c,
                _cell(agg, "uniqueness_n_pairs", 1),
                *(_cell(agg, f"jaccard_above_{t}", 1) for t in thresholds),
            ]
        )
    cols = ["SAE", "pairs", *(f"J > {t}" for t in (thresholds or []))]
    return Table(
        "uniqueness",
        cols,
        rows,
        f"Pairs of neurons (active on ≥ {cfg.min_active} images) whose top-image sets overlap "
        "(Jaccard), mean ± std over seeds",
    )


def _stats_note(cfg: DemoConfig) -> str:
    return (
        f"Every SAE configuration is trained with {cfg.seeds} seed(s) "
        f"({', '.join(map(str, cfg.seed_list))}); tables give mean ± std over them. Each "
        "finding gives a 95% bootstrap interval (seeded, "
        f"{cfg.n_boot} resamples) over its units (neurons for correlations, SAEs otherwise). "
        "Untrained SAEs of every configuration (init: the trainer's starting point, W_enc = "
        "W_decᵀ and b_dec at the geometric median of the first batch; random: an independent "
        "random encoder) are scored the same way: a claim about trained SAEs counts only where "
        "its interval lies above what they reach, and a correlation only where its interval "
        "excludes 0. The paper's max MS (over all neurons) counts neurons active on a couple "
        "of near-identical images, so the tables also give the max over neurons active on "
        f"≥ {cfg.min_active} images (the paper's own rule for uniqueness and hierarchy) and "
        "the 99th percentile, each with the activity of the neuron that attains it."
    )


def _explorer_note(explorer: dict, min_active: int) -> str:
    from vlmsae.explore.labels import label_accuracy_text

    toy = (explorer.get("labels") or {}).get("toyworld")
    labels = ""
    if toy and toy.get("n_monosemantic") is not None:
        text = label_accuracy_text(toy)
        labels = (
            f" Zero-shot {text} (a label counts where every word of it is a concept "
            "most of the neuron's top images hold)."
        )
    names = list(explorer.get("ms") or ["its embedding"])
    ms = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
    return (
        f"explore/index.html browses every neuron of {explorer['sae']} (sort and filter by MS "
        f"under {ms}, frequency, group and label; each neuron's top images, heatmaps and "
        f"neighbours; the list starts at neurons active on ≥ {min_active} images, a filter "
        f"changes it): open it in a browser, no server needed.{labels}"
    )


def write_report(
    cfg: DemoConfig, scores: Scores, steering: Any, timings: dict, explorer: dict | None = None
) -> tuple[Path, dict, list[str]]:
    """Write tables, figures and the report; return (index.html, summary, printable lines)."""
    from vlmsae.demo import figures

    out = Path(cfg.out_dir)
    nums = Numbers(scores, cfg.min_active)
    found, detail = findings(cfg, nums)
    report = Report(
        f"vlmsae demo: the paper's experiments on the {cfg.world} toy world",
        [
            f"{alive.describe_world(cfg.toy_world)} Its toy CLIP's activations of "
            f"{cfg.n_train} training images trained {len(scores.saes)} SAEs "
            f"({len(by_config(scores.saes))} configurations × {cfg.seeds} seeds); everything "
            f"below is measured on {cfg.n_test} held-out images whose concepts are known.",
            _stats_note(cfg),
            alive.purity_note(cfg.toy_world),
        ],
    )
    sec = report.section("Findings checked against the truth")
    sec.tables.append(
        Table(
            "findings",
            ["claim", "result", "evidence"],
            finding_rows(found),
            "Each claim of the paper, measured here, with its interval and untrained baseline",
        )
    )
    validity = add_validity_sections(report, cfg, nums)
    sec = report.section("Monosemanticity of SAE and raw neurons")
    sec.paragraphs.append(alive.alive_note(cfg, nums))
    sec.tables += [alive.alive_table(cfg, nums), paper_table(cfg, scores, nums)]
    sec.tables.append(sae_rows(cfg, nums))
    sec.figures += figures.ms_figures(cfg, scores)
    sec = report.section("Sparsity and reconstruction")
    sec.tables.append(k_sweep_rows(cfg, nums))
    sec.figures.append(figures.k_sweep_figure(cfg, scores))
    sec = report.section("Hierarchy and uniqueness")
    sec.tables += [hierarchy_rows(cfg, nums), uniqueness_rows(cfg, nums)]
    sec = report.section("Top images")
    sec.paragraphs.append(
        f"Each row: a neuron's {cfg.top_n} highest-activating held-out images, with its MS "
        "(toy DINOv2). "
        f"Neurons are ranked among those active on ≥ {cfg.min_active} images (the paper's "
        "rule), so the most monosemantic are not neurons firing on two near-identical images."
    )
    sec.figures += figures.grids(cfg, scores)
    if explorer is not None:
        sec = report.section("Browse every neuron")
        sec.paragraphs.append(_explorer_note(explorer, cfg.min_active))
    if steering is not None:
        sec = report.section("Steering the toy LLaVA")
        sec.paragraphs += steering.paragraphs
        sec.tables += steering.tables
    index = report.write(out)
    summary = {
        "findings": [
            {"claim": f.claim, "holds": f.holds, "evidence": f.evidence, **d}
            for f, d in zip(found, detail.values(), strict=True)
        ],
        "checks": detail,
        "world": cfg.world,
        "alive": alive.alive_intervals(cfg, nums),
        **nums.summary(),
        "seeds": list(cfg.seed_list),
        "steering": steering.summary if steering is not None else None,
        "explore": explorer,
        **validity,
    }
    lines = [f"[{'ok' if f.holds else '--'}] {f.claim}: {f.evidence}" for f in found]
    return index, summary, lines
