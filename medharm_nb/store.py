"""All file and database I/O of a run directory.

A run lives in ``runs/<name>/``::

    manifest.json        who/when/what: config, commit, versions, hashes, status per notebook
    store.sqlite         generations and judgements, append-only, keyed by stable ids
    tables/*.parquet     the tidy tables each stage writes (schema version in the metadata)
    notebooks/*.ipynb    executed copies of the notebook series

Writes are append-only (``INSERT OR IGNORE`` on the record's id) and committed per batch, so
a crash loses at most the batch in flight and a re-run skips everything already stored.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from medharm_nb.records import SCHEMA_VERSION, Generation, Judgement

STORE_FILE = "store.sqlite"
MANIFEST_FILE = "manifest.json"
_TABLES = {"generations": (Generation, "gen_id"), "judgements": (Judgement, "judgement_id")}


class RunStore:
    """The SQLite store of one run directory (created on first use)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / STORE_FILE
        self._conn = sqlite3.connect(self.path, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
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

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def existing_ids(self, table: str, ids: Iterable[str]) -> set[str]:
        """Return which of ``ids`` are already stored in ``table``."""
        _, key = _TABLES[table]
        wanted = list(ids)
        found: set[str] = set()
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(
                f"SELECT {key} FROM {table} WHERE {key} IN ({marks})", chunk)
            found.update(r[0] for r in rows)
        return found

    def add(self, table: str, records: Sequence[Generation | Judgement]) -> int:
        """Append records in one transaction; ids already present are left untouched.

        Returns:
            How many rows were new.
        """
        record, _ = _TABLES[table]
        fields = list(record.model_fields)
        rows = [tuple(_to_sql(getattr(r, f)) for f in fields) for r in records]
        before = self._conn.total_changes
        with self._conn:
            self._conn.executemany(
                f"INSERT OR IGNORE INTO {table} ({', '.join(fields)}) "
                f"VALUES ({', '.join('?' * len(fields))})", rows)
        return self._conn.total_changes - before

    def frame(self, table: str) -> pl.DataFrame:
        """Return a whole table as a DataFrame with the record's column types."""
        record, _ = _TABLES[table]
        cursor = self._conn.execute(f"SELECT * FROM {table}")
        names = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
        schema = {n: _polars_type(record, n) for n in names}
        return pl.DataFrame(rows, schema=schema, orient="row")


def _to_sql(value: Any) -> Any:
    return int(value) if isinstance(value, bool) else value


def _polars_type(record, name: str) -> pl.DataType:
    annotation = str(record.model_fields[name].annotation)
    if "bool" in annotation:
        return pl.Boolean
    if "int" in annotation:
        return pl.Int64
    if "float" in annotation:
        return pl.Float64
    return pl.String


def load_generations(run_dir: str | Path) -> pl.DataFrame:
    """Return every generation stored in a run directory."""
    with RunStore(run_dir) as store:
        return store.frame("generations")


def load_judgements(run_dir: str | Path) -> pl.DataFrame:
    """Return every judgement stored in a run directory."""
    with RunStore(run_dir) as store:
        return store.frame("judgements")


# -- tables -----------------------------------------------------------------------------

def table_path(run_dir: str | Path, name: str) -> Path:
    """Path of a stage's Parquet table under ``run_dir/tables``."""
    return Path(run_dir) / "tables" / f"{name}.parquet"


def write_table(run_dir: str | Path, name: str, df: pl.DataFrame) -> Path:
    """Write a table as Parquet, with the schema version in its metadata."""
    path = table_path(run_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrow = df.to_arrow()
    meta = dict(arrow.schema.metadata or {})
    meta[b"medharm_nb.schema_version"] = str(SCHEMA_VERSION).encode()
    pq.write_table(arrow.replace_schema_metadata(meta), path)
    return path


def read_table(run_dir: str | Path, name: str) -> pl.DataFrame:
    """Read a stage's table; the error says which notebook writes it when it is missing."""
    path = table_path(run_dir, name)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist yet: run the notebook that writes '{name}' first "
            f"(or the whole series with `medharm-nb run CONFIG`)")
    return pl.read_parquet(path)


# -- manifest ---------------------------------------------------------------------------

def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """Return the run's manifest, or an empty dict when there is none."""
    path = Path(run_dir) / MANIFEST_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def write_manifest(run_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Write the manifest atomically (a crash never leaves half a file)."""
    path = Path(run_dir) / MANIFEST_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)
    return path
