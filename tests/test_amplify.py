"""The paired analysis: joins, tests against scipy/statsmodels, and the statistics' behaviour
on synthetic data with a known effect (coverage, null p-values). All seeded and vectorised;
the simulations take a few seconds."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import synthetic
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from medharm_nb import amplify, paired, store

PAIR = [("ft-model", "base-model")]


# -- joins and tables -----------------------------------------------------------------------

def test_answers_are_paired_on_query_variant_sample_and_judge():
    results = synthetic.results(seed=0, n_clusters=4, n_variants=2)
    dropped = results.filter(~((pl.col("model") == "base-model")
                               & (pl.col("query_id") == "h000::roleplay")))
    joined = amplify.paired(dropped, "ft-model", "base-model")
    assert joined.height == 4 * 2 * 2 - 1  # queries x variants x (harmful, benign), one lost
    assert set(joined.columns) >= {"compliance", "compliance_base", "specificity_base", "cluster"}
    # A benign twin belongs to its harmful twin's cluster, variants included.
    twin = joined.filter(pl.col("query_id") == "b001::roleplay")
    assert twin["cluster"].to_list() == ["h001"]
    deltas = amplify.paired_deltas(dropped, PAIR, n_boot=200)
    assert set(deltas["n_unpaired"]) == {1}


def test_an_outcome_the_judge_does_not_measure_stays_unmeasured_never_zero():
    results = synthetic.results(seed=0, n_clusters=6).with_columns(
        pl.lit(None, dtype=pl.Boolean).alias("unsafe"))
    deltas = amplify.paired_deltas(results, PAIR, n_boot=200)
    unsafe = deltas.filter(pl.col("outcome") == "unsafe")
    assert set(unsafe["n_answers"]) == {0}
    assert all(math.isnan(v) for v in unsafe["delta"])
    assert set(amplify.amplification(deltas)["outcome"]) == {"compliance", "specificity"}


def test_a_run_without_pairs_gives_empty_tables_with_their_columns():
    results = synthetic.results(seed=0, n_clusters=3)
    deltas = amplify.paired_deltas(results, [])
    assert deltas.is_empty() and list(deltas.columns) == list(amplify.DELTAS.columns)
    empty = amplify.amplification(deltas)
    assert empty.is_empty() and empty.schema == store.table("amplification").empty().schema
    plane = amplify.plane(results, [])
    assert plane["base"].null_count() == plane.height


def test_holm_runs_across_categories_within_one_family():
    results = synthetic.results(seed=3, n_clusters=30, delta=0.3)
    deltas = amplify.paired_deltas(results, PAIR, n_boot=200)
    family = deltas.filter((pl.col("by") == "category") & (pl.col("outcome") == "specificity")
                           & (pl.col("risk") == "harmful"))
    assert family.height == 3
    assert family["p_holm"].to_list() == pytest.approx(
        multipletests(family["p"].to_numpy(), method="holm")[1])
    pooled = deltas.filter(pl.col("by") == "all")
    assert pooled["p_holm"].to_list() == pytest.approx(pooled["p"].to_list(), nan_ok=True)
    # The tiers are strata of their own, with their own Holm family; a benign twin counts in
    # its pair's tier, so each tier holds both sides.
    tiers = deltas.filter((pl.col("by") == "tier") & (pl.col("outcome") == "specificity"))
    assert sorted(set(tiers["stratum"])) == ["dual_use", "explicit", "implicit"]
    assert set(tiers["risk"]) >= {"harmful", "benign"}
    harmful = tiers.filter(pl.col("risk") == "harmful")
    assert harmful["p_holm"].to_list() == pytest.approx(
        multipletests(harmful["p"].to_numpy(), method="holm")[1])


# -- agreement with scipy and statsmodels on fixed fixtures ----------------------------------

def test_mcnemar_over_one_answer_per_query_is_mcnemars_exact_test():
    base = [1, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0]
    ft = [1, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1]
    table = [[sum(b == 1 and f == 1 for b, f in zip(base, ft)),
              sum(b == 1 and f == 0 for b, f in zip(base, ft))],
             [sum(b == 0 and f == 1 for b, f in zip(base, ft)),
              sum(b == 0 and f == 0 for b, f in zip(base, ft))]]
    expected = mcnemar(table, exact=True)
    got = paired.mcnemar_clusters(np.subtract(ft, base))
    assert got["p"] == pytest.approx(expected.pvalue)
    assert got["statistic"] == expected.statistic
    assert (got["n_up"], got["n_down"]) == (table[1][0], table[0][1]) == (7, 1)
    assert got["effect"] == pytest.approx(7.0)  # paired odds ratio
    assert paired.mcnemar_clusters([0, 0, 0])["p"] == 1.0
    assert paired.mcnemar_clusters([3, 1])["effect"] == pytest.approx(2.5 / 0.5)  # +0.5 if 0


def test_wilcoxon_matches_scipy_on_fixed_fixtures():
    base = np.array([1.0, 0, 2, 3, 1, 0, 2, 1, 0, 4])
    ft = np.array([2.3, 1.1, 1.9, 4.6, 3.2, 0.4, 2.7, 1.5, 0.0, 4.05])  # no ties, one zero
    got = paired.wilcoxon_clusters(ft - base)
    expected = stats.wilcoxon(ft, base)  # scipy's defaults: exact for these
    assert (got["statistic"], got["p"]) == pytest.approx((expected.statistic, expected.pvalue))
    tied = np.array([1, 1, -1, 2, 0, 1, 0.5, 1, -0.5, 2, 1, 1, 1, 3, -1, 2])
    got = paired.wilcoxon_clusters(tied)
    expected = stats.wilcoxon(tied, method="asymptotic")  # ties: the normal approximation
    assert (got["statistic"], got["p"]) == pytest.approx((expected.statistic, expected.pvalue))
    # Matched-pairs rank-biserial: ranks 1..4, R+ = 1 + 2 + 3, R- = 4.
    assert paired.wilcoxon_clusters([1, 2, 3, -4])["effect"] == pytest.approx(0.2)
    assert paired.wilcoxon_clusters([0, 0])["p"] == 1.0


def test_holm_matches_statsmodels():
    p = [0.01, 0.04, 0.03, 0.2, 0.0001, 0.5]
    assert paired.holm(p) == pytest.approx(multipletests(p, method="holm")[1])
    with_nan = paired.holm([0.02, math.nan, 0.01])
    assert math.isnan(with_nan[1])
    assert [with_nan[0], with_nan[2]] == pytest.approx(multipletests([0.02, 0.01],
                                                                     method="holm")[1])


def test_compare_is_the_ratio_of_sums_and_its_bootstrap():
    results = synthetic.results(seed=7, n_clusters=12, n_variants=2, delta=0.25)
    rows = amplify.paired(results, "ft-model", "base-model")
    harmful, benign, diff = amplify.compare(rows, "specificity", n_boot=500, seed=1)
    h = rows.filter(pl.col("risk") == "harmful")
    assert harmful["delta"] == pytest.approx(
        (h["specificity"] - h["specificity_base"]).mean())
    assert harmful["n_clusters"] == 12 and harmful["n_answers"] == 24
    assert diff["delta"] == pytest.approx(harmful["delta"] - benign["delta"])
    assert harmful["lo"] < harmful["delta"] < harmful["hi"]
    again = amplify.compare(rows, "specificity", n_boot=500, seed=1)
    assert again[0]["lo"] == harmful["lo"]  # seeded


# -- known effects, end to end ---------------------------------------------------------------

def test_more_detail_everywhere_is_not_amplification():
    # The fine-tune adds the same detail to harmful and benign answers (just more talkative).
    results = synthetic.results(seed=11, n_clusters=60, n_variants=2, delta=0.3,
                                delta_benign=0.3)
    row = amplify.amplification(amplify.paired_deltas(results, PAIR, n_boot=1000)).filter(
        pl.col("outcome") == "specificity").row(0, named=True)
    assert row["harmful_lo"] > 0 and row["benign_lo"] > 0
    assert row["amplification_lo"] < 0 < row["amplification_hi"]


def test_more_harmful_detail_alone_is_amplification():
    results = synthetic.results(seed=12, n_clusters=60, n_variants=2, delta=0.6,
                                delta_benign=0.0)
    table = amplify.amplification(amplify.paired_deltas(results, PAIR, n_boot=1000))
    for outcome in ("specificity", "compliance", "unsafe"):
        row = table.filter(pl.col("outcome") == outcome).row(0, named=True)
        assert row["amplification_lo"] > 0, outcome
        assert row["amplification_p"] < 0.05, outcome


# -- simulations: coverage and null p-values -------------------------------------------------

def _coverage(outcome: str, delta: float, n_clusters: int, n_units: int, runs: int,
              delta_benign: float | None = None, seed: int = 0, n_boot: int = 800) -> float:
    """Share of runs whose percentile cluster-bootstrap interval covers the true delta."""
    rng = np.random.default_rng(seed)
    counts = np.full(n_clusters, float(n_units))
    covered = 0
    for run in range(runs):
        base, ft, _ = synthetic.draw(rng, n_clusters, n_units, delta, outcome)
        weights = paired.bootstrap_weights(n_clusters, n_boot, seed=run)
        draws = paired.ratio_draws(weights, (ft - base).sum(axis=1), counts)
        truth = delta
        if delta_benign is not None:
            base_b, ft_b, _ = synthetic.draw(rng, n_clusters, n_units, delta_benign, outcome)
            draws = draws - paired.ratio_draws(weights, (ft_b - base_b).sum(axis=1), counts)
            truth = delta - delta_benign
        lo, hi = paired.percentile_interval(draws)
        covered += lo <= truth <= hi
    return covered / runs


@pytest.mark.parametrize(("outcome", "delta", "benign", "clusters", "units"), [
    ("compliance", 0.15, None, 30, 3),    # measured 0.953 over 1000 runs
    ("specificity", 0.4, None, 30, 2),    # measured 0.940
    ("specificity", 0.5, 0.2, 30, 2),     # harmful - benign; measured 0.947
    ("compliance", 0.1, None, 15, 4),     # few queries, many variants; measured 0.936
])
def test_cluster_bootstrap_covers_the_true_difference_at_about_the_nominal_rate(
        outcome, delta, benign, clusters, units):
    coverage = _coverage(outcome, delta, clusters, units, runs=300, delta_benign=benign)
    assert 0.90 <= coverage <= 0.99, coverage


def _null_p(test, outcome: str, n_clusters: int, n_units: int, runs: int,
            difference: bool = False, seed: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = []
    for _ in range(runs):
        base, ft, _ = synthetic.draw(rng, n_clusters, n_units, 0.0, outcome)
        d = (ft - base).mean(axis=1)
        if difference:
            base_b, ft_b, _ = synthetic.draw(rng, n_clusters, n_units, 0.0, outcome)
            d = d - (ft_b - base_b).mean(axis=1)
        p.append(test(d)["p"])
    return np.array(p)


def _size_ok(p: np.ndarray, alphas=(0.01, 0.05, 0.1)) -> bool:
    """No more rejections than alpha allows, within three Monte Carlo standard errors."""
    return all((p <= a).mean() <= a + 3 * math.sqrt(a * (1 - a) / p.size) for a in alphas)


@pytest.mark.parametrize(("outcome", "units", "difference"), [
    ("specificity", 2, False),   # measured: KS distance 0.013 over 2000 runs
    ("specificity", 2, True),    # harmful - benign; measured 0.021
    ("compliance", 2, True),     # binary harmful - benign; measured 0.048
])
def test_wilcoxon_p_values_are_about_uniform_under_the_null(outcome, units, difference):
    p = _null_p(paired.wilcoxon_clusters, outcome, 30, units, runs=600,
                difference=difference)
    assert _size_ok(p)
    assert stats.kstest(p, "uniform").statistic < 0.07


def test_mcnemar_p_values_are_valid_and_their_randomised_form_uniform_under_the_null():
    # The exact test's p-values are discrete, so they cannot be uniform: it is conservative
    # (measured: 1.2% rejections at 5% with one answer per query, 2.7% with three). Its null
    # distribution is still right: the randomised p-value from the same binomial law is
    # uniform.
    rng = np.random.default_rng(5)
    exact, randomised = [], []
    for _ in range(800):
        base, ft, _ = synthetic.draw(rng, 30, 3, 0.0, "compliance")
        d = (ft - base).mean(axis=1)
        result = paired.mcnemar_clusters(d)
        exact.append(result["p"])
        n = result["n_up"] + result["n_down"]
        if n == 0:
            randomised.append(rng.random())
            continue
        t = abs(result["n_up"] - n / 2)
        support = np.arange(n + 1)
        pmf = stats.binom.pmf(support, n, 0.5)
        distance = np.abs(support - n / 2)
        randomised.append(pmf[distance > t + 1e-9].sum()
                          + rng.random() * pmf[np.abs(distance - t) < 1e-9].sum())
    exact, randomised = np.array(exact), np.array(randomised)
    assert _size_ok(exact)
    assert (exact >= np.array(randomised) - 1e-12).mean() > 0.99  # exact p never smaller
    assert stats.kstest(randomised, "uniform").statistic < 0.06
