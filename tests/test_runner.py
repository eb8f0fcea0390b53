"""Run configs, parameter checks and the papermill runner, end to end on the real model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml
from typer.testing import CliRunner

from medharm_nb import config, runner, store
from medharm_nb.cli import app

TINY = {
    "name": "tiny",
    "queries": {"source": "medharm-open", "per_cell": 1, "categories": ["toxicology"]},
    "models": [{"name": "smol", "source": "smollm2-135m"}],
    "generation": {"max_new_tokens": 16, "batch_size": 6},
    "judges": ["rules"],
    # The series' judge validation on a few labelled answers per source (its depth is
    # tested in test_validation; here the series is what is under test).
    "params": {"03b_judge_validation": {"judges": ["rules"], "gold_sample": 5}},
}


def _write(tmp_path, config: dict, name: str = "study.yaml"):
    path = tmp_path / "configs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def test_config_typos_are_errors_with_the_key_named(tmp_path):
    bad = {**TINY, "generaton": {"max_new_tokens": 8}}
    with pytest.raises(config.ConfigError, match="generaton: Extra inputs are not permitted"):
        config.load_config(_write(tmp_path, bad))
    twice = {**TINY, "models": [TINY["models"][0], TINY["models"][0]]}
    with pytest.raises(config.ConfigError, match="model names must be unique"):
        config.load_config(_write(tmp_path, twice))
    (tmp_path / "broken.yaml").write_text("name: [unclosed")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load_config(tmp_path / "broken.yaml")


def test_two_names_for_one_spec_are_refused_with_what_to_change(tmp_path):
    same = {**TINY, "models": [{"name": "plain", "source": "smollm2-135m"},
                               {"name": "copy", "source": "smollm2-135m", "base": "plain"}]}
    with pytest.raises(config.ConfigError) as err:
        config.load_config(_write(tmp_path, same))
    message = str(err.value)
    assert "models 'plain' and 'copy' would get the same generation ids" in message
    assert "(backend='hf', source='smollm2-135m', quantization='none')" in message
    assert "differ only in name, base, which do not change a generation's id" in message
    # What to change comes from the backend (the fields that change its answers).
    assert ("make them differ in source, gguf_file, quantization, dtype, adapter, "
            "system_prompt or chat_template") in message
    # A field the backend does not read is refused, not a way to tell two specs apart.
    unread = {**TINY, "models": [{"name": "plain", "source": "smollm2-135m",
                                  "concurrency": 2}]}
    with pytest.raises(config.ConfigError, match="models: Value error, model 'plain': backend "
                                                 "hf does not read concurrency"):
        config.load_config(_write(tmp_path, unread))
    served = {**TINY, "models": [
        {"name": "a", "backend": "openai", "source": "m", "base_url": "http://h:8000/v1"},
        {"name": "b", "backend": "openai", "source": "m", "base_url": "http://h:8000/v1/"}]}
    with pytest.raises(config.ConfigError, match=r"differ only in name, base_url, .*"
                                                 r"make them differ in source, base_url"):
        config.load_config(_write(tmp_path, served))


def test_unknown_notebook_parameter_is_refused_before_any_work(tmp_path):
    study = {**TINY, "params": {"02_generate": {"limt": 3}, "09_nothing": {}}}
    with pytest.raises(config.ConfigError) as err:
        runner.run(_write(tmp_path, study))
    message = str(err.value)
    assert ("params.02_generate.limt: unknown parameter; 02_generate takes ['first_queries']"
            in message)
    assert "params.09_nothing: no such notebook" in message
    assert not (tmp_path / "runs").exists()


def test_bad_model_spec_fails_before_any_notebook_runs(tmp_path):
    spec = {"name": "smol", "source": "smollm2-135m", "adapter": "./no-such-adapter"}
    result = CliRunner().invoke(app, ["run", str(_write(tmp_path, {**TINY, "models": [spec]}))])
    assert result.exit_code == 1
    assert "no-such-adapter has no adapter_config.json" in result.output
    assert not (tmp_path / "runs" / "tiny" / "notebooks").exists()


def test_unknown_judge_fails_before_any_notebook_runs(tmp_path):
    result = CliRunner().invoke(app, ["run", str(_write(tmp_path, {**TINY, "judges": ["gpt"]}))])
    assert result.exit_code == 1
    assert "unknown judge 'gpt'; known: rules" in result.output
    assert not (tmp_path / "runs" / "tiny" / "notebooks").exists()


@pytest.mark.slow
def test_series_runs_fails_visibly_and_resumes_from_the_store(tmp_path, one_torch_thread):
    # A failure in 03_judge (a bad parameter) after generation has been stored.
    failing = {**TINY, "params": {**TINY["params"], "03_judge": {"judges": ["no-such-judge"]}}}
    config_path = _write(tmp_path, failing)
    # The generation stage alone first (in this process, which may hold the model already):
    # the series then finds every answer in the store, as after a crash or on a GPU box.
    generated = CliRunner().invoke(app, ["generate", str(config_path)])
    assert generated.exit_code == 0, generated.output
    assert "smol: total 6, cached 0, generated 6, failed 0" in generated.output
    with pytest.raises(runner.RunFailed, match="notebook 03_judge failed in cell .*no-such-judge"):
        runner.run(config_path, log=lambda *_: None, progress=False)
    run_dir = tmp_path / "runs" / "tiny"
    manifest = store.read_manifest(run_dir)
    assert manifest["status"] == "error" and "03_judge" in manifest["error"]
    assert [nb["status"] for nb in manifest["notebooks"]] == ["success", "success", "error"]
    executed = nbformat.read(run_dir / "notebooks" / "03_judge.ipynb", as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors and errors[0]["evalue"].startswith("unknown judge 'no-such-judge'")
    assert manifest["mode"] == "series"
    assert manifest["stages"]["generate"] == [
        {**manifest["stages"]["generate"][0], "total": 6, "cached": 6, "generated": 0}]

    # Fixed config: the series completes, and nothing is generated again.
    config_path.write_text(yaml.safe_dump(TINY))
    manifest = runner.run(config_path, log=lambda *_: None, progress=False)
    assert manifest["status"] == "success" and manifest["error"] is None
    assert manifest["stages"]["generate"] == [
        {**manifest["stages"]["generate"][0], "total": 6, "cached": 6, "generated": 0}]
    for table in ("queries", "generations", "judgements", "results", "summary_by_model",
                  "summary_by_category", "summary_by_cell", "label_rates", "paired_deltas",
                  "amplification", "specificity_distribution"):
        assert store.table_path(run_dir, table).exists(), table
    assert store.read_table(run_dir, "paired_deltas").is_empty()  # one model: no pairs
    assert "no model names a base" in (run_dir / "report.html").read_text()
    figures = tmp_path / "figures" / "tiny"
    assert {p.name for p in figures.iterdir()} >= {"tradeoff.png", "tradeoff.svg",
                                                  "rates_by_category.png"}
    on_disk = json.loads((run_dir / "manifest.json").read_text())
    assert on_disk["inputs"]["queries"]["n"] == 6
    assert len(next(iter(on_disk["inputs"]["models"]["smol"]["files"].values()))) == 64
    assert on_disk["versions"]["torch"] and on_disk["config"]["name"] == "tiny"
    summary = store.read_table(run_dir, "summary_by_model")
    assert summary["n_harmful"].item() == 3 and summary["n_benign"].item() == 3


def test_relative_paths_in_a_config_are_relative_to_the_config(tmp_path):
    study = {**TINY, "queries": {"source": "hf:csv", "data_files": "mine.csv"}}
    path = _write(tmp_path, study)
    (path.parent / "mine.csv").write_text("id\n")
    run = config.open_run(path)
    assert run.config.queries.data_files == str(path.parent / "mine.csv")
    assert run.run_dir == tmp_path / "runs" / "tiny"
    assert run.figures_dir == tmp_path / "figures" / "tiny"


def _replay_study(tmp_path) -> dict:
    answers = tmp_path / "answers.jsonl"
    questions = ["What is the capital of France?", "Name one symptom of dehydration.",
                 "How many legs does a spider have?"]
    queries = tmp_path / "configs" / "queries.csv"
    queries.parent.mkdir(parents=True, exist_ok=True)
    queries.write_text("id,text,category,framing,risk,expected,pair_id,source\n" + "".join(
        f"b{i},{q},toxicology,educational,benign,answer,,mine\n" for i, q in enumerate(questions)))
    answers.write_text("".join(json.dumps({"prompt": q, "response": f"Answer {i}."}) + "\n"
                               for i, q in enumerate(questions[:2])))
    return {"name": "recorded", "queries": {"source": "queries.csv"},
            "models": [{"name": "old-answers", "backend": "replay", "source": str(answers)}],
            "params": {"02_generate": {"first_queries": 3}}}


def test_generate_command_prints_counts_and_writes_tables_and_manifest(tmp_path):
    path = _write(tmp_path, _replay_study(tmp_path))
    first = CliRunner().invoke(app, ["generate", str(path), "--first-queries", "2"])
    assert first.exit_code == 0, first.output
    # Replayed answers have no token counts: no rate of 0 tokens/s.
    assert ("old-answers: total 2, cached 0, generated 2, failed 0, blocked 0, no tokens "
            "counted" in first.output)
    run_dir = tmp_path / "runs" / "recorded"
    manifest = store.read_manifest(run_dir)
    assert manifest["status"] == "success" and manifest["mode"] == "generate"
    # --first-queries is recorded
    assert manifest["config"]["params"]["02_generate"]["first_queries"] == 2
    assert manifest["stages"]["generate"][0]["generated"] == 2
    assert manifest["inputs"]["queries"]["n"] == 3
    assert store.read_table(run_dir, "queries").height == 3
    assert store.read_table(run_dir, "generations").height == 2

    # Without --first-queries the config's own (params.02_generate.first_queries) applies.
    # One of the three has no recorded answer: done, with a failure, said in the status and
    # the exit code.
    second = CliRunner().invoke(app, ["generate", str(path)])
    assert second.exit_code == 3, second.output
    assert "old-answers: total 3, cached 2, generated 0, failed 1" in second.output
    assert "1 generation(s) failed: their errors are stored" in second.output
    assert "success_with_failures: old-answers: 1 of 3 generations failed" in second.output
    manifest = store.read_manifest(run_dir)
    assert manifest["status"] == "success_with_failures"
    assert manifest["failures"]["generate"]["old-answers"] == {"total": 3, "failed": 1,
                                                                "blocked": 0}
    generations = store.load_generations(run_dir)
    assert {"model", "query_id", "variant", "sample", "response", "error"} <= set(
        generations.columns)
    assert generations.filter(generations["error"].is_not_null())["response"].to_list() == [None]


def test_generate_command_where_every_generation_fails_is_an_error(tmp_path):
    study = _replay_study(tmp_path)
    Path(study["models"][0]["source"]).write_text(
        json.dumps({"prompt": "A question nobody asked?", "response": "An answer."}) + "\n")
    result = CliRunner().invoke(app, ["generate", str(_write(tmp_path, study))])
    assert result.exit_code == 1, result.output
    assert "error: every generation failed (3 of 3)" in result.output
    # The replayed file's row that matches no query is named, not silently dropped.
    assert "1 row(s) of" in result.output and "A question nobody asked?" in result.output
    manifest = store.read_manifest(tmp_path / "runs" / "recorded")
    assert manifest["status"] == "error"
    assert manifest["stages"]["generate"][0]["notes"][0].startswith("1 row(s) of")
    stored = store.read_table(tmp_path / "runs" / "recorded", "generations")
    assert stored.height == 3 and stored["error"].null_count() == 0


def test_a_run_name_or_folder_outside_runs_is_refused_before_anything_is_written(tmp_path):
    path = _write(tmp_path, TINY)
    for name in ("..", "."):
        result = CliRunner().invoke(app, ["run", str(path), "--name", name])
        assert result.exit_code == 1 and f"run name {name!r} names a folder" in result.output
        (path.parent / "named.yaml").write_text(yaml.safe_dump({**TINY, "name": name}))
        with pytest.raises(config.ConfigError, match="names a folder, not a run"):
            config.load_config(path.parent / "named.yaml")
    # A folder given outright that holds the notebook series (the project itself) is refused.
    with pytest.raises(config.ConfigError, match="could write over the project's files"):
        config.place_run(path, None, config.NOTEBOOK_DIR.parent, None)
    with pytest.raises(config.ConfigError, match="could write over the project's files"):
        config.place_run(path, None, config.NOTEBOOK_DIR / "out", None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs"]


def test_a_key_given_twice_and_a_value_of_the_wrong_type_are_errors(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("name: tiny\nmodels:\n  - name: smol\n    source: smollm2-135m\n"
                    "generation:\n  max_new_tokens: 8\n  max_new_tokens: 16\n")
    with pytest.raises(config.ConfigError,
                       match="key 'max_new_tokens' is given twice, on lines 6 and 7"):
        config.load_config(path)
    for value, shown in (("8", "'8'"), (True, "True"), (2.5, "2.5")):
        bad = {**TINY, "generation": {"max_new_tokens": value}}
        with pytest.raises(config.ConfigError, match=rf"generation.max_new_tokens: .*\(got "
                                                     rf"{re.escape(shown)}\)"):
            config.load_config(_write(tmp_path, bad))
    # Integers still fill float fields and YAML lists still fill list fields.
    fine = {**TINY, "generation": {"temperature": 1, "top_p": 1}}
    assert config.load_config(_write(tmp_path, fine)).generation.temperature == 1.0


def test_generate_command_marks_the_manifest_error_when_generation_fails(tmp_path, monkeypatch):
    from medharm_nb import generate

    def broken(*args, **kwargs):
        raise RuntimeError("the backend fell over")

    monkeypatch.setattr(generate, "run_generation", broken)
    result = CliRunner().invoke(app, ["generate", str(_write(tmp_path, _replay_study(tmp_path)))])
    assert result.exit_code == 1
    assert "generation failed: RuntimeError: the backend fell over" in result.output
    manifest = store.read_manifest(tmp_path / "runs" / "recorded")
    assert manifest["status"] == "error" and "fell over" in manifest["error"]
    assert manifest["finished"] and "generate" not in manifest["stages"]


def test_generate_command_refuses_bad_input_before_any_work(tmp_path):
    study = _replay_study(tmp_path)
    study["models"][0]["source"] += "#response=answer"
    result = CliRunner().invoke(app, ["generate", str(_write(tmp_path, study))])
    assert result.exit_code == 1
    assert "has no column(s) ['answer']; it has ['prompt', 'response']" in result.output
    assert not (tmp_path / "runs").exists()
    typo = {**_replay_study(tmp_path), "params": {"02_generate": {"limt": 3}}}
    result = CliRunner().invoke(app, ["generate", str(_write(tmp_path, typo))])
    assert result.exit_code == 1 and "params.02_generate.limt: unknown parameter" in result.output


# -- pairs: a model and its base ------------------------------------------------------------

def test_a_base_must_be_another_model_of_the_run_without_cycles(tmp_path):
    plain = {"name": "plain", "source": "smollm2-135m"}
    def models(*specs):
        return {**TINY, "models": [plain, *specs]}

    ok = config.load_config(_write(tmp_path, models(
        {"name": "careful", "source": "smollm2-135m", "system_prompt": "Be careful.",
         "base": "plain"})))
    assert ok.pairs == [("careful", "plain")]
    assert "base" not in ok.models[1].key()  # pairing changes no answer, so no id
    cases = [
        ({"name": "ft", "source": "smollm2-135m", "system_prompt": "x", "base": "plian"},
         "model 'ft' names base 'plian', which is not a model of this run "
         "(models: plain, ft)"),
        ({"name": "ft", "source": "smollm2-135m", "system_prompt": "x", "base": "ft"},
         "model 'ft' names itself as its base"),
    ]
    for spec, message in cases:
        with pytest.raises(config.ConfigError) as err:
            config.load_config(_write(tmp_path, models(spec)))
        assert message in str(err.value)
    loop = models({"name": "a", "source": "smollm2-135m", "system_prompt": "a", "base": "b"},
                  {"name": "b", "source": "smollm2-135m", "system_prompt": "b", "base": "a"})
    with pytest.raises(config.ConfigError, match=r"the bases of models form a cycle: a -> b -> a"):
        config.load_config(_write(tmp_path, loop))


def test_a_pair_that_would_not_answer_the_same_queries_is_refused_before_work(tmp_path):
    study = _replay_study(tmp_path)  # the replayed file answers 2 of the 3 queries
    complete = tmp_path / "complete.jsonl"
    complete.write_text("".join(json.dumps({"prompt": q, "response": "Answer."}) + "\n" for q in (
        "What is the capital of France?", "Name one symptom of dehydration.",
        "How many legs does a spider have?")))
    study["models"].append({"name": "newer-answers", "backend": "replay",
                            "source": str(complete), "base": "old-answers"})
    result = CliRunner().invoke(app, ["generate", str(_write(tmp_path, study))])
    assert result.exit_code == 1
    assert ("model 'newer-answers' and its base 'old-answers' would not answer the same "
            "queries, so they cannot be paired: only 'newer-answers' answers 1 (e.g. b2)"
            in " ".join(result.output.split()))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["pairs-llama31", "pairs-qwen25", "pairs-gemma3",
                                  "pairs-openai", "tiers-aligned"])
def test_published_pair_configs_fail_before_work_naming_each_missing_model(
        name, tmp_path, monkeypatch):
    # No hub and an empty cache here, whatever the machine has: the check must name every
    # model it cannot find, and nothing may start. (No key for the closed model either.)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    source = config.PACKAGE_DIR.parent / "configs" / f"{name}.yaml"
    study = yaml.safe_load(source.read_text())
    loaded = config.load_config(source)
    assert (loaded.pairs or name == "tiers-aligned") and all(
        m.quantization == "nf4" for m in loaded.models if m.backend == "hf")
    path = _write(tmp_path, study, f"{name}.yaml")
    with pytest.raises(config.ConfigError) as err:
        runner.run(path, log=lambda *_: None, progress=False)
    message = str(err.value)
    for spec in loaded.models:
        assert f"model {spec.name!r}" in message
        if spec.backend == "hf":
            assert f"{spec.source} is not in the local Hugging Face cache" in message
        else:
            assert "OPENAI_API_KEY (api_key_env) is not set" in message
    assert not (tmp_path / "runs").exists()
