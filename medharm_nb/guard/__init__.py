"""Guardrails: guards that score prompts or responses as P(unsafe), and their evaluation.

One interface for every guard: ``score(items, target="prompt" | "response")`` takes dicts
with ``prompt`` (and ``response``) and returns one ``GuardScore`` (``p_unsafe``, optional
``category``) per item. Three kinds, all reduced to a probability:

- ``VerdictGuard`` (``verdict``): a guard model that answers with a verdict token (Llama
  Guard's ``unsafe``, ShieldGemma's ``Yes`` ...); P(unsafe) is read from the next-token logits
  after the guard's exact prompt. ``specs.GUARD_SPECS`` carries each named guard's published
  prompt format, labels and categories.
- The same class with a policy prompt on any chat model (``prompted-smollm2``).
- ``EmbeddingGuard`` (``minilm``): all-MiniLM-L6-v2 embeddings + logistic regression trained
  on labelled queries; the shipped artifact is trained on MedHarm-Open.

Around them: ``evaluate`` (sweeps, operating points, brittleness under prompt variants) and
``pipeline`` (input guard -> model -> output guard on stored results).
"""

from __future__ import annotations

from medharm_nb.guard.base import GuardScore, Target, blocks
from medharm_nb.guard.evaluate import (
    ATTACKS,
    brittleness,
    crossfit,
    evaluate_guards,
    first_pairs,
    summary_lines,
)
from medharm_nb.guard.minilm import (
    EmbeddingGuard,
    labelled_queries,
    train_minilm,
    training_hash,
)
from medharm_nb.guard.pipeline import (
    apply_pipeline,
    guard_stored,
    pipeline_comparison,
    pipeline_rates,
)
from medharm_nb.guard.scoring import (
    describe,
    describe_all,
    load_guard,
    score_items,
    score_queries,
)
from medharm_nb.guard.specs import GUARD_SPECS, PROMPTED_POLICY, GuardSpec
from medharm_nb.guard.verdict import VerdictGuard

__all__ = ["ATTACKS", "GUARD_SPECS", "PROMPTED_POLICY", "EmbeddingGuard", "GuardScore",
           "GuardSpec", "Target", "VerdictGuard", "apply_pipeline", "blocks", "brittleness",
           "crossfit",
           "describe", "describe_all", "evaluate_guards", "first_pairs", "guard_stored",
           "labelled_queries", "load_guard",
           "pipeline_comparison", "pipeline_rates", "score_items", "score_queries",
           "summary_lines", "train_minilm", "training_hash"]
