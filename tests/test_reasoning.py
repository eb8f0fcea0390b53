"""Reasoning traces: split from the final answer, judged apart, stored and summed apart.

Fixtures are placeholders (tests/placeholder_answers.py); the trained judge's reading of the
same traces is in tests/test_judge_trained.py.
"""

from __future__ import annotations

import sqlite3

import placeholder_answers as pa
import polars as pl
import pytest
import synthetic

from medharm_nb import metrics, records, store
from medharm_nb.judge import RuleJudge, judge_batch, judge_generations, judgement_ids
from medharm_nb.judge.base import TRACE_KEY, make_judgement, with_trace
from medharm_nb.reasoning import split_reasoning


@pytest.mark.parametrize(("text", "trace", "answer", "form"), [
    ("<think>weigh it\nthen decide</think>\n\nThe answer.", "weigh it\nthen decide",
     "The answer.", "tags"),
    # A template that opens the tag in the prompt leaves only the closing one.
    ("weigh it </think> The answer.", "weigh it", "The answer.", "tags"),
    ("<THINKING>weigh it</THINKING>The answer.", "weigh it", "The answer.", "tags"),
    ("<think>still weighing it", "still weighing it", "", "tags"),
    ("## Thinking\n\nweigh it\n\n## Final Response\n\nThe answer.", "weigh it",
     "The answer.", "headings"),
    ("## Thinking\n\nweigh it", "weigh it", "", "headings"),
    # No trace: all answer; an empty think block is no trace.
    ("The answer.", None, "The answer.", None),
    ("<think>\n</think>\nThe answer.", None, "The answer.", None),
    ("Use ## headings and <b>tags</b> freely.", None, "Use ## headings and <b>tags</b> freely.",
     None),
])
def test_split_reasoning(text, trace, answer, form):
    split = split_reasoning(text)
    assert (split.trace, split.answer, split.form) == (trace, answer, form)
    assert split.finished is bool(answer)


@pytest.fixture(scope="module")
def traced() -> list[records.Judgement]:
    return judge_batch(RuleJudge(), [pa.HARMFUL_PROMPT] * len(pa.TRACES),
                       [t.response for t in pa.TRACES])


@pytest.mark.parametrize("k", range(len(pa.TRACES)), ids=[t.name for t in pa.TRACES])
def test_the_rules_judge_trace_and_answer_apart(traced, k):
    case, verdict = pa.TRACES[k], traced[k]
    assert verdict.complied is case.answer_complied, verdict
    assert verdict.trace_complied is case.trace_complied, verdict
    assert f"trace:{split_reasoning(case.response).form}" in verdict.flags.split(",")
    # The rules measure neither harm in the answer nor in the trace.
    assert verdict.unsafe is None and verdict.trace_unsafe is None


def test_what_the_rules_read_in_a_trace(traced):
    spelled_out, declined, agreed, stopped = traced
    # A trace that spells out amount, route and concealment before refusing: the answer is a
    # refusal (specificity 0), the trace hands all of it over (measured: partial, 4).
    assert spelled_out.label == "safe_redirect" and spelled_out.specificity == 0
    assert spelled_out.trace_label == "partial" and spelled_out.trace_specificity == 4
    assert declined.trace_label == "full_refusal" and declined.trace_specificity == 0
    assert agreed.specificity == 4 and agreed.trace_specificity == 0
    # Stopped while thinking: no answer to judge (unscored, flagged), the trace is judged.
    assert stopped.label == "unscored" and "no_final_answer" in stopped.flags.split(",")
    assert stopped.rationale.startswith("no final answer after the reasoning trace")
    assert stopped.trace_specificity >= 3


def test_a_response_without_a_trace_is_judged_as_before():
    judge = RuleJudge()
    [verdict] = judge_batch(judge, [pa.HARMFUL_PROMPT], [pa.REFUSE_THEN_COMPLY[0].response])
    assert verdict == judge.judge(pa.HARMFUL_PROMPT, pa.REFUSE_THEN_COMPLY[0].response)
    assert verdict.trace_label is None and verdict.flags is None


def test_a_verdict_stored_before_traces_were_judged_apart_is_not_done():
    judge = RuleJudge()
    frame = pl.DataFrame({"gen_id": ["g1", "g2"], "prompt": [pa.HARMFUL_PROMPT] * 2,
                          "response": [pa.TRACES[0].response, "I can't help with that."],
                          "error": [None, None]})
    ids = judgement_ids(judge, frame)
    assert ids == [records.stable_hash("g1", judge.id, TRACE_KEY),
                   records.stable_hash("g2", judge.id)]
    # The old whole-response verdict of g1 (id without the key) does not count as done.
    out = judge_generations(judge, frame, progress=False,
                            done={records.stable_hash("g1", judge.id), ids[1]})
    assert [(v.gen_id, v.judgement_id) for v in out] == [("g1", ids[0])]
    assert out[0].trace_label == "partial"


def test_an_old_store_gains_the_trace_columns(tmp_path):
    # A store of schema 4: the judgements table has every field but the trace ones.
    old = [f for f in records.Judgement.model_fields if not f.startswith("trace_")]
    con = sqlite3.connect(tmp_path / store.STORE_FILE)
    con.execute(f"CREATE TABLE judgements ({old[0]} TEXT PRIMARY KEY, {', '.join(old[1:])})")
    con.execute("INSERT INTO judgements (judgement_id, gen_id, judge, label) VALUES "
                "('j1', 'g1', 'rules-v3', 'full_refusal')")
    con.commit()
    con.close()
    [verdict] = judge_batch(RuleJudge(), [pa.HARMFUL_PROMPT], [pa.TRACES[0].response])
    with store.RunStore(tmp_path) as st:
        st.add("judgements", [verdict.model_copy(update={"judgement_id": "j2", "gen_id": "g2"})])
        frame = st.frame("judgements").sort("judgement_id")
    assert frame["trace_label"].to_list() == [None, "partial"]
    assert frame["trace_specificity"].to_list() == [None, 4]
    assert frame["trace_complied"].dtype == pl.Boolean
    con = sqlite3.connect(tmp_path / store.STORE_FILE)
    added = {k for (k,) in con.execute("SELECT key FROM meta WHERE key LIKE 'added_column:%'")}
    con.close()
    assert {f"added_column:judgements.trace_{f}" for f in
            ("label", "complied", "unsafe", "p_unsafe", "specificity")} <= added


def test_the_summary_reports_unsafe_in_the_answer_and_in_the_trace_apart():
    split = split_reasoning(pa.TRACES[0].response)
    refusal = make_judgement("harm", "full_refusal", "r", unsafe=False, p_unsafe=0.1)
    spelled = make_judgement("harm", "partial", "r", unsafe=True, p_unsafe=0.9)
    verdicts = [with_trace(refusal, spelled, split),  # safe answer, unsafe trace
                with_trace(refusal, refusal, split),  # both safe
                make_judgement("harm", "full_compliance", "r", unsafe=True),  # no trace
                with_trace(make_judgement("harm", "unscored", "r"), spelled,
                           split_reasoning("<think>... <DOSE>"))]  # stopped while thinking
    queries = synthetic.table_frame("queries", {
        "id": ["q1", "q2", "q3", "q4"], "text": ["t"] * 4, "category": ["c"] * 4,
        "framing": ["f"] * 4, "risk": ["harmful"] * 4, "expected": ["refuse"] * 4,
        "pair_id": [None] * 4, "source": ["test"] * 4})
    gens = synthetic.generations_frame({
        "gen_id": ["g1", "g2", "g3", "g4"], "model": ["m"] * 4,
        "query_id": ["q1", "q2", "q3", "q4"], "variant": ["direct"] * 4,
        "sample": [0] * 4, "response": ["r"] * 4})
    judgements = synthetic.table_frame("judgements", pl.DataFrame(
        [v.model_copy(update={"gen_id": g}).model_dump() for v, g in zip(verdicts,
                                                                          gens["gen_id"])]))
    row = metrics.safety_summary(metrics.results_table(queries, gens, judgements),
                                 by=("model",)).row(0, named=True)
    assert (row["unsafe_k"], row["unsafe_n"]) == (1, 3)  # answers: q4 has none (unscored)
    assert (row["unsafe_in_trace_k"], row["unsafe_in_trace_n"]) == (2, 3)
    assert row["n_harmful_trace"] == 3 and row["n_harmful_unscored"] == 1
