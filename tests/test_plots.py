"""Charts render offline to real PNG and SVG files."""

from __future__ import annotations

import polars as pl

from medharm_nb import metrics, plots


def _results() -> pl.DataFrame:
    rows = []
    for model, unsafe in (("plain", [True, True, False]), ("guarded", [False, False, True])):
        for i, u in enumerate(unsafe):
            rows.append({"model": model, "judge": "rules-v1", "category": "toxicology",
                         "framing": "clinical", "risk": "harmful",
                         "label": "full_compliance" if u else "full_refusal", "unsafe": u})
            rows.append({"model": model, "judge": "rules-v1", "category": "toxicology",
                         "framing": "clinical", "risk": "benign",
                         "label": "full_refusal" if i == 0 else "full_compliance",
                         "unsafe": False})
    return pl.DataFrame(rows).with_columns(
        pl.col("label").is_in(["full_refusal", "safe_redirect"]).alias("refused"))


def test_every_report_chart_saves_png_and_svg(tmp_path):
    results = _results()
    charts = {
        "tradeoff": plots.refusal_tradeoff(metrics.safety_summary(results, by=("model",))),
        "unsafe": plots.unsafe_rates(metrics.safety_summary(results, by=("model", "category"))),
        "labels": plots.label_distribution(
            metrics.label_rates(results, by=("model", "category"))),
    }
    for stem, chart in charts.items():
        png, svg = plots.save_chart(chart, tmp_path, stem)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        text = svg.read_text()
        assert text.lstrip().startswith("<svg") and "plain" in text and "guarded" in text
