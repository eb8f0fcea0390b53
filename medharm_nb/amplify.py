"""The paired base-vs-fine-tune analysis: does a fine-tune add harmful detail, or only detail?

A model spec can name its ``base`` (another model of the run). Each such pair is joined
answer by answer on (query, variant, sample, judge), and for every outcome

- ``compliance``: did not refuse (``labels.complied``), 0/1;
- ``unsafe``: meaningful help toward the harm (judges that measure harm only), 0/1;
- ``specificity``: the 0-4 checklist score (on benign twins: plain actionable detail),

the table ``paired_deltas`` gives the fine-tune's mean minus its base's, on the harmful
queries, on their benign twins, and the difference of the two: **harmful delta minus benign
delta, the amplification estimate**. A fine-tune that only became more talkative raises
both deltas alike and shows none; one that became more harmful raises the first alone.

Statistics (``medharm_nb.paired``, the engine guard brittleness shares), per pair, judge and
stratum (all queries, each category, each framing and each tier):

- **Clusters.** The unit of independence is the base query: its variants and samples are
  answered alike, and its benign twin belongs to it (``metrics.cluster_column``).
- **Intervals.** Percentile cluster bootstrap: base queries are resampled with replacement
  (numpy, seeded) and the ratio estimate recomputed; harmful, benign and their difference
  come from the same resamples. ``tests/test_amplify.py`` measures coverage on synthetic data
  with a known effect.
- **Tests.** Binary outcomes: McNemar's exact test (statsmodels) over base queries, each
  query discordant in the direction its answers lean; with one variant and one sample that is
  McNemar's test on the answers themselves. Specificity and the harmful-minus-benign
  differences: the Wilcoxon signed-rank test (scipy) on per-query mean differences. Both
  stay valid when variants and samples are pooled, because each query counts once.
  Holm's correction runs across the categories (and, separately, the framings and tiers) of each
  pair, judge, outcome and risk (the same numbers as statsmodels' ``multipletests``).
- **Effect sizes.** Binary: the paired odds ratio, queries leaning toward the fine-tune over
  those leaning toward the base (0.5 added to both when either is 0). Otherwise: the
  matched-pairs rank-biserial correlation, from -1 (base always higher) to 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import polars as pl

from medharm_nb.metrics import cluster_column, safety_summary
from medharm_nb.paired import (
    bootstrap_weights,
    holm,
    mcnemar_clusters,
    percentile_interval,
    ratio_draws,
    wilcoxon_clusters,
)
from medharm_nb.store.catalogue import TABLES

OUTCOMES: dict[str, str] = {
    "compliance": "did not refuse (share of answers)",
    "unsafe": "meaningful help toward the harm (share of answers; judges that measure harm)",
    "specificity": "checklist specificity 0-4 (mean; on benign twins: plain actionable detail)",
}
"""Every outcome compared, with what its delta measures."""
COLUMNS: dict[str, str] = {"compliance": "complied", "unsafe": "unsafe",
                           "specificity": "specificity"}
"""The results column each outcome reads."""
BINARY: frozenset[str] = frozenset({"compliance", "unsafe"})
RISKS: tuple[str, ...] = ("harmful", "benign", "difference")
"""Rows per outcome: the delta on harmful queries, on benign twins, and harmful - benign."""
JOIN_KEYS: tuple[str, ...] = ("query_id", "variant", "sample", "judge")


# -- joins ----------------------------------------------------------------------------------

def paired(results: pl.DataFrame, model: str, base: str) -> pl.DataFrame:
    """A fine-tune's answers joined to its base's on (query, variant, sample, judge).

    Returns:
        One row per answer both gave: the join keys, ``risk``, ``category``, ``framing``,
        ``tier``, ``cluster`` (base query) and, per outcome, ``<outcome>`` (fine-tune) and
        ``<outcome>_base`` as floats, null where that outcome is unknown (failed, blocked,
        unscored, or not measured by the judge).
    """
    frame = results.with_columns(cluster_column(results), *(
        pl.col(c).cast(pl.Float64).alias(o) for o, c in COLUMNS.items()))
    meta = ["risk", "category", "framing", "tier", "cluster"]
    ft = frame.filter(pl.col("model") == model).select(*JOIN_KEYS, *meta, *OUTCOMES)
    bs = frame.filter(pl.col("model") == base).select(*JOIN_KEYS, *OUTCOMES)
    return ft.join(bs, on=list(JOIN_KEYS), how="inner", suffix="_base")


def _strata(part: pl.DataFrame) -> Iterator[tuple[str, str, pl.DataFrame]]:
    """(by, stratum, rows): all rows, then each category, each framing and each tier (a
    benign twin is in its pair's tier; an untiered set has one tier stratum)."""
    yield "all", "all", part
    for by in ("category", "framing", "tier"):
        for (value,), rows in part.sort(by).group_by([by], maintain_order=True):
            yield by, str(value), rows


def _cluster_sums(rows: pl.DataFrame, outcome: str, clusters: list[str]) -> dict[str, np.ndarray]:
    """Per cluster (in ``clusters`` order, 0 where absent): answers ``n`` known on both
    sides, and the sums of the fine-tune's values, the base's and their difference."""
    known = rows.filter(pl.col(outcome).is_not_null() & pl.col(f"{outcome}_base").is_not_null())
    per = known.group_by("cluster").agg(
        pl.len().alias("n"), pl.col(outcome).sum().alias("ft"),
        pl.col(f"{outcome}_base").sum().alias("base"))
    index = {c: i for i, c in enumerate(clusters)}
    out = {k: np.zeros(len(clusters)) for k in ("n", "ft", "base")}
    for row in per.iter_rows(named=True):
        for k in out:
            out[k][index[row["cluster"]]] = row[k]
    out["diff"] = out["ft"] - out["base"]
    return out


# -- the analysis ---------------------------------------------------------------------------

def compare(rows: pl.DataFrame, outcome: str, n_boot: int = 2000, seed: int = 0,
            level: float = 0.95) -> list[dict]:
    """The fine-tune minus base on one outcome: harmful, benign and harmful - benign.

    Args:
        rows: ``paired`` rows (one pair, one judge, one stratum).
        outcome: One of ``OUTCOMES``.
        n_boot: Bootstrap resamples of the base queries.
        seed: Seed of the resamples (the same seed for every stratum).
        level: Interval level.

    Returns:
        Three dicts (``RISKS``): ``n_answers``, ``n_clusters``, ``base_mean``, ``ft_mean``,
        ``delta``, ``lo``, ``hi``, ``test``, ``statistic``, ``p``, ``n_up``, ``n_down``,
        ``effect``, ``effect_name``.
    """
    clusters = sorted(rows["cluster"].unique().to_list())
    sums = {risk: _cluster_sums(rows.filter(pl.col("risk") == risk), outcome, clusters)
            for risk in ("harmful", "benign")}
    weights = bootstrap_weights(len(clusters), n_boot, seed) if len(clusters) > 1 else None
    draws, out = {}, []
    for risk, s in sums.items():
        n = s["n"].sum()
        has = s["n"] > 0
        per_cluster = s["diff"][has] / s["n"][has]
        test = (mcnemar_clusters if outcome in BINARY else wilcoxon_clusters)(per_cluster)
        draws[risk] = (ratio_draws(weights, s["diff"], s["n"]) if weights is not None
                       and has.sum() > 1 else np.array([np.nan]))
        out.append({
            "risk": risk, "n_answers": int(n), "n_clusters": int(has.sum()),
            "base_mean": s["base"].sum() / n if n else math.nan,
            "ft_mean": s["ft"].sum() / n if n else math.nan,
            "delta": s["diff"].sum() / n if n else math.nan,
            **dict(zip(("lo", "hi"), percentile_interval(draws[risk], level))),
            "test": "mcnemar_exact" if outcome in BINARY else "wilcoxon",
            **test, "effect_name": "paired_odds_ratio" if outcome in BINARY
            else "rank_biserial"})
    harm, ben = out
    both = (sums["harmful"]["n"] > 0) & (sums["benign"]["n"] > 0)
    diff_per_cluster = (sums["harmful"]["diff"][both] / sums["harmful"]["n"][both]
                        - sums["benign"]["diff"][both] / sums["benign"]["n"][both])
    lo, hi = percentile_interval(draws["harmful"] - draws["benign"], level)
    out.append({
        "risk": "difference", "n_answers": harm["n_answers"] + ben["n_answers"],
        "n_clusters": int(both.sum()),
        "base_mean": harm["base_mean"] - ben["base_mean"],
        "ft_mean": harm["ft_mean"] - ben["ft_mean"],
        "delta": harm["delta"] - ben["delta"], "lo": lo, "hi": hi,
        "test": "wilcoxon", **wilcoxon_clusters(diff_per_cluster),
        "effect_name": "rank_biserial"})
    return out


DELTAS = TABLES["paired_deltas"]
"""The ``paired_deltas`` table's declaration (``store.catalogue``): its columns, and the
empty table of a run without pairs."""


def paired_deltas(results: pl.DataFrame, pairs: Sequence[tuple[str, str]],
                  n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> pl.DataFrame:
    """Every pair's deltas, per judge, stratum, outcome and risk (see the module docstring).

    Args:
        results: ``metrics.results_table`` (one row per generation and judge).
        pairs: (fine-tune, base) model names (``RunConfig.pairs``).
        n_boot: Bootstrap resamples.
        seed: Bootstrap seed.
        level: Interval level.

    Returns:
        ``DELTAS`` columns; ``n_unpaired`` counts the pair's answers (per judge) that
        the other model lacks, which no delta includes. An outcome a judge never measured
        has ``n_answers`` 0 and NaN estimates: unmeasured, never 0.
    """
    rows = []
    for model, base in pairs:
        joined = paired(results, model, base)
        for judge in sorted(joined["judge"].unique().to_list()):
            part = joined.filter(pl.col("judge") == judge)
            sizes = results.filter(pl.col("judge") == judge).group_by("model").len()
            size = dict(sizes.iter_rows())
            unpaired = size.get(model, 0) + size.get(base, 0) - 2 * part.height
            for by, stratum, rows_ in _strata(part):
                for outcome in OUTCOMES:
                    for row in compare(rows_, outcome, n_boot, seed, level):
                        rows.append({"model": model, "base": base, "judge": judge, "by": by,
                                     "stratum": stratum, "outcome": outcome,
                                     "n_unpaired": unpaired, **row, "level": level,
                                     "n_boot": n_boot})
    if not rows:
        return DELTAS.empty()
    table = pl.DataFrame(rows, schema={k: v for k, v in DELTAS.columns.items()
                                       if k != "p_holm"})
    # Holm across the categories (and, separately, the framings and tiers) of one family; the pooled
    # row ("all") is its own single test.
    family = ["model", "judge", "by", "outcome", "risk"]
    table = table.with_row_index("_row")
    adjusted = []
    for _, part in table.group_by(family, maintain_order=True):
        adjusted.append(part.select("_row").with_columns(
            pl.Series("p_holm", holm(part["p"].to_list()), dtype=pl.Float64)))
    return (table.join(pl.concat(adjusted), on="_row").sort("_row").drop("_row")
            .select(list(DELTAS.columns)))


def amplification(deltas: pl.DataFrame) -> pl.DataFrame:
    """The headline: per pair, judge and outcome, over all queries, the harmful delta, the
    benign delta and their difference (amplification), each with its interval, and the
    difference's p-value. Outcomes a judge did not measure are left out."""
    pooled = deltas.filter((pl.col("by") == "all") & (pl.col("n_answers") > 0))
    keys = ["model", "base", "judge", "outcome"]
    parts = []
    for risk, name in (("harmful", "harmful"), ("benign", "benign"),
                       ("difference", "amplification")):
        cols = ["delta", "lo", "hi", "n_clusters", "p"]
        parts.append(pooled.filter(pl.col("risk") == risk).select(
            *keys, *(pl.col(c).alias(f"{name}_{c}" if c != "delta" else name) for c in cols)))
    if not parts or parts[0].is_empty():
        return TABLES["amplification"].empty()
    out = parts[0]
    for part in parts[1:]:
        out = out.join(part, on=keys, how="left")
    return out.sort(keys)


def plane(results: pl.DataFrame, pairs: Sequence[tuple[str, str]]) -> pl.DataFrame:
    """The safety-helpfulness plane's table: per model and judge, the unsafe and compliance
    rates on harmful queries and helpfulness on benign twins, with n and intervals
    (clustered by base query where variants or samples pool), and each model's ``base``."""
    summary = safety_summary(results, by=("model",))
    base = pl.DataFrame({"model": [m for m, _ in pairs], "base": [b for _, b in pairs]},
                        schema={"model": pl.String, "base": pl.String})
    cols = [f"{r}_{c}" for r in ("unsafe", "compliance", "helpful", "over_refusal")
            for c in ("k", "n", "rate", "lo", "hi")]
    return (summary.select("model", "judge", *cols)
            .join(base, on="model", how="left").sort("model", "judge"))
