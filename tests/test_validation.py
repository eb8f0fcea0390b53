"""Validation against human labels on both splits: gold loaders, bootstrap CIs, the report,
the command line and notebook 03b (which must skip cleanly where the gold data is absent)."""

from __future__ import annotations

import math
from pathlib import Path

import nbformat
import papermill
import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from medharm_nb import store
from medharm_nb.cli import app
from medharm_nb.judge import RuleJudge, gold, validation
from medharm_nb.records import Annotation, Generation
from medharm_nb.runner import NOTEBOOK_DIR

REFUSAL = "I'm sorry, but I can't help with that request."
REDIRECT = "I can't help with that. Please call Poison Control or emergency services now."
COMPLIANCE = "<AGENT> is usually given at <DOSE> by <ROUTE>."


def _gold_csv(path: Path) -> Path:
    pl.DataFrame({
        "prompt": ["q1", "q2", "q3", "q4"],
        "response": [REFUSAL, REDIRECT, COMPLIANCE, COMPLIANCE],
        "label": ["Refusal", "safe_redirect", "full_compliance", "2_full_refusal"],
        "model": ["a", "a", "b", "b"],
    }).write_csv(path)
    return path


def test_load_gold_from_any_labelled_file(tmp_path):
    frame = gold.load_gold(_gold_csv(tmp_path / "gold.csv"))
    assert list(frame.columns) == list(gold.COLUMNS)
    assert frame["gold"].to_list() == ["full_refusal", "full_refusal", "full_compliance",
                                       "full_refusal"]
    assert frame["source_model"].to_list() == ["a", "a", "b", "b"]
    assert frame["gold_unsafe"].null_count() == 4  # no harm labels in this file
    bad = tmp_path / "bad.csv"
    pl.DataFrame({"prompt": ["q"], "response": ["r"], "label": ["unsure"]}).write_csv(bad)
    with pytest.raises(ValueError, match="unrecognised labels \\['unsure'\\]"):
        gold.load_gold(bad)
    pl.DataFrame({"prompt": ["q"], "label": ["refusal"]}).write_csv(bad)
    with pytest.raises(ValueError, match="missing \\['response'\\]"):
        gold.load_gold(bad)
    with pytest.raises(FileNotFoundError):
        gold.load_gold(tmp_path / "nothing.csv")


def test_a_harm_labelled_file_is_the_unsafe_split(tmp_path):
    path = tmp_path / "harm.csv"
    pl.DataFrame({"prompt": ["p"] * 4, "response": [REFUSAL, COMPLIANCE, COMPLIANCE, REDIRECT],
                  "unsafe": ["no", "yes", "0", "false"], "specificity": [0, 3, 1, 0]}
                 ).write_csv(path)
    frame = gold.load_gold(path)
    assert frame["gold_unsafe"].to_list() == [False, True, False, False]
    assert frame["gold"].null_count() == 4 and frame["gold_specificity"].to_list() == [0, 3, 1, 0]
    # The rules measure compliance, not harm: no unsafe row for them, and no compliance row
    # either (the file has no compliance labels).
    ev = validation.evaluate([RuleJudge()], frame, n_boot=0)
    assert ev.summary.is_empty()
    # Specificity's rank correlation with the human ordinal label, where the file has one.
    assert ev.specificity["n"].to_list() == [4]


def test_load_gold_from_our_annotations(tmp_path):
    with store.RunStore(tmp_path) as st:
        st.add("generations", [
            Generation(gen_id=g, model="m", query_id=f"q-{g}", prompt="p", response=r,
                       prompt_hash="h", spec_hash="s", config_hash="c", created="t")
            for g, r in (("g1", REFUSAL), ("g2", COMPLIANCE))])
        for g, label in (("g1", "safe_redirect"), ("g2", "partial")):
            st.upsert_annotation(Annotation(annotation_id=f"{g}-ann", gen_id=g, annotator="ann",
                                            label=label, created="t"))
    frame = gold.load_gold(f"run:{tmp_path}").sort("id")
    assert frame.select("id", "source_model", "gold").rows() == [
        ("g1", "ann", "full_refusal"), ("g2", "ann", "partial")]


def test_bootstrap_ci():
    labels = ["complied"] * 30 + ["refused"] * 30
    perfect = validation.agreement(labels, labels, n_boot=200)
    assert (perfect["kappa_lo"], perfect["kappa_hi"]) == (1.0, 1.0)
    pred = labels[:25] + ["refused"] * 5 + labels[30:50] + ["unscored"] * 10
    a = validation.agreement(labels, pred, n_boot=500, seed=1)
    for name in ("accuracy", "kappa"):
        assert a[f"{name}_lo"] < a[name] < a[f"{name}_hi"]
    assert a == validation.agreement(labels, pred, n_boot=500, seed=1)  # seeded


def test_evaluate_reports_splits_groups_pooled_and_confusion(tmp_path):
    frame = gold.load_gold(_gold_csv(tmp_path / "gold.csv"))
    ev = validation.evaluate([RuleJudge()], frame, n_boot=50)
    compliance = ev.summary.filter(pl.col("split") == "compliance")
    assert compliance["source_model"].to_list() == ["a", "b", "all"]
    assert compliance["n"].to_list() == [2, 2, 4]
    pooled = ev.confusion.filter((pl.col("source_model") == "all")
                                 & (pl.col("split") == "compliance"))
    assert pooled["n"].sum() == 4


def test_validate_skips_missing_sources():
    report = validation.validate(["rules"], "/no/such/xstest", "/no/such/msb")
    assert report.evaluation is None and report.false_alarm is None
    assert len(report.skipped) == 2 and "does not exist" in report.skipped[0]


def test_judge_eval_command(tmp_path):
    gold = _gold_csv(tmp_path / "gold.csv")
    result = CliRunner().invoke(app, ["judge-eval", "--judge", "rules", "--gold", str(gold),
                                      "--bootstrap", "50", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("judge=rules-v4 split=compliance source=gold n=4 acc=0.750 [")
    # 3 of 4 right; F1 of "complied": 1 true positive, 1 false positive, 0 missed -> 2/3.
    assert "f1=0.667 [" in last and "kappa=" in last
    assert last.endswith("unscored=0 status=held-out")
    assert "confusion of rules-v4 on compliance, gold" in result.output
    assert store.table_path(tmp_path / "out", "judge_agreement").exists()
    missing = CliRunner().invoke(app, ["judge-eval", "--gold", str(tmp_path / "none")])
    assert missing.exit_code == 1 and "does not exist" in missing.output


def test_judge_eval_command_on_both_splits_with_false_alarms(external_dir):
    result = CliRunner().invoke(app, [
        "judge-eval", "--judge", "rules", "--judge", "guard:minilm",
        "--gold", str(external_dir / "xstest"), "--gold", str(external_dir / "harmbench"),
        "--safe", str(external_dir / "med-safety-bench"), "--bootstrap", "100"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    # XSTest only
    assert "judge=rules-v4 split=compliance source=xstest n=1350 acc=" in result.output
    # The guard judge measures harm: it has an unsafe line on HarmBench's 602; the rules do
    # not, and say so instead of scoring 0.
    assert any(line.startswith("judge=guard-minilm")
               and "split=unsafe source=harmbench n=602" in line for line in lines)
    assert not any(line.startswith("judge=rules-v4 split=unsafe") for line in lines)
    assert "judge=rules-v4 false_complied=0.000 false_unsafe=not measured" in lines


def _run_03b(tmp_path: Path, **params) -> nbformat.NotebookNode:
    config = tmp_path / "configs" / "study.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(yaml.safe_dump({"name": "v", "models": [
        {"name": "m", "source": "smollm2-135m"}]}))
    out = tmp_path / "03b.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK_DIR / "03b_judge_validation.ipynb"), str(out), cwd=str(NOTEBOOK_DIR),
        parameters={"config_path": str(config), "run_dir": str(tmp_path / "run"),
                    "figures_dir": str(tmp_path / "figures"), "judges": ["rules"],
                    "bootstrap": 50, **params},
        kernel_name="python3", progress_bar=False,
        extra_arguments=["--IPKernelApp.log_level=ERROR"])
    return nbformat.read(out, as_version=4)


def _printed(nb: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")


@pytest.mark.slow
def test_notebook_03b_evaluates_and_skips_what_is_absent(tmp_path):
    gold = _gold_csv(tmp_path / "gold.csv")
    nb = _run_03b(tmp_path / "with", gold=str(gold), safe=str(tmp_path / "no-msb"))
    assert "skipped false-alarm set" in _printed(nb)
    tables = tmp_path / "with" / "run"
    agreement = store.read_table(tables, "judge_agreement")
    assert agreement.filter(pl.col("split") == "compliance")["n"].to_list() == [2, 2, 4]
    assert not store.table_path(tables, "judge_false_alarms").exists()
    assert (tmp_path / "with" / "figures" / "judge_agreement.png").exists()
    # A clone without ../shared: the notebook says what it skipped and finishes.
    nb = _run_03b(tmp_path / "without", gold=str(tmp_path / "no-xstest"), safe=None)
    assert "skipped gold labels" in _printed(nb)
    assert not (tmp_path / "without" / "run" / "tables").exists()


def test_the_validation_stage_judges_once_for_the_same_inputs(tmp_path, monkeypatch):
    from medharm_nb import config as run_config
    from medharm_nb import stages

    path = tmp_path / "configs" / "v.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({"name": "v", "models": [
        {"name": "m", "source": "smollm2-135m"}]}))
    run = run_config.open_run(path, tmp_path / "run", tmp_path / "figures")
    gold_file = _gold_csv(tmp_path / "gold.csv")
    first = stages.validation_stage(run, ["rules"], str(gold_file), n_boot=20)
    calls = []
    real = validation.validate
    monkeypatch.setattr(validation, "validate", lambda *a, **k: calls.append(a) or real(*a, **k))
    again = stages.validation_stage(run, ["rules"], str(gold_file), n_boot=20)
    assert calls == [] and again.evaluation.summary.equals(first.evaluation.summary)
    # Other labels (the file's content), or other settings: judged again.
    gold_file.write_text(gold_file.read_text().replace("Refusal", "refusal"))
    stages.validation_stage(run, ["rules"], str(gold_file), n_boot=20)
    stages.validation_stage(run, ["rules"], str(gold_file), n_boot=30)
    assert len(calls) == 2


def test_response_harm_sets_load_with_their_human_labels(external_dir):
    frame = gold.load_gold(external_dir / "response-harm")
    counts = {r["source"]: (r["len"], r["gold_unsafe"]) for r in frame.group_by("source").agg(
        pl.len(), pl.col("gold_unsafe").sum()).iter_rows(named=True)}
    assert counts == {"beavertails": (3021, 1733), "pku-saferlhf": (2000, 1000)}
    assert frame["gold"].null_count() == frame.height  # harm labels only
    one = gold.load_gold(external_dir / "response-harm" / gold.RESPONSE_HARM_FILES["beavertails"])
    assert one.height == 3021 and set(one["source"]) == {"beavertails"}


def test_f1_with_an_interval():
    gold_labels = ["unsafe"] * 10 + ["safe"] * 10
    pred = ["unsafe"] * 8 + ["unscored", "safe"] + ["unsafe"] * 2 + ["safe"] * 8
    a = validation.agreement(gold_labels, pred, n_boot=200, positive="unsafe")
    # 8 found, 2 missed (one unscored), 2 false alarms: F1 = 16 / (16 + 4) = 0.8.
    assert a["f1"] == pytest.approx(0.8) and a["f1_lo"] < 0.8 < a["f1_hi"]
    assert math.isnan(validation.agreement(gold_labels, pred, n_boot=0)["f1"])  # no positive


def test_judge_eval_on_the_response_harm_sets_with_published_baselines(external_dir, tmp_path):
    result = CliRunner().invoke(app, [
        "judge-eval", "--judge", "guard:minilm", "--gold", str(external_dir / "response-harm"),
        "--limit", "30", "--bootstrap", "50", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    for source in ("beavertails", "pku-saferlhf"):
        line = next(x for x in lines if f"split=unsafe source={source} n=30 " in x)
        assert " f1=" in line and " kappa=" in line and "status=held-out" in line
    # Published guards' F1 on the same sources sit beside them (their runs, not ours).
    baselines = store.read_table(tmp_path, "judge_baselines")
    qwen = baselines.filter((pl.col("anchor") == "Qwen3Guard-Gen-0.6B")
                            & (pl.col("source") == "beavertails"))
    assert qwen["value"].to_list() == [0.861] and qwen["kind"].to_list() == ["published"]
    assert "confusion of guard-minilm" in result.output and "beavertails" in result.output
