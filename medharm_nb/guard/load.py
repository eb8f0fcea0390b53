"""Loading guards by name, describing them for manifests, and scoring tables with them."""

from __future__ import annotations

import time
from functools import lru_cache

from medharm_nb.guard.base import Target
from medharm_nb.guard.minilm import (
    MINILM_PATH,
    EmbeddingGuard,
    labelled_queries,
    train_minilm,
    training_hash,
)
from medharm_nb.guard.specs import GUARD_SPECS
from medharm_nb.guard.verdict import VerdictGuard


@lru_cache(maxsize=8)
def load_guard(name: str, train: str | None = None):
    """A guard by name: ``minilm`` (shipped, or fitted on ``train``), a ``GUARD_SPECS`` name,
    optionally quantized (``llama-guard-3-8b@nf4``, ``@int8``: bitsandbytes, as for any model
    spec), or ``minilm:PATH`` for a saved embedding guard.

    Raises:
        ValueError: unknown name or quantization.
    """
    if name == "minilm":
        if train in (None, "medharm-open") and MINILM_PATH.exists():
            shipped = EmbeddingGuard.load(MINILM_PATH)
            # The shipped artifact stands for "trained on medharm-open" only while the data
            # it was trained on is unchanged; otherwise fit afresh (~15 s on a CPU).
            if shipped.params["train_sha256"] == training_hash(labelled_queries("medharm-open")):
                return shipped
        return train_minilm(train or "medharm-open")
    if name.startswith("minilm:"):
        return EmbeddingGuard.load(name.split(":", 1)[1])
    base, _, quantization = name.partition("@")
    if base in GUARD_SPECS:
        spec = GUARD_SPECS[base]
        return VerdictGuard(spec.quantized(quantization) if quantization else spec)
    raise ValueError(f"unknown guard {name!r}; known: minilm, {', '.join(GUARD_SPECS)} "
                     f"(add @nf4 or @int8 to quantize a guard model)")


def describe(guard) -> dict[str, str]:
    """What a guard is, for tables and manifests: name, kind, weights or training data, a
    hash of everything that changes its scores, and where its format comes from."""
    if isinstance(guard, VerdictGuard):
        s = guard.spec
        return {"guard": s.name, "kind": "prompted" if s.system_prompt else "verdict-token",
                "source": s.source, "quantization": s.quantization, "hash": s.hash,
                "reference": s.reference}
    p = guard.params
    return {"guard": guard.name, "kind": "embedding", "source": f"trained on "
            f"{p['train_source']} ({p['n_train']} queries)", "quantization": "none",
            "hash": p["train_sha256"][:16],
            "reference": f"held-out AUROC {p['heldout_auroc']:.3f} ({p['heldout_folds']} folds "
                         f"grouped by twin pair)"}


def score_items(guard, items, target: Target = "prompt"):
    """Score a table of items with one guard.

    Args:
        guard: Any guard (``load_guard``).
        items: A DataFrame with ``text`` (the prompt) and, for ``target="response"``,
            ``response``.
        target: What is judged: the prompt, or the response in the prompt's context.

    Returns:
        ``items`` with ``p_unsafe``, ``guard_category`` (the guard's own, when it names one),
        ``guard`` and ``guard_ms`` (mean latency per item, weights already loaded: the
        guard's added cost).
    """
    import polars as pl

    prompts = items["text"].to_list()
    responses = (items["response"].fill_null("").to_list() if target == "response"
                 else [None] * len(prompts))
    if hasattr(guard, "warm"):
        guard.warm()  # loading weights is not per-item latency
    start = time.perf_counter()
    scores = guard.score([{"prompt": p, "response": r} for p, r in zip(prompts, responses)],
                         target=target)
    ms = 1000 * (time.perf_counter() - start) / max(len(scores), 1)
    return items.with_columns(
        pl.Series("p_unsafe", [s.p_unsafe for s in scores], dtype=pl.Float64),
        pl.Series("guard_category", [s.category for s in scores], dtype=pl.String),
        pl.lit(ms).alias("guard_ms"), pl.lit(getattr(guard, "name", "guard")).alias("guard"))


def score_queries(guard, queries):
    """Score each query's ``text`` as a prompt (see ``score_items``)."""
    return score_items(guard, queries, target="prompt")
