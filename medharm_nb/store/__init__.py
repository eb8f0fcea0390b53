"""All file and database I/O of a run directory: ``db`` (the SQLite store), ``lock`` (the
run folder's lock), ``files`` (tables, manifest, config, file digests), ``catalogue`` (every
table a run writes, declared once; ``schema``: what a declaration is) and ``readers`` (the
typed readers of those tables).

A run lives in ``runs/<name>/``::

    manifest.json        who/when/what: config, commit, versions, hashes, status per notebook
    config.yaml          the effective config every notebook of the run reads
    store.sqlite         generations, judgements, guard scores and annotations, keyed by
                         stable ids
    run.lock             held (flock) by the one process (series, generation, stage) writing here
    tables/*.parquet     the tidy tables each stage writes, each declared in ``catalogue``
                         (columns, types, version, writer; schema and table version in the
                         metadata) and read through ``readers`` (``results_df(run)`` ...)
    notebooks/*.ipynb    executed copies of the notebook series

The tables, by the stage that writes them (``catalogue.TABLES`` has each one's columns)::

    01_data              queries
    02_generate          generations, generation_stats
    03_judge             judgements, results, judge_disagreements
    03b_judge_validation judge_agreement, judge_confusion, judge_specificity,
                         judge_false_alarms, judge_cross_validation,
                         judge_gold_disagreements, judge_baselines
    04_guardrails        guard_scored, guard_summary, guard_by_category, guard_sweep,
                         guard_brittleness, guard_guards, guard_pipeline,
                         guard_pipeline_by_category
    05_review            gold (review.export_gold)
    06_amplification     paired_deltas, amplification, safety_helpfulness,
                         specificity_distribution
    07_report            summary_by_model, summary_by_category, summary_by_cell,
                         summary_by_tier, label_rates

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

from medharm_nb.store.catalogue import (
    GUARD_TABLES,
    PAIRED_TABLES,
    SUMMARY_BY,
    SUMMARY_TABLES,
    TABLES,
    VALIDATION_TABLES,
    table,
)
from medharm_nb.store.db import (
    STORE_FILE,
    RunStore,
    StoreError,
    load_generations,
    load_judgements,
)
from medharm_nb.store.files import (
    CONFIG_FILE,
    MANIFEST_FILE,
    cache_root,
    file_sha256,
    files_digest,
    has_table,
    read_manifest,
    read_run_config,
    read_table,
    scan_table,
    table_path,
    utc_now,
    write_manifest,
    write_run_config,
    write_table,
)
from medharm_nb.store.lock import LOCK_ENV, LOCK_FILE, RunLock, RunLocked
from medharm_nb.store.readers import (
    disagreements_df,
    generation_stats_df,
    generations_df,
    gold_df,
    guard_df,
    judgements_df,
    label_rates_df,
    paired_df,
    queries_df,
    results_df,
    results_scan,
    run_folder,
    summary_df,
    validation_df,
)
from medharm_nb.store.schema import Table, TableError

__all__ = [
    "CONFIG_FILE", "GUARD_TABLES", "LOCK_ENV", "LOCK_FILE", "MANIFEST_FILE", "PAIRED_TABLES",
    "STORE_FILE", "SUMMARY_BY", "SUMMARY_TABLES", "TABLES", "VALIDATION_TABLES", "RunLock",
    "RunLocked", "RunStore", "StoreError", "Table", "TableError",
    "cache_root", "disagreements_df", "file_sha256", "files_digest", "generation_stats_df",
    "generations_df", "gold_df", "guard_df", "has_table", "judgements_df", "label_rates_df",
    "load_generations", "load_judgements", "paired_df", "queries_df", "read_manifest",
    "read_run_config", "read_table", "results_df", "results_scan", "run_folder",
    "scan_table", "summary_df", "table", "table_path", "utc_now", "validation_df",
    "write_manifest", "write_run_config", "write_table",
]
