"""The demo's figures (matplotlib, Agg): paper-ready PNGs under ``figures/``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vlmsae.demo.analysis import SAEScores, Scores
from vlmsae.demo.config import DemoConfig

DPI = 150


def _plt():
    from vlmsae.report.figures import pyplot

    return pyplot()


def _save(fig, out: Path, name: str) -> str:
    from vlmsae._io import atomic_write

    rel = f"figures/{name}"
    atomic_write(out / rel, lambda p: fig.savefig(p, dpi=DPI, bbox_inches="tight", format="png"))
    _plt().close(fig)
    return rel


def showcase_sae(cfg: DemoConfig, scores: Scores) -> SAEScores:
    """The SAE the histogram and grids show: last block, Matryoshka, largest expansion."""
    table = [s for s in scores.saes if s.run.k == cfg.k]
    hook = cfg.hooks[-2] if len(cfg.hooks) > 1 else cfg.hooks[0]
    cands = [s for s in table if s.run.hook == hook] or table
    return max(cands, key=lambda s: (s.run.expansion, s.run.arch == "matryoshka"))


def ms_figures(cfg: DemoConfig, scores: Scores, out: Path) -> list[tuple[str, str]]:
    """MS histogram (SAE vs raw), max MS vs expansion, MS under CLIP vs oracle."""
    from vlmsae.report.figures import ms_histogram

    plt = _plt()
    figs = []
    s = showcase_sae(cfg, scores)
    ms_histogram(
        out / "figures" / "ms_histogram.png",
        {"SAE neurons": s.neurons.ms_clip, "raw neurons": scores.raw[s.run.hook].ms_clip},
        title=f"{s.run.name}: SAE vs raw neurons",
    )
    figs.append(
        (
            "figures/ms_histogram.png",
            f"MS (toy-CLIP embedding) of the neurons of {s.run.name} and of the raw "
            f"neurons of {s.run.hook}",
        )
    )

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for hook in cfg.hooks:
        for arch, style in zip(cfg.archs, ("-o", "--s", "-.^"), strict=False):
            runs = sorted(
                (
                    x
                    for x in scores.saes
                    if x.run.k == cfg.k and x.run.hook == hook and x.run.arch == arch
                ),
                key=lambda x: x.run.expansion,
            )
            ax.plot(
                [x.run.expansion for x in runs],
                [np.nanmax(x.neurons.ms_clip) for x in runs],
                style,
                label=f"{hook} {arch}",
            )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("expansion factor")
    ax.set_ylabel("max MS (toy CLIP)")
    ax.legend(fontsize=7)
    figs.append(
        (
            _save(fig, out, "max_ms_vs_expansion.png"),
            "Highest MS of any neuron against the SAE's expansion factor",
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
            "Each dot an SAE neuron: MS measured with the model's embedding against the truth",
        )
    )
    return figs


def k_sweep_figure(sweep: list[SAEScores], out: Path) -> tuple[str, str]:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ks = [s.run.k for s in sweep]
    ax.plot(ks, [s.r2 for s in sweep], "-o", label="R² (held out)")
    ax.plot(ks, [np.nanmean(s.neurons.ms_clip) for s in sweep], "-s", label="mean MS")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("K (active latents per image)")
    ax.legend()
    return _save(fig, out, "r2_ms_vs_k.png"), "Reconstruction (R²) and mean MS against K"


def grids(cfg: DemoConfig, scores: Scores, out: Path) -> list[tuple[str, str]]:
    """Top-16 grids of the most and least monosemantic neurons of the showcase SAE."""
    from vlmsae.report.grid import neuron_grid

    s = showcase_sae(cfg, scores)
    ms = s.neurons.ms_clip
    alive = np.flatnonzero(np.isfinite(ms) & (s.neurons.top[:, -1] >= 0))
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
            n_images=cfg.top_n,
            columns=cfg.n_grid,
        )
        figs.append(
            (
                rel,
                f"The {cfg.n_grid} {name} monosemantic neurons of {s.run.name}, "
                f"each with its {cfg.top_n} highest-activating held-out images",
            )
        )
    return figs
