"""Guard scores for the compare view's guarded-vs-unguarded mode, from a run's stored texts.

The guard stage's pipeline tables (``guard_pipeline*``) hold rates, not per-item scores,
so the view takes scores as a table (``layout.GUARD_SCORES``); ``guard_scores`` makes one by
running a guard over the stored prompts and responses (one guard pass, no generation).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from medharm_nb.guard import load_guard, score_items
from medharm_nb.guard.base import blocks
from medharm_nb.store import RunStore, results_df


def guard_scores(results: str | Path | pl.DataFrame, guard_name: str = "minilm",
                 stages: Sequence[str] = ("input", "output"),
                 threshold: float = 0.5) -> pl.DataFrame:
    """Score a run's prompts (input guard) and responses (output guard) with one guard.

    Args:
        results: A run folder or its results table (``query_id``, ``text``, ``gen_id``,
            ``response``).
        guard_name: Any ``guard.load_guard`` name.
        stages: ``input`` (the prompt alone) and/or ``output`` (the response in its
            prompt's context).
        threshold: P(unsafe) at or above which the guard blocks.

    Returns:
        ``guard, stage, query_id, gen_id, p_unsafe, blocked``: input rows carry
        ``query_id`` (``gen_id`` null), output rows ``gen_id``.
    """
    run_dir = None
    if not isinstance(results, pl.DataFrame):
        run_dir = Path(results)
        results = results_df(results)
    guard = load_guard(guard_name)
    # A run folder's store keeps the scores (the guard stage's too): nothing scored twice.
    store = RunStore(run_dir) if run_dir is not None else None
    try:
        parts = _score_stages(guard, results, stages, store)
    finally:
        if store is not None:
            store.close()
    return pl.concat(parts).with_columns(blocks(pl.col("p_unsafe"), threshold).alias("blocked"))


def _score_stages(guard, results: pl.DataFrame, stages: Sequence[str], store) -> list:
    parts = []
    if "input" in stages:
        prompts = results.select("query_id", "text").unique("query_id").sort("query_id")
        parts.append(score_items(guard, prompts, target="prompt", store=store).select(
            "guard", pl.lit("input").alias("stage"), "query_id",
            pl.lit(None, pl.String).alias("gen_id"), "p_unsafe"))
    if "output" in stages:
        answers = (results.filter(pl.col("response").is_not_null())
                   .select("gen_id", "text", "response").unique("gen_id").sort("gen_id"))
        parts.append(score_items(guard, answers, target="response", store=store).select(
            "guard", pl.lit("output").alias("stage"), pl.lit(None, pl.String).alias("query_id"),
            "gen_id", "p_unsafe"))
    if not parts:
        raise ValueError("stages must include input and/or output")
    return parts
