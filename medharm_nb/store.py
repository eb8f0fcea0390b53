"""All file and database I/O of a run directory.

A run lives in ``runs/<name>/``::

    manifest.json        who/when/what: config, commit, versions, hashes, status per notebook
    store.sqlite         generations, judgements, guard scores and annotations, keyed by
                         stable ids
    run.lock             held (flock) by the one process (series, generation, stage) writing here
    tables/*.parquet     the tidy tables each stage writes (schema version in the metadata)
    notebooks/*.ipynb    executed copies of the notebook series

Crash safety: the store is SQLite in WAL mode with ``synchronous=FULL``, and every batch is
one transaction, so ``kill -9`` (or a power cut) at any moment loses at most the batch in
flight and a re-run skips everything already stored. Tables and the manifest are written to
a temporary file and renamed over the old one, so a reader never sees half a file.

Writes never overwrite a result: a record whose id is stored is left alone, except a
*failed* generation (``error`` set) or a judgement whose judge failed (flag ``judge_error``
or ``parse_failed``), which is stored so it is visible but is not done: the next run retries
it and its success replaces the failed row. A *blocked* generation (a provider's content
filter; ``finish_reason`` content_filter, no error) is done: it is a result, and asking again
would only be blocked again.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import sys
import types
import typing
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
from pydantic import BaseModel

from medharm_nb.records import (
    CONTENT_FILTER,
    SCHEMA_VERSION,
    Annotation,
    Generation,
    GuardVerdict,
    Judgement,
)

STORE_FILE = "store.sqlite"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = "run.lock"
LOCK_ENV = "MEDHARM_RUN_LOCK"
"""Environment variable by which a lock holder lets its child processes (the notebook kernels
of a ``medharm-nb run``) work inside its lock."""
_TABLES = {"generations": (Generation, "gen_id"), "judgements": (Judgement, "judgement_id"),
           "annotations": (Annotation, "annotation_id"),
           "guard_scores": (GuardVerdict, "score_id")}
_BLOCKED = f"{{t}}error IS NULL AND {{t}}finish_reason IS '{CONTENT_FILTER}'"
"""Generations a provider's content filter blocked (``Generation.blocked``): done."""
_FAILED = {
    "generations": f"{{t}}error IS NOT NULL OR ({{t}}response IS NULL AND NOT ({_BLOCKED}))",
    # A judge that failed (its model or server erred, or its reply never parsed) has not
    # judged: the verdict is kept, visible as unscored, and asked again on the next run.
    "judgements": "{t}flags LIKE '%judge_error%' OR {t}flags LIKE '%parse_failed%'",
}
"""Rows that are stored but not done: re-runs retry them and a success replaces them."""
_LATEST_WINS = {"annotations"}
"""Tables where a record replaces the stored one with its id (a person's latest label)."""


def utc_now() -> str:
    """The time now, UTC, ISO 8601 to the second (manifests, locks, migrations)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunStore:
    """The SQLite store of one run directory (created on first use, migrated on open)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / STORE_FILE
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
        types_ = {n: _polars_type(record.model_fields[n].annotation) for n in names}
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


def _polars_type(annotation: Any) -> pl.DataType | None:
    """Polars type of a scalar record field (optional or not); None for lists and dicts."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(inner) != 1:
            return None
        annotation = inner[0]
    if typing.get_origin(annotation) is typing.Literal:
        annotation = type(typing.get_args(annotation)[0])
    return {bool: pl.Boolean, int: pl.Int64, float: pl.Float64, str: pl.String}.get(annotation)


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


# -- the lock -----------------------------------------------------------------------------

class RunLocked(RuntimeError):
    """Another process holds the run directory's lock; the message names it."""


class RunLock:
    """An exclusive lock on a run directory: one writer at a time, for a whole series.

    ``medharm-nb run`` holds it from before its manifest is written until the last notebook
    has finished, so a second ``run`` (or ``generate``, or a notebook opened by hand) on the
    same folder is refused instead of rewriting the manifest, config or tables under it.
    The notebook kernels the series starts are its children: the holder puts a token in the
    environment (``LOCK_ENV``) and in the lock file, and a process that carries the holder's
    token works inside the lock instead of being refused.

    It is an ``flock`` on ``<run_dir>/run.lock``: the kernel releases it when the holder
    exits, however it exits, so a lock left by a killed process never blocks. The file holds
    who took it (pid, host, time, purpose, command) for the message a refused process prints.
    Taking it again in the same process nests (the command, then ``run_generation``, then
    ``generate`` each take it). POSIX only.

    Use as a context manager::

        with RunLock(run_dir, purpose="run"):
            ...  # raises RunLocked on entry while another process holds it
    """

    _held: dict[Path, list] = {}  # lock file -> [fd, depth, pid, token], this process's locks

    def __init__(self, run_dir: str | Path, purpose: str = "generate"):
        self.path = (Path(run_dir) / LOCK_FILE).resolve()
        self.purpose = purpose

    @property
    def token(self) -> str | None:
        """The token this process holds the lock with (None when it does not hold it)."""
        held = self._held.get(self.path)
        return held[3] if held and held[2] == os.getpid() else None

    def acquire(self) -> RunLock:
        """Take the lock without waiting.

        Raises:
            RunLocked: another process holds it; the message names pid, host and start.
        """
        import fcntl
        import secrets

        held = self._held.get(self.path)
        if held and held[2] == os.getpid():
            held[1] += 1
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            inherited = os.environ.get(LOCK_ENV)
            if inherited and holder.get("token") == inherited:
                # A child of the holder (a notebook kernel of its series): inside its lock.
                self._held[self.path] = [None, 1, os.getpid(), inherited]
                return self
            raise RunLocked(_locked_message(self.path.parent, holder)) from None
        token = secrets.token_hex(8)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now(),
                "purpose": self.purpose, "command": " ".join(sys.argv), "token": token}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError:  # the note is for messages only; never keep a lock we can't track
            os.close(fd)
            raise
        self._held[self.path] = [fd, 1, os.getpid(), token]
        return self

    def check(self) -> None:
        """Raise ``RunLocked`` if another process holds the lock; take it not, create nothing."""
        if self.path.exists():
            with self:
                pass

    def release(self) -> None:
        """Release one level of the lock (the last one unlocks the file)."""
        import fcntl

        held = self._held.get(self.path)
        if not held or held[2] != os.getpid():
            return
        held[1] -= 1
        if held[1] == 0:
            del self._held[self.path]
            if held[0] is None:  # inherited from the parent: the parent's to release
                return
            os.ftruncate(held[0], 0)  # an empty file: nobody holds it
            fcntl.flock(held[0], fcntl.LOCK_UN)
            os.close(held[0])

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _locked_message(run_dir: Path, holder: dict[str, Any]) -> str:
    who = (f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"
           if holder else "a process that is still starting")
    command = f" ({holder['command']})" if holder.get("command") else ""
    doing = {"run": "running the notebook series in it", "generate": "generating into it"}.get(
        holder.get("purpose", "generate"), f"working in it ({holder.get('purpose')})")
    return (f"{run_dir} is in use: another process is {doing}: {who}{command}. "
            f"Wait for it to finish or stop it, then run again; nothing was written. "
            f"(A lock left by a killed process frees itself.)")


# -- tables -----------------------------------------------------------------------------

def table_path(run_dir: str | Path, name: str) -> Path:
    """Path of a stage's Parquet table under ``run_dir/tables``."""
    return Path(run_dir) / "tables" / f"{name}.parquet"


def write_table(run_dir: str | Path, name: str, df: pl.DataFrame, csv: bool = False) -> Path:
    """Write a table as Parquet, with the schema version in its metadata (and as CSV too,
    for summary tables people open in a spreadsheet).

    The file is written beside the target and renamed over it, so a crash leaves the old
    table or the new one, never half of one.
    """
    path = table_path(run_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrow = df.to_arrow()
    meta = dict(arrow.schema.metadata or {})
    meta[b"medharm_nb.schema_version"] = str(SCHEMA_VERSION).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(arrow.replace_schema_metadata(meta), tmp)
        _fsync(tmp)
        tmp.replace(path)
        if csv:
            nested = [c for c, t in df.schema.items() if t.is_nested()]
            df.drop(nested).write_csv(tmp)
            tmp.replace(path.with_suffix(".csv"))
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_table(run_dir: str | Path, name: str) -> pl.DataFrame:
    """Read a stage's table; the error says which notebook writes it when it is missing."""
    path = table_path(run_dir, name)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist yet: run the notebook that writes '{name}' first "
            f"(or the whole series with `medharm-nb run CONFIG`)")
    return pl.read_parquet(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- manifest ---------------------------------------------------------------------------

def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """Return the run's manifest, or an empty dict when there is none."""
    path = Path(run_dir) / MANIFEST_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def write_manifest(run_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Write the manifest atomically (a crash never leaves half a file)."""
    path = Path(run_dir) / MANIFEST_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
        _fsync(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def files_digest(files: Iterable[str | Path]) -> str | None:
    """One digest of several files' names and contents (a model's weights and adapter);
    None for no files."""
    found = sorted(Path(f) for f in files)
    if not found:
        return None
    return hashlib.sha256(json.dumps([(f.name, file_sha256(f)) for f in found])
                          .encode()).hexdigest()[:16]


def cache_root() -> Path:
    """The user cache folder: ``$MEDHARM_CACHE``, else ``~/.cache/medharm-nb``."""
    return Path(os.environ.get("MEDHARM_CACHE") or "~/.cache/medharm-nb").expanduser()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, remembered per path, size and modification time.

    Model weights are hashed for every cache key and manifest; an 8B model is 16 GB, so the
    digest is kept in memory and in ``cache_root()/file_hashes.json`` and read again only
    when the file's size or modification time changes (a retrained adapter written into the
    same folder gets a new digest, never the old one).
    """
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return _file_digest(str(resolved), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    key = f"{path}|{size}|{mtime_ns}"
    known = _read_hash_cache()
    if key in known:
        return known[key]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    value = digest.hexdigest()
    if size >= _PERSIST_ABOVE:
        _write_hash_cache(key, value)
    return value


_PERSIST_ABOVE = 1 << 24
"""Files of 16 MB and more have their digests kept on disk (smaller ones hash in ms)."""


def _hash_cache_path() -> Path:
    return cache_root() / "file_hashes.json"


def _read_hash_cache() -> dict[str, str]:
    try:
        return json.loads(_hash_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _write_hash_cache(key: str, value: str) -> None:
    """Add one digest to the on-disk cache; a failure to write only costs a re-hash later."""
    path = _hash_cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        known = _read_hash_cache()
        known[key] = value
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        tmp.replace(path)
    except OSError:
        pass
