"""Plan before you spend: what a run config will ask, need and cost, before anything runs.

``plan(config)`` counts queries x variants x samples x models = generations, the judge and
guard calls, the tokens at most; says which models are local, embedded, on the hub (to
download) or a GGUF to convert; estimates each model's disk and GPU memory (weights at the
chosen quantization or dtype, plus the KV cache of one full batch) from its ``config.json``
when it is on this machine; and estimates the time from the last ``medharm-nb bench
generate`` measured on this hardware, or says there is none. The runner writes the same
numbers into the manifest, beside what the run actually took.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from medharm_nb.config import RunConfig
from medharm_nb.records import ModelSpec
from medharm_nb.store import cache_root

BYTES_PER_PARAM = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "int8": 1.0, "nf4": 0.55}
"""Bytes per weight: nf4 is 4 bits plus its double-quantized block scales (about 0.55)."""
GUARD_VARIANTS = 6
"""04_guardrails scores each query in every prompt variant (``guard.ATTACKS``)."""
BENCH_FILE = "benchmarks.json"


def hardware() -> str:
    """This machine's accelerator or CPU, as benchmarks are filed under it."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"cpu:{platform.processor() or platform.machine()}"


def record_benchmark(model: str, tok_s: float, kind: str = "generate") -> Path:
    """Keep a measured throughput for ``plan`` (``cache_root()/benchmarks.json``, per
    hardware and model)."""
    path = cache_root() / BENCH_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    known = _benchmarks()
    known.setdefault(hardware(), {})[f"{kind}:{model}"] = round(tok_s, 2)
    path.write_text(json.dumps(known, indent=1))
    return path


def _benchmarks() -> dict[str, dict[str, float]]:
    try:
        return json.loads((cache_root() / BENCH_FILE).read_text())
    except (OSError, ValueError):
        return {}


def model_config(spec: ModelSpec) -> dict[str, Any] | None:
    """The model's ``config.json`` when it is on this machine (a local folder, an embedded
    GGUF's conversion, or the hub cache); None when it would have to be downloaded."""
    from medharm_nb.generate.backends.hf_models import EMBEDDED, resolve_source
    from medharm_nb.generate.convert import converted_dir

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


def plan(config: RunConfig, n_queries: int) -> dict[str, Any]:
    """The run's size and cost, model by model, before anything runs.

    Args:
        config: The run config.
        n_queries: Queries the run asks (the prepared query table's rows, variants included).

    Returns:
        ``generations``, ``judge_calls``, ``guard_calls``, ``max_new_tokens_total``, and per
        model: ``where`` (embedded / local / hub: download / server), ``convert`` (a GGUF
        converted once), ``params_b``, ``weights_gb``, ``kv_cache_gb``, ``gpu_gb`` (None
        where the config is not on this machine), ``tok_s`` (last benchmark here) and
        ``minutes`` (at most, all answers to the cap), or None.
    """
    from medharm_nb.generate.backends.hf_models import EMBEDDED

    gen = config.generation
    samples = gen.n_samples if gen.temperature > 0 else 1
    per_model = n_queries * samples
    bench = _benchmarks().get(hardware(), {})
    models = []
    for spec in config.models:
        row: dict[str, Any] = {"model": spec.name, "backend": spec.backend,
                               "generations": per_model,
                               "max_new_tokens": per_model * gen.max_new_tokens}
        if spec.backend == "openai":
            row["where"] = f"server {spec.base_url or '(default URL)'}"
        elif spec.backend == "replay":
            row["where"] = "replayed file"
        else:
            local = spec.source in EMBEDDED or Path(spec.source).expanduser().exists()
            row["where"] = ("embedded" if spec.source in EMBEDDED else "local" if local
                            else "hub: needs downloading")
            row["convert"] = bool(spec.gguf_file or spec.source in EMBEDDED)
            cfg = model_config(spec)
            row.update(estimate_memory(cfg, spec, gen.batch_size, gen.max_new_tokens + 256,
                                       gguf=row["convert"]) if cfg else
                       dict.fromkeys(("params_b", "weights_gb", "kv_cache_gb", "gpu_gb")))
        rate = bench.get(f"generate:{spec.source}")
        row["tok_s"] = rate
        row["minutes"] = round(row["max_new_tokens"] / rate / 60, 1) if rate else None
        models.append(row)
    generations = per_model * len(config.models)
    guard_params = config.params.get("04_guardrails", {})
    guards = guard_params.get("guards", ["minilm", "prompted-smollm2"])
    limit = guard_params.get("limit", 8)
    guarded = (2 * limit if limit else n_queries) * GUARD_VARIANTS
    return {"hardware": hardware(), "queries": n_queries, "samples": samples,
            "models": models, "generations": generations,
            "judge_calls": generations * len(config.judges),
            "guard_calls": len(guards) * guarded + generations,
            "max_new_tokens_total": generations * gen.max_new_tokens,
            "benchmark": "measured here" if bench else
                         "none on this hardware: run `medharm-nb bench generate` for a time "
                         "estimate"}


def plan_lines(result: dict[str, Any]) -> list[str]:
    """The plan as text for the command line."""
    lines = [f"hardware: {result['hardware']}",
             f"{result['queries']} queries x {result['samples']} sample(s) x "
             f"{len(result['models'])} model(s) = {result['generations']} generations "
             f"(at most {result['max_new_tokens_total']} new tokens)",
             f"judge calls: {result['judge_calls']}; guard calls: {result['guard_calls']}"]
    for m in result["models"]:
        mem = ("memory: unknown until the model is on this machine" if m.get("gpu_gb") is None
               else f"{m['params_b']:.2f}B params, weights {m['weights_gb']:.2f} GB, KV cache "
                    f"{m['kv_cache_gb']:.2f} GB per batch, GPU ~{m['gpu_gb']:.1f} GB")
        if m["backend"] != "hf":
            mem = "weights on the server"
        time = (f"~{m['minutes']} min at {m['tok_s']} tok/s (measured here)" if m["minutes"]
                is not None else "time: no benchmark here")
        convert = ", converted once from GGUF" if m.get("convert") else ""
        lines.append(f"  {m['model']}: {m['where']}{convert}; {mem}; {time}")
    lines.append(f"time estimate: {result['benchmark']}")
    return lines
