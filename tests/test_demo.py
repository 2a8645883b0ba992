"""`vlmsae demo --quick` end to end: every promised file, finite numbers, a README that
names every figure and table."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from vlmsae.cli import app

FIGURES = (
    "ms_histogram.png",
    "max_ms_vs_expansion.png",
    "ms_clip_vs_oracle.png",
    "r2_ms_vs_k.png",
    "grid_most_monosemantic.png",
    "grid_least_monosemantic.png",
)
TABLES = ("findings", "paper_table", "saes", "k_sweep", "hierarchy", "uniqueness")


def _numbers(obj):
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _numbers(v)]
    return [obj] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_demo_writes_every_promised_file(demo_run):
    out, output = demo_run
    for name in FIGURES:
        assert (out / "figures" / name).stat().st_size > 1000, name
        for fmt in ("svg", "pdf"):  # for papers, beside every PNG
            assert (out / "figures" / name).with_suffix(f".{fmt}").stat().st_size > 1000, name
    for name in TABLES:
        lines = (out / "tables" / f"{name}.csv").read_text().splitlines()
        assert len(lines) >= 2, f"table {name} is empty"
    assert (out / "index.html").exists() and "README.md" in output
    assert (out / "explore" / "index.html").exists() and (out / "labels" / "labels.csv").exists()
    assert "explore/index.html" in (out / "README.md").read_text()  # the report links it


def test_demo_readme_names_every_figure_and_table(demo_run):
    out, _ = demo_run
    readme = (out / "README.md").read_text()
    html = (out / "index.html").read_text()
    for name in FIGURES:
        assert f"figures/{name}" in readme and f"figures/{name}" in html
    for name in TABLES:
        assert f"tables/{name}.csv" in readme


def test_demo_summary_numbers_are_finite(demo_run):
    out, _ = demo_run
    summary = json.loads((out / "summary.json").read_text())
    numbers = _numbers(summary)
    assert numbers and all(math.isfinite(x) for x in numbers)
    assert len(summary["findings"]) >= 7
    assert all(isinstance(f["holds"], bool) for f in summary["findings"])
    assert set(summary["saes"]) and all(
        0 <= s["r2"] <= 1 and s["l0"] > 0 for s in summary["saes"].values()
    )


def test_demo_findings_carry_intervals_and_baselines(demo_run):
    """A finding holds only where its interval excludes 0 / lies above the untrained SAEs;
    every configuration has its seeds and both untrained baselines."""
    out, _ = demo_run
    summary = json.loads((out / "summary.json").read_text())
    for f in summary["findings"]:
        iv = f["interval"]
        if iv["lo"] is not None:
            assert iv["lo"] <= iv["hi"]
        if f["holds"]:
            assert iv["lo"] is not None and iv["lo"] > 0, f["claim"]
            if "bar" in f:
                assert iv["lo"] > f["bar"], f["claim"]
    purity = summary["checks"]["spearman_ms_purity"]["interval"]
    holds = next(f["holds"] for f in summary["findings"] if "label purity" in f["claim"])
    assert holds == (purity["lo"] is not None and purity["lo"] > 0)
    assert len(summary["seeds"]) == 2
    for name, agg in summary["configs"].items():
        assert agg["r2"]["n"] == 2, name
        assert set(summary["baselines"][name]) == {"init", "random"}
    table = (out / "tables" / "paper_table.csv").read_text()
    assert "untrained (init)" in table and "active on ≥ 16 images" in table
    assert "the paper's" in table
