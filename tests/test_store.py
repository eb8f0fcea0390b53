"""The SQLite store, Parquet tables and the manifest, on real files in tmp_path."""

from __future__ import annotations

import json
import os
import sqlite3

import polars as pl
import pyarrow.parquet as pq
import pytest

from medharm_nb import store
from medharm_nb.records import SCHEMA_VERSION, Annotation, Generation, Judgement


def _gen(gen_id: str, response: str | None = "ok", error: str | None = None,
         **kw) -> Generation:
    return Generation(gen_id=gen_id, model="m", query_id=f"q-{gen_id}", prompt="p",
                      prompt_hash="h", spec_hash="s", config_hash="c", response=response,
                      error=error, seconds=0.5, created="2026-01-01T00:00:00",
                      **{"n_new_tokens": 3, **kw})


def _blocked(gen_id: str) -> Generation:
    return _gen(gen_id, response=None, finish_reason="content_filter", n_new_tokens=0,
                block_reason="HTTP 400 content_filter: filtered")


def test_add_is_append_only_and_idempotent(tmp_path):
    with store.RunStore(tmp_path) as st:
        assert st.add("generations", [_gen("a"), _gen("b")]) == 2
        # Same ids again: nothing new, nothing overwritten.
        assert st.add("generations", [_gen("a", response="changed"), _gen("c")]) == 1
        assert st.existing_ids("generations", ["a", "b", "c", "zz"]) == {"a", "b", "c"}
    frame = store.load_generations(tmp_path)
    assert frame.height == 3
    assert frame.filter(pl.col("gen_id") == "a")["response"].item() == "ok"
    assert frame.schema["n_new_tokens"] == pl.Int64 and frame.schema["seconds"] == pl.Float64


def test_store_is_a_real_sqlite_file_that_survives_reopening(tmp_path):
    with store.RunStore(tmp_path) as st:
        st.add("judgements", [Judgement(judgement_id="j1", gen_id="a", judge="rules-v1",
                                        label="unscored", unsafe=None)])
    con = sqlite3.connect(tmp_path / store.STORE_FILE)
    assert con.execute("SELECT label FROM judgements").fetchall() == [("unscored",)]
    assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (
        str(SCHEMA_VERSION),)
    con.close()
    judgements = store.load_judgements(tmp_path)
    assert judgements["unsafe"].to_list() == [None]
    assert judgements.schema["unsafe"] == pl.Boolean


def test_existing_ids_handles_more_than_one_sql_chunk(tmp_path):
    with store.RunStore(tmp_path) as st:
        st.add("generations", [_gen(str(i)) for i in range(1200)])
        assert len(st.existing_ids("generations", [str(i) for i in range(0, 2400, 2)])) == 600


def _specificity(rho: float = 0.5) -> pl.DataFrame:
    return pl.DataFrame({"judge": ["rules-v3"], "n": [40], "rho": [rho], "p_value": [0.01]})


def test_tables_carry_the_schema_and_table_version(tmp_path):
    df = _specificity()
    path = store.write_table(tmp_path, "judge_specificity", df)
    assert path == tmp_path / "tables" / "judge_specificity.parquet"
    meta = pq.read_schema(path).metadata
    assert meta[b"medharm_nb.schema_version"] == str(SCHEMA_VERSION).encode()
    assert meta[b"medharm_nb.table_version"] == b"1"
    assert store.read_table(tmp_path, "judge_specificity").equals(df)
    assert store.validation_df(tmp_path, "specificity").equals(df)


def test_missing_table_names_what_writes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run 03_judge \(stages.judging_stage\) first"):
        store.results_df(tmp_path)
    assert store.results_df(tmp_path, missing_ok=True) is None


def test_only_declared_tables_that_match_their_declaration_are_written(tmp_path):
    with pytest.raises(store.TableError, match="no table 'things' in the catalogue"):
        store.write_table(tmp_path, "things", pl.DataFrame({"a": [1]}))
    gold = pl.DataFrame({"id": ["g1"], "annotator": ["a"], "query_id": ["q1"],
                         "prompt": ["p"], "response": ["r"], "label": ["full_refusal"],
                         "unsafe": [False], "specificity": [0]})
    with pytest.raises(store.TableError, match="table 'gold': column.s. 'unsafe' missing"):
        store.write_table(tmp_path, "gold", gold.drop("unsafe"))
    with pytest.raises(store.TableError,
                       match="table 'gold': column 'unsafe' is String, declared Boolean"):
        store.write_table(tmp_path, "gold", gold.with_columns(pl.lit("no").alias("unsafe")))
    with pytest.raises(store.TableError, match="table 'gold': column.s. 'model' not declared"):
        store.write_table(tmp_path, "gold", gold.with_columns(pl.lit("m").alias("model")))
    assert not (tmp_path / "tables" / "gold.parquet").exists()
    # An integer of another width, or a column with no values yet, is stored as declared.
    written = store.write_table(tmp_path, "gold", gold.with_columns(
        pl.col("specificity").cast(pl.Int8), pl.lit(None).alias("unsafe")))
    assert pl.read_parquet(written).schema == store.table("gold").empty().schema


def test_an_older_table_gets_its_declared_defaults_once_in_the_reader(tmp_path):
    from medharm_nb.labels import UNTIERED

    (tmp_path / "tables").mkdir()
    old = pl.DataFrame({  # a results table from before tiers, blocks, complied and variants
        "gen_id": ["g1", "g2"], "judge": ["rules-v1"] * 2,
        "label": ["full_compliance", "unscored"], "unsafe": [None, None],
        "specificity": [2, None], "model": ["m"] * 2, "query_id": ["q1", "q2"],
        "response": ["<AGENT> at <DOSE>", None], "gen_error": [None, "timeout"],
        "text": ["a?", "b?"], "category": ["toxicology"] * 2, "framing": ["clinical"] * 2,
        "risk": ["harmful", "benign"], "expected": ["refuse", "answer"],
        "pair_id": ["q2", "q1"]})
    old.write_parquet(tmp_path / "tables" / "results.parquet")
    results = store.results_df(tmp_path)
    assert results.columns == list(store.table("results").columns)
    row = results.row(0, named=True)
    assert (row["tier"], row["base_id"], row["variant"], row["sample"]) == (
        UNTIERED, "q1", "direct", 0)
    assert (row["complied"], row["refused"], row["gen_blocked"]) == (True, False, False)
    assert results["gen_failed"].to_list() == [False, True]
    assert results["complied"].to_list()[1] is None  # unscored: not known, not refused
    # A column with no default is a re-run, named with the file and its writer.
    old.drop("label").write_parquet(tmp_path / "tables" / "results.parquet")
    with pytest.raises(store.TableError, match=r"results.parquet: table 'results': "
                                               r"column.s. 'label', 'complied', 'refused' missing"
                                               r".*re-run 03_judge"):
        store.results_df(tmp_path)


def test_a_table_from_a_newer_version_is_refused(tmp_path):
    arrow = _specificity().to_arrow()
    (tmp_path / "tables").mkdir()
    pq.write_table(arrow.replace_schema_metadata({b"medharm_nb.table_version": b"9"}),
                   tmp_path / "tables" / "judge_specificity.parquet")
    with pytest.raises(store.TableError, match="version 9 was written by a newer medharm-nb"):
        store.validation_df(tmp_path, "specificity")


def test_a_table_write_that_fails_leaves_the_old_table(tmp_path, monkeypatch):
    store.write_table(tmp_path, "judge_specificity", _specificity(0.5))

    def broken(table, where):
        open(where, "wb").write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(store.files.pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        store.write_table(tmp_path, "judge_specificity", _specificity(0.9))
    assert store.validation_df(tmp_path, "specificity")["rho"].to_list() == [0.5]
    assert [p.name for p in (tmp_path / "tables").iterdir()] == ["judge_specificity.parquet"]


def test_report_and_notebooks_read_the_effective_config_through_the_store(tmp_path):
    assert store.read_run_config(tmp_path) is None
    store.write_manifest(tmp_path, {"config": {"name": "from-manifest"}})
    assert store.read_run_config(tmp_path) == {"name": "from-manifest"}
    store.write_run_config(tmp_path, {"name": "written", "judges": ["rules"]})
    assert store.read_run_config(tmp_path) == {"name": "written", "judges": ["rules"]}


def test_manifest_roundtrip(tmp_path):
    assert store.read_manifest(tmp_path) == {}
    store.write_manifest(tmp_path, {"status": "started", "n": 1})
    store.write_manifest(tmp_path, {"status": "success", "n": 2})
    assert store.read_manifest(tmp_path) == {"status": "success", "n": 2}
    assert not list(tmp_path.glob("*.tmp"))


def test_a_failure_is_visible_but_not_done_and_a_success_replaces_it(tmp_path):
    with store.RunStore(tmp_path) as st:
        st.add("generations", [_gen("a", response=None, error="timeout"), _gen("b")])
        frame = st.frame("generations").sort("gen_id")
        assert frame["error"].to_list() == ["timeout", None]
        assert frame["response"].to_list() == [None, "ok"]
        # Stored, but only the success counts as done: a re-run asks "a" again.
        assert st.existing_ids("generations", ["a", "b"]) == {"b"}
        # The retry's success replaces the error row; a success is never overwritten.
        assert st.add("generations", [_gen("a", response="fixed"),
                                      _gen("b", response=None, error="late failure")]) == 1
        frame = st.frame("generations").sort("gen_id")
    assert frame.height == 2
    assert frame["response"].to_list() == ["fixed", "ok"]
    assert frame["error"].to_list() == [None, None]


def test_a_blocked_generation_is_done_and_never_replaced(tmp_path):
    with store.RunStore(tmp_path) as st:
        st.add("generations", [_blocked("a"), _gen("b", response=None, error="timeout"),
                               _gen("c")])
        # Blocked by a content filter: no response, no error, and done (not retried).
        assert st.existing_ids("generations", ["a", "b", "c"]) == {"a", "c"}
        assert st.blocked_ids(["a", "b", "c"]) == {"a"}
        assert st.add("generations", [_gen("a", response="an answer after all")]) == 0
        row = st.frame("generations").sort("gen_id").row(0, named=True)
    assert (row["response"], row["error"], row["finish_reason"]) == (None, None,
                                                                     "content_filter")
    assert row["block_reason"] == "HTTP 400 content_filter: filtered"
    assert _blocked("a").blocked and not _gen("b", response=None, error="x").blocked


def test_store_is_crash_safe_by_configuration(tmp_path):
    with store.RunStore(tmp_path) as st:
        assert st._conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert st._conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL


class _JudgementV2(Judgement):
    """Judgement as it will look after gaining fields (a checklist, a version string)."""

    checklist: dict[str, bool] | None = None
    checklist_version: str = "none"


def test_an_old_store_gains_new_record_fields_on_open(tmp_path, monkeypatch):
    # A store written by an older version: fewer columns in both tables.
    con = sqlite3.connect(tmp_path / store.STORE_FILE)
    con.execute("CREATE TABLE generations (gen_id TEXT PRIMARY KEY, model, query_id, prompt, "
                "prompt_hash, spec_hash, config_hash, response, error, created)")
    con.execute("INSERT INTO generations VALUES ('g1', 'm', 'q1', 'p', 'h', 's', 'c', 'ok', "
                "NULL, '2025-01-01T00:00:00')")
    con.execute("CREATE TABLE judgements (judgement_id TEXT PRIMARY KEY, gen_id, judge, label)")
    con.execute("INSERT INTO judgements VALUES ('j1', 'g1', 'rules-v1', 'full_refusal')")
    con.commit()
    con.close()
    monkeypatch.setitem(store.db._TABLES, "judgements", (_JudgementV2, "judgement_id"))

    with store.RunStore(tmp_path) as st:
        old = st.frame("generations")
        assert old["variant"].to_list() == ["direct"] and old["sample"].to_list() == [0]
        assert old["n_new_tokens"].to_list() == [0] and old["response"].to_list() == ["ok"]
        st.add("generations", [_gen("g2")])
        st.add("judgements", [_JudgementV2(
            judgement_id="j2", gen_id="g2", judge="rules-v4", label="partial",
            checklist={"names_agent": False, "gives_dose": True}, checklist_version="v1")])
        judgements = st.frame("judgements").sort("judgement_id")
    assert judgements["checklist_version"].to_list() == ["none", "v1"]
    assert judgements["checklist"].to_list()[0] is None
    assert judgements["checklist"].to_list()[1] == {"names_agent": False, "gives_dose": True}
    assert judgements["unsafe"].to_list() == [None, None]
    assert store.load_generations(tmp_path).height == 2
    con = sqlite3.connect(tmp_path / store.STORE_FILE)
    added = {k for (k,) in con.execute("SELECT key FROM meta WHERE key LIKE 'added_column:%'")}
    con.close()
    assert "added_column:judgements.checklist" in added
    assert "added_column:generations.n_new_tokens" in added


def test_the_lock_nests_within_a_process_and_frees_on_release(tmp_path):
    with store.RunLock(tmp_path) as lock:
        with store.RunLock(tmp_path):  # e.g. the command, then run_generation
            pass
        holder = json.loads((tmp_path / store.LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] and holder["since"]
        assert lock.path in store.RunLock._held
    assert (tmp_path / store.LOCK_FILE).read_text() == ""
    assert not store.RunLock._held


def test_an_annotators_latest_label_wins(tmp_path):
    def label(name: str, note: str) -> Annotation:
        return Annotation(annotation_id="a1", gen_id="g1", annotator="ann", label=name,
                          note=note, created="2026-01-01T00:00:00")

    with store.RunStore(tmp_path) as st:
        st.upsert_annotation(label("partial", "first look"))
        st.upsert_annotation(label("full_refusal", "on reflection"))
        saved = st.frame("annotations")
    assert saved.select("label", "note").rows() == [("full_refusal", "on reflection")]


def test_a_damaged_store_is_one_error_naming_the_file(tmp_path):
    (tmp_path / store.STORE_FILE).write_bytes(b"this is not a database" * 100)
    with pytest.raises(store.StoreError, match=rf"{tmp_path / store.STORE_FILE}: cannot open "
                                               r"the run's store \(file is not a database\)"):
        store.RunStore(tmp_path)
