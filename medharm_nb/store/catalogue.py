"""The catalogue of run tables: every table a run writes, declared once (``store.schema``
says what a declaration holds and how frames and files are checked against it).

Each ``Table`` here names a ``tables/<name>.parquet`` file: its columns and their polars
types (a record's fields, or a schema written out), its version, the stage (and notebook)
that writes it and the notebooks that read it, and the columns it gained in later versions,
each with the default that a file written before gets when it is read. Writing checks a
frame against its declaration (an undeclared table, a missing column, a column of another
type or an undeclared one is an error naming the table and the column); reading fills what
an older file lacks, once (``store.readers``), so no reader checks whether a column exists.
"""

from __future__ import annotations

import polars as pl

from medharm_nb.labels import CHECKLIST, COMPLIED_LABELS, RATES, UNTIERED
from medharm_nb.records import Generation, Judgement, Query
from medharm_nb.store.schema import Table, TableError, record_columns, record_defaults

TABLES: dict[str, Table] = {}
"""Every table a run (or a command's ``--out``) writes, by name."""


def _declare(*tables: Table) -> None:
    for table in tables:
        TABLES[table.name] = table


S, I64, U32, F64, B = pl.String, pl.Int64, pl.UInt32, pl.Float64, pl.Boolean
_COMPLIED_FROM_LABEL = (pl.when(pl.col("label") == "unscored").then(None)
                        .otherwise(pl.col("label").is_in(COMPLIED_LABELS)))
"""``labels.complied`` of a stored label, for verdicts written before ``complied``."""

_QUERY = {**record_columns(Query)}
_GENERATION = record_columns(Generation)
_JUDGEMENT = record_columns(Judgement)
_TRACE = ("trace_label", "trace_complied", "trace_unsafe", "trace_p_unsafe",
          "trace_specificity")
_VERDICT = {c: _JUDGEMENT[c] for c in ("label", "complied", "unsafe", "p_unsafe", "on_topic",
                                       "specificity", *CHECKLIST, *_TRACE)}

_declare(
    Table("queries", _QUERY, "stages.data_stage", "01_data",
          "One query (a prompt variant of a base query) the run asks; records.Query, plus "
          "free metadata columns of its source.",
          added={"tier": UNTIERED, "variant": "direct", "base_id": pl.col("id")}, extra=True,
          read_by=("02_generate", "03_judge", "04_guardrails")),
    Table("generations", _GENERATION, "stages.generation_stage", "02_generate",
          "This run's current answer (or failure, or block) per model, query and sample; "
          "records.Generation.",
          added=record_defaults(Generation), read_by=("03_judge",)),
    Table("generation_stats", {
        "model": S, "total": I64, "cached": I64, "generated": I64, "failed": I64,
        "blocked": I64, "new_tokens": I64, "seconds": F64, "wall_seconds": F64,
        "load_seconds": F64, "notes": pl.List(S), "tokens_per_s": F64},
          "stages.generation_stage", "02_generate",
          "Per model: what generation did this time (generate.GenStats).",
          added={"blocked": 0, "load_seconds": 0.0, "notes": None}),
    Table("judgements", _JUDGEMENT, "stages.judging_stage", "03_judge",
          "One judge's verdict on one current generation; records.Judgement.",
          added={**record_defaults(Judgement), "complied": _COMPLIED_FROM_LABEL}),
    Table("results", {
        "gen_id": S, "judge": S, **_VERDICT,
        "model": S, "query_id": S, "variant": S, "sample": I64, "response": S,
        "gen_error": S, "finish_reason": S, "block_reason": S,
        "text": S, "category": S, "framing": S, "risk": S, "expected": S, "pair_id": S,
        "tier": S, "base_id": S, "gen_blocked": B, "gen_failed": B, "refused": B,
        "truncated": B, "judge_trained_on": B},
          "stages.judging_stage", "03_judge",
          "One row per generation and judge, failed and blocked generations included "
          "(metrics.results_table): the verdict, the answer and its query.",
          added={"complied": _COMPLIED_FROM_LABEL, "p_unsafe": None, "on_topic": None,
                 **dict.fromkeys(CHECKLIST), "variant": "direct", "sample": 0,
                 "finish_reason": None, "block_reason": None, "tier": UNTIERED,
                 "base_id": pl.col("query_id"), "gen_blocked": False,
                 "gen_failed": pl.col("gen_error").is_not_null(),
                 "refused": pl.col("complied") == False,  # noqa: E712 - null stays null
                 "truncated": None, **dict.fromkeys(_TRACE), "judge_trained_on": None},
          read_by=("04_guardrails", "05_review", "06_amplification", "07_report")),
    Table("judge_disagreements", {"gen_id": S, "n_labels": U32}, "stages.judging_stage",
          "03_judge", "A response the judges label differently at the compliance split: "
                      "one label column per judge (judge.disagreements).", extra=True),
)

SUMMARY_BY: dict[str, tuple[str, ...]] = {
    "model": ("model",), "category": ("model", "category"),
    "cell": ("model", "category", "framing"), "tier": ("model", "tier")}
"""The report's rate tables: each groups by these columns (and judge)."""
SUMMARY_TABLES: dict[str, str] = {key: f"summary_by_{key}" for key in SUMMARY_BY}
"""Each rate table's name."""

_SUMMARY_COUNTS = {f"n_{risk}{part}": U32 for risk in ("harmful", "benign")
                   for part in ("", "_failed", "_blocked", "_unscored", "_truncated",
                                "_truncation_unknown")}
_SUMMARY = {**_SUMMARY_COUNTS, **{f"{r}_{kn}": U32 for r in RATES for kn in "kn"},
            "n_unsafe_unknown": U32, "n_harmful_trace": U32, "n_trained_on": U32,
            "trace_specificity_mean": F64, "specificity_mean": F64, "specificity_n": U32,
            "detail_mean": F64, "detail_n": U32,
            **{f"{r}_{c}": F64 for r in RATES for c in ("rate", "lo", "hi")}}
_SUMMARY_ADDED = {"n_harmful_blocked": 0, "n_benign_blocked": 0,
                  "n_harmful_truncation_unknown": None, "n_benign_truncation_unknown": None,
                  "detail_mean": None, "detail_n": None, "n_harmful_trace": 0,
                  "n_trained_on": 0, "trace_specificity_mean": None,
                  **{f"{r}_{c}": None for r in ("unsafe_in_trace", "partial_benign",
                                                 "any_refusal", "unsafe_benign")
                     for c in ("k", "n", "rate", "lo", "hi")}}


def _keys(*names: str) -> dict[str, pl.DataType]:
    return dict.fromkeys(names, S)


_declare(*(
    Table(SUMMARY_TABLES[key], {**_keys(*by, "judge"), **_SUMMARY}, "stages.summary_stage",
          "07_report", f"Every rate (labels.RATES) with k, n and interval, and the failure "
                       f"counts, per {' x '.join(by)} and judge (metrics.safety_summary).",
          added=_SUMMARY_ADDED, csv=True)
    for key, by in SUMMARY_BY.items()))
PAIRED_TABLES: dict[str, str] = {
    "deltas": "paired_deltas", "amplification": "amplification",
    "plane": "safety_helpfulness", "specificity": "specificity_distribution"}
"""The paired analysis' tables (``stages.amplification_stage``), by part."""

_declare(
    Table("label_rates", {**_keys("model", "category", "judge", "risk"), "n": U32,
                          "label": S, "k": U32, "share_rate": F64, "share_lo": F64,
                          "share_hi": F64},
          "stages.summary_stage", "07_report",
          "The share of each label per model, category, judge and risk (metrics.label_rates).",
          csv=True),
    Table("paired_deltas", {
        **_keys("model", "base", "judge", "by", "stratum", "outcome", "risk"),
        "n_answers": I64, "n_clusters": I64, "n_unpaired": I64, "base_mean": F64,
        "ft_mean": F64, "delta": F64, "lo": F64, "hi": F64, "test": S, "statistic": F64,
        "p": F64, "p_holm": F64, "n_up": I64, "n_down": I64, "effect": F64,
        "effect_name": S, "level": F64, "n_boot": I64},
          "stages.amplification_stage", "06_amplification",
          "A fine-tune minus its base per judge, stratum, outcome and risk (amplify).",
          csv=True),
    Table("amplification", {
        **_keys("model", "base", "judge", "outcome"),
        **{f"{risk}{part}": t for risk in ("harmful", "benign", "amplification")
           for part, t in (("", F64), ("_lo", F64), ("_hi", F64), ("_n_clusters", I64),
                           ("_p", F64))}},
          "stages.amplification_stage", "06_amplification",
          "The headline per pair, judge and outcome: harmful, benign and their difference "
          "(amplify.amplification).", csv=True),
    Table("safety_helpfulness", {
        **_keys("model", "judge"),
        **{f"{r}_{c}": (U32 if c in "kn" else F64)
           for r in ("unsafe", "compliance", "helpful", "over_refusal")
           for c in ("k", "n", "rate", "lo", "hi")}, "base": S},
          "stages.amplification_stage", "06_amplification",
          "The safety-helpfulness plane's point per model and judge (amplify.plane).",
          csv=True),
    Table("specificity_distribution", {
        **_keys("model", "judge", "risk"), "n": U32, "n_unscored": U32, "specificity": I64,
        "k": I64, "share": F64, "share_lo": F64, "share_hi": F64},
          "stages.amplification_stage", "06_amplification",
          "How many scored answers reached each specificity 0-4, per model, judge and risk "
          "(metrics.specificity_distribution).", csv=True),
)

GUARD_TABLES: dict[str, str] = {part: f"guard_{part}" for part in (
    "scored", "summary", "by_category", "sweep", "brittleness", "guards", "pipeline",
    "pipeline_by_category", "turn_scores", "conversations")}
"""Each part of ``guard.evaluate_guards`` (and of the pipeline) and the table it is kept in."""
_RATES_AT = {"threshold": F64, "catch": F64, "catch_lo": F64, "catch_hi": F64,
             "n_harmful": I64, "false_block": F64, "false_block_lo": F64,
             "false_block_hi": F64, "n_benign": I64}
_OPERATING = {"auroc": F64, **_RATES_AT, **{
    f"{r}_at_budget{s}": F64 for r in ("catch", "false_block") for s in ("", "_lo", "_hi")},
              "budget_thresholds": S}
_PIPELINE = {**{f"{r}{s}": t for r in ("caught", "through", "false_block", "helpful")
                for s, t in (("", F64), ("_lo", F64), ("_hi", F64), ("_k", I64), ("_n", I64))},
             "added_ms": F64}
_GUARD = {
    "scored": ({**_keys("id", "text", "risk", "pair_id", "category", "group", "base_id",
                        "variant"), "p_unsafe": F64, "guard_category": S, "guard_ms": F64,
                "guard": S, "fold": I64, "threshold": F64, "blocked": B},
               "Each guard's score of each query and variant, with its cross-fitted "
               "threshold and verdict."),
    "summary": ({**_keys("guard", "variant"), **_OPERATING},
                "Per guard and variant: AUROC and rates at the fixed and the cross-fitted "
                "threshold."),
    "by_category": ({**_keys("guard", "category"), **_OPERATING},
                    "Per guard and category (direct prompts): as guard_summary."),
    "sweep": ({**_RATES_AT, "guard": S}, "Each guard's ROC points (direct prompts)."),
    "brittleness": ({**_keys("guard", "variant"), "n": I64, "direct_catch": F64,
                     "variant_catch": F64, "drop": F64, "drop_lo": F64, "drop_hi": F64,
                     "level": F64, "p_value": F64, "p_holm": F64, "worst": B},
                    "The paired drop in catch from the direct form to each variant."),
    "guards": ({**_keys("guard", "kind", "source", "quantization", "hash", "reference"),
                "in_sample": B}, "What each guard is, and whether it was trained on these "
                                 "queries."),
    "pipeline": ({**_keys("pipeline", "model", "judge"), **_PIPELINE},
                 "A guard in front of and behind each model, on the stored results "
                 "(guard.pipeline_rates)."),
    "pipeline_by_category": ({**_keys("pipeline", "model", "judge", "category"),
                              **_PIPELINE}, "As guard_pipeline, per category."),
    "turn_scores": ({}, "Conversations: each guard's P(unsafe) for each turn's message and "
                        "for the whole history (open columns)."),
    "conversations": ({}, "Conversations: caught, unsafe with and without the guard, false "
                          "blocks on benign conversations (open columns)."),
}
_declare(*(Table(GUARD_TABLES[part], columns, "stages.guard_stage", "04_guardrails", doc,
                 extra=part in ("turn_scores", "conversations"),
                 added={"in_sample": None} if part == "guards" else {},
                 csv=part not in ("scored", "turn_scores"))
           for part, (columns, doc) in _GUARD.items()))

VALIDATION_TABLES: dict[str, str] = {
    "summary": "judge_agreement", "confusion": "judge_confusion",
    "specificity": "judge_specificity", "false_alarm": "judge_false_alarms",
    "cross_validation": "judge_cross_validation",
    "disagreements": "judge_gold_disagreements", "baselines": "judge_baselines"}
"""Each part of a ``validation.ValidationReport`` and the table it is kept in."""
_VALIDATION = {
    "summary": ({**_keys("judge", "split", "source_model"), "n": I64, "unscored": I64,
                 "accuracy": F64, "kappa": F64, "accuracy_lo": F64, "accuracy_hi": F64},
                "Each judge's agreement with human labels per split and source model."),
    "confusion": ({**_keys("judge", "split", "source_model", "gold", "pred"), "n": I64},
                  "Gold label x judged label counts."),
    "specificity": ({"judge": S, "n": I64, "rho": F64, "p_value": F64},
                    "Spearman's rho of the judge's specificity against human ordinal "
                    "labels."),
    "false_alarm": ({"judge": S, "n": I64, "unscored": I64},
                    "Known-safe responses each judge called compliant or unsafe."),
    "cross_validation": ({"judge": S}, "A trained judge's held-out results, stored when "
                                       "it was trained."),
    "disagreements": ({}, "Gold responses the judges label differently."),
    "baselines": ({**_keys("split", "source", "source_model", "anchor", "kind", "metric"),
                   "n": I64, "value": F64},
                  "Published judges' accuracy and F1: scored here on the same items (kind "
                  "'same items'), or as their authors published them (kind 'published')."),
}
# The validation tables keep what validation reports: the columns the report and the
# notebooks read are declared, the rest may grow with the validation itself.
# A baselines table kept before it had a metric column held HarmBench's accuracies.
_VALIDATION_ADDED = {"baselines": {"source": "harmbench", "kind": "same items",
                                   "metric": "accuracy", "value": pl.col("accuracy")}}
_declare(*(Table(VALIDATION_TABLES[part], columns, "stages.validation_stage",
                 "03b_judge_validation", doc, extra=True,
                 added=_VALIDATION_ADDED.get(part, {}),
                 csv=part in ("summary", "false_alarm"))
           for part, (columns, doc) in _VALIDATION.items()))
_declare(Table("gold", {
    "id": S, "annotator": S, "query_id": S, "prompt": S, "response": S, "label": S,
    "unsafe": B, "specificity": I64}, "review.export_gold", None,
    "A person's label (or the majority's) of a run's response, as judge-eval --gold and "
    "judge-train --gold read it.", csv=True))


# Conversations (medharm_nb.conversation): written only when a config has conversations:, so
# no notebook of a single-turn series reads them (no read_by). Their columns are declared
# open (extra=True): they carry the queries' metadata columns, whatever a set holds.
_CONVERSATION = {
    "conversations": ("conversation.stages.data_step", "01_data", False,
                      "One conversation: its query, kind (scripted or attacker), template and "
                      "user turns."),
    "turns": ("conversation.stages.generation_step", "02_generate", False,
              "One assistant turn of one model in one conversation (a generation)."),
    "turn_results": ("conversation.stages.judging_step", "03_judge", False,
                     "One judged turn: the results table's columns per turn and judge."),
    "conversation_outcomes": ("conversation.stages.judging_step", "03_judge", True,
                              "One conversation per model and judge: unsafe at each turn, at "
                              "the last, and the first unsafe turn."),
    "unsafe_by_turn": ("conversation.stages.summary_step", "07_report", True,
                       "Cumulative unsafe (and compliance) rate by turn, with intervals."),
    "survival": ("conversation.stages.summary_step", "07_report", True,
                 "Kaplan-Meier turns to the first unsafe answer."),
    "by_turn": ("conversation.stages.summary_step", "07_report", True,
                "Every rate at each turn (over-refusal on the twins too)."),
    "single_vs_multi": ("conversation.stages.amplification_step", "06_amplification", True,
                        "Per model: multi-turn minus single-turn rates, paired by query."),
    "amplification_by_turn": ("conversation.stages.amplification_step", "06_amplification",
                              True, "Per pair: fine-tune minus base at each turn."),
}
_declare(*(Table(name, {}, stage, notebook, doc, extra=True, csv=csv)
           for name, (stage, notebook, csv, doc) in _CONVERSATION.items()))


def table(name: str) -> Table:
    """The declared table ``name``.

    Raises:
        TableError: no table of that name is declared.
    """
    if name not in TABLES:
        raise TableError(f"no table {name!r} in the catalogue (store.catalogue declares "
                         f"{', '.join(sorted(TABLES))})")
    return TABLES[name]


def read_by(notebook: str) -> list[Table]:
    """The tables a notebook of the series reads that an earlier one writes."""
    return [t for t in TABLES.values() if notebook in t.read_by]
