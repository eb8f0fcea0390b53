"""All file and database I/O of a run directory: ``db`` (the SQLite store), ``lock`` (the
run folder's lock), ``files`` (tables, manifest, file digests).

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

from medharm_nb.store.db import (
    STORE_FILE,
    RunStore,
    StoreError,
    load_generations,
    load_judgements,
)
from medharm_nb.store.files import (
    MANIFEST_FILE,
    cache_root,
    file_sha256,
    files_digest,
    read_manifest,
    read_table,
    table_path,
    utc_now,
    write_manifest,
    write_table,
)
from medharm_nb.store.lock import LOCK_ENV, LOCK_FILE, RunLock, RunLocked

__all__ = [
    "LOCK_ENV", "LOCK_FILE", "MANIFEST_FILE", "STORE_FILE", "RunLock", "RunLocked", "RunStore",
    "StoreError",
    "cache_root", "file_sha256", "files_digest", "load_generations", "load_judgements",
    "read_manifest", "read_table", "table_path", "utc_now", "write_manifest", "write_table",
]
