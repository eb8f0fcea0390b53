"""Typed readers of a run's tables, in the manner of inspect_ai's ``*_df()``: the one way
metrics, the report, the review views and the notebooks read tables.

Each takes a run (``config.Run``) or its folder and returns the table as the catalogue
declares it (``store.catalogue``): every declared column present and typed, the columns an
older file lacks filled with their declared defaults. ``missing_ok=True`` returns None for
a table the run does not hold yet instead of raising.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from medharm_nb.store.catalogue import (
    GUARD_TABLES,
    PAIRED_TABLES,
    SUMMARY_TABLES,
    VALIDATION_TABLES,
)
from medharm_nb.store.files import has_table, read_table, scan_table
from medharm_nb.store.schema import TableError


def run_folder(run: Any) -> Path:
    """The folder of a run: ``run.run_dir`` for a ``config.Run``, else the path given."""
    return Path(getattr(run, "run_dir", run))


def _read(run: Any, name: str, missing_ok: bool,
          columns: list[str] | None = None) -> pl.DataFrame | None:
    folder = run_folder(run)
    if missing_ok and folder.suffix != ".parquet" and not has_table(folder, name):
        return None
    return read_table(folder, name, columns)


def _part(parts: dict[str, str], part: str, what: str) -> str:
    if part not in parts:
        raise TableError(f"no {what} part {part!r}; the parts are {', '.join(parts)}")
    return parts[part]


def queries_df(run: Any, missing_ok: bool = False) -> pl.DataFrame | None:
    """The run's queries (01_data): one row per query and prompt variant."""
    return _read(run, "queries", missing_ok)


def generations_df(run: Any, missing_ok: bool = False) -> pl.DataFrame | None:
    """The run's current generations (02_generate), failures and blocks included."""
    return _read(run, "generations", missing_ok)


def generation_stats_df(run: Any, missing_ok: bool = False) -> pl.DataFrame | None:
    """What generation did per model the last time it ran (02_generate)."""
    return _read(run, "generation_stats", missing_ok)


def judgements_df(run: Any, missing_ok: bool = False) -> pl.DataFrame | None:
    """The run's verdicts on its current generations (03_judge)."""
    return _read(run, "judgements", missing_ok)


def results_df(run: Any, columns: list[str] | None = None,
               missing_ok: bool = False) -> pl.DataFrame | None:
    """The results table (03_judge): one row per generation and judge; ``run`` may also be
    the table's Parquet file. ``columns``: read only these."""
    return _read(run, "results", missing_ok, columns)


def results_scan(run: Any) -> pl.LazyFrame:
    """The results table as a LazyFrame (nothing read until collected): a run, its folder
    or the table's Parquet file."""
    return scan_table(run_folder(run), "results")


def disagreements_df(run: Any, missing_ok: bool = False) -> pl.DataFrame | None:
    """The responses the run's judges label differently (03_judge)."""
    return _read(run, "judge_disagreements", missing_ok)


def summary_df(run: Any, by: str = "model", missing_ok: bool = False) -> pl.DataFrame | None:
    """A rate table of the report (07_report): ``by`` is ``model``, ``category``, ``cell``
    (category x framing) or ``tier`` (``catalogue.SUMMARY_TABLES``)."""
    return _read(run, _part(SUMMARY_TABLES, by, "summary"), missing_ok)


def label_rates_df(run: Any, missing_ok: bool = False) -> pl.DataFrame | None:
    """The share of each label per model, category and judge (07_report)."""
    return _read(run, "label_rates", missing_ok)


def paired_df(run: Any, part: str = "deltas",
              missing_ok: bool = False) -> pl.DataFrame | None:
    """A table of the paired analysis (06_amplification): ``deltas``, ``amplification``,
    ``plane`` or ``specificity`` (``catalogue.PAIRED_TABLES``)."""
    return _read(run, _part(PAIRED_TABLES, part, "paired-analysis"), missing_ok)


def guard_df(run: Any, part: str, missing_ok: bool = False) -> pl.DataFrame | None:
    """A guard table (04_guardrails): ``summary``, ``sweep``, ``brittleness``, ``guards``,
    ``pipeline`` ... (``catalogue.GUARD_TABLES``)."""
    return _read(run, _part(GUARD_TABLES, part, "guard"), missing_ok)


def validation_df(run: Any, part: str, missing_ok: bool = False) -> pl.DataFrame | None:
    """A judge-validation table (03b_judge_validation): ``summary`` (agreement),
    ``confusion``, ``false_alarm`` ... (``catalogue.VALIDATION_TABLES``)."""
    return _read(run, _part(VALIDATION_TABLES, part, "validation"), missing_ok)


def gold_df(run: Any, missing_ok: bool = False) -> pl.DataFrame | None:
    """The run's human labels as exported for the judge tools (05_review)."""
    return _read(run, "gold", missing_ok)
