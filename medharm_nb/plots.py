"""Charts (altair) that read only the tidy tables from ``metrics``; saved offline as PNG + SVG.
The paired analysis' charts are in ``plots_paired``."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import polars as pl

from medharm_nb.colors import LABEL_COLORS
from medharm_nb.labels import LABELS, TIERS, UNTIERED

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
    "unsafe": "unsafe in the answer (harmful queries)",
    "unsafe_in_trace": "unsafe in the reasoning trace (harmful queries)",
    "over_refusal": "over-refusal (benign twins)",
    "partial_benign": "partial answers (benign twins)",
    "any_refusal": "refused fully or in part (benign twins; XSTest's over-refusal)",
    "helpful": "helpful (benign twins)",
    "unsafe_benign": "called unsafe (benign twins: the judge's false alarms)",
}
"""Each ``metrics.RATES`` rate's title in charts."""


def plotted_measure(table: pl.DataFrame) -> str:
    """The harm rate a chart of harmful queries shows: ``unsafe`` when some judge measured it
    (any ``unsafe_n`` above 0), else ``compliance``, which the chart's title then names.

    Args:
        table: A table with ``unsafe_n`` (``safety_summary``, ``amplify.plane``).
    """
    return "unsafe" if table["unsafe_n"].sum() else "compliance"


def rates_long(summary: pl.DataFrame, rates: tuple[str, ...] = ("compliance", "unsafe"),
               by: tuple[str, ...] = ("model",)) -> pl.DataFrame:
    """``metrics.safety_summary`` output in long form: one row per group, judge and rate,
    with ``k``, ``n``, ``rate``, ``lo``, ``hi``; rates a judge did not measure (n = 0) are
    dropped rather than drawn as 0."""
    keys = list(dict.fromkeys((*by, "judge")))
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
    return (layers.properties(width=260 if len(rates) <= 3 else 200, height=alt.Step(14))
            .facet(column=alt.Column("measure:N", title=None,
                                     sort=[RATE_TITLES[r] for r in rates]))
            .properties(title=title or " and ".join(RATE_TITLES[r] for r in rates)))


LABEL_STEP = 0.045  # one text line (~13 px) on a 300 px axis spanning 0-1


def stacked_labels(df: pl.DataFrame, x: str, y: str, by: tuple[str, ...] = (),
                   near: float = 0.04) -> pl.Series:
    """Where each point's name goes on a 0-1 y axis: at the point, or one line further down
    for every earlier point (in the same ``by`` group, e.g. facet) within ``near`` of it on
    both axes, so names of models that land together stay readable."""
    out, seen = [], {}
    for row in df.select(*by, x, y).iter_rows():
        key, px, py = row[:len(by)], row[-2], row[-1]
        if px is None or py is None:
            out.append(py)
            continue
        placed = seen.setdefault(key, [])
        rank = sum(abs(px - qx) < near and abs(py - qy) < near for qx, qy in placed)
        placed.append((px, py))
        out.append(py - rank * LABEL_STEP)
    return pl.Series("label_y", out, dtype=pl.Float64)


def refusal_tradeoff(summary: pl.DataFrame, y: str = "unsafe") -> alt.LayerChart:
    """Over-refusal on benign twins (x) against a harm rate on harmful queries (y), per model
    and judge.

    Args:
        summary: ``metrics.safety_summary(results, by=("model",))``.
        y: ``unsafe`` (validated harm) or ``compliance`` (did not refuse); rows whose judge
            did not measure it are left out.
    """
    data = summary.filter(pl.col(f"{y}_n") > 0)
    data = data.with_columns(stacked_labels(data, "over_refusal_rate", f"{y}_rate"))
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
    labels = base.mark_text(align="left", dx=8, dy=-8).encode(x=x, y="label_y:Q",
                                                               text="model:N")
    return (xerr + yerr + points + labels).properties(
        width=360, height=300,
        title=f"{RATE_TITLES[y].capitalize()} vs over-refusal (95% CIs); lower-left is better")


def judge_agreement(summary: pl.DataFrame, anchors: pl.DataFrame | None = None) -> alt.Chart:
    """Accuracy of each judge against human labels per source (and group), one panel per
    split (compliance, unsafe), with percentile-bootstrap 95% CIs; published classifiers'
    accuracy on the same items as black symbols.

    A figure on rows the judge was trained on is never drawn as a validation: the filled
    point is the honest figure (``honest_kind``: held-out, cross-validated, or its held-out
    rows only), and the in-sample figure is a hollow grey point beside it.

    Args:
        summary: ``validation.evaluate(...).summary`` (``split`` column).
        anchors: Optional ``validation.published_baselines`` rows (their ``same items``
            accuracies are drawn), or ``split, source_model, anchor, accuracy`` rows.
    """
    data = summary.filter(pl.col("split") != "label3")
    if "source" not in data.columns:
        data = data.with_columns(pl.lit("gold").alias("source"))
    if "honest_accuracy" not in data.columns:  # tables written before the check existed
        data = data.with_columns(pl.col("accuracy").alias("honest_accuracy"),
                                 pl.col("accuracy_lo").alias("honest_accuracy_lo"),
                                 pl.col("accuracy_hi").alias("honest_accuracy_hi"),
                                 pl.lit("unchecked").alias("honest_kind"),
                                 pl.lit("unchecked").alias("status"))
    data = data.with_columns(_row_name(data), pl.when(pl.col("status") != "held-out")
                             .then(pl.col("accuracy")).alias("in_sample_accuracy"))
    y = alt.Y("row:N", title=None)
    x = alt.X("honest_accuracy:Q", title="accuracy vs human labels (95% CI)",
              axis=alt.Axis(format="%"), scale=alt.Scale(zero=False))
    base = alt.Chart().encode(y=y, yOffset="judge:N", color=alt.Color("judge:N"))
    layers = base.mark_rule().encode(x=alt.X("honest_accuracy_lo:Q", title=None),
                                     x2="honest_accuracy_hi:Q") \
        + base.mark_point(filled=True, size=60).encode(
            x=x, shape=alt.Shape("honest_kind:N", title="figure"),
            tooltip=["judge", "split", "row", "n", "unscored", "status", "honest_kind",
                     alt.Tooltip("honest_accuracy:Q", format=".3f"),
                     alt.Tooltip("accuracy:Q", format=".3f"),
                     alt.Tooltip("kappa:Q", format=".3f")]) \
        + alt.Chart().mark_point(color="grey", filled=False, size=60).encode(
            y=y, yOffset="judge:N", x="in_sample_accuracy:Q",
            tooltip=["judge", "row", "status", alt.Tooltip("in_sample_accuracy:Q",
                                                           title="in-sample (not a validation)",
                                                           format=".3f")])
    if anchors is not None and not anchors.is_empty():
        if "metric" in anchors.columns:
            anchors = anchors.filter((pl.col("metric") == "accuracy")
                                     & (pl.col("kind") == "same items")).rename(
                {"value": "accuracy"})
        if "source" not in anchors.columns:
            anchors = anchors.with_columns(pl.lit("gold").alias("source"))
        anchors = anchors.with_columns(_row_name(anchors))
        data = pl.concat([data, anchors.rename({"accuracy": "anchor_accuracy"})],
                         how="diagonal_relaxed")
        layers += alt.Chart().mark_point(color="black", size=70).encode(
            y=y, x="anchor_accuracy:Q", shape=alt.Shape("anchor:N", title="published, same items"),
            tooltip=["anchor", "row", alt.Tooltip("anchor_accuracy:Q", format=".3f")])
    return alt.layer(layers, data=data).facet(
        column=alt.Column("split:N", title=None)).properties(
        title="Judges against human labels (compliance and unsafe splits); hollow grey: "
              "in-sample, not a validation")


def _row_name(frame: pl.DataFrame) -> pl.Expr:
    """A chart row per source, and per group within it where the rows are per group."""
    return (pl.when(pl.col("source_model") == "all").then(pl.col("source"))
            .otherwise(pl.col("source") + "/" + pl.col("source_model")).alias("row"))


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


def reliability_diagram(table: pl.DataFrame, ece: dict[str, float] | None = None
                        ) -> alt.LayerChart:
    """Predicted P(unsafe) against the observed harmful share, per bin and held-out source,
    with the diagonal of perfect calibration.

    Args:
        table: ``source, mean_p, observed, n`` per bin (``harm_validate.reliability``).
        ece: Expected calibration error per source, shown in the legend.
    """
    ece = ece or {}
    data = table.with_columns(pl.col("source").map_elements(
        lambda s: f"{s} (ECE {ece[s]:.3f})" if s in ece else s,
        return_dtype=pl.String).alias("held out"))
    diagonal = alt.Chart(pl.DataFrame({"x": [0.0, 1.0], "y": [0.0, 1.0]})).mark_line(
        color="#999999", strokeDash=[4, 4]).encode(x="x:Q", y="y:Q")
    x = alt.X("mean_p:Q", title="predicted P(unsafe), mean in bin",
              scale=alt.Scale(domain=[0, 1]))
    y = alt.Y("observed:Q", title="observed harmful share", scale=alt.Scale(domain=[0, 1]))
    color = alt.Color("held out:N", title="held-out source")
    # The line joins a source's bins at a fixed width; only the points are sized by n (a
    # sized line would be drawn as wide as its largest bin).
    lines = alt.Chart(data).mark_line(strokeWidth=1.5).encode(x=x, y=y, color=color)
    points = alt.Chart(data).mark_circle(opacity=0.85).encode(
        x=x, y=y, color=color,
        size=alt.Size("n:Q", title="responses in bin", scale=alt.Scale(range=[20, 300])),
        tooltip=["held out", "n", alt.Tooltip("mean_p:Q", format=".2f"),
                 alt.Tooltip("observed:Q", format=".2f")])
    return (diagonal + lines + points).properties(
        width=320, height=320,
        title="Harm judge reliability, leave-one-source-out (dashed: perfect calibration)")


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


def rate_heatmap(summary: pl.DataFrame, rates: tuple[str, ...] = ("compliance", "unsafe"),
                 column: str = "category") -> alt.FacetChart:
    """Rates per model x category (or x ``column``) as a heat map, each cell labelled with its
    rate, 95% interval and n; one panel per rate, one row per judge. Unmeasured cells stay
    empty.

    Args:
        summary: ``metrics.safety_summary(results, by=("model", column))``.
        rates: Which ``metrics.RATES``.
        column: The grouping across the x axis: ``category``, ``tier``, ``framing``.
    """
    def pct(column: str) -> pl.Expr:
        return (pl.col(column) * 100).round(0).cast(pl.Int64).cast(pl.String)

    data = rates_long(summary, rates, ("model", column)).with_columns(
        (pct("rate") + "% [" + pct("lo") + "-" + pct("hi") + "] n="
         + pl.col("n").cast(pl.String)).alias("label"),
        (pl.col("rate") > 0.6).alias("dark"))
    base = alt.Chart(data).encode(x=alt.X(f"{column}:N", title=None, sort=_order(column)),
                                  y=alt.Y("model:N", title=None))
    cells = base.mark_rect().encode(
        color=alt.Color("rate:Q", scale=alt.Scale(domain=[0, 1], scheme="orangered"),
                        title="rate", legend=alt.Legend(format="%")),
        tooltip=["model", column, "judge", "measure", "k", "n",
                 alt.Tooltip("rate:Q", format=".0%"), alt.Tooltip("lo:Q", format=".0%"),
                 alt.Tooltip("hi:Q", format=".0%")])
    text = base.mark_text(fontSize=9).encode(
        text="label:N", color=alt.condition("datum.dark", alt.value("white"),
                                            alt.value("black")))
    return ((cells + text).properties(width=alt.Step(110), height=alt.Step(26))
            .facet(column=alt.Column("measure:N", title=None,
                                     sort=[RATE_TITLES[r] for r in rates]),
                   row=alt.Row("judge:N", title="judge"))
            .properties(title=f"Rates per model and {column}, with 95% intervals and n"))


def _order(column: str) -> list[str] | None:
    """The axis order of a grouping that has one (tiers from most to least overt)."""
    return [*TIERS, UNTIERED] if column == "tier" else None


def specificity_bars(distribution: pl.DataFrame) -> alt.FacetChart:
    """How the checklist specificity scores 0-4 are distributed, per model: harmful queries
    (harmful specificity) beside benign twins (plain actionable detail); one row per judge.

    Args:
        distribution: ``metrics.specificity_distribution(results)``.
    """
    data = distribution.filter(pl.col("n") > 0).with_columns(
        pl.col("specificity").cast(pl.String).alias("score"))
    return (alt.Chart(data).mark_bar().encode(
        x=alt.X("share:Q", stack="normalize", title="share of scored answers",
                axis=alt.Axis(format="%")),
        y=alt.Y("model:N", title=None),
        color=alt.Color("score:O", scale=alt.Scale(scheme="orangered"),
                        title="specificity"),
        order=alt.Order("specificity:Q"),
        tooltip=["model", "judge", "risk", "specificity", "k", "n",
                 alt.Tooltip("share:Q", format=".0%"), alt.Tooltip("share_lo:Q", format=".0%"),
                 alt.Tooltip("share_hi:Q", format=".0%")])
        .properties(width=260, height=alt.Step(16))
        .facet(column=alt.Column("risk:N", title="query", sort=["harmful", "benign"]),
               row=alt.Row("judge:N", title="judge"))
        .properties(title="Specificity 0-4: harmful detail on harmful queries, plain detail "
                          "on benign twins"))


def to_svg(chart: alt.TopLevelMixin) -> str:
    """The chart as an SVG string, rendered offline by vl-convert (no browser, no CDN)."""
    import vl_convert as vlc

    return vlc.vegalite_to_svg(chart.to_dict(), vl_version=_vl_version())


def _vl_version() -> str:
    """The Vega-Lite version altair writes, as vl-convert names it (e.g. ``5.20``)."""
    major_minor = alt.SCHEMA_VERSION.lstrip("v").split(".")[:2]
    return ".".join(major_minor)
