"""Spreadsheet-safe CSV cells: formulas are escaped, plain numbers written as text stay
numbers, and the escape is reversible."""

from __future__ import annotations

import csv
import io

from hypothesis import given
from hypothesis import strategies as st

from vlmsae.core.io import csv_cell, csv_text, csv_uncell


@given(st.text(max_size=20))
def test_the_escape_is_reversible_and_leaves_no_formula(text):
    cell = csv_cell(text)
    assert csv_uncell(cell) == text
    if cell == text and text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        float(text)  # only a plain number may start like a formula unescaped


def test_numbers_as_text_stay_numbers_and_formulas_do_not():
    for number in ("-0.029", "+1", "-2.5e-3", ".5", "-7."):
        assert csv_cell(number) == number
    # other text starting like a formula, non-ASCII digits (Arabic-Indic three) included
    for formula in ("-1+2", "=SUM(A1)", "-inf", "+cmd", "@x", "- 1", "-0.5 ", "'-1", "-\u0663"):
        assert csv_cell(formula) == "'" + formula
    rows = list(csv.reader(io.StringIO(csv_text(["a", "b"], [["-0.029", "-1+2"], [-3, "x"]]))))
    assert rows == [["a", "b"], ["-0.029", "'-1+2"], ["-3", "x"]]
