"""Downstream fine-tuning: a LoRA adapter trained on prompt/response pairs over a model spec.

The MedHarm study found that fine-tuning on medical data can amplify harmful specificity;
this stage makes such fine-tunes, so a study can compare a model with its own fine-tune.
``finetune(spec, data, out)`` checks the spec, the data and the output folder before any
weights load, formats every pair with the spec's chat template and system prompt exactly as
the generation engine renders prompts, trains LoRA with peft (QLoRA over an nf4 base on a
CUDA GPU, full precision on a CPU) with the loss on answer tokens only, and writes:

    OUT/
      adapter_config.json          peft's adapter: OUT works as ``adapter: OUT`` in a spec
      adapter_model.safetensors
      tokenizer*.json ...          only when the spec's chat template differs from the
                                   base's, so the fine-tune is served with its own template
      card.json                    base spec and weight hashes, data source and SHA-256,
                                   hyper-parameters, seed, versions, per-step loss
      README.md, loss.png          the same card for people, with the loss curve

``card.json`` is written last: a folder without it holds no finished adapter.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from medharm_nb import adapter_card
from medharm_nb.config import parse_spec
from medharm_nb.data_files import QueryValidationError, read_hf, read_query_file
from medharm_nb.generate import build_messages
from medharm_nb.generate.backends.hf_models import (
    TOKENIZER_FILES,
    as_safetensors,
    check_spec,
    load_weights,
    resolve_source,
)
from medharm_nb.records import FinetuneConfig, ModelSpec

IGNORE = -100
"""Label of tokens that carry no loss (prompt, padding), as torch's cross-entropy expects."""
SAVED_TOKENIZER_FILES = (*TOKENIZER_FILES, "special_tokens_map.json", "chat_template.json",
                         "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model")
"""What a saved tokenizer may consist of: the files by which the engine finds an adapter's
own tokenizer, and the rest (``save_adapter`` removes stale ones)."""


class DataError(ValueError):
    """Training data that cannot be used, with every problem found (file and line)."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__(f"{len(errors)} problem(s) in the training data:\n  "
                         + "\n  ".join(errors[:50]))


# -- checks before any weights load ---------------------------------------------------------

def load_spec(spec: str, system_prompt: str | None = None) -> ModelSpec:
    """The model spec to fine-tune, from an embedded name, hub id, local folder or YAML file.

    Args:
        spec: Embedded model name, hub id or local directory; or a YAML file holding one
            ``ModelSpec`` (``name`` optional, relative paths relative to the file).
        system_prompt: Replaces the spec's system prompt when given.

    Raises:
        ValueError: the spec is not an hf spec, or already has an adapter.
        FileNotFoundError: a model file does not exist.
    """
    parsed = parse_spec(spec, system_prompt=system_prompt)
    if system_prompt == "":  # an empty --system-prompt removes the spec's
        parsed = parsed.model_copy(update={"system_prompt": None})
    if parsed.backend != "hf":  # fine-tuning puts LoRA layers on weights loaded here
        raise ValueError(f"model {parsed.name!r}: fine-tuning needs local weights (backend "
                         f"hf), not backend {parsed.backend!r}")
    if parsed.adapter:
        raise ValueError(f"model {parsed.name!r} already has an adapter ({parsed.adapter}); "
                         f"fine-tune its base, or merge the adapter into the weights first")
    check_spec(parsed)
    return parsed


def load_pairs(source: str | Path, prompt_column: str = "prompt",
               response_column: str = "response", split: str = "train",
               data_files: str | list[str] | None = None) -> pl.DataFrame:
    """Read prompt/response pairs from a CSV, JSONL or Parquet file or an ``hf:`` source.

    Returns:
        Columns ``prompt``, ``response`` and ``_line`` (its position, for messages).

    Raises:
        DataError: an empty file, missing columns, or empty prompts or responses, each
            with file and line.
        FileNotFoundError: the file does not exist.
    """
    source = str(source)
    try:
        if source.startswith("hf:"):
            where, unit = f"{source}[{split}]", "row"
            df = read_hf(source[3:], split, data_files).with_row_index("_line", offset=1)
        else:
            path, where = Path(source), source
            if path.is_file() and not path.read_bytes().strip():
                raise DataError([f"{where}: empty file (no examples)"])
            df, unit = read_query_file(path)
    except QueryValidationError as err:
        raise DataError(err.errors) from None
    if df.height == 0:
        raise DataError([f"{where}: no examples (the data has no rows)"])
    columns = {"prompt": prompt_column, "response": response_column}
    missing = [theirs for theirs in columns.values() if theirs not in df.columns]
    if missing:
        raise DataError([f"{where}: missing column(s) {missing}; it has "
                         f"{[c for c in df.columns if c != '_line']} (name yours with "
                         f"--prompt-column / --response-column)"])
    df = df.select(pl.col(prompt_column).alias("prompt"),
                   pl.col(response_column).alias("response"), "_line")
    errors = [f"{where}:{row['_line']}" if unit == "line" else f"{where}: row {row['_line']}"
              for row in df.iter_rows(named=True)
              if not (row["prompt"] or "").strip() or not (row["response"] or "").strip()]
    if errors:
        raise DataError([f"{pos}: empty prompt or response" for pos in errors])
    return df


def check_out(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse to write into a non-empty folder unless ``overwrite``; return the path."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite / --overwrite)")
    return out


def format_examples(tokenizer, spec: ModelSpec, pairs: pl.DataFrame,
                    max_length: int) -> tuple[list[dict[str, list[int]]], dict[str, int]]:
    """Token ids and labels per pair: the prompt as the engine renders it, then the answer.

    The prompt is the spec's system prompt and the user turn through the chat template with
    the generation prompt, tokenized alone, as ``generate`` tokenizes it; the answer is the
    rest of the rendered conversation (the answer and the template's end of turn), the only
    tokens with a loss. Answers are cut to ``max_length``; a pair whose prompt alone fills
    it is dropped.

    Returns:
        The examples (``input_ids``, ``labels``) and counts: used, truncated, dropped.

    Raises:
        ValueError: the template renders the answered conversation as something other
            than the prompt followed by the answer.
    """
    examples, truncated, dropped = [], 0, 0
    for row in pairs.iter_rows(named=True):
        messages = build_messages(spec, row["prompt"])
        prompt = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True,
            chat_template=spec.chat_template)
        full = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": row["response"]}], tokenize=False,
            chat_template=spec.chat_template)
        if not full.startswith(prompt):
            raise ValueError(f"model {spec.name!r}: its chat template does not render an "
                             f"answered chat as the prompt followed by the answer; set a "
                             f"chat_template that does")
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
        room = max_length - len(prompt_ids)
        if room < 1:
            dropped += 1
            continue
        truncated += len(answer_ids) > room
        answer_ids = answer_ids[:room]
        examples.append({"input_ids": prompt_ids + answer_ids,
                         "labels": [IGNORE] * len(prompt_ids) + answer_ids})
    return examples, {"used": len(examples), "truncated": truncated, "dropped": dropped}


# -- training ---------------------------------------------------------------------------------

def training_base(spec: ModelSpec, quantization: str) -> tuple[str, str | None, str]:
    """(weights folder or hub id, GGUF file or None, quantization) to train on.

    ``auto`` takes the spec's quantization, else nf4 on a CUDA GPU (QLoRA) and none on a
    CPU. A GGUF file is trained through its cached safetensors conversion
    (``hf_models.as_safetensors``), as the engine loads it: the same weights and tokenizer.
    """
    import torch

    if quantization == "auto":
        quantization = (spec.quantization if spec.quantization != "none"
                        else "nf4" if torch.cuda.is_available() else "none")
    return (*as_safetensors(*resolve_source(spec)), quantization)


def trainable_model(source: str, gguf_file: str | None, quantization: str,
                    config: FinetuneConfig):
    """The base weights with fresh LoRA layers (seeded); quantized bases prepared for k-bit
    training (gradient checkpointing, norms in float32)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    model = load_weights(source, gguf_file, quantization)
    set_seed(config.seed)  # LoRA's A matrices are drawn now, dropout masks while training
    if quantization != "none":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True,
            gradient_checkpointing_kwargs={"use_reentrant": False})
        for module in model.modules():
            # On a CPU, bitsandbytes repacks 4-bit weights for inference at the first no-grad
            # forward (our loss before training); no gradient flows through them after that.
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    targets = config.target_modules
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=targets[0] if targets == ["all-linear"] else targets,
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def _batches(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Example indices, batch by batch, reshuffled (seeded) every epoch, forever."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=generator).tolist()
        yield from (order[i:i + batch_size] for i in range(0, n, batch_size))


def _collate(examples: list[dict[str, list[int]]], pad_id: int, device):
    """Right-padded input ids, attention mask and labels (no loss on padding)."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    ids = [e["input_ids"] + [pad_id] * (width - len(e["input_ids"])) for e in examples]
    labels = [e["labels"] + [IGNORE] * (width - len(e["labels"])) for e in examples]
    mask = [[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in examples]
    return (torch.tensor(ids, device=device), torch.tensor(mask, device=device),
            torch.tensor(labels, device=device))


def _summed_loss(model, batch) -> tuple[Any, int]:
    """Cross-entropy summed over a batch's answer tokens, and how many there are."""
    import torch.nn.functional as F

    ids, mask, labels = batch
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
    target = labels[:, 1:]
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")
    return loss, int((target != IGNORE).sum())


def mean_loss(model, examples: list[dict[str, list[int]]], batch_size: int,
              pad_id: int) -> float:
    """Mean loss per answer token over ``examples`` (no dropout, no gradients)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            loss, n = _summed_loss(model, _collate(examples[i:i + batch_size], pad_id,
                                                   model.device))
            total, count = total + loss.item(), count + n
    model.train()
    return total / max(count, 1)


def total_steps(n_examples: int, config: FinetuneConfig) -> int:
    """Optimizer steps: ``max_steps``, else ``epochs`` passes over the examples."""
    per_epoch = math.ceil(n_examples / config.batch_size)
    return config.max_steps or math.ceil(config.epochs * per_epoch / config.grad_accum)


def train(model, examples: list[dict[str, list[int]]], config: FinetuneConfig, pad_id: int,
          progress: bool = True) -> list[float]:
    """Train the LoRA layers with AdamW and a linear warmup-then-decay schedule.

    Returns:
        The loss per optimizer step (mean over that step's answer tokens).
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    steps = total_steps(len(examples), config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    schedule = get_linear_schedule_with_warmup(
        optimizer, round(config.warmup_ratio * steps), steps)
    batches = _batches(len(examples), config.batch_size, config.seed)
    losses: list[float] = []
    model.train()
    bar = tqdm(total=steps, desc="finetune", unit="step", disable=not progress)
    for _ in range(steps):
        micro = [_collate([examples[i] for i in next(batches)], pad_id, model.device)
                 for _ in range(config.grad_accum)]
        n_tokens = sum(int((b[2][:, 1:] != IGNORE).sum()) for b in micro)
        step_loss = 0.0
        for batch in micro:  # token-weighted over the whole step, however it is split
            loss, _ = _summed_loss(model, batch)
            (loss / n_tokens).backward()
            step_loss += loss.item() / n_tokens
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
        bar.update()
        bar.set_postfix(loss=f"{step_loss:.3f}")
    bar.close()
    return losses


# -- the stage ----------------------------------------------------------------------------------

def save_adapter(model, tokenizer, spec: ModelSpec, out: Path) -> None:
    """Save the LoRA weights, and the tokenizer when the spec's chat template is its own.

    Files an earlier adapter left in ``out`` that this one would not overwrite (its card,
    a tokenizer) are removed first, so a stale template is never served with new weights.
    """
    out.mkdir(parents=True, exist_ok=True)
    for name in (adapter_card.CARD_FILE, *SAVED_TOKENIZER_FILES):
        (out / name).unlink(missing_ok=True)
    model.peft_config["default"].base_model_name_or_path = spec.source  # not a local path
    # No embedding layer is trained, so peft need not look the base up on the hub; its
    # README (a stub model card, replaced by ours) logs that it found no metadata.
    hub_card_log = logging.getLogger("huggingface_hub.repocard")
    level = hub_card_log.level
    hub_card_log.setLevel(logging.ERROR)
    try:
        model.save_pretrained(str(out), save_embedding_layers=False)
    finally:
        hub_card_log.setLevel(level)
    if spec.chat_template and spec.chat_template != tokenizer.chat_template:
        tokenizer.chat_template = spec.chat_template  # served with the template it learnt
        tokenizer.save_pretrained(str(out))


def finetune(spec: str | ModelSpec, data: str | Path, out: str | Path,
             config: FinetuneConfig = FinetuneConfig(), prompt_column: str = "prompt",
             response_column: str = "response", split: str = "train",
             data_files: str | list[str] | None = None, overwrite: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """Train a LoRA adapter on prompt/response pairs and write it with its card into ``out``.

    Every input is checked before weights load: the spec (``load_spec``), the data
    (``load_pairs``), the output folder, and the formatted examples.

    Args:
        spec: A ``ModelSpec``, or what ``load_spec`` reads (embedded name, hub id, folder,
            YAML file).
        data: CSV / JSONL / Parquet file or ``hf:`` source with prompts and responses.
        out: The adapter folder to write.
        config: Hyper-parameters, seed and training quantization.
        prompt_column: The data's prompt column.
        response_column: The data's response column.
        split: Split of an ``hf:`` source.
        data_files: ``data_files`` of an ``hf:`` builder.
        overwrite: Write into a non-empty ``out``.
        progress: Show a progress bar.

    Returns:
        The card (what ``card.json`` holds).
    """
    began = time.perf_counter()
    spec = spec if isinstance(spec, ModelSpec) else load_spec(spec)
    pairs = load_pairs(data, prompt_column, response_column, split, data_files)
    out = check_out(out, overwrite)
    source, gguf_file, quantization = training_base(spec, config.quantization)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    if spec.chat_template is None and tokenizer.chat_template is None:
        raise ValueError(f"model {spec.name!r} has no chat template (a base model?): set "
                         f"chat_template in its spec")
    examples, counts = format_examples(tokenizer, spec, pairs, config.max_length)
    if not examples:
        raise DataError([f"{data}: every prompt is longer than max_length "
                         f"{config.max_length} tokens; raise it"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
        tokenizer.eos_token_id
    model = trainable_model(source, gguf_file, quantization, config)
    loaded = time.perf_counter()
    probe = examples[:config.eval_examples]
    before = mean_loss(model, probe, config.batch_size, pad_id) if probe else None
    losses = train(model, examples, config, pad_id, progress)
    after = mean_loss(model, probe, config.batch_size, pad_id) if probe else None
    trained = time.perf_counter()

    save_adapter(model, tokenizer, spec, out)
    card = adapter_card.build_card(
        spec, data, pairs, config, quantization, model, counts, losses, (before, after), out,
        {"load": loaded - began, "train": trained - loaded, "total": time.perf_counter() - began})
    adapter_card.write_card(out, card)
    return card
