"""The backend registry and the one model-spec parser (configs, spec files, command line)."""

from __future__ import annotations

import pytest
import yaml

from medharm_nb import config
from medharm_nb.generate.backends import BACKENDS, backend_type, make_backend
from medharm_nb.records import ModelSpec


def test_a_string_names_an_hf_source_or_any_backend_as_backend_colon_source(tmp_path):
    plain = config.parse_spec("smollm2-135m")
    assert (plain.name, plain.backend, plain.source) == ("smollm2-135m", "hf", "smollm2-135m")
    hub = config.parse_spec("some-org/model-8b", quantization="nf4", gguf_file=None)
    assert (hub.name, hub.quantization, hub.gguf_file) == ("model-8b", "nf4", None)
    answers = tmp_path / "answers.csv"
    replay = config.parse_spec(f"replay:{answers}#response=completion", name="gpt4")
    assert (replay.name, replay.backend, replay.source) == (
        "gpt4", "replay", f"{answers}#response=completion")
    # A colon that names no backend is part of the source (a hub id never has one, but a
    # path may).
    odd = config.parse_spec("weird:name")
    assert (odd.backend, odd.source) == ("hf", "weird:name")


def test_a_spec_file_resolves_its_paths_against_its_own_folder(tmp_path):
    folder = tmp_path / "specs"
    (folder / "answers").mkdir(parents=True)
    (folder / "answers" / "a.jsonl").write_text('{"prompt": "p", "response": "r"}\n')
    path = folder / "recorded.yaml"
    path.write_text(yaml.safe_dump({"backend": "replay", "source": "answers/a.jsonl#id=qid"}))
    spec = config.parse_spec(str(path))
    assert spec.name == "recorded"
    assert spec.source == f"{folder / 'answers' / 'a.jsonl'}#id=qid"
    # Command-line fields override the file's.
    assert config.parse_spec(str(path), name="other").name == "other"


@pytest.mark.parametrize(("value", "message"), [
    ({"name": "a", "source": "x", "backend": "nope"},
     "model 'a': unknown backend 'nope'; known: "),
    ({"name": "a", "source": "x", "backend": "replay", "system_prompt": "Be brief."},
     "model 'a': backend replay does not read system_prompt, so it would have no effect"),
    ({"name": "a", "source": "x", "backend": "openai", "base_url": "http://h/v1",
      "concurrency": "8"},
     "invalid model spec: concurrency: Input should be a valid integer"),
    ({"name": "a", "source": "x", "qantization": "nf4"},
     "invalid model spec: qantization: Extra inputs are not permitted"),
])
def test_a_bad_spec_is_one_line_naming_the_model_and_the_cause(value, message):
    with pytest.raises(config.ConfigError) as err:
        config.parse_spec(value)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_spec_file_names_itself_in_every_error(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("source: smollm2-135m\nsource: other\n")
    with pytest.raises(config.ConfigError, match=r"spec.yaml: not valid YAML: .*key 'source' "
                                                 r"is given twice, on lines 1 and 2"):
        config.parse_spec(str(path))
    path.write_text("source: smollm2-135m\nbackend: nope\n")
    with pytest.raises(config.ConfigError, match=r"spec.yaml: model 'spec': unknown backend"):
        config.parse_spec(str(path))


def test_every_backend_declares_what_it_reads_and_an_unknown_one_is_named():
    assert {"hf", "openai", "replay"} <= set(BACKENDS)
    for name, backend in BACKENDS.items():
        assert backend.name == name
        assert set(backend.key_fields) | set(backend.other_fields) <= set(ModelSpec.model_fields)
    with pytest.raises(ValueError, match="model 'm': unknown backend 'tgi'; known: .*hf"):
        make_backend(ModelSpec(name="m", backend="tgi", source="x"))
    assert backend_type("openai").key_fields == ("base_url", "system_prompt")


def test_the_echo_backend_runs_through_config_plan_and_generate_with_no_switch(tmp_path):
    # A backend added in generate/backends/ only: the config, the runner's checks, the plan,
    # generation and the manifest take it as they take the others.
    from typer.testing import CliRunner

    from medharm_nb import store
    from medharm_nb.cli import app

    path = tmp_path / "configs" / "echo.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({
        "name": "echo", "queries": {"source": "medharm-open", "per_cell": 1,
                                    "categories": ["toxicology"]},
        "models": [{"name": "parrot", "backend": "echo", "source": "echo"}],
        "judges": ["rules"]}))
    planned = CliRunner().invoke(app, ["plan", str(path)])
    assert planned.exit_code == 0, planned.output
    assert ("parrot: echo (the prompt itself); no weights; nothing to generate"
            in planned.output)
    result = CliRunner().invoke(app, ["generate", str(path)])
    assert result.exit_code == 0, result.output
    assert "parrot: total 6, cached 0, generated 6, failed 0" in result.output
    generations = store.read_table(tmp_path / "runs" / "echo", "generations")
    assert (generations["response"] == generations["prompt"]).all()
    assert generations["finish_reason"].to_list() == ["stop"] * 6
    manifest = store.read_manifest(tmp_path / "runs" / "echo")
    assert manifest["inputs"]["models"]["parrot"]["files"] == {}
    assert manifest["inputs"]["plan"]["models"][0]["where"] == "echo (the prompt itself)"
