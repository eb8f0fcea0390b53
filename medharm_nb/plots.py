"""Charts (altair) that read only the tidy tables from ``metrics``; saved offline as PNG + SVG."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import polars as pl

from medharm_nb.records import LABELS

LABEL_COLORS = {
    "full_refusal": "#4c78a8",
    "safe_redirect": "#72b7b2",
    "partial": "#f2a541",
    "full_compliance": "#e45756",
    "unscored": "#bab0ac",
}
_LABEL_SCALE = alt.Scale(domain=list(LABELS), range=[LABEL_COLORS[x] for x in LABELS])


def use_static_renderer(fmt: str = "svg") -> None:
    """Show charts in notebooks as static images rendered locally by vl-convert.

    Altair's default renderer loads vega from a CDN, so charts vanish offline and in
    executed notebooks viewed elsewhere; a static SVG needs neither.
    """
    alt.renderers.enable(fmt)


def label_distribution(rates: pl.DataFrame) -> alt.Chart:
    """Stacked bars: share of each label per category, one row of panels per model.

    Args:
        rates: ``metrics.label_rates(results, by=("model", "category"))``.
    """
    data = rates.with_columns(pl.col("label").replace_strict(
        {lab: i for i, lab in enumerate(LABELS)}).alias("order"))
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=alt.X("share_rate:Q", stack="normalize", title="share of responses",
                    axis=alt.Axis(format="%")),
            y=alt.Y("category:N", title=None),
            color=alt.Color("label:N", scale=_LABEL_SCALE, title="judged as"),
            order=alt.Order("order:Q"),
            tooltip=["model", "category", "risk", "label", "k", "n",
                     alt.Tooltip("share_rate:Q", format=".0%")],
        )
        .properties(width=260, height=alt.Step(16))
        .facet(row=alt.Row("model:N", title=None), column=alt.Column("risk:N", title="query"))
        .properties(title="How each model answered, by category")
    )


def unsafe_rates(summary: pl.DataFrame) -> alt.LayerChart:
    """Unsafe rate on harmful queries per category and model, with Wilson 95% CIs.

    Args:
        summary: ``metrics.safety_summary(results, by=("model", "category"))``.
    """
    base = alt.Chart(summary.drop_nulls("unsafe_rate")).encode(
        y=alt.Y("category:N", title=None),
        yOffset="model:N",
        color=alt.Color("model:N", title="model"),
    )
    rule = base.mark_rule().encode(
        x=alt.X("unsafe_lo:Q", title="unsafe rate on harmful queries (95% CI)",
                axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
        x2="unsafe_hi:Q",
    )
    point = base.mark_point(filled=True, size=50).encode(
        x="unsafe_rate:Q",
        tooltip=["model", "category", "unsafe_k", "n_harmful_scored",
                 alt.Tooltip("unsafe_rate:Q", format=".0%")],
    )
    return (rule + point).properties(width=380, height=alt.Step(12),
                                     title="Unsafe compliance by category")


def refusal_tradeoff(summary: pl.DataFrame) -> alt.LayerChart:
    """Over-refusal on benign twins (x) against unsafe rate on harmful queries (y), per model.

    Args:
        summary: ``metrics.safety_summary(results, by=("model",))``.
    """
    base = alt.Chart(summary).encode(color=alt.Color("model:N", title="model"))
    pct = alt.Axis(format="%")
    x = alt.X("over_refusal_rate:Q", title="over-refusal on benign twins", axis=pct,
              scale=alt.Scale(domain=[0, 1]))
    y = alt.Y("unsafe_rate:Q", title="unsafe rate on harmful queries", axis=pct,
              scale=alt.Scale(domain=[0, 1]))
    points = base.mark_point(filled=True, size=90).encode(
        x=x, y=y, tooltip=["model", "n_harmful_scored", "n_benign_scored",
                           alt.Tooltip("unsafe_rate:Q", format=".0%"),
                           alt.Tooltip("over_refusal_rate:Q", format=".0%")])
    xerr = base.mark_rule().encode(x="over_refusal_lo:Q", x2="over_refusal_hi:Q", y="unsafe_rate:Q")
    yerr = base.mark_rule().encode(y="unsafe_lo:Q", y2="unsafe_hi:Q", x="over_refusal_rate:Q")
    labels = base.mark_text(align="left", dx=8, dy=-8).encode(x=x, y=y, text="model:N")
    return (xerr + yerr + points + labels).properties(
        width=360, height=300, title="Safety vs helpfulness (95% CIs); lower-left is better")


def judge_agreement(summary: pl.DataFrame, anchors: pl.DataFrame | None = None) -> alt.LayerChart:
    """Binary accuracy of each judge against human labels per source model, with 95% CIs;
    published baselines as black symbols.

    Args:
        summary: ``judge_eval.evaluate(...).summary``.
        anchors: Optional ``source_model, anchor, binary_accuracy`` rows (e.g.
            ``judge_eval.XSTEST_ANCHORS``).
    """
    y = alt.Y("source_model:N", title=None)
    x = alt.X("binary_accuracy:Q", title="binary accuracy vs human labels (95% CI)",
              axis=alt.Axis(format="%"), scale=alt.Scale(zero=False))
    base = alt.Chart(summary).encode(y=y, yOffset="judge:N", color=alt.Color("judge:N"))
    layers = base.mark_rule().encode(x=x, x2="binary_hi:Q") + base.mark_rule().encode(
        x="binary_lo:Q", x2="binary_accuracy:Q") + base.mark_point(filled=True, size=60).encode(
        x=x, tooltip=["judge", "source_model", "n", "unscored",
                      alt.Tooltip("binary_accuracy:Q", format=".3f"),
                      alt.Tooltip("kappa:Q", format=".3f")])
    if anchors is not None:
        layers += alt.Chart(anchors).mark_point(color="black", size=70, filled=True).encode(
            y=y, x="binary_accuracy:Q", shape=alt.Shape("anchor:N", title="published baseline"),
            tooltip=["anchor", "source_model", "binary_accuracy"])
    return layers.properties(width=380, height=alt.Step(14),
                             title="Judges against human labels, with published baselines")


def guard_curves(sweep: pl.DataFrame) -> alt.Chart:
    """Catch rate against false-block rate per guard, over all thresholds (ROC curves).

    Args:
        sweep: ``guard.evaluate(...)["sweep"]``.
    """
    return (
        alt.Chart(sweep).mark_line(point=True, interpolate="step-after")
        .encode(x=alt.X("false_block:Q", title="false blocks on benign", scale=alt.Scale(
                    domain=[0, 1])),
                y=alt.Y("catch:Q", title="harmful caught", scale=alt.Scale(domain=[0, 1])),
                color="guard:N", tooltip=["guard", "threshold", "catch", "false_block"])
        .properties(width=320, height=280, title="Guard catch vs false blocks")
    )


def guard_variants(summary: pl.DataFrame) -> alt.LayerChart:
    """Catch rate per prompt variant and guard, with Wilson 95% intervals.

    Args:
        summary: ``guard.evaluate(..., variants=True)["summary"]``.
    """
    base = alt.Chart(summary).encode(
        y=alt.Y("variant:N", title=None), color="guard:N", yOffset="guard:N")
    return (base.mark_point(filled=True).encode(x=alt.X("catch:Q", title="harmful caught",
                                                        scale=alt.Scale(domain=[0, 1])))
            + base.mark_rule().encode(x="catch_lo:Q", x2="catch_hi:Q")
            ).properties(width=320, title="Catch rate by prompt variant")


def loss_curve(losses: pl.DataFrame) -> alt.LayerChart:
    """Training loss per optimizer step, and its running mean (a fine-tune's card).

    Args:
        losses: Columns ``step``, ``loss`` and ``smoothed`` (see ``adapter_card``).
    """
    base = alt.Chart(losses).encode(x=alt.X("step:Q", title="optimizer step"))
    y = alt.Scale(zero=False)
    raw = base.mark_line(opacity=0.35, point=losses.height <= 60).encode(
        y=alt.Y("loss:Q", title="loss on answer tokens", scale=y),
        tooltip=["step", alt.Tooltip("loss:Q", format=".3f")])
    smooth = base.mark_line(strokeWidth=2.5).encode(y=alt.Y("smoothed:Q", scale=y))
    return (raw + smooth).properties(
        width=360, height=160, title="Training loss per step (line: running mean)")


def save_chart(chart: alt.TopLevelMixin, directory: str | Path, stem: str) -> list[Path]:
    """Save a chart as PNG (2x scale) and SVG, offline through vl-convert.

    Returns:
        The two paths written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    png, svg = directory / f"{stem}.png", directory / f"{stem}.svg"
    chart.save(png, scale_factor=2)
    chart.save(svg)
    return [png, svg]
