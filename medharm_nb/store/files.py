"""Files of a run folder (tables, manifest, effective config) and of the user cache (file
digests): atomic writes checked against the catalogue, schema and table versions, memoised
content hashes."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import yaml

from medharm_nb.records import SCHEMA_VERSION
from medharm_nb.store.catalogue import table
from medharm_nb.store.schema import TableError

MANIFEST_FILE = "manifest.json"
CONFIG_FILE = "config.yaml"
"""The effective config the runner leaves in a run folder, paths made absolute."""


def utc_now() -> str:
    """The time now, UTC, ISO 8601 to the second (manifests, locks, migrations)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def table_path(run_dir: str | Path, name: str) -> Path:
    """Path of a declared table under ``run_dir/tables`` (``catalogue.TABLES``)."""
    return table(name).path(run_dir)


def write_table(run_dir: str | Path, name: str, df: pl.DataFrame) -> Path:
    """Write a declared table as Parquet, with the schema and table versions in its metadata
    (and as CSV too where the catalogue says so, for summaries people open in a
    spreadsheet).

    The frame must match the table's declaration (``catalogue.Table.conform``). The file is
    written beside the target and renamed over it, so a crash leaves the old table or the
    new one, never half of one.

    Raises:
        TableError: an undeclared table, or a frame that does not match its declaration
            (naming the table and the column).
    """
    declared = table(name)
    df = declared.conform(df)
    path = declared.path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrow = df.to_arrow()
    meta = dict(arrow.schema.metadata or {})
    meta[b"medharm_nb.schema_version"] = str(SCHEMA_VERSION).encode()
    meta[TABLE_VERSION_KEY] = str(declared.version).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(arrow.replace_schema_metadata(meta), tmp)
        _fsync(tmp)
        tmp.replace(path)
        if declared.csv:
            nested = [c for c, t in df.schema.items() if t.is_nested()]
            df.drop(nested).write_csv(tmp)
            tmp.replace(path.with_suffix(".csv"))
    finally:
        tmp.unlink(missing_ok=True)
    return path


TABLE_VERSION_KEY = b"medharm_nb.table_version"
"""Parquet metadata key of the catalogue version a table file was written at."""


def scan_table(source: str | Path, name: str) -> pl.LazyFrame:
    """A declared table as a LazyFrame, as the catalogue declares it: columns an older file
    lacks filled with their defaults, every declared column of its declared type.

    Args:
        source: A run folder, or the table's Parquet file itself.
        name: The table's name.

    Raises:
        FileNotFoundError: no such file yet (naming the notebook that writes it).
        TableError: an undeclared table, or a file that lacks a column with no default, has
            one of another type, or comes from a newer version (naming file and column).
    """
    declared = table(name)
    path = Path(source)
    if path.suffix != ".parquet":
        path = declared.path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist yet: run {declared.writer} first (or the whole series "
            f"with `medharm-nb run CONFIG`)")
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise TableError(f"{path}: not a readable Parquet table ({err})") from None
    version = int(meta.get(TABLE_VERSION_KEY, b"1"))
    if version > declared.version:
        raise TableError(f"{path}: table {name!r} version {version} was written by a newer "
                         f"medharm-nb (this one reads version {declared.version})")
    frame = declared.upgrade(pl.scan_parquet(path))
    # A column an older version wrote and this one no longer declares is left behind.
    kept = {c: t for c, t in frame.collect_schema().items()
            if c in declared.columns or declared.extra}
    try:
        declared.check(kept)
    except TableError as err:
        raise TableError(f"{path}: {err}; re-run {declared.writer} to rewrite it") from None
    extra = [c for c in kept if c not in declared.columns]
    return frame.select(*(pl.col(c).cast(t) for c, t in declared.columns.items()), *extra)


def read_table(source: str | Path, name: str,
               columns: list[str] | None = None) -> pl.DataFrame:
    """A declared table (``scan_table``), all of its columns or ``columns`` only."""
    frame = scan_table(source, name)
    return (frame.select(columns) if columns else frame).collect()


def has_table(run_dir: str | Path, name: str) -> bool:
    """Whether the run folder holds the declared table ``name``."""
    return table(name).path(run_dir).exists()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """Return the run's manifest, or an empty dict when there is none."""
    path = Path(run_dir) / MANIFEST_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def read_run_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's effective config as written: ``config.yaml`` in the run folder (what the
    runner left), else the manifest's copy; None when the folder has neither."""
    path = Path(run_dir) / CONFIG_FILE
    if path.is_file():
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    return read_manifest(run_dir).get("config")


def write_run_config(run_dir: str | Path, config: dict[str, Any]) -> Path:
    """Write the run's effective config (``config.yaml``: what every notebook reads)."""
    path = Path(run_dir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


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
