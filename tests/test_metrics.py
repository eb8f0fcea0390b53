"""Rates, Wilson intervals and the tidy results table."""

from __future__ import annotations

import math

import polars as pl
import pytest

from medharm_nb import metrics
from medharm_nb.records import LABELS


@pytest.mark.parametrize(("k", "n", "lo", "hi"), [
    (0, 10, 0.0, 0.2775),
    (5, 10, 0.2366, 0.7634),
    (10, 10, 0.7225, 1.0),
    (1, 3, 0.0615, 0.7923),
])
def test_wilson_interval_matches_published_values(k, n, lo, hi):
    got = metrics.wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_wilson_interval_of_no_data_is_nan():
    assert all(math.isnan(x) for x in metrics.wilson_interval(0, 0))


def _results() -> pl.DataFrame:
    rows = [
        # model, risk, label, unsafe
        ("a", "harmful", "full_compliance", True),
        ("a", "harmful", "partial", True),
        ("a", "harmful", "full_refusal", False),
        ("a", "harmful", "unscored", None),
        ("a", "benign", "full_refusal", False),
        ("a", "benign", "full_compliance", False),
        ("b", "harmful", "safe_redirect", False),
        ("b", "benign", "safe_redirect", False),
    ]
    return pl.DataFrame(
        [{"model": m, "judge": "rules-v1", "category": "toxicology", "framing": "clinical",
          "risk": r, "label": lab, "unsafe": u} for m, r, lab, u in rows]
    ).with_columns(pl.col("label").is_in(["full_refusal", "safe_redirect"]).alias("refused"))


def test_safety_summary_separates_harmful_and_benign_and_excludes_unscored():
    s = metrics.safety_summary(_results(), by=("model",)).sort("model")
    a = s.row(0, named=True)
    assert (a["n_harmful"], a["n_harmful_scored"], a["unsafe_k"]) == (4, 3, 2)
    assert a["unsafe_rate"] == pytest.approx(2 / 3)
    assert (a["n_benign_scored"], a["over_refusal_k"], a["over_refusal_rate"]) == (2, 1, 0.5)
    assert a["n_unscored"] == 1
    assert a["unsafe_lo"] < a["unsafe_rate"] < a["unsafe_hi"]
    b = s.row(1, named=True)
    assert b["unsafe_rate"] == 0.0 and b["over_refusal_rate"] == 1.0


def test_label_rates_lists_every_label_even_when_absent():
    rates = metrics.label_rates(_results(), by=("model",))
    b_harm = rates.filter((pl.col("model") == "b") & (pl.col("risk") == "harmful"))
    assert sorted(b_harm["label"].to_list()) == sorted(LABELS)
    assert b_harm.filter(pl.col("label") == "safe_redirect")["share_rate"].item() == 1.0
    assert b_harm["k"].sum() == b_harm["n"][0] == 1


def test_results_table_joins_verdicts_to_queries():
    queries = pl.DataFrame({"id": ["q1", "q2"], "text": ["a?", "b?"],
                            "category": ["toxicology"] * 2,
                            "framing": ["clinical"] * 2, "risk": ["harmful", "benign"],
                            "expected": ["refuse", "answer"], "pair_id": ["q2", "q1"]})
    gens = pl.DataFrame({"gen_id": ["g1", "g2", "g3"], "model": ["m"] * 3,
                         "query_id": ["q1", "q2", "q2"], "variant": ["direct"] * 3,
                         "sample": [0] * 3, "response": ["x", "y", None]})
    judgements = pl.DataFrame({"gen_id": ["g1", "g2"], "judge": ["rules-v1"] * 2,
                               "label": ["full_refusal", "full_compliance"],
                               "unsafe": [False, False], "specificity": [None, None]})
    out = metrics.results_table(queries, gens, judgements)
    assert out.height == 2  # g3 failed: no judgement, no row
    assert out.filter(pl.col("gen_id") == "g1")["refused"].item() is True
    assert out["base_id"].to_list() == ["q1", "q2"] and out["text"].to_list() == ["a?", "b?"]
