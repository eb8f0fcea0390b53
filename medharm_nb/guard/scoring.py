"""Loading guards by name, describing them, and scoring tables of items with them."""

from __future__ import annotations

import dataclasses
import time
from functools import lru_cache

from medharm_nb.generate.backends import model_files
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
from medharm_nb.records import GuardVerdict, stable_hash
from medharm_nb.store import RunStore, files_digest, utc_now


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
        if quantization:
            if quantization not in ("nf4", "int8"):
                raise ValueError(f"guard {name!r}: unknown quantization {quantization!r}; "
                                 f"known: nf4, int8")
            spec = dataclasses.replace(spec, name=name, quantization=quantization)
        return VerdictGuard(spec)
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


def describe_all(guards: dict, queries_source: str | None = None):
    """``describe`` for each loaded guard, as a table, with ``in_sample``: whether the guard
    was trained on the queries it is evaluated on (its figures are then development-set)."""
    import polars as pl

    rows = []
    for name, guard in guards.items():
        row = {**describe(guard), "guard": name}
        trained_on = getattr(guard, "params", {}).get("train_source")
        row["in_sample"] = bool(trained_on and queries_source
                                and str(queries_source) == str(trained_on))
        rows.append(row)
    return pl.DataFrame(rows)


def guard_key(guard) -> str:
    """Hash of everything that changes a guard's scores: for a model guard its published
    format, labels and cues (``GuardSpec.hash``), quantization and local weights' content;
    for the embedding guard its trained parameters."""
    if isinstance(guard, VerdictGuard):
        s = guard.spec
        return stable_hash(s.hash, s.quantization, files_digest(model_files(guard.model_spec)))
    return stable_hash(getattr(guard, "params", None) or getattr(guard, "name", "guard"))


def score_items(guard, items, target: Target = "prompt", store: RunStore | None = None):
    """Score a table of items with one guard, reusing stored scores.

    Args:
        guard: Any guard (``load_guard``).
        items: A DataFrame with ``text`` (the prompt) and, for ``target="response"``,
            ``response``.
        target: What is judged: the prompt, or the response in the prompt's context.
        store: A run's store: items this guard (with these settings) has scored before are
            read back, new scores are written, so a re-run makes no model calls.

    Returns:
        ``items`` with ``p_unsafe``, ``guard_category`` (the guard's own, when it names one),
        ``guard`` and ``guard_ms`` (mean latency per item when scored, weights already
        loaded: the guard's added cost).
    """
    import polars as pl

    name = getattr(guard, "name", "guard")
    prompts = items["text"].to_list()
    responses = (items["response"].fill_null("").to_list() if target == "response"
                 else [None] * len(prompts))
    key = guard_key(guard)
    ids = [stable_hash(key, target, p, r) for p, r in zip(prompts, responses)]
    known: dict[str, tuple[float, str | None, float]] = {}
    if store is not None:
        stored = store.frame("guard_scores").filter(pl.col("score_id").is_in(ids))
        known = {r["score_id"]: (r["p_unsafe"], r["category"], r["ms"])
                 for r in stored.iter_rows(named=True)}
    todo = list(dict.fromkeys(i for i in ids if i not in known))
    if todo:
        where = {i: k for k, i in enumerate(ids)}
        if hasattr(guard, "warm"):
            guard.warm()  # loading weights is not per-item latency
        start = time.perf_counter()
        scores = guard.score([{"prompt": prompts[where[i]], "response": responses[where[i]]}
                              for i in todo], target=target)
        ms = 1000 * (time.perf_counter() - start) / max(len(scores), 1)
        fresh = {i: (s.p_unsafe, s.category, ms) for i, s in zip(todo, scores)}
        known.update(fresh)
        if store is not None:
            now = utc_now()
            store.add("guard_scores", [
                GuardVerdict(score_id=i, guard=name, guard_key=key, target=target,
                             p_unsafe=min(1.0, max(0.0, p)), category=c, ms=round(m, 3),
                             created=now) for i, (p, c, m) in fresh.items()])
    rows = [known[i] for i in ids]
    return items.with_columns(
        pl.Series("p_unsafe", [r[0] for r in rows], dtype=pl.Float64),
        pl.Series("guard_category", [r[1] for r in rows], dtype=pl.String),
        pl.lit(sum(r[2] for r in rows) / max(len(rows), 1)).alias("guard_ms"),
        pl.lit(name).alias("guard"))


def score_queries(guard, queries, store: RunStore | None = None):
    """Score each query's ``text`` as a prompt (see ``score_items``)."""
    return score_items(guard, queries, target="prompt", store=store)
