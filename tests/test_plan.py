"""The study planner: counts, where each model comes from, memory, and the time estimate."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from medharm_nb import config as run_config
from medharm_nb import plan as planner
from medharm_nb.cli import app


@pytest.fixture
def study(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDHARM_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "configs" / "study.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({
        "name": "s", "queries": {"source": "medharm-open", "per_cell": 1,
                                 "variants": ["direct", "roleplay"]},
        "models": [{"name": "small", "source": "smollm2-135m"},
                   {"name": "big", "source": "some-org/not-downloaded-8b",
                    "quantization": "nf4"},
                   {"name": "api", "backend": "openai", "source": "gpt-x",
                    "base_url": "http://127.0.0.1:9/v1"}],
        "generation": {"max_new_tokens": 100, "batch_size": 4},
        "judges": ["rules", "trained"]}))
    return path


def test_plan_counts_and_says_what_it_does_not_know(study):
    cfg = run_config.load_config(study)
    result = planner.plan(cfg, n_queries=120)  # 60 queries x 2 variants
    assert result["generations"] == 360 and result["judge_calls"] == 720
    assert result["max_new_tokens_total"] == 36_000
    small, big, api = result["models"]
    assert small["where"] == "embedded" and small["convert"]
    # SmolLM2-135M in float32 (from its GGUF): ~0.13B parameters, ~0.5 GB of weights.
    assert 0.12 < small["params_b"] < 0.15 and 0.45 < small["weights_gb"] < 0.65
    assert big["where"] == "hub: needs downloading" and big["gpu_gb"] is None
    assert api["where"].startswith("server")
    assert "none on this hardware" in result["benchmark"] and small["minutes"] is None


def test_plan_uses_the_last_benchmark_on_this_hardware(study):
    planner.record_benchmark("smollm2-135m", 200.0)
    cfg = run_config.load_config(study)
    small = planner.plan(cfg, n_queries=120)["models"][0]
    assert small["tok_s"] == 200.0 and small["minutes"] == pytest.approx(12_000 / 200 / 60, 0.1)
    out = CliRunner().invoke(app, ["plan", str(study)])
    assert out.exit_code == 0, out.output
    assert "60 queries" not in out.output and "= 360 generations" in out.output
    assert "small: embedded, converted once from GGUF" in out.output
    assert "big: hub: needs downloading" in out.output and "measured here" in out.output


def test_plan_knows_a_replayed_file_has_no_weights_and_nothing_to_generate(study, tmp_path):
    answers = tmp_path / "answers.csv"
    answers.write_text("prompt,response\nSay hello.,Hello!\n")
    cfg = run_config.load_config(study)
    replay = run_config.parse_spec(f"replay:{answers}", name="recorded")
    cfg = cfg.model_copy(update={"models": [*cfg.models, replay]})
    result = planner.plan(cfg, n_queries=120)
    row = result["models"][-1]
    assert row["where"] == f"replayed file {answers}" and row["max_new_tokens"] == 0
    assert row["weights"] == "no weights (recorded answers)" and row["minutes"] == 0.0
    assert "gpu_gb" not in row
    # The replayed answers are generations (and judged) but add no tokens.
    assert result["generations"] == 480 and result["judge_calls"] == 960
    assert result["max_new_tokens_total"] == 36_000
    line = planner.plan_lines(result)[-2]
    assert line == (f"  recorded: replayed file {answers}; no weights (recorded answers); "
                    "nothing to generate")


def test_greedy_decoding_asks_once_however_many_samples_are_set():
    from medharm_nb.records import GenConfig

    assert GenConfig(n_samples=5).samples == 1  # greedy: every sample would be the same
    assert GenConfig(n_samples=5, temperature=0.7).samples == 5
