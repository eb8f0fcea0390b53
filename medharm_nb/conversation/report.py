"""The report's "by turn" section: conversations, turn by turn (``report.build`` calls it)."""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

import polars as pl

from medharm_nb import store
from medharm_nb.conversation import plots

CLUSTERED = ("95% intervals: Wilson's, on the effective sample size of conversations "
             "clustered by base query (metrics.clustered_interval)")
WEAK_ATTACKER = ("The attacker is a model playing the user; a small one (the embedded "
                 "SmolLM2-135M) is a weak attacker: its rows show that the harness works, not "
                 "how a target holds up against a capable one.")


def _read(run_dir: Path, name: str) -> pl.DataFrame | None:
    path = store.table_path(run_dir, name)
    return pl.read_parquet(path) if path.exists() else None


def _judges(df: pl.DataFrame) -> str:
    return ", ".join(sorted(df["judge"].unique().to_list()))


def turns_section(doc, run_dir: Path, table: Callable[..., str]) -> None:
    """Add the section to a report being built.

    Args:
        doc: The report (``add``, ``lack`` and ``figure`` as in ``report``).
        run_dir: The run folder.
        table: Renders a DataFrame as an HTML table (``table(df, columns)``).
    """
    doc.add("<h2>By turn: conversations</h2>")
    cumulative, curves = _read(run_dir, "unsafe_by_turn"), _read(run_dir, "survival")
    if cumulative is None or cumulative.is_empty():
        doc.lack("by turn", "no conversation tables (unsafe_by_turn, survival): add a "
                            "conversations: section to the config and run 03_judge")
        return
    measure = plots.pick_measure(cumulative)
    word = plots.MEASURE_TITLES[measure]
    shown = cumulative.filter((pl.col("measure") == measure) & (pl.col("n") > 0))
    doc.add("<p>Each conversation's user turns lead up to its query's request; every answer "
            "is judged with the user's earlier turns as context. A conversation counts once "
            "per model and judge; one that ended early (an attacker that stopped, a failed "
            "turn) keeps its last state.</p>")
    if "attacker" in cumulative["kind"].to_list():
        doc.add(f"<p class=\"missing\">{html.escape(WEAK_ATTACKER)}</p>")
    doc.figure(plots.unsafe_by_turn(cumulative, measure),
               f"Share of harmful conversations with an answer {word} at or before each turn, "
               f"per model, judge and template. n = {int(shown['n'].max())} conversations per "
               f"point (at most; n_unknown in tables/unsafe_by_turn.csv are outside it). "
               f"Judges: {_judges(shown)}. Error bars: {CLUSTERED}.")
    if curves is not None and curves.filter(pl.col("n") > 0).height:
        n = curves.filter((pl.col("measure") == measure) & (pl.col("turn") == 0)
                          & (pl.col("n") > 0))
        doc.figure(plots.survival_curve(curves, measure),
                   f"Turns to the first {word} answer on harmful conversations, Kaplan-Meier "
                   f"(statsmodels SurvfuncRight); a conversation without one is censored at "
                   f"its last judged turn. n = {int(n['n'].max())} conversations per curve "
                   f"(at most). Judges: {_judges(n)}. Bands: pointwise 95% intervals "
                   f"(Greenwood, log-log).")
    by_turn = _read(run_dir, "by_turn")
    if by_turn is not None and by_turn["over_refusal_n"].sum():
        doc.add("<h3>Over-refusal by turn on the benign twins</h3><p>The same templates on "
                "the benign twins: the share refused at each turn (and answered on topic), "
                f"{CLUSTERED}.</p>" + table(
                    by_turn.filter(pl.col("over_refusal_n") > 0),
                    ["model", "judge", "template", "turn", "over_refusal_k", "over_refusal_n",
                     "over_refusal_rate", "over_refusal_lo", "over_refusal_hi",
                     "helpful_rate", "n_benign_failed"]))
    _paired(doc, run_dir, table)
    _guards(doc, run_dir, table)


def _paired(doc, run_dir: Path, table: Callable[..., str]) -> None:
    """Single- vs multi-turn deltas per model, amplification by turn per pair."""
    columns = ["model", "base", "judge", "template", "outcome", "risk", "n_clusters",
               "base_mean", "ft_mean", "delta", "lo", "hi", "p"]
    single = _read(run_dir, "single_vs_multi")
    if single is not None and single.filter(pl.col("n_answers") > 0).height:
        pooled = single.filter((pl.col("by") == "all") & (pl.col("n_answers") > 0)
                               & (pl.col("outcome") != "specificity"))
        doc.add("<h3>Multi-turn against single-turn, per model</h3><p>Each conversation's "
                "last turn against the same model's answer to its query asked alone, paired "
                "query by query (amplify's engine: <code>base_mean</code> single-turn, "
                "<code>ft_mean</code> multi-turn); harmful, benign and their difference, "
                "with cluster-bootstrap 95% intervals.</p>" + table(pooled, columns))
    amp = _read(run_dir, "amplification_by_turn")
    if amp is not None and amp.filter(pl.col("n_answers") > 0).height:
        pooled = amp.filter((pl.col("by") == "all") & (pl.col("n_answers") > 0)
                            & (pl.col("risk") == "difference"))
        doc.add("<h3>Amplification by turn</h3><p>Each fine-tune minus its base at each "
                "turn of the scripted conversations: harmful delta minus benign delta "
                "(tables/amplification_by_turn.csv has both).</p>"
                + table(pooled, ["model", "base", "judge", "template", "turn", "outcome",
                                 "n_clusters", "delta", "lo", "hi", "p"]))


def _guards(doc, run_dir: Path, table: Callable[..., str]) -> None:
    """Guards on each turn and on the whole history: caught, let through, false blocks."""
    guarded = _read(run_dir, "guard_conversations")
    if guarded is None or guarded.is_empty():
        doc.lack("guards on conversations", "no guard_conversations table: run "
                                            "04_guardrails on a run with conversations")
        return
    doc.add("<h3>Guards on conversations</h3><p>An input guard reading each user message "
            "alone (<code>turn</code>) or the transcript so far (<code>history</code>), at "
            "a fixed threshold of 0.5 (none is chosen on these data). <code>caught</code>: "
            "harmful conversations blocked at some turn; <code>unsafe_guarded</code> against "
            "<code>unsafe_unguarded</code>: harmful conversations with an unsafe answer "
            "before the block, and without the guard; <code>false_block</code>: benign "
            f"conversations blocked, the cost. {CLUSTERED}.</p>" + table(
                guarded.filter(pl.col("false_block_n") + pl.col("caught_n") > 0),
                ["guard", "mode", "model", "judge", "template", "caught_rate", "caught_n",
                 "unsafe_unguarded_rate", "unsafe_guarded_rate", "unsafe_guarded_n",
                 "false_block_rate", "false_block_lo", "false_block_hi", "false_block_n"]))
