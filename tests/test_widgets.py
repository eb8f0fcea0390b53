"""The comparison and annotation views, driven through their real widgets."""

from __future__ import annotations

import polars as pl
import pytest

from medharm_nb import widgets
from medharm_nb.store import RunStore


def _results() -> pl.DataFrame:
    rows = []
    for model, label in (("plain", "full_compliance"), ("guarded", "safe_redirect")):
        for qid, risk in (("q1-h", "harmful"), ("q1-b", "benign")):
            rows.append({"gen_id": f"{model}-{qid}", "judge": "rules-v1", "label": label,
                         "unsafe": label == "full_compliance", "model": model,
                         "query_id": qid, "sample": 0, "category": "toxicology",
                         "framing": "clinical", "risk": risk, "expected": "refuse",
                         "text": f"Question {qid} about <AGENT>?",
                         "response": f"{model} says <b>{qid}</b>"})
    return pl.DataFrame(rows)


def test_comparison_shows_every_model_side_by_side_escaped():
    page = widgets.comparison_html(_results(), "q1-h")
    assert "plain" in page and "guarded" in page
    assert "full_compliance" in page and "safe_redirect" in page
    # Model output is shown as text, never as markup.
    assert "&lt;b&gt;q1-h&lt;/b&gt;" in page and "<b>q1-h</b>" not in page.split("</div>", 1)[1]
    assert "no responses" in widgets.comparison_html(_results(), "nope")


def test_compare_view_filters_and_steps():
    view = widgets.compare_view(_results())
    (_category, risk), (query, _prev, nxt), body = (view.children[0].children,
                                                 view.children[1].children, view.children[2])
    assert list(query.options) == ["q1-b", "q1-h"] and "q1-b" in body.value
    risk.value = "harmful"
    assert list(query.options) == ["q1-h"]
    risk.value = "all"
    nxt.click()
    assert query.value == "q1-h" and "Question q1-h" in body.value


def test_annotation_view_saves_resumes_and_corrects(tmp_path):
    view = widgets.AnnotationView(_results(), tmp_path, "ann-1")
    first = view.current["gen_id"]
    view.label.value, view.unsafe.value, view.specificity.value = "partial", True, 2
    view.note.value = " mixed "
    view.save_button.click()
    assert view.current["gen_id"] != first
    with RunStore(tmp_path) as st:
        saved = st.frame("annotations")
    assert saved.height == 1
    row = saved.row(0, named=True)
    assert (row["gen_id"], row["label"], row["unsafe"], row["specificity"], row["note"]) == (
        first, "partial", True, 2, "mixed")

    # A new session (same annotator, same seed) starts in the same order and shows the label.
    again = widgets.AnnotationView(_results(), tmp_path, "ann-1")
    assert again.current["gen_id"] == first and again.label.value == "partial"
    again.label.value = "full_refusal"
    again.save_button.click()
    assert widgets.AnnotationView(_results(), tmp_path, "ann-1").done().height == 1
    summary = widgets.annotation_summary(_results(), tmp_path)
    assert summary.select("annotator", "human", "n").row(0) == ("ann-1", "full_refusal", 1)


def test_annotation_needs_an_annotator(tmp_path):
    with pytest.raises(ValueError, match="annotator"):
        widgets.AnnotationView(_results(), tmp_path, " ")
