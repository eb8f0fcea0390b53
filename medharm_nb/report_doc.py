"""The pieces the report is built from: its stylesheet, the document being assembled
(``Doc``: parts, figures, the sections that have nothing to show) and HTML helpers (escaped
text, tables, intervals, inline SVG)."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from medharm_nb import plots

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;
max-width:1200px;padding:0 1rem;color:#222}
h1{font-size:1.6rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:12.5px}
td,th{border:1px solid #ddd;padding:.2rem .45rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}figure,.wide{margin:1rem 0;overflow-x:auto}
figcaption{font-size:12.5px;color:#444;max-width:900px}
.missing{background:#fff4e5;border-left:4px solid #f0a030;padding:.5rem .8rem}
.warn{background:#fde8e8;border-left:4px solid #d33;padding:.5rem .8rem}
.response{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12px;
background:#fafafa;border:1px solid #eee;padding:.4rem;max-width:560px}
pre{background:#f7f7f7;padding:.6rem;overflow-x:auto;font-size:12px}
"""


@dataclass
class Doc:
    """The report as it is built: HTML parts, figure count, missing sections."""

    parts: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    figures: int = 0

    def add(self, text: str) -> None:
        self.parts.append(text)

    def lack(self, section: str, why: str) -> None:
        """Say in place, and in the list at the top, that a section has nothing to show."""
        self.missing.append(f"{section}: {why}")
        self.add(f'<p class="missing">Not in this run: {esc(why)}</p>')

    def figure(self, chart, caption: str) -> None:
        """Inline an SVG of ``chart`` with its caption; a chart that fails to render is
        reported in place (the rest of the report still builds)."""
        self.figures += 1
        try:
            svg = scoped_svg(plots.to_svg(chart), f"f{self.figures}")
        except Exception as err:  # vl-convert errors are plain exceptions
            self.lack(caption.split(".")[0], f"the figure could not be rendered ({err})")
            return
        self.add(f"<figure>{svg}<figcaption>Figure {self.figures}. {esc(caption)}"
                 f"</figcaption></figure>")


def esc(text: Any) -> str:
    """``text`` as HTML-escaped text."""
    return html.escape(str(text))


def scoped_svg(svg: str, prefix: str) -> str:
    """An SVG ready to inline beside others: XML prolog dropped, and every id (clip paths,
    gradients) prefixed, so two figures' ``clip1`` never point at each other."""
    svg = re.sub(r"^\s*<\?xml[^>]*>\s*", "", svg)
    svg = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", svg)
    return re.sub(r'href="#([^"]+)"', rf'href="#{prefix}-\1"', svg)


def html_table(df: pl.DataFrame, columns: list[str] | None = None, max_rows: int = 40,
           digits: int = 3) -> str:
    """A DataFrame as an HTML table (floats rounded, at most ``max_rows`` rows shown)."""
    if columns:
        df = df.select(columns)

    def cell(v: Any) -> str:
        if isinstance(v, float):
            if v != v:
                return ""
            small = v != 0 and abs(v) < 10 ** -digits  # a p-value of 6e-05 is not 0.000
            return f"{v:.2g}" if small or abs(v) >= 1000 else f"{v:.{digits}f}"
        return "" if v is None else esc(v)

    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
                   for row in df.head(max_rows).iter_rows())
    more = (f"<p>{df.height - max_rows} more rows in the table's CSV.</p>"
            if df.height > max_rows else "")
    return f'<div class="wide"><table><tr>{head}</tr>{body}</table></div>{more}'


def with_interval(value: float, lo: float, hi: float, pct: bool = True) -> str:
    """A delta and its interval as text (percentage points, or the score's own scale);
    ``not measured`` for NaN."""
    if value is None or value != value:
        return "not measured"
    f = (lambda x: f"{100 * x:+.1f} pts") if pct else (lambda x: f"{x:+.2f}")
    return f"{f(value)} [{f(lo)}, {f(hi)}]" if lo == lo else f(value)


def model_pairs(config: dict | None, deltas: pl.DataFrame | None = None) -> list[tuple[str, str]]:
    """(fine-tune, base) from the config, else from the paired tables (a run folder without
    its config.yaml still knows its pairs)."""
    pairs = [(m["name"], m["base"]) for m in (config or {}).get("models", []) if m.get("base")]
    if not pairs and deltas is not None and not deltas.is_empty():
        pairs = [tuple(r) for r in deltas.select("model", "base").unique(maintain_order=True)
                 .iter_rows()]
    return pairs


def judges_of(df: pl.DataFrame) -> str:
    """The judges a table's rows come from, for a caption."""
    return ", ".join(sorted(df["judge"].unique().to_list()))
