"""One self-contained HTML report per run: ``runs/<name>/report.html``.

``build(run_dir)`` reads the run's manifest, effective config and whatever tables exist, and
writes a single file that opens offline: CSS inline, every figure an inline SVG rendered
by vl-convert (no JavaScript, no CDN). A section whose tables are missing (a run without
guards, without judge validation, without pairs) says so plainly, and the list of missing
sections opens the report; nothing is left out silently.

Every figure has a caption with its n, its judge(s) and what its error bars are. Example
responses are redacted by default: the spans the specificity checklist flags as operational
are masked (``judge.checklist.redact``); ``redacted=False`` writes
``report-unredacted.html`` for private review instead, so the shareable file is never
overwritten with raw text.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from medharm_nb import amplify, metrics, store
from medharm_nb.conversation.report import turns_section
from medharm_nb.report_doc import CSS, Doc, esc, html_table, model_pairs
from medharm_nb.report_sections import (
    examples_section,
    failures_section,
    guard_section,
    headline,
    judge_section,
    paired_section,
    plane_section,
    rates_section,
    run_section,
    tables_section,
    tier_section,
)

REPORT_FILE = "report.html"
UNREDACTED_FILE = "report-unredacted.html"


def _summary(run_dir: Path, results: pl.DataFrame | None, by: str) -> pl.DataFrame | None:
    """A rate table (``store.summary_df``): the run's, else made from its results (07_report
    has not written it yet); None without results."""
    kept = store.summary_df(run_dir, by, missing_ok=True)
    if kept is None and results is not None:
        return metrics.safety_summary(results, by=store.SUMMARY_BY[by])
    return kept


def build(run_dir: str | Path, redacted: bool = True, out: str | Path | None = None) -> Path:
    """Write the run's report from whatever it holds.

    Args:
        run_dir: The run folder (``runs/<name>``).
        redacted: Mask the operational spans of example responses (default). False writes
            ``report-unredacted.html`` instead, for private review.
        out: Where to write (default: ``report.html`` / ``report-unredacted.html`` in
            ``run_dir``).

    Returns:
        The path written.
    """
    run_dir = Path(run_dir)
    manifest = store.read_manifest(run_dir) or None
    config = store.read_run_config(run_dir)
    results = store.results_df(run_dir, missing_ok=True)
    by_model, by_category, by_tier = (_summary(run_dir, results, by)
                                      for by in ("model", "category", "tier"))
    distribution = store.paired_df(run_dir, "specificity", missing_ok=True)
    if distribution is None and results is not None:
        distribution = metrics.specificity_distribution(results)
    deltas = store.paired_df(run_dir, "deltas", missing_ok=True)
    amp = store.paired_df(run_dir, "amplification", missing_ok=True)
    pairs = model_pairs(config, deltas)
    plane = store.paired_df(run_dir, "plane", missing_ok=True)
    if plane is None and results is not None:
        plane = amplify.plane(results, pairs)

    doc = Doc()
    run_section(doc, manifest, config)
    headline(doc, amp, deltas, config)
    rates_section(doc, by_category, distribution, by_model)
    tier_section(doc, by_tier)
    paired_section(doc, deltas)
    plane_section(doc, plane)
    if (run_dir / "tables" / "turns.parquet").exists() or (config or {}).get("conversations"):
        turns_section(doc, run_dir, html_table)
    guard_section(doc, run_dir)
    judge_section(doc, run_dir)
    failures_section(doc, by_model)
    examples_section(doc, results, pairs, redacted)
    tables_section(doc, run_dir)

    name = (config or {}).get("name") or run_dir.name
    question = (config or {}).get("description") or "(the config has no description)"
    missing = ("<p class=\"missing\"><b>Sections without data in this run</b>:<br>"
               + "<br>".join(esc(m) for m in doc.missing) + "</p>") if doc.missing else ""
    banner = "" if redacted else ('<p class="warn"><b>UNREDACTED report for private review: '
                                  'do not share.</b></p>')
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="data:,"><title>medharm-nb report: {esc(name)}</title>'
            f"<style>{CSS}</style></head><body>{banner}"
            f"<h1>medharm-nb report: {esc(name)}</h1><p><b>Question.</b> {esc(question)}</p>"
            f"{missing}{''.join(doc.parts)}"
            f"<p><small>Written {esc(store.utc_now())} by medharm-nb from {esc(run_dir)}; "
            f"{doc.figures} figure(s), rendered offline.</small></p></body></html>")
    path = Path(out) if out else run_dir / (REPORT_FILE if redacted else UNREDACTED_FILE)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
