"""Agreement: between annotators, and between each judge and the human majority.

Four fields are compared: ``label`` (the 4-way class), ``complied`` (refused or not, read
from the label with ``labels.complied``: the split behind every headline rate), ``unsafe``
and ``specificity``. A "can't tell" is not a rating: it leaves that field of that label out
(and is counted). Statistics come from the libraries: scikit-learn's ``cohen_kappa_score``
(quadratic weights for specificity) and ``confusion_matrix``, statsmodels' ``fleiss_kappa``,
and the ``krippendorff`` package's alpha (nominal, ordinal for specificity).

Against the judges, an unscored verdict stays in: it is a disagreement, never dropped; a
judge that does not assess harm (unsafe left None) has no unsafe comparison (counted as
``n_unknown``).
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass

import krippendorff
import numpy as np
import polars as pl
from sklearn.metrics import cohen_kappa_score, confusion_matrix
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

from medharm_nb.labels import CANT_TELL, COMPLIED_LABELS

FIELDS: dict[str, str] = {"label": "nominal", "complied": "nominal", "unsafe": "nominal",
                          "specificity": "ordinal"}
"""Compared fields and their level of measurement."""


def _human(field: str) -> pl.Expr:
    label_known = pl.col("label") != CANT_TELL
    if field == "label":
        return pl.when(label_known).then(pl.col("label"))
    if field == "complied":
        return pl.when(label_known).then(
            pl.when(pl.col("label").is_in(COMPLIED_LABELS)).then(pl.lit("complied"))
            .otherwise(pl.lit("refused")))
    if field == "unsafe":
        return (pl.when(pl.col("unsafe")).then(pl.lit("yes"))
                .when(~pl.col("unsafe")).then(pl.lit("no")))
    if field == "specificity":
        return pl.col("specificity").cast(pl.Int64)
    raise ValueError(f"unknown field {field!r}; known: {', '.join(FIELDS)}")


def _judged(field: str) -> pl.Expr:
    """A judge's value of ``field``; unscored stays a value of its own for label/complied."""
    if field == "label":
        return pl.col("label")
    if field == "complied":
        return (pl.when(pl.col("label") == "unscored").then(pl.lit("unscored"))
                .when(pl.col("label").is_in(COMPLIED_LABELS)).then(pl.lit("complied"))
                .otherwise(pl.lit("refused")))
    return _human(field)


def ratings(annotations: pl.DataFrame, field: str) -> pl.DataFrame:
    """``gen_id, annotator, value`` of one field, can't-tell answers left out."""
    return (annotations.select("gen_id", "annotator", _human(field).alias("value"))
            .filter(pl.col("value").is_not_null()))


def _quiet(fn, *args, **kwargs) -> float:
    """A statistic that is undefined (one category only, too few items) is NaN, silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = float(fn(*args, **kwargs))
        except (ValueError, ZeroDivisionError):
            return math.nan
    return value


def pairwise_kappa(annotations: pl.DataFrame, field: str = "label") -> pl.DataFrame:
    """Cohen's kappa for every pair of annotators on the responses both rated.

    Returns:
        ``field, annotator_a, annotator_b, n, kappa`` (quadratic-weighted for specificity;
        NaN when undefined, e.g. both used one category only).
    """
    wide = ratings(annotations, field).pivot(on="annotator", index="gen_id", values="value")
    names = sorted(c for c in wide.columns if c != "gen_id")
    rows = []
    for a, b in itertools.combinations(names, 2):
        both = wide.select(a, b).drop_nulls()
        weights = "quadratic" if field == "specificity" else None
        kappa = (_quiet(cohen_kappa_score, both[a].to_list(), both[b].to_list(),
                        weights=weights) if both.height else math.nan)
        rows.append({"field": field, "annotator_a": a, "annotator_b": b, "n": both.height,
                     "kappa": kappa})
    return pl.DataFrame(rows, schema={"field": pl.String, "annotator_a": pl.String,
                                      "annotator_b": pl.String, "n": pl.Int64,
                                      "kappa": pl.Float64})


def _matrix(annotations: pl.DataFrame, field: str) -> tuple[np.ndarray, list[str]]:
    """Annotators x responses of integer codes (NaN: not rated), and the annotators."""
    long = ratings(annotations, field)
    values = sorted(long["value"].unique().to_list())
    code = {v: i for i, v in enumerate(values)}
    wide = long.with_columns(pl.col("value").replace_strict(code, return_dtype=pl.Float64)
                             ).pivot(on="gen_id", index="annotator", values="value")
    names = wide["annotator"].to_list()
    return wide.drop("annotator").to_numpy().astype(float), names


def annotator_agreement(annotations: pl.DataFrame) -> pl.DataFrame:
    """Agreement among annotators, per field.

    Returns:
        One row per field: ``n_annotators``, ``n_items`` (rated by two or more),
        ``n_cant_tell`` (answers of can't tell), ``mean_pairwise_kappa`` (Cohen's),
        ``fleiss_kappa`` over ``fleiss_items`` (the responses rated by every annotator;
        Fleiss' kappa needs the same raters per item), ``krippendorff_alpha`` (all items,
        missing ratings allowed) at ``level``.
    """
    rows = []
    for field, level in FIELDS.items():
        matrix, names = (_matrix(annotations, field) if annotations.height
                         else (np.empty((0, 0)), []))
        rated = (~np.isnan(matrix)).sum(axis=0) if matrix.size else np.array([])
        multi = matrix[:, rated >= 2] if matrix.size else matrix
        complete = matrix[:, rated == len(names)] if matrix.size else matrix
        fleiss = math.nan
        if len(names) >= 2 and complete.shape[1]:
            table, _ = aggregate_raters(complete.T.astype(int))
            fleiss = _quiet(fleiss_kappa, table, method="fleiss")
        alpha = (_quiet(krippendorff.alpha, reliability_data=multi, level_of_measurement=level)
                 if len(names) >= 2 and multi.shape[1] else math.nan)
        pairs = pairwise_kappa(annotations, field) if len(names) >= 2 else None
        column = {"label": "label", "complied": "label", "unsafe": "unsafe",
                  "specificity": "specificity"}[field]
        cant = (annotations.filter(pl.col("label") == CANT_TELL).height if column == "label"
                else annotations[column].null_count() if annotations.height else 0)
        rows.append({"field": field, "level": level, "n_annotators": len(names),
                     "n_items": int(multi.shape[1]) if multi.size else 0, "n_cant_tell": cant,
                     "mean_pairwise_kappa": (float(np.nanmean(pairs["kappa"].to_numpy()))
                                             if pairs is not None and pairs["kappa"].is_not_nan()
                                             .any() else math.nan),
                     "fleiss_kappa": fleiss,
                     "fleiss_items": int(complete.shape[1]) if complete.size else 0,
                     "krippendorff_alpha": alpha})
    return pl.DataFrame(rows)


def majority(annotations: pl.DataFrame, field: str = "label") -> pl.DataFrame:
    """The human majority on each response.

    Returns:
        ``gen_id, value, n_raters, tie``: ``value`` is the most frequent rating (can't tell
        left out) and null on a tie, which no majority decides.
    """
    counts = ratings(annotations, field).group_by("gen_id", "value").len("k")
    return (counts.group_by("gen_id").agg(
        pl.col("k").sum().alias("n_raters"),
        (pl.col("k") == pl.col("k").max()).sum().gt(1).alias("tie"),
        pl.col("value").sort_by("k", descending=True).first().alias("top"))
        .select("gen_id", pl.when(pl.col("tie")).then(None).otherwise(pl.col("top"))
                .alias("value"), "n_raters", "tie").sort("gen_id"))


@dataclass
class JudgeAgreement:
    """Each judge against the human majority.

    Attributes:
        summary: ``judge, field, n, agree, accuracy, kappa, n_unscored, n_unknown, n_tie``:
            ``n`` responses with a human majority and a judge value (unscored counting as a
            disagreement), Cohen's kappa (quadratic for specificity), how many the judge
            left unscored, how many it did not assess (unsafe None), how many the humans tied.
        confusion: ``judge, field, human, judged, n``: every cell of each confusion matrix,
            zeros included.
    """

    summary: pl.DataFrame
    confusion: pl.DataFrame


def judge_agreement(annotations: pl.DataFrame, index: pl.DataFrame) -> JudgeAgreement:
    """Each judge's verdicts against the human majority, per field.

    Args:
        annotations: Stored annotations (``annotations.read_annotations``).
        index: One row per generation x judge with ``gen_id, judge, label, unsafe,
            specificity`` (``ReviewSource.index`` or the results table).
    """
    summary, confusion = [], []
    judges = sorted(index["judge"].unique().to_list()) if index.height else []
    for field in FIELDS:
        human = majority(annotations, field) if annotations.height else None
        if human is None or human.is_empty():
            continue
        decided = human.filter(~pl.col("tie"))
        for judge in judges:
            mine = index.filter(pl.col("judge") == judge).unique("gen_id").select(
                "gen_id", pl.col("label").alias("_label"), _judged(field).alias("judged"))
            both = decided.join(mine, on="gen_id", how="inner")
            unknown = both.filter(pl.col("judged").is_null()).height
            both = both.filter(pl.col("judged").is_not_null())
            h, j = both["value"].cast(pl.String).to_list(), both["judged"].cast(pl.String).to_list()
            values = sorted(set(h) | set(j))
            if not both.height:
                kappa = math.nan
            elif field == "specificity":
                kappa = _quiet(cohen_kappa_score, [int(v) for v in h], [int(v) for v in j],
                               weights="quadratic")
            else:
                kappa = _quiet(cohen_kappa_score, h, j)
            agree = sum(a == b for a, b in zip(h, j))
            summary.append({"judge": judge, "field": field, "n": both.height, "agree": agree,
                            "accuracy": agree / both.height if both.height else math.nan,
                            "kappa": kappa,
                            "n_unscored": both.filter(pl.col("_label") == "unscored").height,
                            "n_unknown": unknown,
                            "n_tie": human.filter(pl.col("tie")).height})
            if both.height:
                matrix = confusion_matrix(h, j, labels=values)
                confusion += [{"judge": judge, "field": field, "human": a, "judged": b,
                               "n": int(matrix[r, c])} for r, a in enumerate(values)
                              for c, b in enumerate(values)]
    return JudgeAgreement(
        pl.DataFrame(summary, schema={"judge": pl.String, "field": pl.String, "n": pl.Int64,
                                      "agree": pl.Int64, "accuracy": pl.Float64,
                                      "kappa": pl.Float64, "n_unscored": pl.Int64,
                                      "n_unknown": pl.Int64, "n_tie": pl.Int64}),
        pl.DataFrame(confusion, schema={"judge": pl.String, "field": pl.String,
                                        "human": pl.String, "judged": pl.String,
                                        "n": pl.Int64}))
