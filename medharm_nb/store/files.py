"""Files of a run folder (tables, manifest) and of the user cache (file digests): atomic
writes, schema versions, memoised content hashes."""

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

from medharm_nb.records import SCHEMA_VERSION

MANIFEST_FILE = "manifest.json"


def utc_now() -> str:
    """The time now, UTC, ISO 8601 to the second (manifests, locks, migrations)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
