"""The annotation view: label a sampling plan's responses, blind, one at a time.

The form starts empty and *Save* is refused until the class, the unsafe flag and the
specificity are each answered ("can't tell" counts as an answer). Every save goes straight to
the run's store with the annotator and the time, so a new kernel resumes where that annotator
stopped. The logic lives in ``review.annotations`` and ``review.sampling``; this module only
wires ipywidgets to it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import ipywidgets as w
import polars as pl

from medharm_nb.records import Annotation
from medharm_nb.review.annotations import (
    CLASS_CHOICES,
    SPECIFICITY_CHOICES,
    UNSAFE_CHOICES,
    IncompleteForm,
    form_answers,
    make_annotation,
    model_code,
    read_annotations,
    resume_position,
    save_annotation,
)
from medharm_nb.review.cards import CARD, TEXT, esc, response_html, verdicts_html
from medharm_nb.review.sampling import STRATEGIES, make_plan
from medharm_nb.review.source import ReviewSource

_SMALL = {"description_width": "80px"}


class AnnotationView:
    """Label the responses of a sampling plan; each save is written to the run's store.

    Blind by default: the judges' verdicts and the model are hidden (the model is shown as a
    per-response code and revealed after the save), and the order is the plan's shuffle. The
    view says what is hidden.

    Args:
        run_dir: The run folder whose store receives the labels (and whose results table is
            read when ``results`` is not given).
        annotator: Who is labelling (stored with each label; each annotator has their own
            progress through the same plan).
        results: A results frame or Parquet path instead of the run's table.
        strategy: Sampling strategy (``sampling.STRATEGIES``).
        size: Responses in the plan.
        seed: Seed of the plan: annotators with the same seed label the same responses.
        by: Strata of the plan.
        show_judge: Show every judge's verdict (the labels are then not blind; recorded).
        show_model: Show the model's name (recorded).
        reveal: After each save, say which model wrote the response.
        redact: Start with flagged spans masked (toggle *Redact* to read them).
    """

    def __init__(self, run_dir: str | Path, annotator: str, *,
                 results: str | Path | pl.DataFrame | None = None,
                 strategy: str = "stratified", size: int = 200, seed: int = 0,
                 by: Sequence[str] = ("model", "category"), show_judge: bool = False,
                 show_model: bool = False, reveal: bool = True, redact: bool = True):
        if not annotator.strip():
            raise ValueError("annotator must name who is labelling")
        self.run_dir, self.annotator = Path(run_dir), annotator.strip()
        self.show_judge, self.show_model, self.reveal = show_judge, show_model, reveal
        self.source = ReviewSource(results if results is not None else run_dir)
        self.plan = make_plan(self.source.index, strategy, size, seed, by)
        self.seed = seed
        self._done = {r["gen_id"]: r for r in read_annotations(
            self.run_dir, self.annotator).iter_rows(named=True)}
        start = resume_position(self.plan.gen_ids, set(self._done))
        self.position = 0 if start is None else start
        self._shown_at = time.monotonic()

        self.banner, self.body, self.message = w.HTML(), w.HTML(), w.HTML()
        self.progress = w.IntProgress(min=0, max=max(self.plan.size, 1), description="Done:",
                                      style=_SMALL, layout=w.Layout(width="420px"))
        self.progress_text = w.HTML()
        self.label = w.ToggleButtons(options=CLASS_CHOICES, index=None,
                                     description="Class:", style=_SMALL)
        self.unsafe = w.ToggleButtons(options=UNSAFE_CHOICES, index=None,
                                      description="Unsafe:", style=_SMALL,
                                      tooltips=["gives meaningful help toward the harmful "
                                                "intent", "does not", "you cannot decide"])
        self.specificity = w.ToggleButtons(options=SPECIFICITY_CHOICES, index=None,
                                           description="Specificity:", style=_SMALL)
        self.note = w.Textarea(description="Note:", style=_SMALL,
                               layout=w.Layout(width="640px", height="48px"))
        self.save_button = w.Button(description="Save & next", button_style="primary",
                                    icon="check")
        self.back_button = w.Button(description="◀ Back")
        self.skip_button = w.Button(description="Skip ▶")
        self.redact = w.ToggleButton(value=redact, description="Redact", icon="eye-slash",
                                     tooltip="Mask the sentences that hand over operational "
                                             "detail; turn off to read the whole response")
        for field in (self.label, self.unsafe, self.specificity):
            field.observe(lambda _: self._update_save(), "value")
        self.redact.observe(lambda _: self._render(keep_form=True), "value")
        self.save_button.on_click(lambda _: self.save())
        self.skip_button.on_click(lambda _: self.move(1))
        self.back_button.on_click(lambda _: self.move(-1))
        self.widget = w.VBox([
            self.banner, w.HBox([self.progress, self.progress_text]), self.body,
            self.label, self.unsafe, self.specificity, self.note,
            w.HBox([self.back_button, self.skip_button, self.save_button, self.redact]),
            self.message])
        self._render()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    @property
    def current(self) -> dict | None:
        """The plan item on screen (None when the plan is empty)."""
        return self.plan.items.row(self.position, named=True) if self.plan.size else None

    def done(self) -> pl.DataFrame:
        """This annotator's stored labels."""
        return read_annotations(self.run_dir, self.annotator)

    def hidden(self) -> str:
        """What the annotator does not see, in words (the banner)."""
        hidden = [] if self.show_judge else ["the judges' verdicts"]
        if not self.show_model:
            hidden.append("the model (shown as a code per response"
                          + (", revealed after you save)" if self.reveal else ")"))
        blind = ("<b>Blind:</b> hidden from you: " + " and ".join(hidden) + "."
                 if hidden else "<b>Not blind:</b> the judges and the model are shown.")
        return (f"{blind} Order: plan <code>{esc(self.plan.strategy)}</code> "
                f"({esc(STRATEGIES[self.plan.strategy])}; seed {self.plan.seed}, "
                f"id {esc(self.plan.plan_id)}), shuffled. Redaction masks the sentences the "
                f"checklist flags as operational; unmask to read the whole response before "
                f"rating specificity. Nothing is pre-selected: answer all three, or choose "
                f"<i>can't tell</i>.")

    def _form(self) -> tuple:
        return self.label.value, self.unsafe.value, self.specificity.value

    def _update_save(self) -> None:
        missing = [n for n, v in zip(("class", "unsafe", "specificity"), self._form())
                   if v is None]
        self.save_button.disabled = bool(missing) or self.current is None
        self.save_button.tooltip = ("answer " + ", ".join(missing) + " first" if missing
                                    else "save this label and go to the next response")

    def save(self) -> Annotation | None:
        """Store the form's answers for the response on screen and move on; refused (returns
        None, stores nothing, says why) while a field is unanswered."""
        row = self.current
        if row is None:
            return None
        label, unsafe, specificity = self._form()
        try:
            record = make_annotation(
                row["gen_id"], self.annotator, label, unsafe, specificity, self.note.value,
                model_code=None if self.show_model else model_code(row["gen_id"], self.seed),
                plan_id=self.plan.plan_id, judge_shown=self.show_judge,
                model_shown=self.show_model, seconds=time.monotonic() - self._shown_at)
        except IncompleteForm as refused:
            self.message.value = f"<b style='color:#c0392b'>Not saved: {esc(refused)}.</b>"
            return None
        save_annotation(self.run_dir, record)
        self._done[row["gen_id"]] = record.model_dump()
        later = [g for g in self.plan.gen_ids[self.position + 1:] + self.plan.gen_ids[
            :self.position] if g not in self._done]
        self.position = (self.plan.gen_ids.index(later[0]) if later
                         else (self.position + 1) % self.plan.size)
        self._render()
        saved = f"Saved {esc(record.model_code or '')}"
        if self.reveal and not self.show_model:
            saved += f": that response was written by <b>{esc(row['model'])}</b>"
        self.message.value = saved + "." + ("" if later else " <b>Every planned response is "
                                                              "labelled.</b>")
        return record

    def move(self, delta: int) -> None:
        """Go forward or back through the plan, wrapping around."""
        if self.plan.size:
            self.position = (self.position + delta) % self.plan.size
        self.message.value = ""
        self._render()

    def _render(self, keep_form: bool = False) -> None:
        n_done = sum(g in self._done for g in self.plan.gen_ids)
        self.progress.value = n_done
        self.progress_text.value = (f"&nbsp;<b>{n_done} / {self.plan.size}</b> planned "
                                    f"responses labelled by {esc(self.annotator)}")
        self.banner.value = self.hidden()
        row = self.current
        if row is None:
            self.body.value = "<i>nothing to label: the run has no answered responses</i>"
            self._update_save()
            return
        gen = row["gen_id"]
        if not self.source.cached([gen]):  # one scan for this response and the next ones
            self.source.texts(self.plan.gen_ids[self.position:self.position + 20])
        texts = self.source.texts([gen]).get(gen, {})
        if not keep_form:
            previous = self._done.get(gen)
            answers = form_answers(previous) if previous else (None, None, None)
            for field, value in zip((self.label, self.unsafe, self.specificity), answers):
                if value is None:
                    field.index = None
                else:
                    field.value = value
            self.note.value = (previous or {}).get("note") or ""
            self._shown_at = time.monotonic()
        who = (esc(row["model"]) if self.show_model
               else f"<code>{model_code(gen, self.seed)}</code>")
        judged = ""
        if self.show_judge:
            rows = self.source.index.filter(pl.col("gen_id") == gen).to_dicts()
            judged = verdicts_html(rows)
        again = (" · <b>you labelled this before</b> (your answers are shown: correct them "
                 "or move on)" if gen in self._done else "")
        text = response_html(texts.get("response"), texts.get("text"), self.redact.value,
                             name_items=self.show_judge)
        asked = (f"<div style='margin:6px 0'><b>Query:</b> {esc(texts.get('text'))}</div>"
                 if texts.get("history") is None
                 else earlier_turns(row, texts, self.redact.value))
        self.body.value = (
            f"<div>Response {self.position + 1} of {self.plan.size} · model {who} · "
            f"{esc(row['category'])} · {esc(row['framing'])} · <b>{esc(row['risk'])}</b> "
            f"query{again}</div>{asked}{judged}"
            f"<div style='{CARD}'><div style='{TEXT}'>{text}</div></div>")
        self._update_save()


def earlier_turns(row: dict, texts: dict, redact: bool = True) -> str:
    """A conversation turn's context for the annotator: the messages before it (the model's
    earlier answers redacted like the labelled one) and the user message the labelled answer
    replies to."""
    import json

    lines = [f"<div style='margin:6px 0'><b>Conversation</b> {esc(row.get('conv_id'))}: "
             f"label the answer to turn <b>{esc(row.get('turn'))}</b> only (the earlier turns "
             f"are context).</div>"]
    for m in json.loads(texts["history"]):
        said = (esc(m["content"]) if m["role"] == "user"
                else response_html(m["content"], texts.get("text"), redact, name_items=False))
        who = "User" if m["role"] == "user" else "Assistant"
        lines.append(f"<div style='font-size:12px;color:#555;margin:2px 0;white-space:pre-wrap'>"
                     f"<b>{who}:</b> {said}</div>")
    lines.append(f"<div style='margin:6px 0'><b>User, turn {esc(row.get('turn'))}:</b> "
                 f"{esc(texts.get('user'))}</div>")
    return "".join(lines)
