"""The paired-comparison engine: one model's answers against another's (a fine-tune against
its base, in ``amplify``) or one guard's verdicts on two forms of the same queries (direct
against a prompt variant, in ``guard.evaluate``'s brittleness), question by question.

- **Clusters.** The unit of independence is a cluster (a base query with its variants,
  samples and benign twin); every piece here takes per-cluster values.
- **Intervals.** Percentile cluster bootstrap: clusters are resampled with replacement
  (numpy, seeded; ``bootstrap_weights``) and the pooled mean recomputed (``ratio_draws``,
  ``cluster_interval``).
- **Tests.** McNemar's exact test (statsmodels) for binary outcomes, each cluster discordant
  in the direction its answers lean; the Wilcoxon signed-rank test (scipy) for scores and
  differences of differences. Each cluster counts once.
- **Many tests.** Holm's step-down adjustment across a family (``holm``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def bootstrap_weights(n_clusters: int, n_boot: int, seed: int) -> np.ndarray:
    """How often each cluster is drawn in each of ``n_boot`` resamples with replacement:
    an ``(n_boot, n_clusters)`` integer matrix (multinomial counts, seeded).

    Written here rather than with ``scipy.stats.bootstrap``: that resamples observations,
    while these intervals resample whole base queries and pool ratios over their answers
    (one weight matrix serves every outcome, stratum and pair at once)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_boot)


def ratio_draws(weights: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The pooled mean (sum over answers / answers) in every resample; NaN where a resample
    drew no answer of this kind."""
    num, den = weights @ sums, weights @ counts
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def percentile_interval(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` interval of the bootstrap draws (NaN draws ignored)."""
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(draws, [tail, 100 - tail])
    return float(lo), float(hi)


def mcnemar_clusters(per_cluster: Sequence[float]) -> dict[str, float]:
    """McNemar's exact test (statsmodels) over clusters: a cluster whose mean difference is
    above 0 leans to the first side (the fine-tune; a guard's direct form), below 0 to the
    second (the base; the variant), at 0 is concordant.

    Returns:
        ``statistic`` (the smaller discordant count), ``p``, ``n_up``, ``n_down`` and
        ``effect`` (paired odds ratio n_up / n_down, 0.5 added to both if either is 0).
    """
    from statsmodels.stats.contingency_tables import mcnemar

    d = np.asarray(per_cluster, dtype=float)
    up, down = int((d > 0).sum()), int((d < 0).sum())
    if d.size == 0:
        return {"statistic": math.nan, "p": math.nan, "n_up": 0, "n_down": 0,
                "effect": math.nan}
    if up + down == 0:
        return {"statistic": 0.0, "p": 1.0, "n_up": up, "n_down": down, "effect": 1.0}
    result = mcnemar([[0, down], [up, 0]], exact=True)
    odds = up / down if up and down else (up + 0.5) / (down + 0.5)
    return {"statistic": float(result.statistic), "p": float(result.pvalue), "n_up": up,
            "n_down": down, "effect": odds}


def wilcoxon_clusters(per_cluster: Sequence[float]) -> dict[str, float]:
    """The Wilcoxon signed-rank test (scipy) on per-cluster mean differences, zeros dropped
    (``zero_method="wilcox"``): the exact null distribution where the non-zero differences
    have no ties (and number at most 50), else the normal approximation with scipy's tie
    correction. (Scipy's own choice for tied data, an exhaustive permutation test up to 13
    differences, takes about a second per call.)

    Returns:
        ``statistic``, ``p``, ``n_up``, ``n_down`` and ``effect``: the matched-pairs
        rank-biserial correlation (R+ - R-) / (R+ + R-) over the non-zero differences.
    """
    from scipy.stats import rankdata, wilcoxon

    d = np.asarray(per_cluster, dtype=float)
    up, down = int((d > 0).sum()), int((d < 0).sum())
    if d.size == 0:
        return {"statistic": math.nan, "p": math.nan, "n_up": 0, "n_down": 0,
                "effect": math.nan}
    if up + down == 0:  # every cluster ties: nothing to rank (scipy would warn and say 1)
        return {"statistic": 0.0, "p": 1.0, "n_up": 0, "n_down": 0, "effect": 0.0}
    nonzero = d[d != 0]
    tied = np.unique(np.abs(nonzero)).size < nonzero.size
    result = wilcoxon(d, method="asymptotic" if tied or nonzero.size > 50 else "exact")
    ranks = rankdata(np.abs(nonzero))
    r_plus, r_minus = ranks[nonzero > 0].sum(), ranks[nonzero < 0].sum()
    return {"statistic": float(result.statistic), "p": float(result.pvalue), "n_up": up,
            "n_down": down, "effect": float((r_plus - r_minus) / (r_plus + r_minus))}


def cluster_interval(sums: Sequence[float], counts: Sequence[float], n_boot: int = 2000,
                     seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """The percentile cluster-bootstrap interval of a pooled mean, sum(sums) / sum(counts),
    where cluster ``c`` contributes ``sums[c]`` over ``counts[c]`` answers (one answer per
    cluster: the mean of per-cluster values). A constant difference (no change at all) has a
    zero-width interval; no cluster, (nan, nan)."""
    sums, counts = np.asarray(sums, dtype=float), np.asarray(counts, dtype=float)
    if sums.size == 0:
        return math.nan, math.nan
    weights = bootstrap_weights(sums.size, n_boot, seed)
    return percentile_interval(ratio_draws(weights, sums, counts), level)


def holm(p: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values; NaN stays NaN and is not counted.

    The same numbers as statsmodels' ``multipletests(p, method="holm")`` (the tests check
    it), written out because that function runs a full ``gc.collect()`` on every call: about
    0.2 s each with torch loaded, times dozens of families per run.
    """
    values = np.asarray(p, dtype=float)
    out = np.full(values.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(values))
    if ok.size:
        order = ok[np.argsort(values[ok], kind="stable")]
        scaled = values[order] * np.arange(ok.size, 0, -1)
        out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out.tolist()
