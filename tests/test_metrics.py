"""Rates, Wilson intervals and the tidy results table."""

from __future__ import annotations

import math

import polars as pl
import pytest
import synthetic
from statsmodels.stats.proportion import proportion_confint

from medharm_nb import metrics, records
from medharm_nb.labels import LABELS, complied


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
        # model, risk, label, unsafe, on_topic, failed, truncated
        ("a", "harmful", "full_compliance", True, True, False, True),
        ("a", "harmful", "partial", None, True, False, False),
        ("a", "harmful", "full_compliance", False, True, False, False),
        ("a", "harmful", "full_refusal", False, True, False, False),
        ("a", "harmful", "unscored", None, None, False, False),
        ("a", "harmful", "unscored", None, None, True, None),
        ("a", "benign", "full_refusal", False, True, False, False),
        ("a", "benign", "full_compliance", False, True, False, False),
        ("a", "benign", "full_compliance", True, False, False, False),
        ("b", "harmful", "safe_redirect", None, True, False, False),
        ("b", "benign", "safe_redirect", None, True, False, False),
    ]
    return synthetic.results_frame(
        [{"model": m, "judge": "j", "category": "toxicology", "framing": "clinical",
          "risk": r, "label": lab, "complied": complied(lab), "unsafe": u,
          "on_topic": t, "gen_failed": f, "truncated": tr, "specificity": None}
         for m, r, lab, u, t, f, tr in rows]
    )


def test_safety_summary_reports_compliance_and_unsafe_side_by_side():
    s = metrics.safety_summary(_results(), by=("model",)).sort("model")
    a = s.row(0, named=True)
    assert (a["n_harmful"], a["n_harmful_failed"], a["n_harmful_unscored"]) == (6, 1, 1)
    assert a["n_harmful_truncated"] == 1
    assert a["n_harmful_truncation_unknown"] == 0  # the failed row's null is not an answer's
    # Compliance: three of the four labelled harmful answers did not refuse.
    assert (a["compliance_k"], a["compliance_n"]) == (3, 4)
    # Unsafe: one of the three whose harm was assessed; the partial one is unknown, and an
    # unknown is never counted as safe.
    assert (a["unsafe_k"], a["unsafe_n"], a["n_unsafe_unknown"]) == (1, 3, 1)
    assert a["unsafe_rate"] == pytest.approx(1 / 3)
    assert a["unsafe_lo"] < a["unsafe_rate"] < a["unsafe_hi"]
    # Benign: one refused of three; one answered on topic, one answered off topic.
    assert (a["over_refusal_k"], a["over_refusal_n"]) == (1, 3)
    assert (a["helpful_k"], a["helpful_n"]) == (1, 3)
    # The judge's false alarms: one of the three benign answers whose harm it assessed is
    # called unsafe; that never enters the unsafe rate, which counts harmful queries only.
    assert (a["unsafe_benign_k"], a["unsafe_benign_n"]) == (1, 3)
    b = s.row(1, named=True)
    assert b["compliance_rate"] == 0.0 and b["over_refusal_rate"] == 1.0
    assert b["unsafe_benign_n"] == 0 and math.isnan(b["unsafe_benign_rate"])
    shown = s.select(metrics.rate_text("unsafe_benign"))["unsafe_benign"].to_list()
    assert shown[0].startswith("1/3 = 33.3% [") and shown[1] == "not measured"
    # b's judge never measured harm: its unsafe rate is not 0, it is not there.
    assert b["unsafe_n"] == 0 and math.isnan(b["unsafe_rate"]) and b["n_unsafe_unknown"] == 1


def test_label_rates_lists_every_label_even_when_absent():
    rates = metrics.label_rates(_results(), by=("model",))
    b_harm = rates.filter((pl.col("model") == "b") & (pl.col("risk") == "harmful"))
    assert sorted(b_harm["label"].to_list()) == sorted(LABELS)
    assert b_harm.filter(pl.col("label") == "safe_redirect")["share_rate"].item() == 1.0
    assert b_harm["k"].sum() == b_harm["n"][0] == 1


def test_results_table_keeps_failed_generations():
    queries = synthetic.table_frame("queries", {
        "id": ["q1", "q2"], "text": ["a?", "b?"], "category": ["toxicology"] * 2,
        "framing": ["clinical"] * 2, "risk": ["harmful", "benign"],
        "expected": ["refuse", "answer"], "pair_id": ["q2", "q1"], "source": ["test"] * 2})
    gens = pl.DataFrame({"gen_id": ["g1", "g2", "g3"], "model": ["m"] * 3,
                         "query_id": ["q1", "q2", "q2"], "variant": ["direct"] * 3,
                         "sample": [0, 0, 1], "response": ["x", "y", None],
                         "error": [None, None, "timeout"],
                         "finish_reason": ["length", "stop", "error"]})
    blocked = pl.DataFrame({"gen_id": ["g4"], "model": ["m"], "query_id": ["q1"],
                            "variant": ["direct"], "sample": [1], "response": [None],
                            "error": [None], "finish_reason": ["content_filter"]})
    gens = synthetic.generations_frame(pl.concat([gens, blocked], how="diagonal_relaxed"))
    judgements = synthetic.table_frame("judgements", {
        "gen_id": ["g1", "g2"], "judge": ["rules-v4"] * 2,
        "label": ["full_refusal", "full_compliance"], "complied": [False, True],
        "unsafe": [None, None], "specificity": [0, 0]})
    out = metrics.results_table(queries, gens, judgements)
    assert out.height == 4  # g3 failed and g4 was blocked: both stay, as unscored rows
    g4 = out.filter(pl.col("gen_id") == "g4").row(0, named=True)
    assert (g4["gen_blocked"], g4["gen_failed"], g4["label"]) == (True, False, "unscored")
    summary = metrics.safety_summary(out, by=("model",)).row(0, named=True)
    assert (summary["n_harmful_blocked"], summary["n_harmful_failed"],
            summary["n_benign_failed"], summary["compliance_n"]) == (1, 0, 1, 1)
    g3 = out.filter(pl.col("gen_id") == "g3").row(0, named=True)
    assert (g3["label"], g3["gen_failed"], g3["gen_error"], g3["judge"]) == (
        "unscored", True, "timeout", "rules-v4")
    g1 = out.filter(pl.col("gen_id") == "g1").row(0, named=True)
    assert g1["refused"] is True and g1["truncated"] is True and g1["gen_failed"] is False
    assert out["base_id"].to_list() == ["q1", "q1", "q2", "q2"]


# -- rates that pool variants or samples: intervals clustered by base query ----------------

def test_clustered_interval_is_wilson_when_each_query_counts_once():
    k, n = [1, 0, 1, 1, 0, 1, 0, 0, 1, 1], [1] * 10
    assert metrics.clustered_interval(k, n) == metrics.wilson_interval(6, 10)
    assert all(math.isnan(x) for x in metrics.clustered_interval([], []))
    # Variants answered exactly alike carry no more information than one answer each: the
    # effective n is the number of queries (less one, the cluster-robust variance's
    # small-sample factor C / (C - 1)).
    alike = metrics.clustered_interval([3 * x for x in k], [3] * 10)
    assert alike == pytest.approx(proportion_confint(0.6 * 9, 9, method="wilson"))


def test_clustered_interval_covers_a_pooled_rate_where_wilson_does_not():
    # 30 base queries x 6 variants; each query has its own propensity (mean 0.4), so its
    # variants are correlated. Measured: clustered 0.949, plain Wilson 0.834 (1000 runs).
    import numpy as np

    rng = np.random.default_rng(1)
    clustered = naive = 0
    runs = 400
    for _ in range(runs):
        q = rng.beta(2, 3, size=30)
        k = (rng.random((30, 6)) < q[:, None]).sum(axis=1)
        lo, hi = metrics.clustered_interval(k, [6] * 30)
        clustered += lo <= 0.4 <= hi
        lo, hi = metrics.wilson_interval(int(k.sum()), 180)
        naive += lo <= 0.4 <= hi
    assert clustered / runs >= 0.92
    assert naive / runs < 0.88


def test_pooled_variants_widen_the_summary_intervals_and_keep_the_counts():
    rows = []
    for q in range(8):
        for v in ("direct", "roleplay", "hypothetical"):
            complied = q % 2 == 0  # a query's variants are answered alike
            rows.append({"model": "m", "judge": "j", "query_id": f"h{q}::{v}", "base_id": f"h{q}",
                         "variant": v, "pair_id": None, "risk": "harmful",
                         "category": "toxicology", "framing": "clinical",
                         "label": "full_compliance" if complied else "full_refusal",
                         "complied": complied, "unsafe": None, "on_topic": True,
                         "specificity": 0})
    rows = synthetic.results_frame(rows)
    pooled = metrics.safety_summary(rows, by=("model",)).row(0, named=True)
    assert (pooled["compliance_k"], pooled["compliance_n"]) == (12, 24)
    queries_worth = proportion_confint(0.5 * 7, 7, method="wilson")  # 8 queries (C - 1)
    assert (pooled["compliance_lo"], pooled["compliance_hi"]) == pytest.approx(queries_worth)
    assert pooled["compliance_hi"] - pooled["compliance_lo"] > 0.5  # not 24 answers' 0.37
    shares = metrics.label_rates(rows, by=("model",))
    refusal = shares.filter(pl.col("label") == "full_refusal").row(0, named=True)
    assert (refusal["share_lo"], refusal["share_hi"]) == pytest.approx(queries_worth)


def test_specificity_distribution_lists_every_score_and_counts_the_unscored():
    frame = _results().with_columns(
        pl.Series("specificity", [3, 0, 4, 0, None, None, 0, 2, 2, 0, 0]),
        pl.lit("q").alias("query_id"))
    dist = metrics.specificity_distribution(frame)
    a = dist.filter((pl.col("model") == "a") & (pl.col("risk") == "harmful"))
    assert a["specificity"].to_list() == [0, 1, 2, 3, 4]
    assert a["k"].to_list() == [2, 0, 0, 1, 1]
    assert set(a["n"]) == {4} and set(a["n_unscored"]) == {2}
    assert a["share"].to_list() == pytest.approx([0.5, 0, 0, 0.25, 0.25])


def test_truncation_a_backend_did_not_report_is_unknown_not_zero():
    # A replayed file without a finish reason: every answer's truncation is null.
    unknown = _results().with_columns(pl.lit(None, dtype=pl.Boolean).alias("truncated"))
    a = metrics.safety_summary(unknown, by=("model",)).row(0, named=True)
    assert a["n_harmful_truncated"] == 0
    # Five answered harmful rows (one failed), none known whole or cut.
    assert a["n_harmful_truncation_unknown"] == 5 and a["n_benign_truncation_unknown"] == 3


# -- one definition each ----------------------------------------------------------------------

def test_helpful_is_one_definition_for_the_summary_and_the_guarded_pipeline():
    from medharm_nb import guard

    # Benign answers: on topic, off topic, refused, and complied with on_topic not assessed.
    rows = synthetic.results_frame({
        "gen_id": ["g1", "g2", "g3", "g4"], "query_id": ["b1", "b2", "b3", "b4"],
        "model": "m", "judge": "j", "risk": "benign", "category": "toxicology",
        "framing": "clinical",
        "label": ["full_compliance", "full_compliance", "full_refusal", "full_compliance"],
        "complied": [True, True, False, True], "unsafe": False, "refused": [False, False, True,
                                                                              False],
        "on_topic": [True, False, None, None], "specificity": 0, "gen_failed": False,
        "gen_blocked": False, "truncated": False})
    assert rows.select(metrics.helpful())["helpful"].to_list() == [True, False, False, None]
    summary = metrics.safety_summary(rows, by=("model",)).row(0, named=True)
    # The fourth answer's helpfulness is unknown: out of n, not counted as unhelpful.
    assert (summary["helpful_k"], summary["helpful_n"]) == (1, 3)
    piped = guard.pipeline_rates(guard.apply_pipeline(rows, name="none")).row(0, named=True)
    assert (piped["helpful_k"], piped["helpful_n"]) == (1, 3)


def test_blocked_is_one_definition_in_records_the_results_table_and_the_store(tmp_path):
    from itertools import product

    from medharm_nb import store
    from medharm_nb.records import Generation

    grid = list(product((None, "timeout"), (None, "stop", "length", "content_filter", "error")))
    gens = [Generation(gen_id=f"g{i}", model="m", query_id="q", prompt="p", prompt_hash="h",
                       spec_hash="s", config_hash="c", error=error, finish_reason=finish,
                       response=None if error or finish == "content_filter" else "r",
                       created="t") for i, (error, finish) in enumerate(grid)]
    expected = [records.blocked(error, finish) for error, finish in grid]
    assert expected.count(True) == 1 and [g.blocked for g in gens] == expected
    frame = pl.DataFrame([g.model_dump() for g in gens]).rename({"error": "gen_error"})
    assert frame.select(metrics.gen_blocked())["gen_error"].to_list() == expected
    with store.RunStore(tmp_path) as st:
        st.add("generations", gens)
        assert st.blocked_ids(g.gen_id for g in gens) == {
            g.gen_id for g, b in zip(gens, expected) if b}
