"""Which responses people label, in which order: sampling plans over the results index.

A plan is deterministic: the same results, strategy, size and seed give the same items in the
same order, so several annotators opening the notebook label the same responses, and a kernel
restart finds its place again. Each plan has a ``plan_id`` (a hash of its settings and items)
that every annotation made from it records.

Strategies:

- ``stratified``: equal shares of every model x category cell (``by``), drawn at random
  within each cell, interleaved so that stopping early still leaves a balanced sample.
- ``disagreement``: responses on which the judges split first (on refused vs complied, then
  on the label or the unsafe flag), the rest stratified after them.
- ``uncertain``: uncertain verdicts first: a judge could not decide (``unscored``), then the
  closest P(unsafe) to 0.5 over the judges that give one; the rest stratified after them.

The presentation order is shuffled within blocks of ``BLOCK`` items, so the order gives
nothing away (a round-robin over models would otherwise say which model comes next) while
the priority of a strategy still holds block by block.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from medharm_nb.records import stable_hash
from medharm_nb.review.layout import disagreements

STRATEGIES: dict[str, str] = {
    "stratified": "equal shares of each model x category, at random",
    "disagreement": "judge disagreements first",
    "uncertain": "uncertain verdicts first",
}
BLOCK = 20
"""Items shuffled together in the presentation order."""


@dataclass(frozen=True)
class Plan:
    """What to label, in order.

    Attributes:
        plan_id: Hash of the strategy, seed, size, strata and the items in order.
        strategy: One of ``STRATEGIES``.
        seed: Seed of every random choice.
        by: Columns defining the strata.
        items: One row per response to label, in presentation order: ``gen_id``, ``model``,
            ``category``, ``query_id``, ``risk``, ``stratum``, ``disagreement`` and
            ``uncertainty`` (``candidates``).
    """

    plan_id: str
    strategy: str
    seed: int
    by: tuple[str, ...]
    items: pl.DataFrame

    @property
    def size(self) -> int:
        """How many responses the plan holds."""
        return self.items.height

    @property
    def gen_ids(self) -> list[str]:
        """The responses in presentation order."""
        return self.items["gen_id"].to_list()


def candidates(index: pl.DataFrame) -> pl.DataFrame:
    """One row per labellable response (generated, not failed nor blocked): its strata
    fields, ``disagreement`` (``layout.disagreements``: 0-2) and ``uncertainty``
    (0 when a judge left it unscored, else min over judges of ``|P(unsafe) - 0.5|``; null
    when no judge gives a probability)."""
    answered = index.filter(~pl.col("gen_failed").fill_null(False)
                            & ~pl.col("gen_blocked").fill_null(False))
    turn = [c for c in ("conv_id", "turn") if c in index.columns]  # conversation turns
    per_gen = answered.group_by("gen_id").agg(
        pl.col("model", "category", "query_id", "risk", "framing", "variant", *turn).first(),
        (pl.col("label") == "unscored").any().alias("_unscored"),
        (pl.col("p_unsafe") - 0.5).abs().min().alias("_dist"))
    return (per_gen.join(disagreements(index).select("gen_id", "disagreement"), on="gen_id",
                         how="left")
            .with_columns(pl.col("disagreement").fill_null(0),
                          pl.when(pl.col("_unscored")).then(0.0).otherwise(pl.col("_dist"))
                          .alias("uncertainty"))
            .drop("_unscored", "_dist").sort("gen_id"))


def round_robin(frame: pl.DataFrame, by: Sequence[str], seed: int) -> pl.DataFrame:
    """``frame`` shuffled within each stratum and interleaved across strata (one from each
    stratum, in a seeded stratum order, then the next round), with a ``stratum`` column."""
    keyed = frame.with_columns(pl.concat_str([pl.col(c).cast(pl.String).fill_null("-")
                                              for c in by], separator=" × ").alias("stratum"))
    strata = sorted(keyed["stratum"].unique().to_list())
    random.Random(seed).shuffle(strata)
    rank = {s: i for i, s in enumerate(strata)}
    shuffled = keyed.sort("gen_id").sample(fraction=1.0, shuffle=True, seed=seed)
    return (shuffled.with_columns(pl.int_range(pl.len()).over("stratum").alias("_round"),
                                  pl.col("stratum").replace_strict(rank).alias("_rank"))
            .sort("_round", "_rank").drop("_round", "_rank"))


def make_plan(index: pl.DataFrame, strategy: str = "stratified", size: int = 200,
              seed: int = 0, by: Sequence[str] = ("model", "category")) -> Plan:
    """Draw a sampling plan (see the module doc).

    Args:
        index: ``ReviewSource.index`` of the run.
        strategy: One of ``STRATEGIES``.
        size: Responses to label at most (fewer when the run has fewer).
        seed: Seed of every random choice: the same seed gives every annotator the same plan.
        by: Strata of the stratified draw (and of the tail of the other strategies).

    Raises:
        ValueError: an unknown strategy, or a size below 1.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown sampling strategy {strategy!r}; known: "
                         f"{', '.join(STRATEGIES)}")
    if size < 1:
        raise ValueError("a plan needs size >= 1")
    ordered = round_robin(candidates(index), by, seed).with_row_index("_rr")
    if strategy == "disagreement":
        ordered = ordered.sort(-pl.col("disagreement"), "_rr")
    elif strategy == "uncertain":
        ordered = ordered.sort(pl.col("uncertainty"), "_rr", nulls_last=True)
    chosen = ordered.head(size).drop("_rr")
    rng = random.Random(seed)
    order = []
    for start in range(0, chosen.height, BLOCK):
        block = list(range(start, min(start + BLOCK, chosen.height)))
        rng.shuffle(block)
        order += block
    items = chosen.select(pl.all().gather(order))
    plan_id = stable_hash(strategy, seed, size, list(by), items["gen_id"].to_list(), length=12)
    return Plan(plan_id, strategy, seed, tuple(by), items)
