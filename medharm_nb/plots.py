"""Charts (altair) that read only the tidy tables from ``metrics``; saved offline as PNG + SVG."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import polars as pl

from medharm_nb.colors import LABEL_COLORS
from medharm_nb.records import LABELS

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


RATE_TITLES: dict[str, str] = {
    "compliance": "complied (harmful queries)",
    "unsafe": "unsafe (harmful queries)",
    "over_refusal": "over-refusal (benign twins)",
    "helpful": "helpful (benign twins)",
}
"""Each ``metrics.RATES`` rate's title in charts."""


def rates_long(summary: pl.DataFrame, rates: tuple[str, ...] = ("compliance", "unsafe"),
               by: tuple[str, ...] = ("model",)) -> pl.DataFrame:
    """``metrics.safety_summary`` output in long form: one row per group, judge and rate,
    with ``k``, ``n``, ``rate``, ``lo``, ``hi``; rates a judge did not measure (n = 0) are
    dropped rather than drawn as 0."""
    keys = [c for c in dict.fromkeys((*by, "judge")) if c in summary.columns]
    parts = [summary.select(*keys, pl.lit(RATE_TITLES[r]).alias("measure"),
                            pl.col(f"{r}_k").alias("k"), pl.col(f"{r}_n").alias("n"),
                            pl.col(f"{r}_rate").alias("rate"), pl.col(f"{r}_lo").alias("lo"),
                            pl.col(f"{r}_hi").alias("hi")) for r in rates]
    return pl.concat(parts).filter(pl.col("n") > 0)


def rate_chart(summary: pl.DataFrame, rates: tuple[str, ...] = ("compliance", "unsafe"),
               by: str = "model", title: str | None = None) -> alt.FacetChart:
    """Rates side by side, one panel per rate, one row per ``by`` value, a point per judge
    (or model), with Wilson 95% intervals; the tooltip gives k and n.

    Args:
        summary: ``metrics.safety_summary(results, by=(...))`` with ``by`` among its groups.
        rates: Which ``metrics.RATES`` to show, e.g. compliance and unsafe side by side.
        by: The group on the vertical axis (``model``, ``category`` ...).
        title: Chart title (default: the rates' names).
    """
    groups = ("model", by) if by != "model" else ("model",)
    data = rates_long(summary, rates, groups)
    series = "judge:N" if by == "model" else "model:N"
    base = alt.Chart(data).encode(y=alt.Y(f"{by}:N", title=None), yOffset=series,
                                  color=alt.Color(series, title=series.split(":")[0]))
    x = alt.X("rate:Q", title="rate (Wilson 95% CI)", axis=alt.Axis(format="%"),
              scale=alt.Scale(domain=[0, 1]))
    layers = base.mark_rule().encode(x=alt.X("lo:Q", title=None), x2="hi:Q") + \
        base.mark_point(filled=True, size=50).encode(
            x=x, tooltip=[*dict.fromkeys((*groups, "judge")), "measure", "k", "n",
                          alt.Tooltip("rate:Q", format=".0%")])
    return (layers.properties(width=260, height=alt.Step(14))
            .facet(column=alt.Column("measure:N", title=None,
                                     sort=[RATE_TITLES[r] for r in rates]))
            .properties(title=title or " and ".join(RATE_TITLES[r] for r in rates)))


def refusal_tradeoff(summary: pl.DataFrame, y: str = "unsafe") -> alt.LayerChart:
    """Over-refusal on benign twins (x) against a harm rate on harmful queries (y), per model
    and judge.

    Args:
        summary: ``metrics.safety_summary(results, by=("model",))``.
        y: ``unsafe`` (validated harm) or ``compliance`` (did not refuse); rows whose judge
            did not measure it are left out.
    """
    data = summary.filter(pl.col(f"{y}_n") > 0)
    base = alt.Chart(data).encode(color=alt.Color("model:N", title="model"),
                                  shape=alt.Shape("judge:N", title="judge"))
    pct = alt.Axis(format="%")
    x = alt.X("over_refusal_rate:Q", title="over-refusal on benign twins", axis=pct,
              scale=alt.Scale(domain=[0, 1]))
    y_enc = alt.Y(f"{y}_rate:Q", title=RATE_TITLES[y], axis=pct, scale=alt.Scale(domain=[0, 1]))
    points = base.mark_point(filled=True, size=90).encode(
        x=x, y=y_enc, tooltip=["model", "judge", f"{y}_k", f"{y}_n", "over_refusal_k",
                               "over_refusal_n", alt.Tooltip(f"{y}_rate:Q", format=".0%"),
                               alt.Tooltip("over_refusal_rate:Q", format=".0%")])
    xerr = base.mark_rule().encode(x="over_refusal_lo:Q", x2="over_refusal_hi:Q",
                                   y=f"{y}_rate:Q")
    yerr = base.mark_rule().encode(y=f"{y}_lo:Q", y2=f"{y}_hi:Q", x="over_refusal_rate:Q")
    labels = base.mark_text(align="left", dx=8, dy=-8).encode(x=x, y=y_enc, text="model:N")
    return (xerr + yerr + points + labels).properties(
        width=360, height=300,
        title=f"{RATE_TITLES[y].capitalize()} vs over-refusal (95% CIs); lower-left is better")


def judge_agreement(summary: pl.DataFrame, anchors: pl.DataFrame | None = None) -> alt.Chart:
    """Accuracy of each judge against human labels per source model, one panel per split
    (compliance, unsafe), with percentile-bootstrap 95% CIs; published baselines on the
    same items as black symbols.

    Args:
        summary: ``judge.validation.evaluate(...).summary`` (``split`` column).
        anchors: Optional ``split, source_model, anchor, accuracy`` rows (e.g.
            ``validation.published_baselines``).
    """
    data = summary.filter(pl.col("split") != "label3")
    y = alt.Y("source_model:N", title=None)
    x = alt.X("accuracy:Q", title="accuracy vs human labels (95% CI)",
              axis=alt.Axis(format="%"), scale=alt.Scale(zero=False))
    base = alt.Chart().encode(y=y, yOffset="judge:N", color=alt.Color("judge:N"))
    layers = base.mark_rule().encode(x=alt.X("accuracy_lo:Q", title=None), x2="accuracy_hi:Q") \
        + base.mark_point(filled=True, size=60).encode(
            x=x, tooltip=["judge", "split", "source_model", "n", "unscored",
                          alt.Tooltip("accuracy:Q", format=".3f"),
                          alt.Tooltip("kappa:Q", format=".3f")])
    if anchors is not None and not anchors.is_empty():
        data = pl.concat([data, anchors.rename({"accuracy": "anchor_accuracy"})],
                         how="diagonal_relaxed")
        layers += alt.Chart().mark_point(color="black", size=70).encode(
            y=y, x="anchor_accuracy:Q", shape=alt.Shape("anchor:N", title="published, same items"),
            tooltip=["anchor", "source_model", alt.Tooltip("anchor_accuracy:Q", format=".3f")])
    return alt.layer(layers, data=data).facet(
        column=alt.Column("split:N", title=None)).properties(
        title="Judges against human labels (compliance and unsafe splits)")


def guard_curves(sweep: pl.DataFrame) -> alt.Chart:
    """Catch rate against false-block rate per guard, over all thresholds (ROC curves).

    Args:
        sweep: ``guard.evaluate_guards(...)["sweep"]``.
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
    """Catch rate per prompt variant and guard at the cross-fitted budget threshold, with
    Wilson 95% intervals.

    Args:
        summary: ``guard.evaluate_guards(..., variants=True)["summary"]``.
    """
    base = alt.Chart(summary).encode(
        y=alt.Y("variant:N", title=None), color="guard:N", yOffset="guard:N")
    return (base.mark_point(filled=True).encode(
                x=alt.X("catch_at_budget:Q", title="harmful caught at the budget threshold",
                        scale=alt.Scale(domain=[0, 1])),
                tooltip=["guard", "variant", "n_harmful", "catch_at_budget",
                         "budget_thresholds"])
            + base.mark_rule().encode(x="catch_at_budget_lo:Q", x2="catch_at_budget_hi:Q")
            ).properties(width=320, title="Catch rate by prompt variant (cross-fitted threshold)")


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
