"""transformers backend: the local engine for hub ids, local directories and GGUF files.

Weights load in their own dtype (``dtype="auto"``, GGUF files dequantized to float32) with
SDPA attention, optionally quantized by bitsandbytes (nf4 or int8; a GGUF file is converted
once to safetensors for that, see ``generate.convert``) and with a PEFT/LoRA adapter on top.

The engine is a decode loop of its own, not ``model.generate`` (``hf_engine``): prompts,
longest first, fill the slots of a key-value cache sized under a token budget; a sequence
that finishes leaves its slot to the next waiting prompt (continuous batching) instead of
being padded to the longest; an out-of-memory run is halved and retried. Greedy output
equals a one-prompt-at-a-time run; sampled output is reproducible, each request drawing
from its own generator seeded with ``request.seed``.

Where weights come from and how they load (embedded models, GGUF, quantization, adapters)
is ``hf_models``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from medharm_nb.generate.backends import hf_engine, hf_plan, hf_slots, hf_steplog
from medharm_nb.generate.backends.hf_models import (
    adapter_tokenizer,
    check_spec,
    load_model,
    load_tokenizer,
    model_files,
)
from medharm_nb.generate.base import BaseBackend, Output, Request
from medharm_nb.records import GenConfig, ModelSpec
from medharm_nb.store import files_digest

CPU_TOKEN_BUDGET = 20480
"""Cache tokens (rows x columns, ``hf_engine.columns``: prompt, answer and a quarter more
of slack) per run on a CPU: 16,384 tokens of prompt and answer, as before the slack."""
GPU_MEMORY_SHARE = 0.6
"""Share of free GPU memory the KV cache of one batch may fill; the rest is for activations."""


class HFBackend(BaseBackend):
    """transformers backend: hub id, local directory or GGUF file; greedy by default.

    Args:
        spec: The model spec (``backend: hf``).
        token_budget: Cache tokens per engine run, rows x ``hf_engine.columns(longest prompt
            + max_new_tokens)``; default: from free GPU memory on CUDA, ``CPU_TOKEN_BUDGET``
            on a CPU.
        inject_oom_above: Testing hook: raise an out-of-memory error for any batch with
            more rows than this, as a GPU would for a batch too large for its memory.
        answer_lengths: Benchmark hook: gen_id -> tokens after which that answer ends as if
            a stop token came (a model with random weights never produces one).

    Set ``step_log`` to an ``hf_steplog.StepLog`` to have ``generate`` record where its
    time goes (forward passes, prefill, the work around them, text).
    """

    def __init__(self, spec: ModelSpec, token_budget: int | None = None,
                 inject_oom_above: int | None = None,
                 answer_lengths: dict[str, int] | None = None):
        self.validate(spec)
        self.spec = spec
        self.source, self.gguf_file = check_spec(spec)
        self.token_budget = token_budget
        self.inject_oom_above = inject_oom_above
        self.answer_lengths = answer_lengths or {}
        self.step_log: hf_steplog.StepLog | None = None
        self.tokenizer = (adapter_tokenizer(spec.adapter)
                          or load_tokenizer(self.source, self.gguf_file))
        if spec.chat_template is None and self.tokenizer.chat_template is None:
            raise ValueError(
                f"model {spec.name!r} ({spec.source}) has no chat template (a base model?): "
                f"set chat_template in its spec")

    name = "hf"
    key_fields = ("gguf_file", "quantization", "dtype", "adapter", "system_prompt",
                  "chat_template")

    @classmethod
    def resolve(cls, spec: ModelSpec, base_dir: Path) -> ModelSpec:
        """A relative local model folder or adapter, relative to ``base_dir``."""
        update = {}
        for field in ("source", "adapter"):
            value = getattr(spec, field)
            if value and not Path(value).is_absolute() and (base_dir / value).exists():
                update[field] = str((base_dir / value).resolve())
        return spec.model_copy(update=update) if update else spec

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        """Files, hub id (cached or reachable), packages, quantization, adapter, GGUF
        conversion: no weights loaded (``hf_models.check_spec``)."""
        check_spec(spec)

    @classmethod
    def model_files(cls, spec: ModelSpec) -> list[Path]:
        """The local weight files and the adapter's (none for a hub id)."""
        return model_files(spec)

    @classmethod
    def plan(cls, spec: ModelSpec, config: GenConfig, n: int) -> dict[str, Any]:
        """Embedded, local or hub; a GGUF converted once; weights and KV-cache memory."""
        return hf_plan.plan(spec, config, n)

    @property
    def model(self):
        """The loaded weights (loaded on first use, so cached runs never load them)."""
        return load_model(self.source, self.gguf_file, self.spec.quantization,
                          self.spec.adapter, content=files_digest(self.model_files(self.spec)),
                          dtype=self.spec.dtype)

    def prepare(self) -> None:
        """Load the weights now, so their load time is not counted as generation time."""
        self.model  # noqa: B018 - the property loads and caches

    def render(self, messages: list[dict[str, str]]) -> str:
        """Apply the chat template (the spec's, or the tokenizer's)."""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True,
            chat_template=self.spec.chat_template)

    @property
    def context(self) -> int | None:
        """The model's context length in tokens (None when its config does not say)."""
        return getattr(self.model.config, "max_position_embeddings", None)

    @property
    def stop_ids(self) -> set[int]:
        """Token ids that end an answer: the generation config's EOS ids and the tokenizer's."""
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        return ids | ({self.tokenizer.eos_token_id} - {None})

    def generate(self, requests: Sequence[Request],
                 config: GenConfig) -> Iterator[list[tuple[Request, Output]]]:
        """Answer requests, longest prompts first, yielding finished answers in groups.

        At most ``config.batch_size`` rows decode at once, and rows x (longest prompt +
        max_new_tokens) stays within ``token_budget``; a finished row's slot is refilled
        with the next waiting prompt (``hf_engine``). On out-of-memory the rows are halved
        (for every later answer too) and the unfinished requests retried; a single prompt
        that still does not fit is returned as an error, never dropped.
        """
        import torch

        if not requests:
            return
        prompts = self.tokenizer([r.rendered for r in requests],
                                 add_special_tokens=False)["input_ids"]
        # A prompt the context cannot hold with its answer would run for minutes and then
        # fail or read garbage: it is a failure with its reason, before any decoding.
        context = self.context
        over = [i for i, p in enumerate(prompts)
                if context and len(p) + config.max_new_tokens > context]
        if over:
            yield [(requests[i], Output(
                None, len(prompts[i]), error=f"prompt too long: {len(prompts[i])} tokens + "
                f"max_new_tokens {config.max_new_tokens} is over the model's context of "
                f"{context}", finish_reason="error")) for i in over]
            keep = [i for i in range(len(requests)) if i not in set(over)]
            requests, prompts = [requests[i] for i in keep], [prompts[i] for i in keep]
            if not requests:
                return
        limits = [min(config.max_new_tokens, self.answer_lengths.get(r.gen_id, 1 << 30))
                  for r in requests]
        # Longest first: a run's cache is sized by its first prompt, and a run too large
        # for memory fails (and is halved) at the start rather than at the end.
        todo = sorted(range(len(requests)), key=lambda i: -len(prompts[i]))
        budget = self.token_budget or default_token_budget(self.model)
        cap = config.batch_size
        while todo:
            size, rows = run_size([hf_engine.columns(len(prompts[i]) + max(limits))
                                   for i in todo], budget, cap)
            run, done = todo[:size], set()
            try:
                for group in self._run([prompts[i] for i in run], [limits[i] for i in run],
                                       [requests[i].seed for i in run], config, rows):
                    done.update(run[k] for k, _, _ in group)
                    yield [(requests[run[k]], self._output(prompts[run[k]], answer, seconds,
                                                           limits[run[k]], rows))
                           for k, answer, seconds in group]
                failed = None
            except torch.cuda.OutOfMemoryError as err:
                failed = f"{type(err).__name__}: {err}"
            todo = [i for i in todo if i not in done]
            if failed is None:
                continue
            _free_gpu_memory()  # here, not in the except block: the run's tensors are freed
            if rows > 1:
                cap = rows // 2
                warnings.warn(f"out of memory with {rows} prompts at a time; retrying {cap} "
                              f"at a time", RuntimeWarning, stacklevel=2)
                continue
            first, todo = todo[0], todo[1:]  # alone and still too large: an error
            yield [(requests[first], self._output(prompts[first], failed, 0.0, 0, 1))]

    def _run(self, prompts: list[list[int]], limits: list[int], seeds: list[int],
             config: GenConfig, rows: int) -> Iterator[list[tuple[int, list[int], float]]]:
        """The engine over ``prompts`` with ``rows`` slots: groups of (index, new tokens,
        seconds each), a group once ``rows`` answers have ended (and the rest at the end),
        so the caller saves about as often as with one batch at a time."""
        began, ready = time.perf_counter(), []
        log = self.step_log
        for ended in hf_engine.decode(self.model, prompts, limits, seeds, config, rows,
                                      self.stop_ids, self.tokenizer.pad_token_id, log=log,
                                      oom_above=self.inject_oom_above):
            ready += ended
            if len(ready) >= rows:
                now = time.perf_counter()
                yield [(k, answer, (now - began) / len(ready)) for k, answer in ready]
                began, ready = time.perf_counter(), []
        if ready:
            seconds = (time.perf_counter() - began) / len(ready)
            yield [(k, answer, seconds) for k, answer in ready]

    def _output(self, prompt: list[int], answer: list[int] | str, seconds: float,
                limit: int, rows: int) -> Output:
        """An answer's Output; a string answer is the error that prevented it. An answer as
        long as its limit ran out of tokens (``length``); a shorter one stopped itself."""
        if isinstance(answer, str):
            return Output(None, len(prompt), 0, seconds, error=answer, finish_reason="error",
                          batch_size=rows)
        began = time.perf_counter()
        text = self.tokenizer.decode(answer, skip_special_tokens=True).strip()
        if self.step_log is not None:
            self.step_log.text_seconds += time.perf_counter() - began
        return Output(text, len(prompt), len(answer), seconds,
                      finish_reason="length" if len(answer) >= limit else "stop",
                      batch_size=rows)


def last_logits(model, sequences: Sequence[list[int]], reduce, pad_id: int,
                token_budget: int | None = None, max_rows: int = 64) -> list:
    """The next-token logits after each sequence, read in batches: prefill only, no decode.

    Verdict guards and scored judges read one distribution per item. Two things make that
    fast: the items' shared beginning (a guard's chat template and policy, a judge's rubric)
    is run once and its key-value cache reused by every item, and the items' own parts go
    through in batches, longest first, left-padded after the shared part (the attention
    mask and positions make the padding invisible), at most ``max_rows`` rows and
    ``token_budget`` padded tokens each; a batch that runs out of GPU memory is halved.

    Args:
        model: A loaded causal LM.
        sequences: Token ids per item (special tokens included as the model expects them).
        reduce: ``reduce(index, logits_row)`` -> what to keep for item ``index`` (the full
            vocabulary row is freed at once, so memory stays flat for any number of items).
        pad_id: The padding token id.
        token_budget: Padded tokens per batch (default: ``default_token_budget(model)``).
        max_rows: Rows per batch at most.

    Returns:
        ``reduce``'s result per sequence, in input order.
    """
    import copy

    import torch

    out: list = [None] * len(sequences)
    if not sequences:
        return out
    shared = hf_slots.shared_prefix(sequences)
    device = model.device
    prefix_cache = None
    if shared >= hf_slots.PREFIX_MIN:
        prefix_cache = _new_cache(model)
        with torch.inference_mode():
            model(input_ids=torch.tensor([list(sequences[0][:shared])], device=device),
                  use_cache=True, logits_to_keep=1, **prefix_cache)
    else:
        shared = 0
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    budget = token_budget or default_token_budget(model)
    cap, start = max_rows, 0
    while start < len(order):
        width = max(1, len(sequences[order[start]]) - shared)
        batch = order[start:start + max(1, min(cap, budget // (width + shared)))]
        rows = [list(sequences[i][shared:]) for i in batch]
        longest = max(map(len, rows))
        try:
            ids = torch.tensor([[pad_id] * (longest - len(r)) + r for r in rows], device=device)
            mask = torch.tensor([[1] * shared + [0] * (longest - len(r)) + [1] * len(r)
                                 for r in rows], device=device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
            cache = {}
            if prefix_cache is not None:
                cache = {k: copy.deepcopy(v) for k, v in prefix_cache.items()}
                next(iter(cache.values())).batch_repeat_interleave(len(rows))
            with torch.inference_mode():
                logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                               use_cache=bool(cache), logits_to_keep=1,
                               **cache).logits[:, -1].float()
        except torch.cuda.OutOfMemoryError:
            logits = None
        if logits is None:  # outside the except block: the batch's tensors are freed
            _free_gpu_memory()
            if len(batch) == 1:
                raise torch.cuda.OutOfMemoryError(
                    f"one sequence of {len(sequences[batch[0]])} tokens does not fit")
            cap = len(batch) // 2
            continue
        for row, i in enumerate(batch):
            out[i] = reduce(i, logits[row])
        start += len(batch)
    return out


def _new_cache(model) -> dict:
    """A fresh KV cache as the keyword the model's forward takes (``cache`` in transformers
    5.x, ``past_key_values`` before), so the same loop runs on both."""
    from transformers import DynamicCache

    return {hf_slots.cache_keyword(model): DynamicCache(config=hf_slots.base_model(model).config)}


def run_size(widths: Sequence[int], budget: int, cap: int) -> tuple[int, int]:
    """How many of the prompts (cache columns each needs, longest first) one engine run
    takes, and its rows: as many as the budget holds at the first one's width (at most
    ``cap``), with every later prompt that would not allow twice as many rows on its own.
    Prompts much shorter than the first get a run of their own with more rows."""
    def rows_at(width: int) -> int:
        return max(1, min(cap, budget // width))

    rows, size = rows_at(widths[0]), 1
    while size < len(widths) and rows_at(widths[size]) < 2 * rows:
        size += 1
    return size, min(rows, size)


def default_token_budget(model) -> int:
    """Cache tokens per engine run (padded tokens per batch in ``last_logits``): what
    ``GPU_MEMORY_SHARE`` of free memory holds as keys and values."""
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


def _free_gpu_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
