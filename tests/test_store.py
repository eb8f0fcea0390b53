"""The SQLite store, Parquet tables and the manifest, on real files in tmp_path."""

from __future__ import annotations

import sqlite3

import polars as pl
import pyarrow.parquet as pq
import pytest

from medharm_nb import store
from medharm_nb.records import SCHEMA_VERSION, Generation, Judgement


def _gen(gen_id: str, response: str | None = "ok", error: str | None = None) -> Generation:
    return Generation(gen_id=gen_id, model="m", query_id=f"q-{gen_id}", prompt="p",
                      prompt_hash="h", spec_hash="s", config_hash="c", response=response,
                      error=error, n_new_tokens=3, seconds=0.5, created="2026-01-01T00:00:00")


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


def test_tables_carry_the_schema_version(tmp_path):
    df = pl.DataFrame({"a": [1, 2]})
    path = store.write_table(tmp_path, "things", df)
    assert path == tmp_path / "tables" / "things.parquet"
    meta = pq.read_schema(path).metadata
    assert meta[b"medharm_nb.schema_version"] == str(SCHEMA_VERSION).encode()
    assert store.read_table(tmp_path, "things").equals(df)


def test_missing_table_names_what_writes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the notebook that writes 'results'"):
        store.read_table(tmp_path, "results")


def test_manifest_roundtrip(tmp_path):
    assert store.read_manifest(tmp_path) == {}
    store.write_manifest(tmp_path, {"status": "started", "n": 1})
    store.write_manifest(tmp_path, {"status": "success", "n": 2})
    assert store.read_manifest(tmp_path) == {"status": "success", "n": 2}
    assert not list(tmp_path.glob("*.tmp"))
