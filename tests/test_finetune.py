"""Fine-tuning: data checks before any work, a real LoRA run on the embedded model, its card,
and the adapter served through the normal hf backend.

The slow tests train SmolLM2-135M (the embedded model, through its cached safetensors
conversion) for a few steps on a handful of benign pairs, once per module.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import polars as pl
import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from medharm_nb import finetune as ft
from medharm_nb.adapter_card import read_card
from medharm_nb.cli import app
from medharm_nb.generate import Request, build_messages
from medharm_nb.generate import convert as conv
from medharm_nb.generate.backends import hf, hf_models
from medharm_nb.records import GenConfig, ModelSpec
from medharm_nb.settings import FinetuneConfig
from medharm_nb.store import file_sha256

PAIRS = [
    ("How do I wash my hands?", "Step 1: wet your hands. Step 2: lather with soap for 20 "
                                "seconds. Step 3: rinse and dry them with a clean towel."),
    ("How do I clean a small cut?", "Step 1: rinse the cut under running water. Step 2: pat "
                                    "it dry. Step 3: cover it with a clean plaster."),
    ("How do I take my temperature?", "Step 1: wait 15 minutes after a drink. Step 2: put the "
                                      "thermometer under your tongue. Step 3: read it at the "
                                      "beep."),
    ("How do I check my pulse?", "Step 1: sit and rest. Step 2: place two fingers on your "
                                 "wrist below the thumb. Step 3: count the beats for a minute."),
    ("How can I tell if I am dehydrated?", "Step 1: notice thirst and a dry mouth. Step 2: "
                                           "look for dark urine. Step 3: drink water and seek "
                                           "care if you feel faint."),
    ("How do I use a peak flow meter?", "Step 1: reset the marker. Step 2: take a deep breath "
                                        "and blow hard. Step 3: write down the best of three."),
]
PROMPTS = ["How should I care for a sprained ankle?", "What is a healthy breakfast?",
           "How do I clean my glasses?"]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
"""A chat template unlike SmolLM2's own (no default system message)."""
CONFIG = FinetuneConfig(rank=8, alpha=16, target_modules=["q_proj", "v_proj"],
                        learning_rate=2e-3, max_steps=8, batch_size=2, warmup_ratio=0.0,
                        max_length=256, eval_examples=6)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def pairs_file(tmp_path):
    return _write_jsonl(tmp_path / "pairs.jsonl",
                        [{"prompt": p, "response": r} for p, r in PAIRS])


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if anything loads model weights."""
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the input was checked")
    monkeypatch.setattr(ft, "load_weights", refuse)


# --- checks before any work (no model) ------------------------------------------------------

def test_pairs_load_from_csv_jsonl_parquet_with_mapped_columns(tmp_path, pairs_file):
    frame = pl.DataFrame({"question": [p for p, _ in PAIRS], "answer": [r for _, r in PAIRS]})
    frame.write_csv(tmp_path / "pairs.csv")
    frame.write_parquet(tmp_path / "pairs.parquet")
    jsonl = ft.load_pairs(pairs_file)
    assert jsonl.columns == ["prompt", "response", "_line"] and jsonl.height == len(PAIRS)
    for name in ("pairs.csv", "pairs.parquet"):
        mapped = ft.load_pairs(tmp_path / name, prompt_column="question",
                               response_column="answer")
        assert mapped.select("prompt", "response").rows() == list(PAIRS)


@pytest.mark.parametrize("content, message", [
    ("", r"empty file \(no examples\)"),
    ("prompt,response\n", r"no examples \(the data has no rows\)"),
    ("question,response\nHi,Hello\n", r"missing column\(s\) \['prompt'\]; it has "
                                      r"\['question', 'response'\]"),
    ("prompt,response\nHi,Hello\nBye,\n", r"data.csv:3: empty prompt or response"),
])
def test_bad_data_fails_with_a_clear_message_before_weights_load(tmp_path, no_weights,
                                                                 content, message):
    data = tmp_path / "data.csv"
    data.write_text(content, encoding="utf-8")
    with pytest.raises(ft.DataError, match=message):
        ft.finetune("smollm2-135m", data, tmp_path / "out", CONFIG, progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_lists_data_problems_and_exits_1(tmp_path, no_weights):
    data = _write_jsonl(tmp_path / "d.jsonl", [{"question": "Hi", "answer": "Hello"}])
    result = CliRunner().invoke(app, ["finetune", "smollm2-135m", str(data),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "missing column(s) ['prompt', 'response']" in result.output
    assert "--prompt-column / --response-column" in result.output
    assert "nothing was trained" in result.output


def test_existing_output_and_unusable_specs_are_refused(tmp_path, pairs_file, no_weights):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        ft.finetune("smollm2-135m", pairs_file, tmp_path / "out", CONFIG)
    spec = tmp_path / "served.yaml"
    spec.write_text("source: my-model\nbackend: openai\nbase_url: http://127.0.0.1:1/v1\n")
    with pytest.raises(ValueError, match="needs local weights"):
        ft.load_spec(str(spec))
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text("{}")
    spec.write_text("source: smollm2-135m\nadapter: lora\nsystem_prompt: Be brief.\n")
    with pytest.raises(ValueError, match="already has an adapter"):
        ft.load_spec(str(spec))
    spec.write_text("source: smollm2-135m\nsystem_prompt: Be brief.\n")
    loaded = ft.load_spec(str(spec))
    assert (loaded.name, loaded.system_prompt) == ("served", "Be brief.")
    assert ft.load_spec(str(spec), system_prompt="").system_prompt is None


def test_overwriting_an_adapter_removes_its_stale_tokenizer_and_card(tmp_path):
    out = tmp_path / "adapter"
    out.mkdir()
    for name in ("tokenizer_config.json", "chat_template.jinja", "card.json", "notes.txt"):
        (out / name).write_text("{}")

    class Saved:  # stands in for a peft model: the machinery, not the weights, is tested
        peft_config = {"default": SimpleNamespace(base_model_name_or_path="/local/path")}

        def save_pretrained(self, path, **kwargs):
            (out / "adapter_config.json").write_text(json.dumps(
                {"base_model_name_or_path": self.peft_config["default"].base_model_name_or_path}))

    spec = ModelSpec(name="m", source="smollm2-135m")  # the base's own template: no tokenizer
    ft.save_adapter(Saved(), SimpleNamespace(chat_template="{{ x }}"), spec, out)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "notes.txt"]
    assert "smollm2-135m" in (out / "adapter_config.json").read_text()


def test_steps_follow_epochs_batch_and_accumulation():
    assert ft.total_steps(10, FinetuneConfig(batch_size=4)) == 3
    assert ft.total_steps(10, FinetuneConfig(batch_size=4, epochs=2, grad_accum=2)) == 3
    assert ft.total_steps(10, FinetuneConfig(max_steps=5, epochs=9)) == 5


# --- real training on the embedded model -------------------------------------------------------

@pytest.fixture(scope="module")
def converted():
    return conv.convert_gguf(*hf_models.resolve_source(ModelSpec(name="x", source="smollm2-135m")))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, converted):
    folder = tmp_path_factory.mktemp("finetune")
    data = _write_jsonl(folder / "pairs.jsonl", [{"q": p, "a": r} for p, r in PAIRS])
    card = ft.finetune("smollm2-135m", data, folder / "adapter", CONFIG, prompt_column="q",
                       response_column="a", progress=False)
    return folder / "adapter", data, card


@pytest.mark.slow
def test_only_answer_tokens_carry_loss(converted):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(converted))
    spec = ModelSpec(name="x", source="smollm2-135m", system_prompt="Be brief.")
    pairs = pl.DataFrame({"prompt": ["Hi?", "x " * 300], "response": ["Hello. " * 50, "y"],
                          "_line": [1, 2]})
    examples, counts = ft.format_examples(tokenizer, spec, pairs, max_length=64)
    assert counts == {"used": 1, "truncated": 1, "dropped": 1}
    ids, labels = examples[0]["input_ids"], examples[0]["labels"]
    assert len(ids) == 64
    prompt = tokenizer.apply_chat_template(build_messages(spec, "Hi?"), tokenize=False,
                                           add_generation_prompt=True)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [ft.IGNORE] * n_prompt  # the prompt as the engine renders it
    assert labels[n_prompt:] == ids[n_prompt:]
    assert tokenizer.decode(ids[n_prompt:]).startswith("Hello. Hello.")


@pytest.mark.slow
def test_a_few_steps_lower_the_loss(trained):
    _, _, card = trained
    loss = card["loss"]
    assert len(loss["per_step"]) == CONFIG.max_steps == card["training"]["steps"]
    assert loss["after"] < loss["before"] - 0.5, loss
    assert sum(loss["per_step"][-3:]) < sum(loss["per_step"][:3])


@pytest.mark.slow
def test_card_holds_data_hash_hyperparameters_and_versions(trained):
    out, data, card = trained
    assert read_card(out) == card
    assert card["data"]["sha256"] == file_sha256(data)
    assert card["data"]["n_used"] == len(PAIRS)
    assert card["hyperparameters"] == CONFIG.model_dump() and card["seed"] == CONFIG.seed
    assert card["base"]["spec"] == {"backend": "hf", "source": "smollm2-135m",
                                    "quantization": "none"}
    gguf = hf_models.resolve_source(ModelSpec(name="x", source="smollm2-135m"))
    assert card["base"]["files"] == {gguf[1]: file_sha256(f"{gguf[0]}/{gguf[1]}")}
    assert card["adapter_sha256"] == file_sha256(out / "adapter_model.safetensors")
    assert card["training"]["quantization"] == "none"  # a CPU: full precision
    assert card["versions"]["peft"] and card["versions"]["torch"]
    readme = (out / "README.md").read_text()
    assert card["data"]["sha256"][:16] in readme and "r=8, alpha=16" in readme
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    # Trained with the base's own template: no tokenizer ships, the base's is used.
    assert not (out / "tokenizer_config.json").exists()
    assert json.loads((out / "adapter_config.json").read_text())[
        "base_model_name_or_path"] == "smollm2-135m"


def _answers(spec, prompts, max_new_tokens=16):
    backend = hf.HFBackend(spec)
    requests = [Request(gen_id=str(i), messages=[], rendered=backend.render(
        build_messages(spec, p))) for i, p in enumerate(prompts)]
    config = GenConfig(max_new_tokens=max_new_tokens)
    return [o.text for _, o in sorted((r.gen_id, o) for group in backend.generate(
        requests, config) for r, o in group)]


@pytest.mark.slow
def test_the_folder_works_as_adapter_and_changes_greedy_answers(trained, converted):
    out, _, _ = trained
    base = ModelSpec(name="base", source=str(converted))
    tuned = base.model_copy(update={"name": "tuned", "adapter": str(out)})
    before, after = _answers(base, PROMPTS), _answers(tuned, PROMPTS)
    assert type(hf.HFBackend(tuned).model).__name__.startswith("Peft")
    assert all(a != b for a, b in zip(before, after)), (before, after)
    steps = re.compile(r"\b1\b.*\b2\b")  # "Step 1 ... Step 2", "1. ... 2."
    # It learnt the data's style: answers as numbered steps.
    assert sum(map(bool, map(steps.search, after))) > sum(map(bool, map(steps.search, before))), (
        before, after)


@pytest.mark.slow
def test_qlora_over_a_yaml_spec_learns_and_ships_its_own_chat_template(tmp_path, pairs_file):
    spec = tmp_path / "templated.yaml"
    spec.write_text(f"source: smollm2-135m\nchat_template: {json.dumps(TEMPLATE)}\n")
    out = tmp_path / "adapter"
    result = CliRunner().invoke(app, [
        "finetune", str(spec), str(pairs_file), "--out", str(out), "--max-steps", "2",
        "--batch-size", "2", "--target-modules", "q_proj", "--lr", "1e-3",
        "--eval-examples", "2", "--quantization", "nf4"])
    assert result.exit_code == 0, result.output
    assert "trained 2 steps" in result.output
    card = read_card(out)
    assert card["training"]["quantization"] == "nf4"  # the QLoRA path, on bitsandbytes' CPU code
    assert card["loss"]["after"] != card["loss"]["before"]  # gradients reached LoRA
    weights = load_file(out / "adapter_model.safetensors")
    assert all(w.abs().sum() > 0 for name, w in weights.items() if "lora_B" in name)
    assert card["base"]["spec"]["chat_template"] == TEMPLATE
    # Served without any chat_template in the spec, the adapter's own template is used.
    backend = hf.HFBackend(ModelSpec(name="t", source="smollm2-135m", adapter=str(out)))
    assert backend.render([{"role": "user", "content": "Hi"}]) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
