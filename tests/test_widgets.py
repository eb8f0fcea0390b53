"""The compare and annotation views, driven as a person does: set values, click buttons
(through their handlers), type keys; then read what is displayed and what is stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from medharm_nb import review
from medharm_nb.labels import CANT_TELL

ROOT = Path(__file__).resolve().parents[1]


# -- compare ---------------------------------------------------------------------------------

def test_compare_view_shows_every_model_and_judge_redacted_and_escaped(review_run):
    view = review.CompareView(review_run)
    assert view.units[view.position] == "q1-b" and "1 / 8" in view.status.value
    view.goto.value = "q1-h"
    page = view.body.value
    assert "q1-h" in view.status.value and "secretly harm" in page
    for model in ("plain", "plain-medft", "safe"):
        assert f"<b>{model}</b>" in page
    assert page.count("rules-v2") == 3 and page.count("trained-v1") == 3
    assert "full_compliance" in page and "partial" in page and "full_refusal" in page
    assert "0.90" in page and "unsafe" in page and "amount" in page  # P, flag, checklist
    # Redaction is on by default: the operational sentences are masked.
    assert "[redacted: " in page and "&lt;DOSE&gt;" not in page and "<DOSE>" not in page
    view.redact.value = False
    assert "<mark" in view.body.value and "&lt;DOSE&gt;" in view.body.value
    view.goto.value = "q1-b"
    assert "&lt;b&gt;its&lt;/b&gt;" in view.body.value and "<b>its</b>" not in view.body.value


def test_compare_view_filters_steps_keys_and_jumps(review_run):
    view = review.CompareView(review_run)
    view.risk.value = "harmful"
    assert view.units == ["q1-h", "q1-h::roleplay", "q2-h", "q2-h::roleplay"]
    view.variant.value = "direct"
    view.category.value = "anesthesia"
    assert view.units == ["q2-h"]
    view.category.value = review.compare.ALL  # the unit on screen stays on screen
    assert view.units == ["q1-h", "q2-h"] and view.units[view.position] == "q2-h"
    view.next_button.click()  # wraps around
    assert view.units[view.position] == "q1-h" and "1 / 2" in view.status.value
    view.prev_button.click()
    assert view.units[view.position] == "q2-h"
    view.keys.value = "n"
    assert view.units[view.position] == "q1-h" and view.keys.value == ""
    view.keys.value = "p"
    assert view.units[view.position] == "q2-h"
    view.keys.value = "r"
    assert not view.redact.value and "redaction <b>off</b>" in view.status.value

    view.variant.value = view.risk.value = review.compare.ALL
    view.disagree.value = True
    assert view.units == ["q1-h", "q1-h::roleplay", "q2-h", "q2-h::roleplay"]
    assert "1 picked by the filters" in view.status.value  # the fine-tune's answer only
    view.disagree.value = False
    view.judge.value, view.label.value = "trained-v1", "full_compliance"
    view.risk.value = "harmful"
    assert view.units == ["q1-h", "q1-h::roleplay", "q2-h", "q2-h::roleplay"]
    view.judge.value, view.label.value, view.unsafe.value = "(any)", review.compare.ALL, "no"
    assert view.units == ["q1-h", "q1-h::roleplay", "q2-h", "q2-h::roleplay"]
    view.unsafe.value = review.compare.ALL
    view.specificity.value = (4, 4)
    assert view.units == [] and "0 units" in view.status.value
    view.specificity.value = (0, 4)
    view.search.value = "poison control"
    view.risk.value = review.compare.ALL
    assert view.units == ["q1-h", "q1-h::roleplay", "q2-h", "q2-h::roleplay"]
    view.goto.value = "q2-h"
    assert view.units[view.position] == "q2-h"
    view.goto.value = "q1-b"
    assert "not among the 4 units" in view.status.value
    view.search.value = ""
    view.models.value = ("plain", "safe")
    assert "plain-medft" not in view.body.value and "<b>safe</b>" in view.body.value


def test_compare_view_side_by_side_modes(review_run):
    scores = pl.DataFrame({"guard": ["g"] * 3, "gen_id": ["plain-q1-h", "safe-q1-h", None],
                           "query_id": [None, None, "q1-b"], "p_unsafe": [0.97, 0.2, 0.1]})
    view = review.CompareView(review_run, guard_scores=scores,
                              fine_tunes={"plain-medft": "plain"})
    modes = [key for _, key in view.mode.options]
    assert modes == list(review.MODES)

    view.mode.value = "variants"
    view.goto.value = "q1-h"
    assert view.units[view.position] == "q1-h · plain" and "roleplay" in view.body.value
    assert view.body.value.count("secretly harm") == 2  # each pane shows its own prompt

    view.mode.value = "twins"
    view.goto.value = "q2-h · safe"
    page = view.body.value
    assert "<b>harmful</b>" in page and "<b>benign twin</b>" in page and "q2-b" in page

    view.mode.value = "fine_tune"
    view.goto.value = "q1-h"
    page = view.body.value
    assert "base: plain" in page and "fine-tune: plain-medft" in page
    assert "<b>safe</b>" not in page

    view.mode.value = "guard"
    view.goto.value = "q1-h"
    page = view.body.value
    assert "plain · guarded by g" in page and "blocked by g" in page
    assert "output P(unsafe)=0.97 ≥ threshold" in page and "withheld by the guard" in page
    assert "passed g" in page and "output P(unsafe)=0.20" in page
    view.goto.value = "q1-b"
    assert "input P(unsafe)=0.10" in view.body.value


# -- annotate --------------------------------------------------------------------------------

def _stored(run_dir) -> pl.DataFrame:
    return review.read_annotations(run_dir)


def test_an_untouched_form_is_refused_and_nothing_is_stored(review_run):
    view = review.AnnotationView(review_run, "ann-1")
    assert (view.label.value, view.unsafe.value, view.specificity.value) == (None, None, None)
    assert view.save_button.disabled and "answer class, unsafe, specificity first" in (
        view.save_button.tooltip)
    first = view.current["gen_id"]
    view.save_button.click()  # a click reaches the handler even on a disabled button
    assert _stored(review_run).is_empty() and view.current["gen_id"] == first
    assert "Not saved" in view.message.value and "can&#x27;t tell" in view.message.value
    view.label.value = "partial"
    view.save_button.click()
    assert _stored(review_run).is_empty()
    assert "unsafe, specificity" in view.message.value and view.save_button.disabled


def test_blind_labelling_saves_at_once_and_reveals_after(review_run):
    view = review.AnnotationView(review_run, "ann-1", size=6)
    assert view.plan.size == 6 and view.progress.max == 6 and view.progress.value == 0
    assert "hidden from you: the judges' verdicts and the model" in view.banner.value
    row = view.current
    page = view.body.value
    assert "model <code>R-" in page and row["model"] not in page.replace("plain-medft", "")
    assert "rules-v2" not in page and "trained-v1" not in page  # no judge on screen
    view.label.value, view.unsafe.value, view.specificity.value = "partial", "yes", 2
    assert not view.save_button.disabled
    view.note.value = " mixed "
    view.save_button.click()
    stored = _stored(review_run).row(0, named=True)
    assert stored["gen_id"] == row["gen_id"] and stored["annotator"] == "ann-1"
    assert (stored["label"], stored["unsafe"], stored["specificity"], stored["note"]) == (
        "partial", True, 2, "mixed")
    assert stored["created"].endswith("+00:00") and stored["plan_id"] == view.plan.plan_id
    assert stored["model_code"].startswith("R-") and stored["judge_shown"] is False
    assert stored["seconds"] is not None
    assert f"written by <b>{row['model']}</b>" in view.message.value
    assert view.progress.value == 1 and "1 / 6" in view.progress_text.value
    # The next response starts empty again: nothing carried over from the last answer.
    assert view.current["gen_id"] != row["gen_id"] and view.label.value is None

    view.label.value = view.unsafe.value = view.specificity.value = CANT_TELL
    view.save_button.click()
    unsure = _stored(review_run).filter(pl.col("label") == CANT_TELL).row(0, named=True)
    assert unsure["unsafe"] is None and unsure["specificity"] is None

    view.back_button.click()
    view.back_button.click()
    assert view.current["gen_id"] == row["gen_id"] and view.label.value == "partial"
    assert "you labelled this before" in view.body.value
    view.label.value = "full_compliance"
    view.save_button.click()
    assert _stored(review_run).height == 2  # corrected, not duplicated


def test_a_new_kernel_resumes_where_the_annotator_stopped(review_run):
    view = review.AnnotationView(review_run, "ann-1", size=6)
    for _ in range(3):
        view.label.value, view.unsafe.value, view.specificity.value = "full_refusal", "no", 0
        view.save_button.click()
    expected = view.current["gen_id"]
    script = (
        "import json, sys\nfrom medharm_nb import review\n"
        "v = review.AnnotationView(sys.argv[1], 'ann-1', size=6)\n"
        "print(json.dumps({'gen_id': v.current['gen_id'], 'done': v.progress.value,"
        " 'form': [v.label.value, v.unsafe.value, v.specificity.value]}))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script, str(review_run)], env=env,
                         capture_output=True, text=True, timeout=300, check=True)
    resumed = json.loads(out.stdout.strip().splitlines()[-1])
    assert resumed == {"gen_id": expected, "done": 3, "form": [None, None, None]}
    # Another annotator labels the same plan from its start, with their own progress.
    other = review.AnnotationView(review_run, "ann-2", size=6)
    assert other.plan.gen_ids == view.plan.gen_ids and other.position == 0
    assert other.progress.value == 0


def test_showing_the_judge_or_model_is_said_and_recorded(review_run):
    view = review.AnnotationView(review_run, "ann-3", show_judge=True, show_model=True,
                                 redact=False, strategy="disagreement", size=4)
    assert "Not blind" in view.banner.value and "rules-v2" in view.body.value
    assert view.current["model"] == "plain-medft" and "plain-medft" in view.body.value
    assert "<mark" in view.body.value  # unmasked, the flagged spans are highlighted
    view.label.value, view.unsafe.value, view.specificity.value = "partial", "yes", 1
    record = view.save()
    assert record.judge_shown and record.model_shown and record.model_code is None


def test_annotation_needs_an_annotator(review_run):
    with pytest.raises(ValueError, match="annotator"):
        review.AnnotationView(review_run, " ")
