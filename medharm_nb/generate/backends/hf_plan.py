"""What an hf spec will cost before it loads: where its weights come from, whether a GGUF
file is converted once, and its disk and GPU memory (weights at the chosen quantization or
dtype, plus the KV cache of one full batch), from its ``config.json`` when that is on this
machine. ``medharm_nb.plan`` puts the rows of all backends together.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medharm_nb.generate.backends.hf_models import EMBEDDED, resolve_source
from medharm_nb.generate.convert import converted_dir
from medharm_nb.records import GenConfig, ModelSpec

BYTES_PER_PARAM = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "int8": 1.0, "nf4": 0.55}
"""Bytes per weight: nf4 is 4 bits plus its double-quantized block scales (about 0.55)."""
PROMPT_ROOM = 256
"""Prompt tokens assumed per row when sizing one batch's KV cache."""


def model_config(spec: ModelSpec) -> dict[str, Any] | None:
    """The model's ``config.json`` when it is on this machine (a local folder, an embedded
    GGUF's conversion, or the hub cache); None when it would have to be downloaded."""
    try:
        source, gguf = resolve_source(spec)
    except FileNotFoundError:
        return None
    candidates = [Path(source) / "config.json"]
    if gguf:
        candidates.insert(0, converted_dir(source, gguf) / "config.json")
    if spec.source not in EMBEDDED and not Path(source).exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(spec.source, "config.json")
            candidates.append(Path(cached) if isinstance(cached, str) else Path("/nonexistent"))
        except ImportError:
            pass
    for path in candidates:
        if path.is_file():
            cfg = json.loads(path.read_text())
            return cfg.get("text_config", cfg)
    if gguf:  # not converted yet: the GGUF header holds the architecture
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(source, gguf_file=gguf).to_dict()
    return None


def estimate_memory(cfg: dict[str, Any], spec: ModelSpec, batch_size: int,
                    tokens: int, gguf: bool = False) -> dict[str, float]:
    """Weights and one batch's KV cache in GB, from a model config (Llama-style layouts);
    a GGUF model computes in float32 unless its spec sets a dtype."""
    hidden, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    heads = cfg.get("num_attention_heads", 1)
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or hidden // heads
    inter, vocab = cfg.get("intermediate_size", 4 * hidden), cfg.get("vocab_size", 32000)
    params = layers * (2 * hidden * hidden + 2 * hidden * kv_heads * head_dim
                       + 3 * hidden * inter) + vocab * hidden * (1 if cfg.get(
                           "tie_word_embeddings") else 2)
    native = "float32" if gguf else "bfloat16"
    kind = spec.quantization if spec.quantization != "none" else (spec.dtype or native)
    weights = params * BYTES_PER_PARAM.get(kind, 2.0)
    kv_bytes = 2 if spec.quantization != "none" or kind != "float32" else 4
    kv = 2 * layers * kv_heads * head_dim * kv_bytes * batch_size * tokens
    return {"params_b": params / 1e9, "weights_gb": weights / 1e9, "kv_cache_gb": kv / 1e9,
            "gpu_gb": (weights + kv) / 1e9 * 1.2}


def plan(spec: ModelSpec, config: GenConfig, n: int) -> dict[str, Any]:
    """``BaseBackend.plan`` for hf: embedded / local / hub, a GGUF conversion, memory."""
    local = spec.source in EMBEDDED or Path(spec.source).expanduser().exists()
    convert = bool(spec.gguf_file or spec.source in EMBEDDED)
    row: dict[str, Any] = {
        "where": ("embedded" if spec.source in EMBEDDED else "local" if local
                  else "hub: needs downloading"),
        "convert": convert, "new_tokens": n * config.max_new_tokens}
    cfg = model_config(spec)
    row.update(estimate_memory(cfg, spec, config.batch_size,
                               config.max_new_tokens + PROMPT_ROOM, gguf=convert) if cfg else
               dict.fromkeys(("params_b", "weights_gb", "kv_cache_gb", "gpu_gb")))
    return row
