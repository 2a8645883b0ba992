"""A run's report: the same sections written as ``README.md`` and a static ``index.html``.

A :class:`Report` collects sections of prose, tables and figures; :meth:`Report.write`
renders them next to each other in the run directory. Tables are also written as CSV so
that scripts never parse markdown. Nothing here needs a server or a network: the HTML is
one self-contained file that links the PNGs beside it.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmsae.core.io import atomic_write_text, csv_text

_CSS = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.8em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: 3px 9px; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 90%; } .note { color: #555; }
.ok { color: #186a1f; font-weight: 600; } .fail { color: #a3191b; font-weight: 600; }
"""


def format_value(value: Any, digits: int = 3) -> str:
    """Human-readable cell: floats to ``digits`` decimals, NaN and None as ``–``."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


@dataclass
class Table:
    """A table with a name (used for its CSV file), column names and rows."""

    name: str
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""

    def markdown(self) -> str:
        head = "| " + " | ".join(self.columns) + " |"
        rule = "|" + "|".join("---" for _ in self.columns) + "|"
        body = ["| " + " | ".join(format_value(v) for v in row) + " |" for row in self.rows]
        return "\n".join([head, rule, *body])

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(format_value(v))}</td>" for v in row) + "</tr>"
            for row in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def csv(self) -> str:
        return csv_text(self.columns, self.rows)


@dataclass
class Section:
    """One heading with paragraphs, tables and figures (paths relative to the run dir)."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (relative path, caption)


class Report:
    """Collect sections, then :meth:`write` ``README.md``, ``index.html`` and table CSVs."""

    def __init__(self, title: str, intro: Sequence[str] = ()) -> None:
        self.title = title
        self.intro = list(intro)
        self.sections: list[Section] = []

    def section(self, title: str) -> Section:
        sec = Section(title)
        self.sections.append(sec)
        return sec

    def write(self, out_dir: str | Path, tables_subdir: str = "tables") -> Path:
        """Write the report into ``out_dir``; returns the path of ``index.html``."""
        out_dir = Path(out_dir)
        for sec in self.sections:
            for table in sec.tables:
                atomic_write_text(out_dir / tables_subdir / f"{table.name}.csv", table.csv())
        atomic_write_text(out_dir / "README.md", self._markdown(tables_subdir))
        atomic_write_text(out_dir / "index.html", self._html(tables_subdir))
        return out_dir / "index.html"

    def _markdown(self, tables_subdir: str) -> str:
        lines = [f"# {self.title}", "", *self._paras_md(self.intro)]
        for sec in self.sections:
            lines += [f"## {sec.title}", "", *self._paras_md(sec.paragraphs)]
            for t in sec.tables:
                if t.caption:
                    lines += [f"**{t.caption}** (`{tables_subdir}/{t.name}.csv`)", ""]
                lines += [t.markdown(), ""]
            for path, caption in sec.figures:
                lines += [f"![{caption}]({path})", "", f"*{path}*: {caption}", ""]
        return "\n".join(lines)

    @staticmethod
    def _paras_md(paragraphs: Sequence[str]) -> list[str]:
        out: list[str] = []
        for p in paragraphs:
            out += [p, ""]
        return out

    def _html(self, tables_subdir: str) -> str:
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{html.escape(self.title)}</h1>",
            *(f"<p>{html.escape(p)}</p>" for p in self.intro),
        ]
        for sec in self.sections:
            parts.append(f"<h2>{html.escape(sec.title)}</h2>")
            parts += [f"<p>{html.escape(p)}</p>" for p in sec.paragraphs]
            for t in sec.tables:
                if t.caption:
                    link = f"{tables_subdir}/{t.name}.csv"
                    parts.append(
                        f"<p><b>{html.escape(t.caption)}</b> "
                        f"(<a href='{html.escape(link)}'>CSV</a>)</p>"
                    )
                parts.append(t.html())
            for path, caption in sec.figures:
                parts.append(
                    f"<figure><img src='{html.escape(path)}' alt='{html.escape(caption)}'>"
                    f"<figcaption>{html.escape(path)}: {html.escape(caption)}</figcaption></figure>"
                )
        parts.append("</body></html>")
        return "\n".join(parts)
