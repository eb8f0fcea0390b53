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

from medharm_nb.store import TABLES, results_scan

TEXT_COLUMNS: tuple[str, ...] = ("gen_id", "text", "response", "gen_error", "block_reason",
                                 "finish_reason")
"""Fetched per response on screen: the query text, the response, why there is none."""
INDEX_COLUMNS: tuple[str, ...] = tuple(
    c for c in TABLES["results"].columns if c == "gen_id" or c not in TEXT_COLUMNS)
"""The index: one row per generation x judge, every column of the results table
(``store.catalogue``) but the texts."""
TURN_COLUMNS = {"index": ("conv_id", "turn"), "text": ("history", "user")}
"""What a conversation turn (``turn_results``) adds: its conversation and turn to the index,
the messages before it and its user message to the texts."""


class ReviewSource:
    """Lazy access to one results table, for the compare and annotation views.

    Args:
        results: A run folder (its ``tables/results.parquet`` is scanned,
            ``store.results_scan``), that Parquet file, a ``metrics.results_table``
            DataFrame or a LazyFrame of one.
        cache_size: Responses whose texts are kept in memory at most.

    Attributes:
        lazy: The results as a LazyFrame (nothing read until a query collects it).
        index: ``INDEX_COLUMNS`` of every row, collected once.
    """

    def __init__(self, results: str | Path | pl.DataFrame | pl.LazyFrame,
                 cache_size: int = 4000):
        if isinstance(results, (str, Path)):
            results = results_scan(results)
        self.lazy = results.lazy()
        schema = self.lazy.collect_schema()
        self.text_columns = [*TEXT_COLUMNS, *(c for c in TURN_COLUMNS["text"] if c in schema)]
        self.index = self.lazy.select(
            *INDEX_COLUMNS, *(c for c in TURN_COLUMNS["index"] if c in schema)).collect()
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
                       .select(self.text_columns).unique("gen_id").collect())
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
            ids = (self.lazy.select("gen_id", "response", "text", "query_id")
                   .filter(hit.fill_null(False))
                   .select("gen_id").unique().collect()["gen_id"])
            self._searches[needle] = frozenset(ids.to_list())
        return self._searches[needle]
