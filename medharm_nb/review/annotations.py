"""Human labels as data: the form's answers -> ``Annotation`` records, where an annotator
stopped, blind model codes, and the gold export the judge tools read.

No function here fills in an answer for the person: a form with an unanswered field raises
``IncompleteForm`` and nothing is stored. "Can't tell" is an answer, chosen explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from medharm_nb import store
from medharm_nb.labels import CANT_TELL
from medharm_nb.records import Annotation, stable_hash
from medharm_nb.review.agreement import (
    FIELDS,
    annotator_agreement,
    judge_agreement,
    majority,
    pairwise_kappa,
)

CLASS_CHOICES: list[tuple[str, str]] = [
    ("full refusal", "full_refusal"), ("safe redirect", "safe_redirect"),
    ("partial", "partial"), ("full compliance", "full_compliance"), ("can't tell", CANT_TELL)]
"""The class buttons: (what the button says, the stored ``Annotation.label``)."""
UNSAFE_CHOICES: list[tuple[str, str]] = [
    ("unsafe", "yes"), ("not unsafe", "no"), ("can't tell", CANT_TELL)]
"""The unsafe buttons: stored as True, False and None."""
SPECIFICITY_CHOICES: list[tuple[str, int | str]] = [
    *((str(k), k) for k in range(5)), ("can't tell", CANT_TELL)]
"""The specificity buttons: 0-4 (the judges' scale) or can't tell (stored as None)."""
GOLD_COLUMNS: tuple[str, ...] = tuple(store.TABLES["gold"].columns)
"""Columns of the gold export (the catalogue's ``gold`` table). ``annotator`` is the group
column of ``gold.load_gold`` (and there is deliberately no ``model`` column, which it
would group by instead)."""


class IncompleteForm(ValueError):
    """A save with unanswered fields; ``missing`` names them (class, unsafe, specificity)."""

    def __init__(self, missing: Sequence[str]):
        self.missing = list(missing)
        super().__init__("choose an answer for " + ", ".join(self.missing)
                         + " first (\"can't tell\" is an answer)")


def make_annotation(gen_id: str, annotator: str, label: str | None, unsafe: str | None,
                    specificity: int | str | None, note: str = "", *,
                    model_code: str | None = None, plan_id: str | None = None,
                    judge_shown: bool | None = None, model_shown: bool | None = None,
                    seconds: float | None = None) -> Annotation:
    """Turn the form's answers into a record.

    Args:
        gen_id: The response labelled.
        annotator: Who labelled it.
        label: A ``CLASS_CHOICES`` value, or None when unanswered.
        unsafe: ``yes``, ``no`` or ``cant_tell``; None when unanswered.
        specificity: 0-4 or ``cant_tell``; None when unanswered.
        note: Free text (stripped).
        model_code / plan_id / judge_shown / model_shown / seconds: How it was labelled
            (``records.Annotation``).

    Raises:
        IncompleteForm: a field is unanswered; nothing should be stored.
        ValueError: no annotator.
    """
    if not annotator.strip():
        raise ValueError("annotator must name who is labelling")
    missing = [name for name, value in (("class", label), ("unsafe", unsafe),
                                        ("specificity", specificity)) if value is None]
    if missing:
        raise IncompleteForm(missing)
    return Annotation(
        annotation_id=stable_hash(gen_id, annotator), gen_id=gen_id, annotator=annotator,
        label=label, unsafe={"yes": True, "no": False}.get(unsafe),
        specificity=None if specificity == CANT_TELL else int(specificity),
        note=note.strip(), created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model_code=model_code, plan_id=plan_id, judge_shown=judge_shown,
        model_shown=model_shown, seconds=None if seconds is None else round(seconds, 1))


def form_answers(row: dict) -> tuple[str, str, int | str]:
    """A stored annotation back as the form's answers (class, unsafe, specificity), to
    correct it; None in the store reads as can't tell."""
    unsafe = {True: "yes", False: "no"}.get(row.get("unsafe"), CANT_TELL)
    spec = row.get("specificity")
    return row["label"], unsafe, CANT_TELL if spec is None else int(spec)


def model_code(gen_id: str, seed: int = 0) -> str:
    """The code a model is shown as for one response while labelling blind.

    One code per response, not per model: the code is revealed after each save, and a code
    that stood for one model throughout would teach the annotator which model it is.
    """
    return "R-" + stable_hash("model-code", seed, gen_id, length=5).upper()


def read_annotations(run_dir: str | Path, annotator: str | None = None) -> pl.DataFrame:
    """A run's stored annotations (one per response and annotator), or one annotator's."""
    with store.RunStore(run_dir) as st:
        frame = st.frame("annotations")
    return frame if annotator is None else frame.filter(pl.col("annotator") == annotator)


def save_annotation(run_dir: str | Path, record: Annotation) -> None:
    """Store a label at once, replacing this annotator's earlier one for the response."""
    with store.RunStore(run_dir) as st:
        st.upsert_annotation(record)


def resume_position(plan_gen_ids: Sequence[str], done: set[str] | frozenset[str]) -> int | None:
    """Where an annotator picks up a plan: the first response they have not labelled; None
    when they have labelled them all."""
    return next((i for i, g in enumerate(plan_gen_ids) if g not in done), None)


def gold_frame(annotations: pl.DataFrame, generations: pl.DataFrame,
               how: str = "annotator") -> pl.DataFrame:
    """Human labels as gold rows (``GOLD_COLUMNS``) for ``judge-eval --gold`` / ``judge-train``.

    Args:
        annotations: ``read_annotations`` output.
        generations: The run's generations (``gen_id``, ``query_id``, ``prompt``,
            ``response``).
        how: ``annotator``: one row per annotator and response (the judge tools report and
            cross-validate by annotator); ``majority``: one row per response with the
            majority class (ties left out), majority unsafe flag and median specificity,
            annotator ``majority``.

    Labels are our 4-way spellings, which ``load_gold`` accepts; a class of can't tell is
    never gold and is left out (``unsafe`` / ``specificity`` are empty where the person could
    not tell).
    """
    if how not in ("annotator", "majority"):
        raise ValueError("how is 'annotator' or 'majority'")
    notes = annotations.filter(pl.col("label") != CANT_TELL)
    if how == "majority":
        label = majority(annotations, "label").select("gen_id", pl.col("value").alias("label"))
        unsafe = majority(annotations, "unsafe").select(
            "gen_id", pl.col("value").replace_strict({"yes": True, "no": False}, default=None,
                                                     return_dtype=pl.Boolean).alias("unsafe"))
        spec = notes.group_by("gen_id").agg(
            pl.col("specificity").median().round().cast(pl.Int64).alias("specificity"))
        notes = (label.filter(pl.col("label").is_not_null())
                 .join(unsafe, on="gen_id", how="left").join(spec, on="gen_id", how="left")
                 .with_columns(pl.lit("majority").alias("annotator")))
    gens = generations.select("gen_id", "query_id", "prompt", pl.col("response").fill_null(""))
    return (notes.join(gens, on="gen_id", how="inner")
            .select(pl.col("gen_id").alias("id"), *GOLD_COLUMNS[1:])
            .sort("id", "annotator"))


def export_gold(run_dir: str | Path, how: str = "annotator") -> Path | None:
    """Write the run's human labels as the ``gold`` table: ``tables/gold.csv`` (and
    ``.parquet``).

    ``medharm-nb judge-eval --gold RUN/tables/gold.csv`` and ``judge-train --gold`` read it as
    it is. Returns the CSV's path, or None when nobody has labelled a class yet.
    """
    notes = read_annotations(run_dir)
    with store.RunStore(run_dir) as st:
        gens = st.frame("generations")
    gold = gold_frame(notes, gens, how)
    if gold.is_empty():
        return None
    return store.write_table(run_dir, "gold", gold).with_suffix(".csv")


def agreement_report(run_dir: str | Path,
                     results: str | Path | pl.DataFrame | None = None) -> dict[str, pl.DataFrame]:
    """Every agreement table of a run's labels, for the notebook.

    Args:
        run_dir: The run folder (its store holds the labels).
        results: The results table (default: the run's), for the judges' verdicts.

    Returns:
        ``progress`` (labels, can't-tells and responses per annotator), ``annotators``
        (``agreement.annotator_agreement``), ``pairs`` (Cohen's kappa per pair and field),
        ``judges`` and ``confusion`` (``agreement.judge_agreement``); empty tables before the
        first label.
    """
    notes = read_annotations(run_dir)
    index = (results if isinstance(results, pl.DataFrame) else store.results_df(
        results if results is not None else run_dir,
        columns=["gen_id", "judge", "label", "unsafe", "specificity"]))
    judged = judge_agreement(notes, index)
    progress = notes.group_by("annotator").agg(
        pl.len().alias("labels"), (pl.col("label") == CANT_TELL).sum().alias("class_cant_tell"),
        pl.col("unsafe").null_count().alias("unsafe_cant_tell"),
        pl.col("specificity").null_count().alias("specificity_cant_tell"),
        pl.col("judge_shown").fill_null(False).sum().alias("judge_shown"),
        pl.col("seconds").median().alias("median_seconds")).sort("annotator")
    pairs = [pairwise_kappa(notes, field) for field in FIELDS]
    return {"progress": progress, "annotators": annotator_agreement(notes),
            "pairs": pl.concat(pairs), "judges": judged.summary, "confusion": judged.confusion}
