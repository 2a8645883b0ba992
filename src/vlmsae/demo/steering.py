"""The demo's steering section: SAE neurons vs DiffMean on the toy LLaVA of the demo's
world, judged by the ground truth (see :mod:`vlmsae.steer.toy`), over several seeds.

Each seed is a whole replicate: other target emoji, another steering SAE, other training,
validation and test images. Every rate is pooled over the seeds' test items; its interval
is a two-level bootstrap (seeds resampled, then items within each), so that the spread
between replicates counts, not only that between items. SAE − DiffMean is compared item by
item (the methods of a protocol answer the same items).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmsae.demo.config import DemoConfig
from vlmsae.metrics.stats import Interval, bootstrap_strata
from vlmsae.report.document import Table

if TYPE_CHECKING:
    from vlmsae.steer.toy import ToySteeringResult

PROTOCOLS = (("insert", "insertion"), ("suppress", "suppression"))
PAPER_BOTH = {"insert": (0.424, 0.358), "suppress": (0.525, 0.333)}
"""The paper's "both" rates (SAE, DiffMean) on LLaVA-1.5-7B."""


@dataclass
class SteeringSection:
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def steering_section(cfg: DemoConfig) -> SteeringSection:
    """Run the insertion / suppression comparison once per steering seed and turn it into a
    report section (pooled rates with intervals, SAE − DiffMean per protocol)."""
    from vlmsae.steer.llava import load_llava
    from vlmsae.steer.toy import ToySteeringConfig, toyworld_steering
    from vlmsae.toyworld import llava_path

    llava = load_llava(llava_path(cfg.models_dir, world=cfg.world))
    runs: dict[int, ToySteeringResult] = {}
    for seed in cfg.steer_seed_list:
        steer_cfg = ToySteeringConfig(
            world=cfg.world,
            models_dir=cfg.models_dir,
            n_train=cfg.steer_train,
            n_val=max(4, cfg.steer_test // 4),
            n_test=cfg.steer_test,
            expansion=cfg.steer_expansion,
            steps=cfg.steer_steps,
            seed=seed,
        )
        runs[seed] = toyworld_steering(
            Path(cfg.out_dir) / "steering" / f"seed{seed}", steer_cfg, llava=llava
        )
    return _section(cfg, runs)


def _outcomes(runs: dict[int, ToySteeringResult], kind: str, method: str) -> list[np.ndarray]:
    """Each seed's per-item "both" verdicts (0/1) of one method."""
    return [np.asarray(r.comparison.table.outcomes[kind, method], float) for r in runs.values()]


def _pooled(runs: dict[int, ToySteeringResult], kind: str, method: str, seed: int) -> Interval:
    """The "both" rate over every seed's items; the interval resamples seeds, then items."""
    return bootstrap_strata(_outcomes(runs, kind, method), nested=True, seed=seed)


def _differences(runs: dict[int, ToySteeringResult], kind: str) -> list[np.ndarray]:
    """SAE − DiffMean "both" per item (−1, 0, 1), paired: both methods answer the same items."""
    out = []
    for sae, dm in zip(
        _outcomes(runs, kind, "SAE"), _outcomes(runs, kind, "DiffMean"), strict=True
    ):
        if sae.shape != dm.shape:
            raise ValueError(f"{kind}: SAE and DiffMean judged {sae.size} and {dm.size} items")
        out.append(sae - dm)
    return out


def verdict(diff: Interval) -> str:
    """The paper's claim (SAE ahead of DiffMean) judged by the interval of the difference."""
    if not np.isfinite(diff.lo):
        return f"no interval (n={diff.n})"
    if diff.lo == diff.hi == diff.estimate == 0.0:
        return "no difference (the same outcome on every item)"
    if diff.above(0.0):
        return "reproduced"
    if diff.excludes(0.0):
        return "reversed (DiffMean ahead)"
    return "not shown (the interval includes 0)"


def _row(runs: dict[int, ToySteeringResult], kind: str, method: str) -> dict[int, Any]:
    """Each seed's table row of one protocol and method."""
    return {
        s: next(x for x in r.comparison.table.rows if x.kind == kind and x.method == method)
        for s, r in runs.items()
    }


def _section(cfg: DemoConfig, runs: dict[int, ToySteeringResult]) -> SteeringSection:
    first_seed, first = next(iter(runs.items()))
    rows, per_seed, summary_rows = [], [], []
    for kind, _ in PROTOCOLS:
        for method in ("none", "SAE", "DiffMean"):
            rates = _row(runs, kind, method)
            pooled = _pooled(runs, kind, method, cfg.seed)
            n = sum(x.n for x in rates.values())
            concept = sum(x.concept * x.n for x in rates.values()) / n
            followed = sum(x.followed * x.n for x in rates.values()) / n
            rows.append([kind, method, concept, followed, pooled.estimate, pooled.lo, pooled.hi, n])
            per_seed += [
                [kind, method, s, x.alpha, x.concept, x.followed, x.both, x.n]
                for s, x in rates.items()
            ]
            summary_rows.append(
                {
                    "protocol": kind,
                    "method": method,
                    "concept": concept,
                    "followed": followed,
                    "both": pooled.to_dict(),
                    "per_seed": {str(s): x._asdict() for s, x in rates.items()},
                }
            )
    diffs, seed_diffs = {}, {}
    for kind, _ in PROTOCOLS:
        per_item = _differences(runs, kind)
        diffs[kind] = bootstrap_strata(per_item, nested=True, seed=cfg.seed)
        seed_diffs[kind] = {str(s): float(d.mean()) for s, d in zip(runs, per_item, strict=True)}
    purity = {
        str(s): {c: n.purity for c, n in r.comparison.neurons.items()} for s, r in runs.items()
    }
    mean_purity = float(np.mean([p for d in purity.values() for p in d.values()]))
    both_cols = ["both", "both: 95% lo", "both: 95% hi"]
    tables = [
        Table(
            "steering",
            ["protocol", "method", "concept", "prompt followed", *both_cols, "n"],
            rows,
            f"Concept insertion and suppression on held-out images, pooled over {len(runs)} "
            "seeds (rates over every seed's items; the interval of both resamples the seeds, "
            "then the items within them)",
        ),
        Table(
            "steering_seeds",
            [
                "protocol",
                "method",
                "seed",
                "α (validation)",
                "concept",
                "prompt followed",
                "both",
                "n",
            ],  # fmt: skip
            per_seed,
            "Each seed's rates (other targets, SAE and images per seed; α chosen per seed "
            "on validation images)",
        ),
    ]
    versus = []
    for kind, name in PROTOCOLS:
        d = diffs[kind]
        sae, dm = (next(r[4] for r in rows if r[:2] == [kind, m]) for m in ("SAE", "DiffMean"))
        seeds = ", ".join(f"{v:+.3f}" for v in seed_diffs[kind].values())
        versus.append(
            f"{name} {sae:.1%} vs {dm:.1%}, SAE − DiffMean {d.estimate:+.3f} "
            f"[{d.lo:+.3f}, {d.hi:+.3f}] (per seed {seeds}): {verdict(d)}"
        )
    paper = "; ".join(
        f"{name} {PAPER_BOTH[kind][0]:.1%} vs {PAPER_BOTH[kind][1]:.1%}" for kind, name in PROTOCOLS
    )
    others = "; ".join(
        f"seed {s}: {', '.join(sorted(r.comparison.neurons))}"
        for s, r in runs.items()
        if s != first_seed
    )
    setup = (
        f"{len(runs)} seeds, each with its own targets (those above are seed {first_seed}'s"
        + (f"; {others}" if others else "")
        + f"), steering SAE (×{cfg.steer_expansion}, {cfg.steer_train} training images, "
        f"{cfg.steer_steps} steps) and {cfg.steer_test} test images per protocol, in "
        f"steering/seedS/. The neurons chosen for the targets have a mean top-image label "
        f"purity of {mean_purity:.2f} on the training images."
    )
    if cfg.toy_world.options:
        setup += (
            f" Steering runs on the {cfg.world} world the toy LLaVA was trained on, not with "
            f"this run's {cfg.toy_world.options}."
        )
    return SteeringSection(
        paragraphs=[
            _method_text(cfg.world, first.layer, sorted(first.comparison.neurons)),
            setup,
            f"The paper found SAE steering ahead of DiffMean on both protocols (both rates: "
            f"{paper}). Here, SAE vs DiffMean (both rates; the difference item by item, its 95 % "
            f"interval resampling seeds and then items): {'; '.join(versus)}.",
        ],
        tables=tables,
        summary={
            "world": cfg.world,
            "layer": first.layer,
            "seeds": list(runs),
            "neurons": {
                str(s): {c: int(n.neuron) for c, n in r.comparison.neurons.items()}
                for s, r in runs.items()
            },
            "neuron_purity": purity,
            "mean_neuron_purity": mean_purity,
            "rows": summary_rows,
            "sae_minus_diffmean": {kind: d.to_dict() for kind, d in diffs.items()},
            "sae_minus_diffmean_per_seed": seed_diffs,
            "verdicts": {kind: verdict(d) for kind, d in diffs.items()},
            "seconds": {str(s): r.seconds for s, r in runs.items()},
        },
    )


def _method_text(world: str, layer: int, targets: list[str]) -> str:
    """What the section measured, in the words of ``world``."""
    from vlmsae.steer.toy_tasks import CAPTION_TOKENS
    from vlmsae.toyworld.worlds import get_world

    common = (
        f"An SAE trained on every token of vision block {layer} of the toy LLaVA (the block "
        "its projector reads) is clamped on one neuron per {what}, chosen from data by the "
        "label purity of its top images; DiffMean adds or removes the mean difference of "
        "activations with and without the {what}. α is chosen on validation images for "
        "each method; the rates are on test images. "
    )
    return get_world(world).steering_method(common, targets, CAPTION_TOKENS)
