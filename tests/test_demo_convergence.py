"""The demo's convergence check on hand-written training logs: R² at 3/4 of the steps and
at the end, converged exactly where every seed changed by less than the tolerance."""

from __future__ import annotations

import json

import pytest

from vlmsae.demo.config import DemoConfig
from vlmsae.demo.convergence import convergence, convergence_table
from vlmsae.demo.stages import SAERun


def _log(path, r2_by_step):
    path.mkdir(parents=True)
    lines = [json.dumps({"step": s, "loss": 1.0, "val": {"r2": r}}) for s, r in r2_by_step]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_convergence_reads_three_quarters_and_the_end(tmp_path):
    cfg = DemoConfig.quick(out_dir=str(tmp_path), steps=800)
    flat = [(100 * i, 0.5 + 0.01 * min(i, 5) + 0.001 * i) for i in range(1, 9)]
    rising = [(100 * i, 0.3 + 0.03 * i) for i in range(1, 9)]
    runs = [
        SAERun("layer_4", "batchtopk", 4, 4, tmp_path / "a-s0", 0),
        SAERun("layer_4", "batchtopk", 4, 4, tmp_path / "a-s1", 1),
        SAERun("layer_4", "matryoshka", 4, 4, tmp_path / "b-s0", 0),
    ]
    _log(runs[0].path, flat)
    _log(runs[1].path, flat)
    _log(runs[2].path, rising)
    got = convergence(cfg, runs)
    a, b = got["configs"][runs[0].config], got["configs"][runs[2].config]
    assert a["converged"] and not b["converged"] and not got["all_converged"]
    one = got["saes"][runs[0].name]
    assert (one["step_3q"], one["step_end"]) == (600, 800)
    assert one["change"] == pytest.approx(flat[-1][1] - flat[5][1])
    assert b["change"]["mean"] == pytest.approx(0.06)
    rows = convergence_table(got).rows
    assert [r[-1] for r in rows] == ["yes", "NO"]


def test_a_run_that_stopped_early_has_not_converged(tmp_path):
    cfg = DemoConfig.quick(out_dir=str(tmp_path), steps=800)
    run = SAERun("layer_4", "batchtopk", 4, 4, tmp_path / "c-s0", 0)
    _log(run.path, [(100, 0.5), (200, 0.5), (300, 0.5)])  # interrupted at step 300
    assert not convergence(cfg, [run])["configs"][run.config]["converged"]
    missing = SAERun("layer_4", "batchtopk", 1, 4, tmp_path / "none", 0)
    assert not convergence(cfg, [missing])["all_converged"]
