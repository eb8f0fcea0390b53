"""Charts of conversations by turn (altair), read from the by-turn tables only."""

from __future__ import annotations

import altair as alt
import polars as pl

MEASURE_TITLES = {"unsafe": "unsafe", "compliance": "complied"}


def pick_measure(table: pl.DataFrame) -> str:
    """``unsafe`` where some judge measured harm in ``table`` (a by-turn or survival table),
    else ``compliance``."""
    measured = table.filter((pl.col("measure") == "unsafe") & (pl.col("n") > 0))
    return "unsafe" if measured.height else "compliance"


def _shown(table: pl.DataFrame, measure: str) -> pl.DataFrame:
    return table.filter((pl.col("measure") == measure) & (pl.col("n") > 0)).with_columns(
        (pl.col("judge") + " · " + pl.col("template")).alias("panel"))


def unsafe_by_turn(table: pl.DataFrame, measure: str | None = None) -> alt.FacetChart:
    """Cumulative share of harmful conversations unsafe (or complied) by each turn, per
    model, with 95% intervals (clustered by base query); one panel per judge and template.

    Args:
        table: ``conversation.results.cumulative_by_turn``.
        measure: ``unsafe`` or ``compliance`` (default: ``pick_measure``).
    """
    measure = measure or pick_measure(table)
    data = _shown(table, measure)
    models = sorted(data["model"].unique().to_list())
    spread = 0.12 * (len(models) - 1)
    data = data.with_columns(  # side by side at each turn, so the intervals do not overlap
        (pl.col("turn") + pl.col("model").replace_strict(
            {m: i * 0.12 - spread / 2 for i, m in enumerate(models)}, return_dtype=pl.Float64))
        .alias("x"))
    x = alt.X("x:Q", title="turn", axis=alt.Axis(tickMinStep=1, format="d"),
              scale=alt.Scale(zero=False, padding=12))
    base = alt.Chart(data).encode(x=x, color=alt.Color("model:N", title="model"))
    rule = base.mark_rule().encode(y=alt.Y("lo:Q"), y2="hi:Q")
    point = base.mark_line(point=alt.OverlayMarkDef(filled=True, size=50)).encode(
        y=alt.Y("rate:Q", title=f"{MEASURE_TITLES[measure]} by this turn",
                axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
        tooltip=["model", "judge", "template", "turn", "k", "n", "n_unknown",
                 alt.Tooltip("rate:Q", format=".0%"), alt.Tooltip("lo:Q", format=".0%"),
                 alt.Tooltip("hi:Q", format=".0%")])
    return ((rule + point).properties(width=220, height=180)
            .facet(facet=alt.Facet("panel:N", title=None), columns=3)
            .resolve_scale(x="independent")
            .properties(title=f"Harmful conversations {MEASURE_TITLES[measure]} by turn "
                              f"(cumulative)"))


def survival_curve(table: pl.DataFrame, measure: str | None = None) -> alt.FacetChart:
    """Kaplan-Meier curves: the share of harmful conversations not yet unsafe (or complied)
    after each turn, per model, with pointwise 95% intervals; one panel per judge and
    template.

    Args:
        table: ``conversation.results.survival``.
        measure: ``unsafe`` or ``compliance`` (default: ``pick_measure``).
    """
    measure = measure or pick_measure(table)
    data = _shown(table, measure)
    x = alt.X("turn:Q", title="turn", axis=alt.Axis(tickMinStep=1, format="d"))
    band = alt.Chart(data).mark_area(opacity=0.15, interpolate="step-after").encode(
        x=x, y="lo:Q", y2="hi:Q", color="model:N")
    curve = alt.Chart(data).mark_line(interpolate="step-after", point=True).encode(
        x=x, y=alt.Y("survival:Q", title=f"not yet {MEASURE_TITLES[measure]}",
                     axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("model:N", title="model"),
        tooltip=["model", "judge", "template", "turn", "at_risk", "events", "censored", "n",
                 alt.Tooltip("survival:Q", format=".0%"), alt.Tooltip("lo:Q", format=".0%"),
                 alt.Tooltip("hi:Q", format=".0%")])
    return ((curve + band).properties(width=220, height=180)
            .facet(facet=alt.Facet("panel:N", title=None), columns=3)
            .resolve_scale(x="independent")
            .properties(title=f"Turns to the first {MEASURE_TITLES[measure]} answer "
                              f"(Kaplan-Meier)"))
