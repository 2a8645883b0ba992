"""The report writes the same content as markdown, HTML and CSV."""

from __future__ import annotations

import csv

from vlmsae.report.document import Report, Table, format_value


def test_report_round_trip(tmp_path):
    report = Report("Run <1>", intro=["Intro & context."])
    sec = report.section("Scores")
    sec.paragraphs.append("What the table shows.")
    sec.tables.append(Table("ms", ["layer", "max MS"], [[2, 0.91234], [4, float("nan")]], "Max MS"))
    sec.figures.append(("figures/hist.png", "MS histogram"))
    index = report.write(tmp_path)

    md = (tmp_path / "README.md").read_text()
    assert "| layer | max MS |" in md and "| 2 | 0.912 |" in md and "| 4 | – |" in md
    assert "![MS histogram](figures/hist.png)" in md and "tables/ms.csv" in md
    rows = list(csv.reader((tmp_path / "tables" / "ms.csv").open()))
    assert rows[0] == ["layer", "max MS"] and float(rows[1][1]) == 0.91234 and rows[2][1] == "nan"
    page = index.read_text()
    assert "Run &lt;1&gt;" in page and "Intro &amp; context." in page
    assert "<img src='figures/hist.png'" in page and "<td>0.912</td>" in page


def test_format_value():
    assert format_value(True) == "yes" and format_value(0.5, 2) == "0.50"
    assert format_value(float("nan")) == "–" and format_value(None) == "–"
    assert format_value("x") == "x" and format_value(3) == "3"
