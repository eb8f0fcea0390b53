"""The SQLite store of a run: generations, judgements, guard scores and annotations, keyed
by stable ids (see ``medharm_nb.store`` for what is retried and what is final)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel

from medharm_nb.records import (
    CONTENT_FILTER,
    SCHEMA_VERSION,
    Annotation,
    Generation,
    GuardVerdict,
    Judgement,
)
from medharm_nb.store.files import utc_now
from medharm_nb.store.schema import polars_type

STORE_FILE = "store.sqlite"
_TABLES = {"generations": (Generation, "gen_id"), "judgements": (Judgement, "judgement_id"),
           "annotations": (Annotation, "annotation_id"),
           "guard_scores": (GuardVerdict, "score_id")}
_BLOCKED = f"{{t}}error IS NULL AND {{t}}finish_reason IS '{CONTENT_FILTER}'"
"""Generations a provider's content filter blocked (``Generation.blocked``): done."""
_FAILED = {
    "generations": f"{{t}}error IS NOT NULL OR ({{t}}response IS NULL AND NOT ({_BLOCKED}))",
    # A judge that failed (its model or server erred, or its reply never parsed) has not
    # judged: the verdict is kept, visible as unscored, and asked again on the next run.
    # IFNULL: most verdicts have no flags, and NULL LIKE ... is NULL, which made NOT (...)
    # NULL too: such verdicts were never "done" and every re-run judged them again.
    "judgements": "IFNULL({t}flags, '') LIKE '%judge_error%' "
                  "OR IFNULL({t}flags, '') LIKE '%parse_failed%'",
}
"""Rows that are stored but not done: re-runs retry them and a success replaces them."""
_LATEST_WINS = {"annotations"}
"""Tables where a record replaces the stored one with its id (a person's latest label)."""


class StoreError(RuntimeError):
    """A run's store cannot be opened or read; the message names the file and the cause."""


class RunStore:
    """The SQLite store of one run directory (created on first use, migrated on open)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / STORE_FILE
        try:
            self._open()
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path}: cannot open the run's store ({err}); a damaged "
                             "file can be moved aside, and the run re-run to rebuild it") from None

    def _open(self) -> None:
        """Connect, create the tables and migrate (see ``__init__``)."""
        self._conn = sqlite3.connect(self.path, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed batch survives an OS crash too, not only a killed process; one
        # fsync per batch is nothing next to generating it.
        self._conn.execute("PRAGMA synchronous=FULL")
        for table, (record, key) in _TABLES.items():
            columns = ", ".join(
                f"{name} {'TEXT PRIMARY KEY' if name == key else ''}"
                for name in record.model_fields
            )
            self._conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")
        self._conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                           (str(SCHEMA_VERSION),))
        self._conn.commit()
        for table, (record, _) in _TABLES.items():
            self._add_missing_columns(table, record)

    def _add_missing_columns(self, table: str, record: type[BaseModel]) -> None:
        """Migrate a store written before a record gained fields: add them as columns.

        Old rows read the field's default when it is a plain value, else NULL.
        """
        have = {row[1] for row in self._conn.execute(f"PRAGMA table_info({table})")}
        for name, field in record.model_fields.items():
            if name in have:
                continue
            default = field.default
            literal = ""
            if isinstance(default, (bool, int, float)):
                literal = f" DEFAULT {int(default) if isinstance(default, bool) else default!r}"
            elif isinstance(default, str):
                literal = " DEFAULT '" + default.replace("'", "''") + "'"
            try:
                with self._conn:
                    self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {name}{literal}")
                    self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                       (f"added_column:{table}.{name}", utc_now()))
            except sqlite3.OperationalError as err:
                if "duplicate column" not in str(err):  # another process migrated first
                    raise

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def existing_ids(self, table: str, ids: Iterable[str]) -> set[str]:
        """Return which of ``ids`` are stored in ``table`` and done.

        A failed generation is stored but not done, so it is not returned: the caller
        generates it again.
        """
        done = f"NOT ({_FAILED[table].format(t='')})" if table in _FAILED else "1"
        return self._ids_where(table, ids, done)

    def blocked_ids(self, ids: Iterable[str]) -> set[str]:
        """Return which of the generation ``ids`` are stored as blocked by a content filter
        (done, and counted apart from answers; see ``records.Generation``)."""
        return self._ids_where("generations", ids, _BLOCKED.format(t=""))

    def fetch(self, table: str, ids: Iterable[str]) -> pl.DataFrame:
        """The stored rows of ``table`` whose ids are among ``ids`` (failed ones included),
        with the record's columns and types, in no particular order."""
        record, key = _TABLES[table]
        names = list(record.model_fields)
        wanted = list(dict.fromkeys(ids))
        rows: list[tuple] = []
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows += self._conn.execute(
                f"SELECT {', '.join(names)} FROM {table} WHERE {key} IN ({marks})",
                chunk).fetchall()
        return self._rows_frame(record, names, rows)

    def _ids_where(self, table: str, ids: Iterable[str], condition: str) -> set[str]:
        _, key = _TABLES[table]
        wanted = list(ids)
        found: set[str] = set()
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(
                f"SELECT {key} FROM {table} WHERE {key} IN ({marks}) AND ({condition})", chunk)
            found.update(r[0] for r in rows)
        return found

    def add(self, table: str, records: Sequence[Generation | Judgement]) -> int:
        """Write records in one transaction.

        A stored id is left untouched, except a failed generation, which the new record
        replaces (a retry that succeeded, or failed again with a newer error), and an
        annotation (the person's latest label wins).

        Returns:
            How many rows were written (new, or replacing a failure).
        """
        record, key = _TABLES[table]
        fields = list(record.model_fields)
        rows = [tuple(_to_sql(getattr(r, f)) for f in fields) for r in records]
        insert = (f"INSERT INTO {table} ({', '.join(fields)}) "
                  f"VALUES ({', '.join('?' * len(fields))}) ")
        if table in _FAILED:
            updates = ", ".join(f"{f} = excluded.{f}" for f in fields if f != key)
            failed = _FAILED[table].format(t=f"{table}.")
            sql = insert + f"ON CONFLICT({key}) DO UPDATE SET {updates} WHERE ({failed})"
        else:
            verb = "INSERT OR REPLACE" if table in _LATEST_WINS else "INSERT OR IGNORE"
            sql = insert.replace("INSERT", verb, 1)
        before = self._conn.total_changes
        with self._conn:
            self._conn.executemany(sql, rows)
        return self._conn.total_changes - before

    def upsert_annotation(self, record: Annotation) -> None:
        """Save a person's label, replacing their earlier one for the same generation."""
        self.add("annotations", [record])

    def frame(self, table: str) -> pl.DataFrame:
        """Return a whole table as a DataFrame with the record's columns and types."""
        record, _ = _TABLES[table]
        names = list(record.model_fields)
        rows = self._conn.execute(f"SELECT {', '.join(names)} FROM {table}").fetchall()
        return self._rows_frame(record, names, rows)

    @staticmethod
    def _rows_frame(record: type[BaseModel], names: list[str], rows: list[tuple]
                    ) -> pl.DataFrame:
        """SQL rows of a record's table as a typed DataFrame (JSON columns decoded)."""
        types_ = {n: polars_type(record.model_fields[n].annotation) for n in names}
        nested = [i for i, n in enumerate(names) if types_[n] is None]
        if nested:  # lists and dicts are stored as JSON text
            rows = [tuple(json.loads(v) if i in nested and v is not None else v
                          for i, v in enumerate(row)) for row in rows]
        return pl.DataFrame(
            rows, schema=names, orient="row", infer_schema_length=None,
            schema_overrides={n: t for n, t in types_.items() if t is not None})


def _to_sql(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


def load_generations(run_dir: str | Path) -> pl.DataFrame:
    """Return every generation stored in a run directory, failed ones included.

    Columns are ``Generation``'s fields: ``gen_id``, ``model``, ``query_id``, ``variant``,
    ``sample``, ``response`` (None when failed), ``error`` (None when not), ...
    """
    with RunStore(run_dir) as store:
        return store.frame("generations")


def load_judgements(run_dir: str | Path) -> pl.DataFrame:
    """Return every judgement stored in a run directory."""
    with RunStore(run_dir) as store:
        return store.frame("judgements")
