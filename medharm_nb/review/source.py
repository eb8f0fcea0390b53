"""A run's results, read for reviewing: a small index in memory, texts only when on screen.

A study's ``results`` table holds tens of thousands of responses, most of their bytes in the
texts. The views never load it whole: ``ReviewSource`` scans the Parquet file lazily (polars),
keeps an *index* of the short columns (ids, labels, flags, query fields: what filters,
sampling and side-by-side layouts need) and fetches the texts of the responses on screen, a
page at a time, into a bounded cache. A free-text search is one lazy scan of the two text
columns, remembered per search string.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import polars as pl

from medharm_nb.records import CHECKLIST
from medharm_nb.store import table_path

INDEX_COLUMNS: dict[str, pl.DataType] = {
    "gen_id": pl.String, "judge": pl.String, "label": pl.String, "complied": pl.Boolean,
    "unsafe": pl.Boolean, "p_unsafe": pl.Float64, "specificity": pl.Int64,
    **dict.fromkeys(CHECKLIST, pl.Boolean),
    "model": pl.String, "query_id": pl.String, "variant": pl.String, "sample": pl.Int64,
    "category": pl.String, "framing": pl.String, "risk": pl.String, "expected": pl.String,
    "pair_id": pl.String, "base_id": pl.String, "gen_failed": pl.Boolean,
    "gen_blocked": pl.Boolean, "truncated": pl.Boolean, "conv_id": pl.String, "turn": pl.Int64,
}
"""The index: one row per generation x judge, every column but the texts. A column the
results lack (an older table, a hand-made frame) is filled with nulls (``variant`` with
``direct``, ``base_id`` with the query id, the flags with False); ``conv_id`` and ``turn``
are set only for conversation turns (``turn_results``)."""

TEXT_COLUMNS: dict[str, pl.DataType] = {
    "gen_id": pl.String, "text": pl.String, "response": pl.String, "gen_error": pl.String,
    "block_reason": pl.String, "finish_reason": pl.String, "history": pl.String,
    "user": pl.String,
}
"""Fetched per response on screen: the query text, the response, why there is none (and for
a conversation turn, the messages before it and its user message)."""

_DEFAULTS = {"variant": pl.lit("direct"), "base_id": pl.col("query_id"), "sample": pl.lit(0),
             "gen_failed": pl.lit(False), "gen_blocked": pl.lit(False)}


def _columns(schema: pl.Schema, wanted: dict[str, pl.DataType]) -> list[pl.Expr]:
    """Select ``wanted`` from a frame with ``schema``, filling what it lacks."""
    out = []
    for name, dtype in wanted.items():
        if name in schema:
            out.append(pl.col(name).cast(dtype))
        else:
            out.append(_DEFAULTS.get(name, pl.lit(None)).cast(dtype).alias(name))
    return out


class ReviewSource:
    """Lazy access to one results table, for the compare and annotation views.

    Args:
        results: A run folder (its ``tables/results.parquet`` is scanned), a Parquet path, a
            ``metrics.results_table`` DataFrame or a LazyFrame of one.
        cache_size: Responses whose texts are kept in memory at most.

    Attributes:
        lazy: The results as a LazyFrame (nothing read until a query collects it).
        index: ``INDEX_COLUMNS`` of every row, collected once.
    """

    def __init__(self, results: str | Path | pl.DataFrame | pl.LazyFrame,
                 cache_size: int = 4000):
        if isinstance(results, (str, Path)):
            path = Path(results)
            if path.is_dir():
                path = table_path(path, "results")
            if not path.exists():
                raise FileNotFoundError(f"{path} does not exist yet: run 03_judge first (or the "
                                        f"series with `medharm-nb run CONFIG`)")
            results = pl.scan_parquet(path)
        self.lazy = results.lazy()
        schema = self.lazy.collect_schema()
        self._text_exprs = _columns(schema, TEXT_COLUMNS)
        self.index = self.lazy.select(_columns(schema, INDEX_COLUMNS)).collect()
        self._cache: OrderedDict[str, dict] = OrderedDict()
        self._cache_size = cache_size
        self._searches: dict[str, frozenset[str]] = {}

    def values(self, column: str) -> list:
        """The distinct non-null values of an index column, sorted."""
        return self.index[column].drop_nulls().unique().sort().to_list()

    def texts(self, gen_ids: Iterable[str]) -> dict[str, dict]:
        """``TEXT_COLUMNS`` of each response, by gen_id; fetches (one scan) those not cached.

        Unknown ids are left out of the answer.
        """
        wanted = list(dict.fromkeys(gen_ids))
        missing = [g for g in wanted if g not in self._cache]
        if missing:
            fetched = (self.lazy.filter(pl.col("gen_id").is_in(missing))
                       .select(self._text_exprs).unique("gen_id").collect())
            for row in fetched.iter_rows(named=True):
                self._cache[row["gen_id"]] = row
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        out = {}
        for g in wanted:
            if g in self._cache:
                self._cache.move_to_end(g)
                out[g] = self._cache[g]
        return out

    def cached(self, gen_ids: Iterable[str]) -> bool:
        """Whether the texts of all these responses are in memory (no scan needed)."""
        return all(g in self._cache for g in gen_ids)

    def search(self, needle: str) -> frozenset[str]:
        """Gen ids whose response or query text contains ``needle`` (case-insensitive, literal;
        also matched against the query id). An empty needle matches nothing."""
        needle = needle.strip().lower()
        if not needle:
            return frozenset()
        if needle not in self._searches:
            hit = pl.lit(False)
            for column in ("response", "text", "query_id"):
                hit = hit | pl.col(column).str.to_lowercase().str.contains(needle, literal=True)
            exprs = [e for e in self._text_exprs if e.meta.output_name() in
                     ("gen_id", "response", "text")]
            ids = (self.lazy.select(*exprs, pl.col("query_id")).filter(hit.fill_null(False))
                   .select("gen_id").unique().collect()["gen_id"])
            self._searches[needle] = frozenset(ids.to_list())
        return self._searches[needle]
