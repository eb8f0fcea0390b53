"""What each stage of the series adds when a run config has ``conversations:``.

The stages in ``medharm_nb.stages`` call these; each returns None (and writes nothing) for a
run without conversations, so the single-turn series is unchanged.

=====================  ===================  ==============================================
step                   called by            writes
=====================  ===================  ==============================================
``data_step``          ``data_stage``       ``conversations``
``generation_step``    ``generation_stage`` ``turns`` (its stats join ``generation_stats``)
``judging_step``       ``judging_stage``    ``turn_results``, ``conversation_outcomes``
``guard_step``         ``guard_stage``      ``guard_turn_scores``, ``guard_conversations``
``amplification_step`` ``amplification_...``  ``single_vs_multi``, ``amplification_by_turn``
``summary_step``       ``summary_stage``    ``unsafe_by_turn``, ``survival``, ``by_turn``
=====================  ===================  ==============================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import polars as pl

from medharm_nb import judge, store
from medharm_nb.conversation import results as conv_results
from medharm_nb.conversation.attacker import attack
from medharm_nb.conversation.build import build_conversations
from medharm_nb.conversation.guard import guarded_conversations, score_turns
from medharm_nb.conversation.turns import converse
from medharm_nb.generate import GenStats, make_backend

if TYPE_CHECKING:
    from medharm_nb.config import Run


def has_conversations(run: Run) -> bool:
    """The run's config asks conversations."""
    return run.config.conversations is not None


def data_step(run: Run, queries: pl.DataFrame) -> pl.DataFrame | None:
    """Build the run's conversations from its queries (and imported file); write
    ``conversations``. None without conversations."""
    if not has_conversations(run):
        return None
    conversations = build_conversations(queries, run.config.conversations)
    store.write_table(run.run_dir, "conversations", conversations)
    return conversations


def stop_judge(run: Run):
    """The attacker's stop judge (loaded), or None without an attacker."""
    attacker = run.config.conversations.attacker if has_conversations(run) else None
    if attacker is None:
        return None
    return judge.load_judge(attacker.judge or run.config.judges[0])


def generation_step(run: Run, st: store.RunStore, progress: bool = True
                    ) -> list[GenStats] | None:
    """Ask every model every conversation, turn by turn (the attacker's too); write
    ``turns``. Run inside the generation stage's lock, with its store.

    Returns:
        One ``GenStats`` per model and kind of conversation (and per attacker and target),
        or None without conversations.
    """
    if not has_conversations(run):
        return None
    conversations = store.read_table(run.run_dir, "conversations")
    settings = run.config.conversations
    attacked = settings.attacker is not None and conversations.filter(
        pl.col("kind") == "attacker").height > 0
    stopper = stop_judge(run) if attacked else None
    writer = make_backend(settings.attacker.model) if attacked else None
    stats, frames = [], []
    config = run.config.generation
    for spec in run.config.models:
        backend = make_backend(spec)
        if conversations.filter(pl.col("kind") != "attacker").height:
            own, turns = converse(conversations, spec, config, st, backend, progress)
            stats.append(own)
            frames.append(turns)
        if attacked:
            pair, turns = attack(conversations, spec, config, settings.attacker, stopper, st,
                                 backend, writer, progress)
            stats += pair
            frames.append(turns)
    store.write_table(run.run_dir, "turns", pl.concat(frames, how="vertical_relaxed"))
    return stats


def judging_step(run: Run, loaded: Sequence, st: store.RunStore,
                 progress: bool = True) -> pl.DataFrame | None:
    """Judge every answered turn with each judge, the conversation as context (stored
    verdicts reused, failed ones retried); write ``turn_results`` and
    ``conversation_outcomes``. Run inside the judging stage's lock, with its store.

    Returns:
        ``turn_results``, or None without conversations.
    """
    if not has_conversations(run):
        return None
    conversations = store.read_table(run.run_dir, "conversations")
    turns = store.read_table(run.run_dir, "turns")
    asked = turns.filter(~pl.col("given") & pl.col("gen_id").is_not_null()).select(
        "gen_id", pl.col("context").alias("prompt"), "response", "error")
    for j in loaded:
        done = st.existing_ids("judgements", judge.judgement_ids(j, asked))
        judge.judge_generations(j, asked, progress=progress, done=done,
                                save=lambda part: st.add("judgements", part))
    ids = [j.id for j in loaded]
    judgements = st.frame("judgements").filter(
        pl.col("gen_id").is_in(asked["gen_id"].implode()) & pl.col("judge").is_in(ids))
    results = conv_results.turn_results(conversations, turns, judgements, judges=ids)
    store.write_table(run.run_dir, "turn_results", results)
    store.write_table(run.run_dir, "conversation_outcomes",
                      conv_results.conversation_outcomes(results))
    return results


def guard_step(run: Run, guards: dict, st: store.RunStore,
               threshold: float = 0.5) -> dict[str, pl.DataFrame] | None:
    """Score every turn with each guard, on its message and on the whole history
    (``conversation.guard``), and what that does to whole conversations.

    Returns:
        ``turn_scores`` and (with turn results) ``conversations``, for the guard stage to
        write as ``guard_turn_scores`` and ``guard_conversations``; None without turns.
    """
    if not has_conversations(run) or not store.table_path(run.run_dir, "turns").exists():
        return None
    turns = store.read_table(run.run_dir, "turns")
    scores = pl.concat([score_turns(g, turns, st, threshold) for g in guards.values()])
    out = {"turn_scores": scores}
    if store.table_path(run.run_dir, "turn_results").exists():
        out["conversations"] = guarded_conversations(
            scores, store.read_table(run.run_dir, "turn_results"))
    return out


def amplification_step(run: Run, results: pl.DataFrame, n_boot: int = 2000, seed: int = 0,
                       level: float = 0.95) -> dict[str, pl.DataFrame] | None:
    """Single- vs multi-turn deltas per model and amplification by turn per pair; write
    ``single_vs_multi`` and ``amplification_by_turn``. None without turn results."""
    if not has_conversations(run) or not store.table_path(run.run_dir, "turn_results").exists():
        return None
    turn_res = store.read_table(run.run_dir, "turn_results")
    tables = {
        "single_vs_multi": conv_results.single_vs_multi(results, turn_res, n_boot, seed, level),
        "amplification_by_turn": conv_results.amplification_by_turn(
            turn_res, run.config.pairs, n_boot, seed, level),
    }
    for name, table in tables.items():
        store.write_table(run.run_dir, name, table)
    return tables


def summary_step(run_dir) -> dict[str, pl.DataFrame] | None:
    """The by-turn rate tables from ``turn_results`` (cumulative unsafe and compliance by
    turn, Kaplan-Meier turns to failure, every rate at each turn); written as Parquet and
    CSV. None when the run folder holds no turn results."""
    if not store.table_path(run_dir, "turn_results").exists():
        return None
    turn_res = store.read_table(run_dir, "turn_results")
    outcomes = conv_results.conversation_outcomes(turn_res)
    tables = {"unsafe_by_turn": conv_results.cumulative_by_turn(outcomes),
              "survival": conv_results.survival(outcomes),
              "by_turn": conv_results.by_turn(turn_res)}
    for name, table in tables.items():
        store.write_table(run_dir, name, table)
    return tables


# -- what the notebooks show ------------------------------------------------------------------

NONE = "no conversations in this run (add a conversations: section to the config)"


def overview(run_dir) -> pl.DataFrame | str:
    """Conversations per kind, template and risk, with their turns (01_data)."""
    if not store.table_path(run_dir, "conversations").exists():
        return NONE
    return (store.read_table(run_dir, "conversations")
            .group_by("kind", "template", "risk")
            .agg(pl.len().alias("conversations"), pl.col("n_turns").max().alias("turns"))
            .sort("kind", "template", "risk"))


def example(run_dir, risk: str = "harmful") -> pl.DataFrame | str:
    """The user turns of the first scripted conversation on a ``risk`` query (01_data)."""
    if not store.table_path(run_dir, "conversations").exists():
        return NONE
    rows = store.read_table(run_dir, "conversations").filter(
        (pl.col("kind") == "scripted") & (pl.col("risk") == risk)).sort("conv_id")
    if rows.is_empty():
        return f"no scripted conversation on a {risk} query"
    first = rows.row(0, named=True)
    return pl.DataFrame({"conv_id": first["conv_id"], "turn": range(1, first["n_turns"] + 1),
                         "user": first["users"]})


def turn_overview(run_dir) -> pl.DataFrame | str:
    """Per model, kind and template: conversations, turns asked, failed turns and why the
    conversations ended (02_generate)."""
    if not store.table_path(run_dir, "turns").exists():
        return NONE
    turns = store.read_table(run_dir, "turns")
    ends = (turns.unique(["model", "conv_id", "sample"])
            .group_by("model", "kind", "template", "stop_reason").len()
            .pivot(on="stop_reason", index=["model", "kind", "template"], values="len")
            .fill_null(0))
    asked = turns.group_by("model", "kind", "template").agg(
        pl.struct("conv_id", "sample").n_unique().alias("conversations"),
        (~pl.col("given")).sum().alias("turns_asked"),
        pl.col("error").is_not_null().sum().alias("turns_failed"))
    return asked.join(ends, on=["model", "kind", "template"]).sort("model", "kind",
                                                                    "template")


def labels_by_turn(run_dir) -> pl.DataFrame | str:
    """Labels per model, judge, template, risk and turn, one column per label (03_judge)."""
    if not store.table_path(run_dir, "turn_results").exists():
        return NONE
    return (store.read_table(run_dir, "turn_results")
            .pivot(on="label", index=["model", "judge", "template", "risk", "turn"],
                   values="gen_id", aggregate_function="len")
            .fill_null(0).sort("model", "judge", "template", "risk", "turn"))
