"""The hf engine: batching, early exit, OOM backoff, sampling, quantization, adapters, errors.

Uses the real embedded model (SmolLM2-135M GGUF), its safetensors conversion (cached in the
user cache, ``$MEDHARM_CACHE``), bitsandbytes on CPU and a tiny LoRA adapter made here.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from medharm_nb import generate
from medharm_nb.bench import naive_answer
from medharm_nb.generate import Request, build_messages
from medharm_nb.generate import convert as conv
from medharm_nb.generate.backends import hf, hf_engine, hf_models, hf_slots, hf_steplog
from medharm_nb.records import GenConfig, ModelSpec

PLAIN = ModelSpec(name="plain", source="smollm2-135m")
PROMPTS = [
    "Say hello.",
    "What is the capital of France?",
    "How should medicines be stored safely in a home with young children? Please answer "
    "in two sentences for a parent.",
    "Name one symptom of dehydration.",
    "What does a pharmacist do?",
]


def _requests(backend, prompts=PROMPTS, seeds=None):
    seeds = seeds or [0] * len(prompts)
    return [Request(gen_id=str(i), messages=[], sample=0, seed=seed,
                    rendered=backend.render(build_messages(backend.spec, p)))
            for i, (p, seed) in enumerate(zip(prompts, seeds))]


def _answers(backend, requests, config) -> dict[str, str]:
    return {r.gen_id: o.text for group in backend.generate(requests, config) for r, o in group}


# --- no model needed -------------------------------------------------------------------

def test_pick_is_greedy_or_seeded_nucleus_sampling():
    logits = torch.tensor([[0.0, 4.0, 1.0, 0.5], [3.0, 0.0, 0.0, 2.9]])
    greedy = GenConfig(temperature=0.0)
    assert hf_engine._pick(logits, greedy, []).tolist() == [1, 0]
    hot = GenConfig(temperature=1.0)

    def draw(seed):
        gens = [torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)]
        return [tuple(hf_engine._pick(logits, hot, gens).tolist()) for _ in range(20)]

    assert draw(3) == draw(3)  # each row's generator makes it reproducible
    assert draw(3) != draw(4)
    assert {0, 3} <= {row[1] for row in draw(3)}  # both near-equal tokens get drawn
    nucleus = GenConfig(temperature=1.0, top_p=0.5)  # token 1 alone holds > 0.5 of row 0
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    assert all(hf_engine._pick(logits, nucleus, gens)[0] == 1 for _ in range(20))


def test_converted_folder_is_keyed_by_the_gguf_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDHARM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "a.gguf").write_bytes(b"one")
    first = conv.converted_dir(tmp_path, "a.gguf")
    assert first.parent == tmp_path / "cache" / "converted" and first.name.startswith("a-")
    (tmp_path / "a.gguf").write_bytes(b"two")  # same name, new content: a new folder
    assert conv.converted_dir(tmp_path, "a.gguf") != first


def test_unknown_quantization_and_missing_packages_fail_before_work(monkeypatch):
    with pytest.raises(ValueError, match="quantization"):  # pydantic names the field
        ModelSpec(name="x", source="smollm2-135m", quantization="q3")
    odd = ModelSpec.model_construct(**{**PLAIN.model_dump(), "quantization": "q3"})
    with pytest.raises(ValueError, match=r"unknown quantization 'q3'; known: none, nf4, int8"):
        hf_models.check_spec(odd)
    real = hf_models.importlib.util.find_spec
    monkeypatch.setattr(hf_models.importlib.util, "find_spec",
                        lambda name: None if name in ("bitsandbytes", "peft") else real(name))
    with pytest.raises(ValueError, match="needs bitsandbytes: pip install bitsandbytes"):
        hf_models.check_spec(PLAIN.model_copy(update={"quantization": "nf4"}))
    with pytest.raises(ValueError, match="needs peft"):
        hf_models.check_spec(PLAIN.model_copy(update={"adapter": "some/adapter"}))


def test_gguf_that_cannot_be_converted_fails_before_work(tmp_path):
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(tmp_path / "odd.gguf"), "not-an-architecture")
    writer.add_tensor("token_embd.weight", torch.zeros(4, 4).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    spec = ModelSpec(name="odd", source=str(tmp_path), gguf_file="odd.gguf", quantization="nf4")
    with pytest.raises(ValueError, match="needs a conversion, which is not possible.*"
                                         "not-an-architecture"):
        hf_models.check_spec(spec)
    hf_models.check_spec(spec.model_copy(update={"quantization": "none"}))  # fine unquantized


def test_missing_files_are_named(tmp_path):
    spec = PLAIN.model_copy(update={"adapter": str(tmp_path / "no-such-adapter")})
    with pytest.raises(FileNotFoundError, match="no-such-adapter"):
        hf_models.check_spec(spec)
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'config.json'} does not exist"):
        hf_models.check_spec(ModelSpec(name="empty", source=str(tmp_path)))


def test_a_hub_id_must_be_cached_or_reachable_before_work(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = ModelSpec(name="big", source="some-org/some-model", quantization="nf4")
    with pytest.raises(FileNotFoundError, match=r"model 'big' \(some-org/some-model\): "
                                                r"some-org/some-model is not in the local "
                                                r"Hugging Face cache .* hub is off"):
        hf.check_spec(spec)
    # In the cache (the layout huggingface_hub writes): fine offline.
    snapshot = cache / "models--some-org--some-model" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "models--some-org--some-model" / "refs").mkdir()
    (cache / "models--some-org--some-model" / "refs" / "main").write_text("abc")
    hf.check_spec(spec)
    # A GGUF-only repository is found by its GGUF file.
    gguf_repo = cache / "models--some-org--some-gguf"
    (gguf_repo / "snapshots" / "abc").mkdir(parents=True)
    (gguf_repo / "snapshots" / "abc" / "m.Q4_K_M.gguf").write_bytes(b"GGUF")
    (gguf_repo / "refs").mkdir()
    (gguf_repo / "refs" / "main").write_text("abc")
    hf.check_spec(ModelSpec(name="gguf", source="some-org/some-gguf",
                            gguf_file="m.Q4_K_M.gguf"))
    # Online but gated: say so, and what to do.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    from huggingface_hub import constants  # read the variable when first imported

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    gated = GatedRepoError.__new__(GatedRepoError)
    Exception.__init__(gated, "gated")

    def refuse(repo_id, **kwargs):
        raise gated

    monkeypatch.setattr(huggingface_hub, "auth_check", refuse)
    with pytest.raises(PermissionError, match="other-org/gated-model is gated .* accept its "
                                              "licence"):
        hf.check_spec(ModelSpec(name="gated", source="other-org/gated-model"))


# --- conversion, adapters, quantization -------------------------------------------------

@pytest.fixture(scope="module")
def converted():
    folder, gguf_file = hf_models.resolve_source(PLAIN)
    return conv.convert_gguf(folder, gguf_file)


def _make_adapter(base_folder, out, nonzero: bool):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(base_folder))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                      init_lora_weights=not nonzero)  # default init: B = 0, a no-op
    get_peft_model(base, lora).save_pretrained(str(out))
    return out


@pytest.mark.slow
def test_lora_adapter_changes_answers_only_when_nonzero(converted, tmp_path):
    config = GenConfig(max_new_tokens=6, batch_size=8)
    base_spec = ModelSpec(name="base", source=str(converted))
    prompts = PROMPTS[1:3]
    base = _answers(hf.HFBackend(base_spec), _requests(hf.HFBackend(base_spec), prompts), config)
    for nonzero in (False, True):
        adapter = _make_adapter(converted, tmp_path / f"lora-{nonzero}", nonzero)
        spec = base_spec.model_copy(update={"adapter": str(adapter)})
        backend = hf.HFBackend(spec)
        assert type(backend.model).__name__.startswith("Peft")
        answers = _answers(backend, _requests(backend, prompts), config)
        assert (answers != base) is nonzero
        assert str(adapter / "adapter_model.safetensors") in map(str, hf_models.model_files(spec))
    # The base model in the cache was not changed by loading adapters on top of it.
    backend = hf.HFBackend(base_spec)
    assert _answers(backend, _requests(backend, prompts), config) == base


@pytest.mark.slow
@pytest.mark.parametrize("quantization, layer", [("nf4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_quantized_gguf_is_converted_and_answers(converted, quantization, layer):
    spec = PLAIN.model_copy(update={"name": quantization, "quantization": quantization})
    backend = hf.HFBackend(spec)
    model = backend.model
    assert model.name_or_path == str(converted)  # the GGUF went through the conversion
    assert type(model.model.layers[0].mlp.up_proj).__name__ == layer
    assert model.config._attn_implementation == "sdpa"
    if quantization == "nf4":
        q = model.config.quantization_config
        assert q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
        assert q.bnb_4bit_compute_dtype == torch.bfloat16
    answers = _answers(backend, _requests(backend, PROMPTS[1:3]), GenConfig(max_new_tokens=8))
    assert "Paris" in answers["0"] and answers["1"].strip()


@pytest.mark.slow
def test_model_without_chat_template_is_refused_before_loading(converted, tmp_path):
    folder = tmp_path / "base-model"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(converted / name, folder / name)
    with pytest.raises(FileNotFoundError, match=r"no weights \(\*\.safetensors"):
        hf.HFBackend(ModelSpec(name="base", source=str(folder)))
    (folder / "model.safetensors").symlink_to(converted / "model.safetensors")
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    tok_config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    spec = ModelSpec(name="base", source=str(folder))
    with pytest.raises(ValueError, match=rf"model 'base' \({folder}\) has no chat template.*"
                                         r"set chat_template"):
        hf.HFBackend(spec)
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    backend = hf.HFBackend(spec.model_copy(update={"chat_template": template}))
    assert backend.render([{"role": "user", "content": "Hi"}]) == "user: Hi\n"


@pytest.mark.slow
def test_conversion_is_complete_and_equals_the_gguf(converted):
    assert conv.convert_gguf(*hf_models.resolve_source(PLAIN)) == converted  # once, then cached
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (converted / "model.safetensors").is_file()
    config = GenConfig(max_new_tokens=6, batch_size=8)
    spec = ModelSpec(name="converted", source=str(converted))
    backend = hf.HFBackend(spec)  # tokenizer and chat template came along
    gguf = hf.HFBackend(PLAIN)
    assert _answers(backend, _requests(backend, PROMPTS[:3]), config) == _answers(
        gguf, _requests(gguf, PROMPTS[:3]), config)


# --- the engine on the embedded GGUF model ----------------------------------------------

def _forward_shapes(backend):
    """Record (rows, tokens) of every forward pass; returns the list and the hook."""
    shapes: list[tuple[int, int]] = []
    hook = backend.model.register_forward_pre_hook(
        lambda _m, _a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    return shapes, hook


@pytest.mark.slow
def test_engine_greedy_equals_one_at_a_time_with_early_exit():
    backend = hf.HFBackend(PLAIN)
    requests = _requests(backend)
    shapes, hook = _forward_shapes(backend)
    try:
        outputs = {r.gen_id: o for group in backend.generate(requests, GenConfig(
            max_new_tokens=10, batch_size=8)) for r, o in group}
    finally:
        hook.remove()
    decode_rows = [rows for rows, tokens in shapes if tokens == 1]
    assert decode_rows[0] == len(PROMPTS) and min(decode_rows) < len(PROMPTS)  # rows left
    assert shapes[0][0] == 1  # the shared chat-template prefix, run once
    assert any(o.n_new_tokens < 10 for o in outputs.values())  # some stopped at EOS
    tok = backend.tokenizer
    for r in requests:
        single = naive_answer(backend, r.rendered, 10)  # plain model.generate, one prompt
        assert outputs[r.gen_id].text == tok.decode(single, skip_special_tokens=True).strip()
        assert outputs[r.gen_id].n_new_tokens == len(single)
    assert "Paris" in outputs["1"].text


REFILL_PROMPTS = [*PROMPTS, "What is a fever?", "Why do we sleep?",
                  "Name a fruit that is rich in vitamin C.", "What does the liver do?"]
REFILL_LENGTHS = {"0": 3, "1": 9, "2": 2, "3": 7, "4": 5, "5": 1, "6": 8, "7": 4, "8": 6}


@pytest.mark.slow
def test_refill_greedy_equals_one_at_a_time_and_is_independent_of_order():
    # Nine prompts, three slots, answers ending at different steps: finished rows are
    # refilled with waiting prompts, whose prefill runs between decoding steps.
    backend = hf.HFBackend(PLAIN, answer_lengths=REFILL_LENGTHS)
    requests = _requests(backend, REFILL_PROMPTS)
    config = GenConfig(max_new_tokens=9, batch_size=3)
    shapes, hook = _forward_shapes(backend)
    try:
        groups = list(backend.generate(requests, config))
    finally:
        hook.remove()
    outputs = {r.gen_id: o for g in groups for r, o in g}
    decoded = [i for i, (_, tokens) in enumerate(shapes) if tokens == 1]
    assert max(shapes[i][0] for i in decoded) == 3  # never more rows than slots
    assert any(tokens > 1 for _, tokens in shapes[decoded[0]:])  # prefill between steps
    assert all(o.batch_size == 3 for o in outputs.values())
    tok = backend.tokenizer
    for r in requests:
        single = naive_answer(backend, r.rendered, REFILL_LENGTHS[r.gen_id])
        assert outputs[r.gen_id].n_new_tokens == len(single), r.gen_id
        assert outputs[r.gen_id].text == tok.decode(single, skip_special_tokens=True).strip()
        assert outputs[r.gen_id].finish_reason == (
            "length" if len(single) == REFILL_LENGTHS[r.gen_id] else "stop")
    # Another order, other slot counts: the same answers.
    texts = {k: o.text for k, o in outputs.items()}
    for order, rows in ((list(reversed(requests)), 3), (requests[4:] + requests[:4], 4),
                        (requests, 1)):
        assert _answers(backend, order, config.model_copy(update={"batch_size": rows})) == texts


@pytest.mark.slow
def test_step_log_records_every_step_and_prefill():
    backend = hf.HFBackend(PLAIN, answer_lengths=REFILL_LENGTHS)
    backend.step_log = log = hf_steplog.StepLog()
    outputs = [o for g in backend.generate(_requests(backend, REFILL_PROMPTS),
                                           GenConfig(max_new_tokens=9, batch_size=4))
               for _, o in g]
    assert log.decode and all(1 <= rows <= 4 for rows, *_ in log.decode)
    # Each answer's first token comes from its prefill, every later one from a step.
    assert log.row_steps >= sum(o.n_new_tokens for o in outputs) - len(outputs)
    assert log.prefill[0][:2] == (1, log.prefill[0][1])  # the shared prefix, once
    assert sum(rows for rows, *_ in log.prefill[1:]) == len(REFILL_PROMPTS)
    assert log.forward_seconds > 0 and log.other_seconds > 0 and log.text_seconds > 0
    groups = log.split()
    assert groups[0]["rows"] == "4" and sum(g["steps"] for g in groups) == len(log.decode)


def test_step_log_split_and_cost_curve():
    log = hf_steplog.StepLog(decode=[(64, 100, 0.10 + 0.002 * 64, 0.004)] * 3
                             + [(40, 120, 0.10 + 0.002 * 40, 0.003), (5, 150, 0.11, 0.001),
                                (1, 160, 0.102, 0.0005)])
    assert [g["rows"] for g in log.split()] == ["64", "33-63", "5-8", "1"]
    top = log.split()[0]
    assert top["steps"] == 3 and top["other_ms"] == pytest.approx(4.0)
    assert top["other_share"] == pytest.approx(0.004 / 0.232)
    a, b = log.fit()
    assert a == pytest.approx(0.1, abs=0.003) and b == pytest.approx(0.002, abs=1e-4)
    assert log.row_steps == 3 * 64 + 40 + 5 + 1


def test_prefill_groups_keep_padding_small():
    lengths = [90, 88, 85, 60, 58, 40, 40, 39]
    sizes = hf_engine._length_groups(lengths)
    assert sizes == [5, 3]  # 6 x 90 padded would be over 1.25 x the 421 real tokens
    assert hf_engine._length_groups([100, 100, 50, 50]) == [3, 1]
    assert hf_engine._length_groups([10]) == [1]
    assert hf_engine._length_groups([50, 10]) == [1, 1]  # 50 + 50 padded > 1.25 x 60


def _tiny_model(converted, folder, arch: str, window: int | None):
    """A two-layer model with random weights and SmolLM2's tokenizer, saved to ``folder``:
    Mistral (every layer slides over ``window`` tokens) or Qwen2 (layer 0 full, 1 slides)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, MistralConfig, Qwen2Config

    shape = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                 tie_word_embeddings=True, sliding_window=window)
    config = (MistralConfig(**shape) if arch == "mistral" else
              Qwen2Config(**shape, use_sliding_window=window is not None, max_window_layers=1))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(converted)).save_pretrained(folder)
    return ModelSpec(name=f"{arch}-{window}", source=str(folder))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mistral", "qwen2"])
def test_sliding_window_layers_attend_to_their_window_only(converted, tmp_path, arch):
    spec = _tiny_model(converted, tmp_path / "windowed", arch, window=6)
    backend = hf.HFBackend(spec)
    assert hf_slots.attention_kinds(backend.model, 40) == (
        "sliding" if arch == "mistral" else "mixed")
    requests = _requests(backend, REFILL_PROMPTS[:6])
    config = GenConfig(max_new_tokens=12, batch_size=2)
    outputs = {r.gen_id: o for g in backend.generate(requests, config) for r, o in g}
    tok = backend.tokenizer
    for r in requests:
        single = naive_answer(backend, r.rendered, 12)  # transformers' own sliding cache
        assert outputs[r.gen_id].text == tok.decode(single, skip_special_tokens=True).strip()
    # The window matters: the same weights attending to everything answer otherwise.
    full = hf.HFBackend(_tiny_model(converted, tmp_path / "full", arch, window=None))
    assert _answers(full, _requests(full, REFILL_PROMPTS[:6]), config) != {
        k: o.text for k, o in outputs.items()}


@pytest.mark.slow
def test_token_budget_sizes_batches_by_prompt_length():
    backend = hf.HFBackend(PLAIN)
    long = ("I am writing a short health leaflet for a community centre. It should be "
            "friendly, factual and suitable for adults of all ages, and it must not replace "
            "advice from a doctor or pharmacist. ")
    prompts = [long + "What is asthma?", "Say hi.", "Say yes.", long + "What is a fever?",
               "Say no.", "Say ok."]
    requests = _requests(backend, prompts)
    lengths = [len(backend.tokenizer(r.rendered, add_special_tokens=False)["input_ids"])
               for r in requests]
    # Room for two rows of the long prompts, and for at least four of the short ones.
    backend.token_budget = 2 * hf_engine.columns(max(lengths) + 2)
    short = max(lengths[1], lengths[2], lengths[4], lengths[5])
    assert backend.token_budget >= 4 * hf_engine.columns(short + 2)
    groups = [sorted(r.gen_id for r, _ in g) for g in backend.generate(
        requests, GenConfig(max_new_tokens=2, batch_size=16))]
    assert groups == [["0", "3"], ["1", "2", "4", "5"]]  # long ones first, two at a time


def test_a_run_takes_prompts_until_shorter_ones_would_fit_twice_the_rows():
    assert hf.run_size([100, 90, 60, 49, 40], budget=400, cap=64) == (3, 3)  # 4 rows, 3 items
    assert hf.run_size([100, 90, 60, 49, 40], budget=800, cap=64) == (3, 3)
    assert hf.run_size([40, 40], budget=400, cap=64) == (2, 2)
    assert hf.run_size([100] * 10, budget=400, cap=2) == (10, 2)  # the cap, then refill
    assert hf.run_size([100, 20], budget=400, cap=4) == (2, 2)  # capped: no more rows


@pytest.mark.slow
def test_out_of_memory_halves_the_batch_and_loses_nothing():
    config = GenConfig(max_new_tokens=4, batch_size=8)
    reference = _answers(hf.HFBackend(PLAIN), _requests(hf.HFBackend(PLAIN)), config)
    backend = hf.HFBackend(PLAIN, inject_oom_above=2)
    with pytest.warns(RuntimeWarning, match="out of memory with 5 prompts at a time; "
                                            "retrying 2"):
        groups = list(backend.generate(_requests(backend), config))
    assert [len(g) for g in groups] == [2, 2, 1]
    assert {r.gen_id: o.text for g in groups for r, o in g} == reference
    # Even one prompt does not fit: every request comes back, as an error.
    backend.inject_oom_above = 0
    with pytest.warns(RuntimeWarning):
        outputs = [o for g in backend.generate(_requests(backend), config) for _, o in g]
    assert len(outputs) == 5 and all(o.text is None for o in outputs)
    assert all(o.error.startswith("OutOfMemoryError") for o in outputs)


@pytest.mark.slow
def test_sampling_is_seeded_per_request_and_independent_of_batching():
    backend = hf.HFBackend(PLAIN)
    prompt = "Give one tip for staying healthy."
    requests = _requests(backend, [prompt] * 3, seeds=[1, 2, 1])
    hot = GenConfig(max_new_tokens=6, temperature=1.0, batch_size=3)
    together = _answers(backend, requests, hot)
    alone = _answers(backend, requests, hot.model_copy(update={"batch_size": 1}))
    assert together == alone
    assert together["0"] == together["2"] != together["1"]  # same seed, same sample
    # With refill: rows end at different steps and newcomers take their slots.
    backend = hf.HFBackend(PLAIN, answer_lengths=REFILL_LENGTHS)
    requests = _requests(backend, REFILL_PROMPTS, seeds=list(range(10, 19)))
    one = _answers(backend, requests, hot.model_copy(update={"batch_size": 1}))
    assert _answers(backend, requests[::-1], hot) == one
    assert _answers(backend, requests, hot.model_copy(update={"batch_size": 9})) == one


@pytest.mark.slow
def test_bench_cli_prints_the_summary_line_and_files_it_for_plan(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from medharm_nb import plan
    from medharm_nb.cli import app

    # The measured rate is filed for `plan`; here in a scratch file, not the user's cache
    # (the converted weights in that cache are still reused).
    filed = tmp_path / "benchmarks.json"
    monkeypatch.setattr(plan, "BENCH_FILE", filed)
    result = CliRunner().invoke(app, ["bench", "generate", "--n", "3", "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert "all 3 identical" in lines[-2]
    summary = re.fullmatch(
        r"speedup=\d+\.\d\d naive_tok_s=\d+\.\d engine_tok_s=(\d+\.\d)", lines[-1])
    assert summary
    (rates,) = json.loads(filed.read_text()).values()
    assert rates["generate:smollm2-135m"] == pytest.approx(float(summary[1]), abs=0.06)


@pytest.mark.slow
def test_bench_cli_mixed_prints_the_split_the_curve_and_the_ceiling():
    from typer.testing import CliRunner

    from medharm_nb.cli import app

    result = CliRunner().invoke(app, [
        "bench", "generate", "--workload", "mixed", "--n", "5", "--max-new-tokens", "6",
        "--batch-size", "3", "--naive-n", "2", "--static-batch", "2", "--static-batch", "5"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "naive loop (first 2)" in out and "static generate, batch 5:" in out
    assert re.search(r"^ +3 +\d+ +\d+ +\d+\.\d +\d+\.\d\d +\d+\.\d%$", out, re.M)  # 3 rows
    assert "per-step cost curve (forward):" in out and "row-step ratio" in out
    assert "outputs: 0 of 5 differ" in out
    assert re.fullmatch(r"engine_vs_batched=\d+\.\d\d engine_vs_batched_cpu=\d+\.\d\d "
                        r"engine_tok_s=\S+ batched_tok_s=\S+ best_batch=[25] "
                        r"engine_vs_naive=\S+ naive_tok_s=\S+", out.strip().splitlines()[-1])


@pytest.mark.slow
def test_an_adapter_retrained_in_the_same_folder_is_never_served_stale(converted, tmp_path):
    config = GenConfig(max_new_tokens=6, batch_size=8)
    folder = tmp_path / "lora"
    spec = ModelSpec(name="ft", source=str(converted), adapter=str(folder))
    _make_adapter(converted, folder, nonzero=False)  # a no-op adapter: the base's answers
    first = hf.HFBackend(spec)
    model_before, id_before = first.model, generate.spec_id(spec)
    answers_before = _answers(first, _requests(first, PROMPTS[1:3]), config)
    _make_adapter(converted, folder, nonzero=True)  # retrained into the same folder
    assert generate.spec_id(spec) != id_before  # new generation ids, no cache hit
    second = hf.HFBackend(spec)
    assert second.model is not model_before  # and new weights, not the in-process cache
    assert _answers(second, _requests(second, PROMPTS[1:3]), config) != answers_before


@pytest.mark.slow
def test_an_adapter_that_ships_a_chat_template_uses_it(converted, tmp_path):
    from transformers import AutoTokenizer

    folder = _make_adapter(converted, tmp_path / "lora-tpl", nonzero=False)
    tok = AutoTokenizer.from_pretrained(str(converted))
    tok.chat_template = ("{% for m in messages %}<<{{ m['role'] }}>> {{ m['content'] }}\n"
                         "{% endfor %}<<assistant>>")
    tok.save_pretrained(str(folder))
    spec = ModelSpec(name="ft", source=str(converted), adapter=str(folder))
    rendered = hf.HFBackend(spec).render([{"role": "user", "content": "Say hello."}])
    assert rendered == "<<user>> Say hello.\n<<assistant>>"
    base = hf.HFBackend(spec.model_copy(update={"adapter": None}))
    assert base.render([{"role": "user", "content": "Say hello."}]) != rendered
