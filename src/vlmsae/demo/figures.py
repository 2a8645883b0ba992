"""The demo's figures (matplotlib, Agg): paper-ready PNGs under ``figures/``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vlmsae.demo.analysis import SAEScores, Scores
from vlmsae.demo.config import DemoConfig
from vlmsae.metrics.maxms import max_ms_stats

DPI = 150
CLIP_EMBEDDER = "toy CLIP"
"""Name of the toy CLIP's own image embedding (the decomposed model scoring itself)."""
DINO_EMBEDDER = "toy DINOv2"
"""Name of the embedder of every MS in the figures and findings: the world's independent
toy DINOv2 (the toy CLIP's and the oracle's MS are named where they are used)."""


def _plt():
    from vlmsae.report.figures import pyplot

    return pyplot()


def _save(fig, out: Path, name: str) -> str:
    """PNG (the report shows it), SVG and PDF beside it (for papers)."""
    from vlmsae.report.figures import save_figure

    rel = f"figures/{name}"
    save_figure(fig, out / rel, dpi=DPI, bbox_inches="tight")
    return rel


def showcase_sae(cfg: DemoConfig, scores: Scores) -> SAEScores:
    """The SAE the histogram and grids show: last block, Matryoshka, largest expansion,
    first seed."""
    table = [s for s in scores.saes if s.run.k == cfg.k and s.run.seed == cfg.seed]
    hook = cfg.hooks[-2] if len(cfg.hooks) > 1 else cfg.hooks[0]
    cands = [s for s in table if s.run.hook == hook] or table
    return max(cands, key=lambda s: (s.run.expansion, s.run.arch == "matryoshka"))


def _seed_mean(values: list[float | None]) -> float:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def ms_figures(cfg: DemoConfig, scores: Scores) -> list[tuple[str, str]]:
    """MS histogram (SAE vs raw), max MS vs expansion, MS under CLIP vs oracle."""
    from vlmsae.report.figures import ms_histogram

    out = Path(cfg.out_dir)
    plt = _plt()
    figs = []
    s = showcase_sae(cfg, scores)
    ms_histogram(
        out / "figures" / "ms_histogram.png",
        {"SAE neurons": s.neurons.ms_dino, "raw neurons": scores.raw[s.run.hook].ms_dino},
        title=f"{s.run.name}: SAE vs raw neurons",
        embedder=DINO_EMBEDDER,
    )
    figs.append(
        (
            "figures/ms_histogram.png",
            f"MS (toy-DINOv2 embedding) of the neurons of {s.run.name} and of the raw "
            f"neurons of {s.run.hook}",
        )
    )

    fig, ax = plt.subplots(figsize=(7, 3.4))
    colors = plt.get_cmap("tab10").colors  # one colour per hook, a marker per architecture,
    for hook, color in zip(cfg.hooks, colors, strict=False):  # a line style per statistic
        for arch, marker in zip(cfg.archs, ("o", "s", "^", "D", "v"), strict=False):
            runs = [
                x
                for x in scores.saes
                if x.run.k == cfg.k and (x.run.hook, x.run.arch) == (hook, arch)
            ]
            exps = sorted({x.run.expansion for x in runs})
            for stat, style in (("max", "-"), ("max_active", ":")):
                ys = [
                    _seed_mean(
                        [
                            max_ms_stats(x.neurons.ms_dino, x.neurons.n_active, cfg.min_active)[
                                stat
                            ].value
                            for x in runs
                            if x.run.expansion == e
                        ]
                    )
                    for e in exps
                ]
                label = f"{hook} {arch}" + ("" if stat == "max" else f" (≥{cfg.min_active})")
                ax.plot(exps, ys, style + marker, color=color, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("expansion factor")
    ax.set_ylabel("max MS (toy DINOv2), mean over seeds")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    figs.append(
        (
            _save(fig, out, "max_ms_vs_expansion.png"),
            "Highest MS (toy DINOv2) against the SAE's expansion factor (mean over seeds): "
            "solid, over all "
            f"neurons (the paper's); dotted, over neurons active on ≥ {cfg.min_active} images",
        )
    )

    clip = np.concatenate([x.neurons.ms_clip for x in scores.saes if x.run.k == cfg.k])
    oracle = np.concatenate([x.neurons.ms_oracle for x in scores.saes if x.run.k == cfg.k])
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(oracle, clip, s=3, alpha=0.3)
    ax.set_xlabel("MS under the oracle (ground-truth) embedding")
    ax.set_ylabel("MS under the toy-CLIP embedding")
    figs.append(
        (
            _save(fig, out, "ms_clip_vs_oracle.png"),
            "Each dot an SAE neuron (every seed): MS measured with the model's embedding "
            "against the truth",
        )
    )
    return figs


def k_sweep_figure(cfg: DemoConfig, scores: Scores) -> tuple[str, str]:
    """R² and mean MS against K (BatchTopK sweep), mean over seeds with min–max bars."""
    first = next(s for s in scores.saes if s.run.arch == "batchtopk" and s.run.k == cfg.k_sweep[0])
    sweep = [
        s
        for s in scores.saes
        if s.run.arch == "batchtopk"
        and (s.run.hook, s.run.expansion) == (first.run.hook, first.run.expansion)
        and s.run.k in cfg.k_sweep
    ]
    ks = sorted({s.run.k for s in sweep})
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for label, fn, style in (
        ("R² (held out)", lambda s: s.r2, "-o"),
        ("mean MS", lambda s: float(np.nanmean(s.neurons.ms_dino)), "-s"),
    ):
        per_k = [[fn(s) for s in sweep if s.run.k == k] for k in ks]
        mean = np.array([np.mean(v) for v in per_k])
        err = np.array([[m - min(v), max(v) - m] for m, v in zip(mean, per_k, strict=True)]).T
        ax.errorbar(ks, mean, yerr=err, fmt=style, capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("K (active latents per image)")
    ax.legend()
    return (
        _save(fig, Path(cfg.out_dir), "r2_ms_vs_k.png"),
        "Reconstruction (R²) and mean MS (toy DINOv2) against K: mean over seeds, bars from "
        "min to max",
    )


def grids(cfg: DemoConfig, scores: Scores) -> list[tuple[str, str]]:
    """Top-16 grids of the most and least monosemantic neurons of the showcase SAE, ranked
    among neurons active on >= ``cfg.min_active`` images (the paper's rule)."""
    from vlmsae.report.grid import neuron_grid

    out = Path(cfg.out_dir)
    s = showcase_sae(cfg, scores)
    ms = s.neurons.ms_dino
    alive = np.flatnonzero(np.isfinite(ms) & s.neurons.top_images().kept(cfg.min_active))
    rule = f"active on ≥ {cfg.min_active} held-out images"
    if alive.size == 0:  # no neuron passes the rule: rank every scored neuron, and say so
        alive, rule = np.flatnonzero(np.isfinite(ms)), "with a score (none passes the rule)"
    order = alive[np.argsort(-ms[alive], kind="stable")]
    figs = []
    for name, ids in (("most", order[: cfg.n_grid]), ("least", order[::-1][: cfg.n_grid])):
        rel = f"figures/grid_{name}_monosemantic.png"
        neuron_grid(
            out / rel,
            ids.tolist(),
            s.neurons.top,
            scores.images,
            ms=ms,
            ms_label=f"MS ({DINO_EMBEDDER})",
            n_images=cfg.top_n,
            columns=cfg.n_grid,
        )
        figs.append(
            (
                rel,
                f"The {cfg.n_grid} {name} monosemantic neurons (MS under the toy DINOv2) of "
                f"{s.run.name} among its "
                f"{len(alive)} neurons {rule}, each with its {cfg.top_n} highest-activating "
                "images",
            )
        )
    return figs
