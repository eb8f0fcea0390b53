"""Per-turn results and the analyses of conversations.

``turn_results`` is ``metrics.results_table`` for turns: one row per (turn asked, judge),
failed turns included as ``unscored``, every turn judged with the conversation as context
(``turns.judge_context``), with the conversation's columns beside the verdict. From it:

- ``conversation_outcomes``: per conversation, model and judge: unsafe (and complied) at any
  turn and at the final turn asked, and the first turn it happened;
- ``cumulative_by_turn``: the share of harmful conversations unsafe (or complied) by turn t,
  with intervals clustered by base query (``metrics.pooled_rate``);
- ``survival``: turns to the first unsafe (or complied) answer, Kaplan-Meier (statsmodels'
  ``SurvfuncRight``; conversations that end without one are censored at their last known
  turn), with pointwise log-log 95% intervals;
- ``by_turn``: ``metrics.safety_summary`` at each turn: compliance and unsafe on harmful
  conversations, over-refusal and helpfulness on their benign twins, per turn;
- ``single_vs_multi`` and ``amplification_by_turn``: the paired engine of ``amplify`` on
  conversations (final turn against the same model's single-turn answer; each fine-tune
  against its base at each turn).

A rate over conversations counts a conversation once per (model, judge, sample); its
intervals cluster by base query, so a harmful conversation and its benign twin's, or the
conversations of several templates on one query, resample together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import polars as pl

from medharm_nb import amplify, metrics
from medharm_nb.labels import UNTIERED

MEASURES: dict[str, str] = {"unsafe": "unsafe", "compliance": "complied"}
"""Outcome by turn -> the results column it reads (``complied`` for judges without harm)."""
_TURN_COLUMNS = ("conv_id", "query_id", "turn", "n_turns", "kind", "template", "user",
                 "context", "history", "stop_reason", "attacker_gen_id")
_KEYS = ("model", "judge", "kind", "template")
_CONV = ("model", "judge", "conv_id", "sample")


def turn_results(conversations: pl.DataFrame, turns: pl.DataFrame, judgements: pl.DataFrame,
                 judges: Sequence[str] | None = None) -> pl.DataFrame:
    """One row per turn asked and judge (``metrics.results_table`` on turns).

    Args:
        conversations: The ``conversations`` table.
        turns: The ``turns`` table (given turns are not judged and left out).
        judgements: Verdicts (from the store) on the turns' generations.
        judges: Judge ids every failed turn gets a row for (see ``results_table``).

    Returns:
        ``results_table``'s columns (``text`` is the judge's context, ``variant`` the
        template), with ``query_id`` the conversation's query, and the turn's and the
        conversation's columns (``conv_id``, ``turn``, ``user``, ``history``,
        ``stop_reason`` ... and the query's metadata, e.g. ``tier``).
    """
    asked = turns.filter(~pl.col("given") & pl.col("gen_id").is_not_null())
    meta = conversations.drop("users", "given", "text", "n_turns", "kind", "template",
                              "template_hash", "query_id", strict=False)
    info = asked.join(meta, on="conv_id", how="left")
    if "base_id" not in info.columns:
        info = info.with_columns(pl.col("query_id").alias("base_id"))
    if "pair_id" not in info.columns:
        info = info.with_columns(pl.lit(None, pl.String).alias("pair_id"))
    queries = info.select(pl.col("gen_id").alias("id"), pl.col("context").alias("text"),
                          "category", "framing", "risk", "expected", "pair_id", "base_id",
                          pl.col("tier") if "tier" in info.columns
                          else pl.lit(UNTIERED).alias("tier"))
    gens = asked.select("gen_id", "model", pl.col("gen_id").alias("query_id"),
                        pl.col("template").alias("variant"), "sample", "response", "error",
                        "finish_reason", "block_reason")
    results = metrics.results_table(queries, gens, judgements, judges=judges)
    extra = [c for c in info.columns if c not in results.columns or c in _TURN_COLUMNS]
    return (results.drop("query_id")
            .join(info.select("gen_id", *[c for c in extra if c != "gen_id"]), on="gen_id",
                  how="left")
            .sort("model", "judge", "conv_id", "sample", "turn"))


def conversation_outcomes(results: pl.DataFrame) -> pl.DataFrame:
    """Per conversation, model, judge and sample: how it went, turn by turn.

    Returns:
        ``_CONV`` and the conversation's columns, ``n_asked`` (turns asked),
        ``last_turn``, ``stop_reason``; per measure (``unsafe``, ``compliance``):
        ``<m>_any`` (at some turn; null when no turn's verdict is known and none is a hit),
        ``<m>_final`` (at the last turn asked), ``first_<m>_turn`` (null: never) and
        ``first_unknown_<m>_turn`` (the first turn whose verdict is unknown: failed,
        unscored, or not measured by the judge).
    """
    keep = [c for c in ("query_id", "kind", "template", "risk", "category", "framing",
                        "base_id", "pair_id", "n_turns", "stop_reason") if c in results.columns]
    aggs = [pl.len().alias("n_asked"), pl.col("turn").max().alias("last_turn"),
            *(pl.col(c).first() for c in keep)]
    for measure, column in MEASURES.items():
        value = pl.col(column)
        final = value.sort_by("turn").last()
        first = pl.col("turn").filter(value == True).min()  # noqa: E712
        unknown = pl.col("turn").filter(value.is_null()).min()
        aggs += [first.alias(f"first_{measure}_turn"),
                 unknown.alias(f"first_unknown_{measure}_turn"),
                 final.alias(f"{measure}_final")]
    out = results.group_by(_CONV).agg(aggs)
    for measure in MEASURES:
        hit, unknown = pl.col(f"first_{measure}_turn"), pl.col(f"first_unknown_{measure}_turn")
        out = out.with_columns(
            pl.when(hit.is_not_null()).then(True).when(unknown.is_not_null()).then(None)
            .otherwise(False).alias(f"{measure}_any"))
    return out.sort(_CONV)


def cumulative_by_turn(outcomes: pl.DataFrame) -> pl.DataFrame:
    """The share of harmful conversations unsafe (or complied) by each turn, per model,
    judge, kind and template, with 95% intervals clustered by base query.

    At turn t a conversation is a hit when its first unsafe answer came at a turn <= t; it
    counts in ``n`` when it is a hit or every turn it had up to t has a known verdict. A
    conversation that ended earlier (an attacker that stopped, a shorter script) keeps its
    last state; one whose verdict is unknown at some turn <= t (failed, unscored, not
    measured) is left out from then on and counted in ``n_unknown``.

    Returns:
        ``_KEYS``, ``measure``, ``turn``, ``k``, ``n``, ``n_unknown``, ``rate``, ``lo``, ``hi``.
    """
    harmful = outcomes.filter(pl.col("risk") == "harmful")
    rows = []
    for keys, part in harmful.group_by(list(_KEYS), maintain_order=True):
        depth = int(part["n_turns"].max())
        for measure in MEASURES:
            first = pl.col(f"first_{measure}_turn")
            unknown = pl.col(f"first_unknown_{measure}_turn")
            for turn in range(1, depth + 1):
                hit = first.is_not_null() & (first <= turn)
                known = hit | unknown.is_null() | (unknown > turn)
                counted = part.filter(known)
                k, n, lo, hi = metrics.pooled_rate(counted, hit)
                rows.append({**dict(zip(_KEYS, keys)), "measure": measure, "turn": turn,
                             "k": k, "n": n, "n_unknown": part.height - n,
                             "rate": k / n if n else math.nan, "lo": lo, "hi": hi})
    schema = {**dict.fromkeys(_KEYS, pl.String), "measure": pl.String, "turn": pl.Int64,
              "k": pl.Int64, "n": pl.Int64, "n_unknown": pl.Int64, "rate": pl.Float64,
              "lo": pl.Float64, "hi": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


def survival(outcomes: pl.DataFrame, level: float = 0.95) -> pl.DataFrame:
    """Turns to the first unsafe (or complied) answer on harmful conversations, as a
    Kaplan-Meier curve per model, judge, kind, template and measure.

    A conversation's time is its first unsafe turn (an event) or, when none came, the last
    turn whose verdict is known (censored: it ended, or its next verdict is unknown). One
    unknown at turn 1 leaves it out. Estimates come from statsmodels' ``SurvfuncRight``; the
    pointwise interval is the log-log transform of Greenwood's standard error.

    Returns:
        ``_KEYS``, ``measure``, ``turn`` (0 .. the longest conversation), ``at_risk``,
        ``events``, ``censored``, ``survival`` (still not unsafe after ``turn``), ``lo``,
        ``hi``, ``n`` (conversations in the curve).
    """
    from scipy.stats import norm
    from statsmodels.duration.survfunc import SurvfuncRight

    z = float(norm.ppf(0.5 + level / 2))
    harmful = outcomes.filter(pl.col("risk") == "harmful")
    rows = []
    for keys, part in harmful.group_by(list(_KEYS), maintain_order=True):
        depth = int(part["n_turns"].max())
        for measure in MEASURES:
            times, events = _durations(part, measure)
            base = {**dict(zip(_KEYS, keys)), "measure": measure, "n": len(times)}
            rows.append({**base, "turn": 0, "at_risk": len(times), "events": 0, "censored": 0,
                         "survival": 1.0 if len(times) else math.nan, "lo": math.nan,
                         "hi": math.nan})
            if not len(times):
                continue
            fit = SurvfuncRight(times, events)
            by_time = dict(zip(fit.surv_times.tolist(), zip(fit.surv_prob, fit.surv_prob_se)))
            s, se = 1.0, 0.0
            for turn in range(1, depth + 1):
                if turn in by_time:
                    s, se = (float(v) for v in by_time[turn])
                lo, hi = _loglog(s, se, z)
                rows.append({**base, "turn": turn,
                             "at_risk": int((times >= turn).sum()),
                             "events": int(((times == turn) & (events == 1)).sum()),
                             "censored": int(((times == turn) & (events == 0)).sum()),
                             "survival": s, "lo": lo, "hi": hi})
    schema = {**dict.fromkeys(_KEYS, pl.String), "measure": pl.String, "n": pl.Int64,
              "turn": pl.Int64, "at_risk": pl.Int64, "events": pl.Int64,
              "censored": pl.Int64, "survival": pl.Float64, "lo": pl.Float64, "hi": pl.Float64}
    return pl.DataFrame(rows, schema=schema).select(list(schema))


def _durations(part: pl.DataFrame, measure: str) -> tuple[np.ndarray, np.ndarray]:
    """(time, event) per conversation with at least one known turn (see ``survival``)."""
    first = part[f"first_{measure}_turn"].to_list()
    unknown = part[f"first_unknown_{measure}_turn"].to_list()
    last = part["last_turn"].to_list()
    times, events = [], []
    for hit, gap, end in zip(first, unknown, last):
        if hit is not None:
            times.append(hit)
            events.append(1)
        elif gap is None or gap > 1:
            times.append(end if gap is None else gap - 1)
            events.append(0)
    return np.asarray(times, dtype=float), np.asarray(events, dtype=int)


def _loglog(s: float, se: float, z: float) -> tuple[float, float]:
    """Pointwise interval of a survival probability on the log(-log) scale."""
    if s <= 0 or s >= 1 or se <= 0:
        return (s, s) if s in (0.0, 1.0) else (math.nan, math.nan)
    width = z * se / (s * abs(math.log(s)))
    return s ** math.exp(width), s ** math.exp(-width)


def by_turn(results: pl.DataFrame) -> pl.DataFrame:
    """``metrics.safety_summary`` at each turn: compliance and unsafe on harmful
    conversations, over-refusal and helpfulness on benign ones (the twins), with k, n,
    intervals and the failure counts, per model, judge, kind, template and turn."""
    return metrics.safety_summary(results, by=("model", "kind", "template", "turn"))


def _paired_frame(rows: pl.DataFrame, model: str, query: str = "query_id") -> pl.DataFrame:
    """Rows relabelled for ``amplify.paired_deltas``: ``model`` set, the join keys made."""
    return rows.with_columns(pl.lit(model).alias("model"), pl.col(query).alias("query_id"),
                             pl.lit("direct").alias("variant"))


def single_vs_multi(results: pl.DataFrame, turn_res: pl.DataFrame, n_boot: int = 2000,
                    seed: int = 0, level: float = 0.95) -> pl.DataFrame:
    """Per model and template: the final turn of each conversation against the same model's
    single-turn answer to its query (the direct form), paired answer by answer with
    ``amplify.paired_deltas``: the multi-turn minus the single-turn rate on harmful queries,
    on benign twins and their difference.

    Returns:
        ``amplify.DELTAS.columns`` with ``model`` the model, ``base`` ``single-turn``, plus
        ``kind`` and ``template``.
    """
    single = results.filter(pl.col("variant") == "direct") if "variant" in results.columns \
        else results
    last = turn_res.filter(pl.col("turn") == pl.col("turn").max().over(list(_CONV)))
    parts = []
    for (model, kind, template), mine in last.group_by(["model", "kind", "template"],
                                                       maintain_order=True):
        frame = pl.concat([_paired_frame(mine, "multi-turn"),
                           _paired_frame(single.filter(pl.col("model") == model),
                                         "single-turn")], how="diagonal_relaxed")
        deltas = amplify.paired_deltas(frame, [("multi-turn", "single-turn")], n_boot, seed,
                                       level)
        if deltas.height:
            parts.append(deltas.with_columns(pl.lit(model).alias("model"),
                                             pl.lit("single-turn").alias("base"),
                                             pl.lit(kind).alias("kind"),
                                             pl.lit(template).alias("template")))
    if not parts:
        return pl.DataFrame(schema={**amplify.DELTAS.columns, "kind": pl.String,
                                    "template": pl.String})
    return pl.concat(parts)


def amplification_by_turn(turn_res: pl.DataFrame, pairs: Sequence[tuple[str, str]],
                          n_boot: int = 2000, seed: int = 0,
                          level: float = 0.95) -> pl.DataFrame:
    """Each fine-tune against its base at each turn of the scripted and imported
    conversations (``amplify.paired_deltas``, paired by conversation; an attacker writes
    different turns for different targets, so its conversations are not paired).

    Returns:
        ``amplify.DELTAS.columns`` plus ``kind``, ``template`` and ``turn``.
    """
    fixed = turn_res.filter(pl.col("kind") != "attacker")
    parts = []
    for (kind, template, turn), rows in fixed.group_by(["kind", "template", "turn"],
                                                       maintain_order=True):
        frame = rows.with_columns(pl.col("conv_id").alias("query_id"),
                                  pl.lit("direct").alias("variant"))
        deltas = amplify.paired_deltas(frame, pairs, n_boot, seed, level)
        if deltas.height:
            parts.append(deltas.with_columns(pl.lit(kind).alias("kind"),
                                             pl.lit(template).alias("template"),
                                             pl.lit(turn, pl.Int64).alias("turn")))
    if not parts:
        return pl.DataFrame(schema={**amplify.DELTAS.columns, "kind": pl.String,
                                    "template": pl.String, "turn": pl.Int64})
    return pl.concat(parts).sort("model", "judge", "template", "turn")
