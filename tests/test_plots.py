"""Charts render offline to real PNG and SVG files."""

from __future__ import annotations

import polars as pl
import synthetic

from medharm_nb import metrics, plots, plots_paired


def _results() -> pl.DataFrame:
    rows = []
    for model, unsafe in (("plain", [True, True, False]), ("guarded", [False, False, True])):
        for i, u in enumerate(unsafe):
            rows.append({"model": model, "judge": "trained", "category": "toxicology",
                         "framing": "clinical", "risk": "harmful",
                         "label": "full_compliance" if u or i == 2 else "full_refusal",
                         "unsafe": u, "on_topic": True})
            rows.append({"model": model, "judge": "trained", "category": "toxicology",
                         "framing": "clinical", "risk": "benign",
                         "label": "full_refusal" if i == 0 else "full_compliance",
                         "unsafe": False, "on_topic": True})
    return synthetic.results_frame(pl.DataFrame(rows).with_columns(
        complied=pl.col("label").is_in(["partial", "full_compliance"])))


def test_every_report_chart_saves_png_and_svg(tmp_path):
    results = _results()
    by_model = metrics.safety_summary(results, by=("model",))
    charts = {
        "tradeoff": plots.refusal_tradeoff(by_model),
        "rates": plots.rate_chart(by_model),
        "by_category": plots.rate_chart(
            metrics.safety_summary(results, by=("model", "category")), by="category"),
        "labels": plots.label_distribution(
            metrics.label_rates(results, by=("model", "category"))),
    }
    for stem, chart in charts.items():
        png, svg = plots.save_chart(chart, tmp_path, stem)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        text = svg.read_text()
        assert text.lstrip().startswith("<svg") and "plain" in text and "guarded" in text


def test_rate_chart_draws_compliance_and_unsafe_apart_and_skips_unmeasured():
    results = pl.concat([_results(), _results().with_columns(
        judge=pl.lit("rules"), unsafe=pl.lit(None, dtype=pl.Boolean))])
    long = plots.rates_long(metrics.safety_summary(results, by=("model",)))
    # The rules judge measured compliance only: no unsafe rows for it, never a 0.
    assert set(long.filter(pl.col("judge") == "rules")["measure"]) == {
        plots.RATE_TITLES["compliance"]}
    trained = long.filter(pl.col("judge") == "trained").sort("model", "measure")
    assert trained.select("model", "k", "n").rows() == [
        ("guarded", 1, 3), ("guarded", 1, 3), ("plain", 3, 3), ("plain", 2, 3)]


def test_paired_charts_render_to_svg_offline(tmp_path):
    from medharm_nb import amplify

    results = synthetic.results(seed=1, n_clusters=9, delta=0.3)
    deltas = amplify.paired_deltas(results, [("ft-model", "base-model")], n_boot=200)
    plane = amplify.plane(results, [("ft-model", "base-model")])
    charts = {
        "forest": plots_paired.forest(deltas),
        "plane": plots_paired.safety_helpfulness(plane),
        "heatmap": plots.rate_heatmap(metrics.safety_summary(results, by=("model", "category"))),
        "specificity": plots.specificity_bars(metrics.specificity_distribution(results)),
    }
    for stem, chart in charts.items():
        svg = plots.to_svg(chart)
        assert svg.lstrip().startswith("<svg") and "ft-model" in svg, stem
    # The arrow runs from the base's point to the fine-tune's, in the same judge's panel.
    spec = charts["plane"].to_dict()
    rows = spec["datasets"][next(iter(spec["datasets"]))]
    arrow = next(r for r in rows if r["model"] == "ft-model")
    base = next(r for r in rows if r["model"] == "base-model")
    assert (arrow["x0"], arrow["y0"]) == (base["x"], base["y"])
    # A heat-map cell says its rate, interval and n.
    assert any("n=" in t and "[" in t for t in
               [r.get("label", "") for r in next(iter(charts["heatmap"].to_dict()[
                   "datasets"].values()))])


def test_names_of_points_that_land_together_are_stacked_not_overprinted():
    points = pl.DataFrame({"judge": ["a", "a", "a", "b"], "x": [0.95, 0.96, 0.5, 0.95],
                           "y": [0.27, 0.27, 0.27, 0.27]})
    label_y = plots.stacked_labels(points, "x", "y", by=("judge",)).to_list()
    # The second model at the same spot goes one line down; a distant point and the same
    # spot in another panel keep their own place.
    assert label_y == [0.27, 0.27 - plots.LABEL_STEP, 0.27, 0.27]



def test_the_plotted_harm_rate_is_unsafe_where_measured_else_compliance():
    measured = pl.DataFrame({"model": ["a", "a"], "judge": ["rules", "trained"],
                             "unsafe_n": [0, 12]})
    assert plots.plotted_measure(measured) == "unsafe"
    assert plots.plotted_measure(measured.filter(pl.col("judge") == "rules")) == "compliance"
