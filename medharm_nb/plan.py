"""Plan before you spend: what a run config will ask, need and cost, before anything runs.

``plan(config)`` counts queries x variants x samples x models = generations, the judge and
guard calls, the tokens at most; asks each model's backend where its answers come from and
what they cost (``BaseBackend.plan``: an embedded, local or hub model with its disk and GPU
memory, a GGUF to convert, a server, or a replayed file with no weights and nothing to
generate); and estimates the time from the last ``medharm-nb bench generate`` measured on
this hardware, or says there is none. The runner writes the same numbers into the
manifest, beside what the run actually took.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from medharm_nb.config import RunConfig
from medharm_nb.generate.backends import backend_type
from medharm_nb.store import cache_root

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


def plan(config: RunConfig, n_queries: int, conversations=None) -> dict[str, Any]:
    """The run's size and cost, model by model, before anything runs.

    Args:
        config: The run config.
        n_queries: Queries the run asks (the prepared query table's rows, variants included).
        conversations: The run's conversations table (``conversation.build``), if any: its
            turns are counted under ``conversations`` (the single-query figures exclude them).

    Returns:
        ``generations``, ``judge_calls``, ``guard_calls``, ``max_new_tokens_total``, and per
        model: what its backend says (``BaseBackend.plan``: ``where``, ``max_new_tokens``
        at most, 0 when nothing is generated, and ``weights`` or the memory estimates
        ``params_b``, ``weights_gb``, ``kv_cache_gb``, ``gpu_gb``), ``tok_s`` (last
        benchmark here) and ``minutes`` (at most, all answers to the cap; 0 with nothing
        to generate), or None.
    """
    gen = config.generation
    per_model = n_queries * gen.samples
    bench = _benchmarks().get(hardware(), {})
    models = []
    for spec in config.models:
        costs = backend_type(spec).plan(spec, gen, per_model)
        row: dict[str, Any] = {"model": spec.name, "backend": spec.backend,
                               "generations": per_model,
                               "max_new_tokens": costs.pop("new_tokens"), **costs}
        rate = bench.get(f"generate:{spec.source}") if row["max_new_tokens"] else None
        row["tok_s"] = rate
        row["minutes"] = (0.0 if not row["max_new_tokens"] else
                          round(row["max_new_tokens"] / rate / 60, 1) if rate else None)
        models.append(row)
    generations = per_model * len(config.models)
    guard_params = config.params.get("04_guardrails", {})
    guards = guard_params.get("guards", ["minilm", "prompted-smollm2"])
    pairs = guard_params.get("guard_pairs", 8)
    guarded = (2 * pairs if pairs else n_queries) * GUARD_VARIANTS
    talks = None
    if conversations is not None and conversations.height:
        attacked = conversations.filter(conversations["kind"] == "attacker")
        turns = int(conversations["n_turns"].sum()) * gen.samples
        talks = {"conversations": conversations.height, "turns_per_model_at_most": turns,
                 "turns_at_most": turns * len(config.models),
                 "attacker_messages_at_most": int(attacked["n_turns"].sum()) * gen.samples
                 * len(config.models)}
    return {"hardware": hardware(), "queries": n_queries, "samples": gen.samples,
            "conversations": talks,
            "models": models, "generations": generations,
            "judge_calls": generations * len(config.judges),
            "guard_calls": len(guards) * guarded + generations,
            "max_new_tokens_total": sum(m["max_new_tokens"] for m in models),
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
        if m.get("gpu_gb") is not None:
            mem = (f"{m['params_b']:.2f}B params, weights {m['weights_gb']:.2f} GB, KV cache "
                   f"{m['kv_cache_gb']:.2f} GB per batch, GPU ~{m['gpu_gb']:.1f} GB")
        else:
            mem = m.get("weights") or "memory: unknown until the model is on this machine"
        time = ("nothing to generate" if not m["max_new_tokens"] else
                f"~{m['minutes']} min at {m['tok_s']} tok/s (measured here)" if m["minutes"]
                is not None else "time: no benchmark here")
        convert = ", converted once from GGUF" if m.get("convert") else ""
        lines.append(f"  {m['model']}: {m['where']}{convert}; {mem}; {time}")
    talks = result.get("conversations")
    if talks:
        lines.append(f"conversations: {talks['conversations']}, at most "
                     f"{talks['turns_per_model_at_most']} turns per model = "
                     f"{talks['turns_at_most']} turns (fewer when an attacker stops early), "
                     f"and at most {talks['attacker_messages_at_most']} attacker messages")
    lines.append(f"time estimate: {result['benchmark']}")
    return lines
