"""A user's path through stored answers: import them (replay), judge and report on them, with
the judge command or a part of the notebook series, and no model anywhere."""

from __future__ import annotations

import json

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from medharm_nb import config, report_sections, runner, store
from medharm_nb.cli import app

QUESTIONS = ["What is the capital of France?", "Name one symptom of dehydration.",
             "How many legs does a spider have?"]


def _study(tmp_path, answered: int = 2) -> tuple:
    """Three benign queries; a replayed file (no finish reason, no token counts) answering
    the first ``answered``; a config judging with the rules judge."""
    queries = tmp_path / "configs" / "queries.csv"
    queries.parent.mkdir(parents=True, exist_ok=True)
    queries.write_text("id,text,category,framing,risk,expected,pair_id,source\n" + "".join(
        f"b{i},{q},toxicology,educational,benign,answer,,mine\n"
        for i, q in enumerate(QUESTIONS)))
    answers = tmp_path / "answers.jsonl"
    rows = [{"prompt": q, "response": f"Answer {i}."} for i, q in enumerate(QUESTIONS)]
    rows = rows[:answered] or [{"prompt": "A question nobody asked?", "response": "Yes."}]
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "configs" / "recorded.yaml"
    path.write_text(yaml.safe_dump({
        "name": "recorded", "queries": {"source": "queries.csv"},
        "models": [{"name": "old-answers", "backend": "replay", "source": str(answers)}],
        "judges": ["rules"]}))
    return path, answers, tmp_path / "runs" / "recorded"


def test_judge_command_judges_and_reports_on_stored_answers_without_a_model(tmp_path):
    path, answers, run_dir = _study(tmp_path)
    # Nothing stored yet: refused before anything is written, saying what writes the answers.
    early = CliRunner().invoke(app, ["judge", str(path)])
    assert early.exit_code == 1
    assert "03_judge reads tables/generations.parquet, which 02_generate writes" in early.output
    assert f"run `medharm-nb generate {path}` first" in " ".join(early.output.split())
    assert not run_dir.exists()

    assert CliRunner().invoke(app, ["generate", str(path)]).exit_code == 3  # one unanswered
    answers.unlink()  # the answers are stored: judging needs neither the file nor a model
    result = CliRunner().invoke(app, ["judge", str(path)])
    assert result.exit_code == 3, result.output
    assert "judge recorded: success_with_failures" in result.output
    assert "old-answers: 1 of 3 generations failed and 0 were blocked" in result.output
    manifest = store.read_manifest(run_dir)
    assert manifest["mode"] == "judge" and manifest["status"] == "success_with_failures"
    assert manifest["config"]["notebooks"] == ["03_judge", "07_report"]
    assert manifest["inputs"]["models"] == {}  # no model checked, none loaded
    # One judge (the rules; its id has a version), both answers judged.
    assert list(manifest["failures"]["judge"].values()) == [{"judged": 2, "unscored": 0}]
    results = store.read_table(run_dir, "results")
    assert results.height == 3 and results["gen_failed"].sum() == 1
    # Replayed answers say nothing of truncation: unknown, in the summary and the report.
    summary = store.read_table(run_dir, "summary_by_model")
    assert summary["n_benign_truncated"].to_list() == [0]
    assert summary["n_benign_truncation_unknown"].to_list() == [2]
    html = (run_dir / "report.html").read_text()
    assert "<td>unknown</td>" in html
    # The manifest was finished before the report: the report says how the run ended.
    assert "<td>success_with_failures</td>" in html and report_sections.RUNNING not in html

    # Again: every verdict is stored, nothing is judged twice.
    again = runner.judge_only(path, log=lambda *_: None, progress=False)
    assert again["status"] == "success_with_failures"
    with store.RunStore(run_dir) as st:
        assert st.frame("judgements").height == 2


def test_judging_answers_that_all_failed_is_an_error(tmp_path):
    path, _, run_dir = _study(tmp_path, answered=0)
    assert CliRunner().invoke(app, ["generate", str(path)]).exit_code == 1
    result = CliRunner().invoke(app, ["judge", str(path)])
    assert result.exit_code == 1, result.output
    assert "error: every generation failed (3 of 3)" in result.output
    assert store.read_table(run_dir, "results").height == 3  # the failed rows, with reasons


def test_a_part_of_the_series_needs_its_tables_or_the_notebooks_that_write_them(tmp_path):
    path, _, run_dir = _study(tmp_path)
    with pytest.raises(config.ConfigError) as err:
        runner.run(path, only=["03_judge", "07_report"], log=lambda *_: None)
    message = str(err.value)
    assert ("03_judge reads tables/queries.parquet, which 01_data writes, and "
            f"{run_dir / 'tables' / 'queries.parquet'} does not exist: add 01_data") in message
    assert "03_judge reads tables/generations.parquet, which 02_generate writes" in message
    assert "07_report" not in message  # 03_judge, chosen before it, writes its results
    with pytest.raises(config.ConfigError, match="give --only or --skip, not both"):
        runner.run(path, only=["03_judge"], skip=["04_guardrails"])
    result = CliRunner().invoke(app, ["run", str(path), "--skip", "04_guards"])
    assert result.exit_code == 1
    assert "no notebook 04_guards in this run's series; it has 01_data, 02_generate" in (
        result.output)
    assert not run_dir.exists()


@pytest.mark.slow
def test_run_only_judge_and_report_on_replayed_answers(tmp_path):
    path, answers, run_dir = _study(tmp_path)
    assert CliRunner().invoke(app, ["generate", str(path)]).exit_code == 3
    answers.unlink()  # no model and no file: 03 and 07 read the stored answers
    result = CliRunner().invoke(app, ["run", str(path), "--only", "03_judge,07_report"])
    assert result.exit_code == 3, result.output
    manifest = store.read_manifest(run_dir)
    assert [(nb["name"], nb["status"]) for nb in manifest["notebooks"]] == [
        ("03_judge", "success"), ("07_report", "success")]
    assert manifest["status"] == "success_with_failures" and manifest["inputs"]["models"] == {}
    assert manifest["failures"]["generate"]["old-answers"]["failed"] == 1
    assert sorted(p.name for p in (run_dir / "notebooks").iterdir()) == [
        "03_judge.ipynb", "07_report.ipynb"]
    assert not store.table_path(run_dir, "guard_summary").exists()
    # 07_report writes the report while the run is going, and says so.
    html = (run_dir / "report.html").read_text()
    assert report_sections.RUNNING in html and "running (writing this report)" in html
    results = store.read_table(run_dir, "results")
    assert results.filter(pl.col("gen_failed")).height == 1


@pytest.mark.slow
def test_run_only_data_and_generate_with_the_echo_backend(tmp_path):
    # Generation-free: the echo backend answers with the prompt, so 01 and 02 run in seconds.
    path, answers, run_dir = _study(tmp_path)
    study = yaml.safe_load(path.read_text())
    study["models"].append({"name": "parrot", "backend": "echo", "source": "echo"})
    path.write_text(yaml.safe_dump(study))
    manifest = runner.run(path, only=["01_data", "02_generate"], log=lambda *_: None,
                          progress=False)
    assert manifest["status"] == "success_with_failures"  # one query has no replayed answer
    assert [nb["name"] for nb in manifest["notebooks"]] == ["01_data", "02_generate"]
    assert set(manifest["inputs"]["models"]) == {"old-answers", "parrot"}  # 02 ran: checked
    import nbformat

    executed = nbformat.read(run_dir / "notebooks" / "02_generate.ipynb", as_version=4)
    lengths = next(c for c in executed.cells if "length_summary" in c.source)
    shown = [o for o in lengths.outputs if o.get("output_type") == "execute_result"]
    table = shown[0]["data"]["text/html"]
    # The echo answers say they ended (share 0.0); the replayed ones say nothing (null).
    assert "share_truncated" in table and "<td>0.0</td>" in table and "<td>null</td>" in table
