"""Charts of the paired analysis (06_amplification and the report): the forest plot of
fine-tune minus base per stratum, and the safety-helpfulness plane with an arrow from each
base to its fine-tune. Rendered and saved like every chart (``plots.save_chart``)."""

from __future__ import annotations

import altair as alt
import polars as pl

from medharm_nb.plots import RATE_TITLES, stacked_labels

RISK_TITLES: dict[str, str] = {
    "harmful": "harmful queries", "benign": "benign twins (control)",
    "difference": "harmful - benign (amplification)",
}
_RISK_SCALE = alt.Scale(domain=list(RISK_TITLES.values()),
                        range=["#e45756", "#4c78a8", "#000000"])


def forest(deltas: pl.DataFrame, outcomes: tuple[str, ...] = ("compliance", "unsafe",
                                                               "specificity")) -> alt.FacetChart:
    """The paired forest plot: fine-tune minus base per stratum (all queries, each category,
    each framing), harmful, benign and their difference side by side, with cluster-bootstrap
    intervals; one panel per outcome (own x scale), one row per pair and judge.

    Args:
        deltas: ``amplify.paired_deltas``; outcomes a judge did not measure are left out.
        outcomes: Which outcomes to draw.
    """
    data = (deltas.filter((pl.col("n_answers") > 0) & pl.col("outcome").is_in(list(outcomes)))
            .with_columns(
                (pl.col("model") + " vs " + pl.col("base") + " (" + pl.col("judge") + ")")
                .alias("pair"),
                pl.when(pl.col("by") == "all").then(pl.lit("all queries"))
                .otherwise(pl.col("by") + ": " + pl.col("stratum")).alias("row"),
                pl.col("risk").replace_strict(RISK_TITLES).alias("series")))
    order = list(dict.fromkeys(data.sort(
        pl.col("by").replace_strict({"all": 0, "category": 1, "framing": 2, "tier": 3}),
        "stratum")["row"]))
    y = alt.Y("row:N", title=None, sort=order)
    base = alt.Chart(data).encode(y=y, yOffset=alt.YOffset("series:N", sort=list(
        RISK_TITLES.values())), color=alt.Color("series:N", scale=_RISK_SCALE, title=None))
    zero = alt.Chart(data).mark_rule(color="#888", strokeDash=[3, 3]).encode(x=alt.datum(0))
    layers = zero + base.mark_rule().encode(
        x=alt.X("lo:Q", title="fine-tune minus base (95% cluster-bootstrap CI)"), x2="hi:Q") + \
        base.mark_point(filled=True, size=40).encode(
            x="delta:Q", tooltip=["pair", "row", "series", "outcome", "n_answers", "n_clusters",
                                  alt.Tooltip("delta:Q", format=".3f"),
                                  alt.Tooltip("lo:Q", format=".3f"),
                                  alt.Tooltip("hi:Q", format=".3f"),
                                  alt.Tooltip("p:Q", format=".3g"),
                                  alt.Tooltip("p_holm:Q", format=".3g")])
    return (layers.properties(width=200, height=alt.Step(8))
            .facet(column=alt.Column("outcome:N", title=None, sort=list(outcomes)),
                   row=alt.Row("pair:N", title=None))
            .resolve_scale(x="independent")
            .properties(title="Fine-tune minus base, per stratum"))


def safety_helpfulness(plane: pl.DataFrame, y: str = "unsafe") -> alt.Chart:
    """The safety-helpfulness plane: helpfulness on benign twins (x) against a harm rate on
    harmful queries (y) per model, with 95% intervals on both, and an arrow from each base
    to its fine-tune; one panel per judge.

    Args:
        plane: ``amplify.plane``.
        y: ``unsafe`` or ``compliance``; judges that did not measure it are left out.
    """
    data = plane.filter(pl.col(f"{y}_n") > 0)
    points = data.select("model", "judge", "base", x=pl.col("helpful_rate"),
                         y=pl.col(f"{y}_rate"), x_lo=pl.col("helpful_lo"),
                         x_hi=pl.col("helpful_hi"), y_lo=pl.col(f"{y}_lo"),
                         y_hi=pl.col(f"{y}_hi"), n_x=pl.col("helpful_n"), n_y=pl.col(f"{y}_n"))
    width = height = 300
    # Each fine-tune's row carries its base's point, so every layer reads one table and the
    # judge facet splits them alike.
    data = (points.join(points.select("model", "judge", x0="x", y0="y"),
                        left_on=["base", "judge"], right_on=["model", "judge"], how="left")
            .with_columns(  # triangle-up rotated to point from base to fine-tune, on screen
                pl.arctan2((pl.col("x") - pl.col("x0")) * width,
                           (pl.col("y") - pl.col("y0")) * height).degrees().alias("angle"),
                # the head sits short of the fine-tune's point, which would hide it
                (pl.col("x0") + 0.8 * (pl.col("x") - pl.col("x0"))).alias("x_head"),
                (pl.col("y0") + 0.8 * (pl.col("y") - pl.col("y0"))).alias("y_head")))
    data = data.with_columns(stacked_labels(data, "x", "y", by=("judge",)))
    pct = alt.Axis(format="%")
    x = alt.X("x:Q", title="helpful on benign twins", axis=pct, scale=alt.Scale(domain=[0, 1]))
    y_enc = alt.Y("y:Q", title=RATE_TITLES[y], axis=pct, scale=alt.Scale(domain=[0, 1]))
    base = alt.Chart().encode(color=alt.Color("model:N", title="model"))
    arrow = alt.Chart().transform_filter("isValid(datum.x0)")
    layers = [
        base.mark_rule(opacity=0.6).encode(x="x_lo:Q", x2="x_hi:Q", y="y:Q"),
        base.mark_rule(opacity=0.6).encode(y="y_lo:Q", y2="y_hi:Q", x="x:Q"),
        arrow.mark_rule(color="black", strokeWidth=1.5).encode(x="x0:Q", y="y0:Q", x2="x:Q",
                                                               y2="y:Q"),
        arrow.mark_point(shape="triangle-up", filled=True, color="black", size=70).encode(
            x="x_head:Q", y="y_head:Q", angle="angle:Q"),
        base.mark_point(filled=True, size=80).encode(
            x=x, y=y_enc, tooltip=["model", "base", "judge", "n_x", "n_y",
                                   alt.Tooltip("x:Q", format=".0%"),
                                   alt.Tooltip("y:Q", format=".0%")]),
        base.mark_text(align="left", dx=7, dy=-7).encode(x=x, y="label_y:Q", text="model:N"),
    ]
    return (alt.layer(*layers).properties(width=width, height=height)
            .facet(column=alt.Column("judge:N", title="judge"), data=data)
            .properties(title="Safety against helpfulness; arrows run from base to fine-tune"))
