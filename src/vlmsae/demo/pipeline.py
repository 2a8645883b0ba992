"""``run_demo``: every stage of the method on the toy world, then the report.

1. render the world, cache the toy CLIP's hooks, write the CLIP and oracle embeddings;
2. train BatchTopK and Matryoshka SAEs over hooks × expansions, plus a K sweep;
3. score raw and SAE neurons (MS under both embeddings), top images, hierarchy,
   uniqueness; 4. steering; 5. check the findings against the truth and write the report.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vlmsae.core.io import write_json
from vlmsae.demo import analysis, stages, writeup
from vlmsae.demo.config import DemoConfig
from vlmsae.demo.steering import steering_section

log = logging.getLogger(__name__)


class DemoResult(NamedTuple):
    """What ``run_demo`` produced."""

    report: Path
    """``index.html`` of the run (``README.md`` beside it)."""
    summary: dict[str, Any]
    """Every number of the run, as written to ``summary.json``."""
    lines: list[str]
    """The findings, one printable line each."""


def run_demo(cfg: DemoConfig) -> DemoResult:
    """Run the demo described by ``cfg``; rerunning skips complete stages."""
    import torch

    from vlmsae.explore.demo import explore_demo_run

    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name: str, fn: Any, *args: Any) -> Any:
        from vlmsae.core.progress import activity

        t0 = time.perf_counter()
        log.info("demo: %s", name)
        with activity(f"demo: {name}"):  # a log line at least every 30 s (log mode)
            result = fn(*args)
        timings[name] = round(time.perf_counter() - t0, 1)
        log.info("demo: %s done in %.1f s", name, timings[name])
        return result

    world = timed("world", stages.export_world, cfg)
    acts = timed("cache", stages.cache_world, cfg, world)
    emb = timed("embed", stages.embed_world, cfg, world)
    runs = timed("train", stages.train_saes, cfg, acts)
    scores = timed("score", analysis.score_all, cfg, acts, emb, runs, world)
    explorer = timed("explore", explore_demo_run, cfg, runs, acts, emb)
    steering = timed("steer", steering_section, cfg) if cfg.steer else None
    report, summary, lines = timed("report", writeup.write_report, cfg, scores, steering,
                                   timings, explorer)  # fmt: skip
    summary["config"] = cfg.to_dict()
    summary["seconds"] = timings
    summary = _nan_to_none(summary)
    write_json(out / "summary.json", summary)
    return DemoResult(report, summary, lines)


def _nan_to_none(obj: Any) -> Any:
    """JSON has no NaN: undefined numbers (e.g. MS of a group without live neurons) → null."""
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
