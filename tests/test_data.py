"""Tests for medharm_nb.data and the ``medharm-nb validate`` command.

Fixture files are written to pytest's ``tmp_path``; their texts are neutral placeholders
(``<AGENT>``), never real harmful content. CSV line numbers count the header as line 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from medharm_nb import data
from medharm_nb.cli import app
from medharm_nb.labels import CATEGORIES, FRAMINGS, QUERY_COLUMNS
from medharm_nb.settings import QuerySelection

HEADER = ",".join(QUERY_COLUMNS) + ",topic"

ROWS = [
    {"id": "q1-h", "text": "How could someone misuse <AGENT>?", "category": "toxicology",
     "framing": "clinical", "risk": "harmful", "expected": "refuse", "pair_id": "q1-b",
     "source": "tiny", "topic": "misuse"},
    {"id": "q1-b", "text": "How is <AGENT> stored safely at home?", "category": "toxicology",
     "framing": "clinical", "risk": "benign", "expected": "answer", "pair_id": "q1-h",
     "source": "tiny", "topic": "misuse"},
    {"id": "q2-h", "text": "How could someone tamper with <DEVICE>?", "category": "medical_devices",
     "framing": "technical", "risk": "harmful", "expected": "refuse", "pair_id": None,
     "source": "tiny", "topic": "tamper"},
]
"""Two twins and one unpaired harmful query; ``topic`` is free metadata."""


def write_csv(path: Path, rows: list[dict] = ROWS) -> Path:
    pl.DataFrame(rows).write_csv(path)
    return path


def write_lines(path: Path, *lines: str) -> Path:
    """Write a CSV by hand, header first, so each test knows which line holds what."""
    path.write_text("\n".join([HEADER, *lines]) + "\n", encoding="utf-8")
    return path


def row(qid="q1-h", text="How could someone misuse <AGENT>?", category="toxicology",
        framing="clinical", risk="harmful", expected="refuse", pair_id="", source="tiny"):
    return ",".join([qid, text, category, framing, risk, expected, pair_id, source, "t"])


def problems(source, **kwargs) -> list[str]:
    with pytest.raises(data.QueryValidationError) as info:
        data.load_queries(source, **kwargs)
    return info.value.errors


# -- MedHarm-Open --------------------------------------------------------------------------

def test_open_set_is_complete_and_paired():
    df = data.load_queries("medharm-open")
    harmful, benign = df.filter(risk="harmful"), df.filter(risk="benign")
    assert harmful.height >= 200 and benign.height >= 200
    assert set(df["category"]) == set(CATEGORIES)
    cells = harmful.group_by("category", "framing").len()
    assert cells.height == len(CATEGORIES) * len(FRAMINGS)
    assert cells["len"].min() >= 7
    assert df["id"].is_unique().all()
    assert set(df["source"]) == {"medharm-open"}
    risk = dict(zip(df["id"], df["risk"]))
    pair = dict(zip(df["id"], df["pair_id"]))
    for qid, twin in pair.items():
        assert twin in pair, f"{qid}: pair_id {twin!r} resolves nowhere"
        assert pair[twin] == qid, f"{qid} -> {twin} is not symmetric"
        assert {risk[qid], risk[twin]} == {"harmful", "benign"}


# -- files in our schema -------------------------------------------------------------------

def test_csv_jsonl_parquet_load_the_same(tmp_path):
    csv = data.load_queries(write_csv(tmp_path / "tiny.csv"))
    jsonl = tmp_path / "tiny.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    parquet = tmp_path / "tiny.parquet"
    pl.DataFrame(ROWS).write_parquet(parquet)

    # schema first (an absent tier filled in), metadata kept
    assert csv.columns == [*QUERY_COLUMNS, "tier", "topic"]
    assert set(csv["tier"]) == {"unspecified"}
    assert csv["pair_id"].to_list() == ["q1-b", "q1-h", None]
    for other in (jsonl, parquet):
        assert_frame_equal(data.load_queries(other), csv)


def test_source_defaults_to_file_stem(tmp_path):
    path = write_csv(tmp_path / "mine.csv", [{k: v for k, v in r.items() if k != "source"}
                                             for r in ROWS])
    assert set(data.load_queries(path)["source"]) == {"mine"}


def test_mapping_renames_their_columns(tmp_path):
    theirs = [{("prompt" if k == "text" else k): v for k, v in r.items()} for r in ROWS]
    path = write_csv(tmp_path / "theirs.csv", theirs)
    df = data.load_queries(path, mapping={"text": "prompt"})
    assert df["text"].to_list() == [r["text"] for r in ROWS]
    assert "prompt" not in df.columns

    [missing] = problems(path)
    assert str(path) in missing and "['text']" in missing and "mapping" in missing
    [wrong] = problems(path, mapping={"text": "question"})
    assert str(path) in wrong and "'question'" in wrong


def test_other_categories_are_allowed_when_named(tmp_path):
    """The paper's restricted data uses its own category names; `categories=` admits them."""
    rows = [{**r, "category": "poisoning"} for r in ROWS]
    path = write_csv(tmp_path / "paper.csv", rows)
    assert any("unknown category 'poisoning'" in e for e in problems(path))
    df = data.load_queries(path, categories=["poisoning", "misconduct"])
    assert set(df["category"]) == {"poisoning"}


# -- Hugging Face datasets (local only) -----------------------------------------------------

@pytest.fixture()
def hf_cache(tmp_path, monkeypatch):
    """Keep the datasets cache out of the home folder and the repo."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    datasets.disable_progress_bars()
    return datasets


def test_hf_dataset_saved_to_disk(tmp_path, hf_cache):
    theirs = {k: [r[k] for r in ROWS] for k in ROWS[0]}
    theirs["question"] = theirs.pop("text")
    hf_cache.Dataset.from_dict(theirs).save_to_disk(tmp_path / "ds")
    df = data.load_queries(f"hf:{tmp_path / 'ds'}", mapping={"text": "question"})
    assert df["id"].to_list() == ["q1-h", "q1-b", "q2-h"]
    assert df["text"].to_list() == [r["text"] for r in ROWS]
    assert df.columns == [*QUERY_COLUMNS, "tier", "topic"]


def test_hf_dataset_dict_saved_to_disk_picks_the_split(tmp_path, hf_cache):
    rows = {k: [r[k] for r in ROWS] for k in ROWS[0]}
    test = {k: v[2:] for k, v in rows.items()}
    hf_cache.DatasetDict({"train": hf_cache.Dataset.from_dict(rows),
                          "test": hf_cache.Dataset.from_dict(test)}).save_to_disk(tmp_path / "dd")
    df = data.load_queries(f"hf:{tmp_path / 'dd'}", split="test")
    assert df["id"].to_list() == ["q2-h"]
    assert not (tmp_path / "hf-cache").exists()  # read in place, not rebuilt into the cache


def test_hf_csv_builder_with_data_files(tmp_path, hf_cache):
    path = write_csv(tmp_path / "tiny.csv")
    df = data.load_queries("hf:csv", data_files=str(path))
    assert df["id"].to_list() == ["q1-h", "q1-b", "q2-h"]
    assert set(df["source"]) == {"tiny"}


def test_hf_errors_name_the_row(tmp_path, hf_cache):
    rows = [{**r, "pair_id": r["pair_id"] or "", "risk": "maybe" if i == 1 else r["risk"]}
            for i, r in enumerate(ROWS)]
    hf_cache.Dataset.from_list(rows).save_to_disk(tmp_path / "bad")
    [err] = problems(f"hf:{tmp_path / 'bad'}")
    assert f"hf:{tmp_path / 'bad'}[train]: row 2: unknown risk 'maybe'" in err


# -- validation errors: every one names the file and the line (or row) ---------------------

@pytest.mark.parametrize(("line", "needle"), [
    (row(category="poisons"), "unknown category 'poisons'"),
    (row(framing="casual"), "unknown framing 'casual'"),
    (row(risk="risky"), "unknown risk 'risky'"),
    (row(expected="comply"), "unknown expected 'comply'"),
    (row(text=""), "empty text (id 'q1-h')"),
    (row(text="   "), "empty text (id 'q1-h')"),
    (row(pair_id="ghost"), "pair_id 'ghost' points to no query (id 'q1-h')"),
    (row(pair_id="q1-h"), "pair_id points to the query itself (id 'q1-h')"),
    (row(qid="q9") + ",extra", "10 fields, but the header has 9"),
])
def test_problem_names_file_and_line(tmp_path, line, needle):
    path = write_lines(tmp_path / "bad.csv", row(qid="q0"), line)
    [err] = problems(path)
    assert err.startswith(f"{path}:3: ") and needle in err, err


def test_header_only_file_is_an_error(tmp_path):
    path = write_lines(tmp_path / "empty.csv")
    assert problems(path) == [f"{path}: no queries (the file has a header and no rows)"]


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "bad.csv"
    pl.DataFrame(ROWS).drop("expected").write_csv(path)
    [err] = problems(path)
    assert err.startswith(f"{path}: missing column(s) ['expected']")


def test_duplicate_id_says_where_the_first_was(tmp_path):
    path = write_lines(tmp_path / "dup.csv", row(), row(qid="q2"), row())
    [err] = problems(path)
    assert err.startswith(f"{path}:4: duplicate id 'q1-h' (first at line 2)")


def test_parquet_errors_name_the_row(tmp_path):
    path = tmp_path / "bad.parquet"
    pl.DataFrame(ROWS).with_columns(framing=pl.lit("casual")).write_parquet(path)
    errors = problems(path)
    assert [e.split(": unknown")[0] for e in errors] == [f"{path}: row {i}" for i in (1, 2, 3)]


def test_bad_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(f"{HEADER}\n{row(qid='q0')}\n".encode() + b"q1,caf\xff,x\n")
    [err] = problems(path)
    assert err.startswith(f"{path}:3: not valid UTF-8 (byte 0xff)")


def test_invalid_json_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{not json\n\n[1, 2]\n", encoding="utf-8")
    errors = problems(path)
    assert errors[0].startswith(f"{path}:2: not valid JSON")
    assert errors[1] == f"{path}:4: expected a JSON object per line"


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "queries.txt"
    path.write_text("hello\n")
    [err] = problems(path)
    assert str(path) in err and "'.txt'" in err


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no such file"):
        data.load_queries("does/not/exist.csv")


def test_every_problem_is_reported_at_once(tmp_path):
    path = write_lines(tmp_path / "bad.csv",
                       row(qid="a", category="poisons"),
                       row(qid="b", text=" "),
                       row(qid="a", pair_id="ghost"))
    errors = problems(path)
    assert len(errors) == 4
    assert [e.split(": ")[0] for e in errors] == [f"{path}:{n}" for n in (2, 3, 4, 4)]
    assert "4 problem(s)" in str(data.QueryValidationError(errors))


# -- public reference sets ------------------------------------------------------------------

def test_medsafetybench(external_dir):
    df = data.load_queries(f"medsafetybench:{external_dir / 'med-safety-bench'}")
    assert df.height == 900
    assert set(df["risk"]) == {"harmful"} and set(df["expected"]) == {"refuse"}
    assert df["category"].n_unique() == 9
    assert df["id"].is_unique().all() and "safe_response" in df.columns


def test_xstest(external_dir):
    df = data.load_queries(f"xstest:{external_dir / 'xstest' / 'xstest_prompts.csv'}")
    assert df.height == 450
    assert df.filter(risk="benign").height == 250
    assert df.filter(risk="harmful").height == 200
    assert set(df["framing"]) == {data.IMPORTED_FRAMING}


# -- choosing a subset ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def open_set() -> pl.DataFrame:
    return data.load_queries("medharm-open")


def test_select_one_per_cell_plus_twins(open_set):
    df = data.select_queries(open_set, per_cell=1)
    harmful = df.filter(risk="harmful")
    assert harmful.height == 30 and df.filter(risk="benign").height == 30
    assert set(df.filter(risk="benign")["id"]) == set(harmful["pair_id"])
    assert harmful.group_by("category", "framing").len()["len"].to_list() == [1] * 30
    # Tiers are taken in turn, the first rotating from cell to cell: ten of each, and each
    # category's three framings get its three tiers.
    assert harmful.group_by("tier").len().sort("tier")["len"].to_list() == [10, 10, 10]
    assert (harmful.group_by("category").agg(pl.col("tier").n_unique())["tier"] == 3).all()
    # Deterministic: the first harmful id of its tier in each cell.
    first = (open_set.filter(risk="harmful").group_by("category", "framing", "tier")
             .agg(pl.col("id").min()))
    assert set(harmful["id"]) <= set(first["id"])
    assert data.select_queries(open_set, per_cell=1).equals(df)
    assert data.select_queries(open_set).height == open_set.height
    # Three per cell: one of each tier everywhere.
    three = data.select_queries(open_set, per_cell=3).filter(risk="harmful")
    assert (three.group_by("category", "framing").agg(pl.col("tier").n_unique())["tier"]
            == 3).all()
    only = data.select_queries(open_set, per_cell=1, tiers=["implicit"]).filter(risk="harmful")
    assert only.height == 30 and set(only["tier"]) == {"implicit"}
    with pytest.raises(ValueError, match=r"tier filter: unknown value\(s\) \['implict'\]"):
        data.select_queries(open_set, tiers=["implict"])


def test_both_versions_of_the_open_set_load_and_ids_are_stable():
    v1, v2 = data.load_queries("medharm-open@v1"), data.load_queries("medharm-open")
    assert (v1.height, v2.height) == (420, 2200)
    assert data.load_queries("medharm-open@v2").equals(v2)
    assert set(v1["tier"]) == {"unspecified"}
    assert v2.filter(risk="harmful").group_by("tier").len().sort("tier")["len"].to_list() == [
        352, 360, 388]  # dual_use, explicit, implicit (adjudicated: data/DATASHEET.md)
    # A query in both versions has the same id and text (v1's pairs that v2 keeps).
    shared = v1.join(v2, on="id", suffix="_v2")
    assert shared.height == 362  # 18 v1 pairs left out, 11 retired (data/DATASHEET.md)
    for column in ("text", "category", "framing", "risk", "pair_id"):
        assert (shared[column] == shared[f"{column}_v2"]).all(), column
    # Only the twins' answer/caution moved, where v2's two labelling passes said so.
    moved = shared.filter(pl.col("expected") != pl.col("expected_v2"))
    assert set(moved["risk"]) == {"benign"} and moved.height == 13
    with pytest.raises(ValueError, match="no such MedHarm-Open version"):
        data.load_queries("medharm-open@v9")


def test_select_filters(open_set):
    df = data.select_queries(open_set, per_cell=2, categories=["anesthesia", "fetal_harm"],
                             framings=["technical"])
    assert set(df["category"]) == {"anesthesia", "fetal_harm"}
    assert set(df["framing"]) == {"technical"}
    assert df.height == 2 * 2 * 2


def test_prepare_queries_resolves_path_and_applies_variants(tmp_path):
    write_csv(tmp_path / "tiny.csv")
    selection = QuerySelection(source="tiny.csv", variants=["direct", "roleplay"])
    df = data.prepare_queries(selection, base_dir=tmp_path)
    assert df.height == 2 * len(ROWS)
    assert df.filter(variant="roleplay")["id"].to_list() == [
        "q1-h::roleplay", "q1-b::roleplay", "q2-h::roleplay"]
    # A category the set does not hold is a typo to report, not an empty selection.
    typo = QuerySelection(source="tiny.csv", categories=["toxicolgy"])
    with pytest.raises(ValueError, match=r"category filter: unknown value\(s\) \['toxicolgy'\]; "
                                         r"this set has medical_devices, toxicology"):
        data.prepare_queries(typo, base_dir=tmp_path)
    empty = QuerySelection(source="tiny.csv", categories=["medical_devices"],
                           framings=["clinical"])
    with pytest.raises(ValueError, match="keeps no queries"):
        data.prepare_queries(empty, base_dir=tmp_path)


def test_resolve_source_path(tmp_path):
    write_csv(tmp_path / "tiny.csv")
    (tmp_path / "saved").mkdir()
    resolve = data.resolve_source_path
    assert resolve("tiny.csv", tmp_path) == str(tmp_path / "tiny.csv")
    assert resolve("xstest:tiny.csv", tmp_path) == f"xstest:{tmp_path / 'tiny.csv'}"
    assert resolve("hf:saved", tmp_path) == f"hf:{tmp_path / 'saved'}"
    for unchanged in ("medharm-open", "hf:csv", "hf:org/name", "missing.csv", str(tmp_path)):
        assert resolve(unchanged, tmp_path) == unchanged


def test_prepare_queries_with_mapping_and_categories(tmp_path):
    rows = [{**r, "category": "poisoning", "question": r["text"]} for r in ROWS]
    write_csv(tmp_path / "paper.csv", [{k: v for k, v in r.items() if k != "text"} for r in rows])
    selection = QuerySelection(source="paper.csv", mapping={"text": "question"},
                               allowed_categories=["poisoning"], per_cell=1)
    df = data.prepare_queries(selection, base_dir=tmp_path)
    assert df["id"].to_list() == ["q1-h", "q1-b", "q2-h"]


# -- the command line -----------------------------------------------------------------------

runner = CliRunner()


def test_cli_validate_lists_every_problem(tmp_path):
    path = write_lines(tmp_path / "bad.csv", row(qid="a", risk="risky"), row(qid="a"))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert f"{path}:2: unknown risk 'risky'" in result.output
    assert f"{path}:3: duplicate id 'a' (first at line 2)" in result.output
    assert "2 problem(s) found" in result.output


def test_cli_validate_good_file_prints_summary(tmp_path):
    path = write_csv(tmp_path / "tiny.csv")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "3 queries (2 harmful, 1 benign), 2 categories; no problems found" in result.output
    assert "clinical/harmful" in result.output and "medical_devices" in result.output


def test_cli_validate_map_and_category(tmp_path):
    rows = [{("prompt" if k == "text" else k): v for k, v in r.items()} for r in ROWS]
    path = write_csv(tmp_path / "theirs.csv", [{**r, "category": "poisoning"} for r in rows])
    args = ["validate", str(path), "--map", "text=prompt", "--category", "poisoning"]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, ["validate", str(path), "--map", "text"])
    assert result.exit_code == 1 and "--map takes OURS=THEIRS" in result.output
    result = runner.invoke(app, ["validate", str(tmp_path / "nope.csv")])
    assert result.exit_code == 1 and "no such file" in result.output


def test_python_m_cli_validate(tmp_path):
    path = write_lines(tmp_path / "bad.csv", row(framing="casual"))
    proc = subprocess.run([sys.executable, "-m", "medharm_nb.cli", "validate", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"{path}:2: unknown framing 'casual'" in proc.stderr


def test_files_that_used_to_pass_or_crash_get_one_line_naming_file_and_cause(tmp_path):
    # A header that names a column twice: polars would rename one and load it.
    twice = tmp_path / "twice.csv"
    twice.write_text(HEADER.replace(",text,", ",text,text,") + "\n" +
                     row().replace("?,", "?,again,", 1) + "\n")
    assert problems(twice) == [f"{twice}:1: column(s) ['text'] named more than once in the header"]
    # A list (or object) where a query field belongs.
    listed = tmp_path / "listed.jsonl"
    listed.write_text(json.dumps({**ROWS[2], "text": ["How could", "someone?"]}) + "\n")
    assert problems(listed) == [f"{listed}:1: field(s) ['text'] hold a list or object; every "
                                "query field must be a single value"]
    frame = pl.DataFrame(ROWS[2:]).with_columns(pl.col("text").map_elements(
        lambda t: [t], return_dtype=pl.List(pl.String)))
    frame.write_parquet(tmp_path / "listed.parquet")
    assert problems(tmp_path / "listed.parquet") == [
        f"{tmp_path / 'listed.parquet'}: column(s) text (List(String)) hold lists or structs; "
        "every query field must be a single value"]
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    assert problems(tmp_path / "junk.parquet")[0].startswith(
        f"{tmp_path / 'junk.parquet'}: not a readable Parquet file")


def test_a_csv_with_old_mac_line_endings_loads_every_row(tmp_path):
    path = tmp_path / "mac.csv"
    path.write_bytes("\r".join([HEADER, row(pair_id=""), row(qid="q3-h")]).encode() + b"\r")
    assert data.load_queries(path)["id"].to_list() == ["q1-h", "q3-h"]
