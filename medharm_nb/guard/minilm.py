"""The trained embedding guard ``minilm``: all-MiniLM-L6-v2 embeddings + logistic regression.

Trained on labelled queries (harmful = 1, benign = 0); the shipped artifact
(``assets/guard_minilm_v1.json``) is trained on MedHarm-Open, with a held-out AUROC from
folds that keep each harmful query and its benign twin together.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medharm_nb.embedding import embed, embedding_weights_sha256
from medharm_nb.guard.base import GuardScore, Target
from medharm_nb.linear import Logistic
from medharm_nb.records import stable_hash

MINILM_PATH = Path(__file__).resolve().parent.parent / "assets" / "guard_minilm_v1.json"


def _embed(texts: list[str]) -> np.ndarray:
    """Mean over each text's MiniLM windows (``medharm_nb.embedding``, shared with the judge)."""
    return embed(texts)[1]


@dataclass
class EmbeddingGuard:
    """MiniLM embedding + logistic regression; ``params`` is its JSON artifact."""

    params: dict[str, Any] = field(default_factory=dict)
    name: str = "minilm"

    def score(self, items: list[dict[str, Any]], target: Target = "prompt") -> list[GuardScore]:
        """P(unsafe) of the prompt (or of the response, for ``target="response"``)."""
        key = "response" if target == "response" else "prompt"
        texts = [item.get(key) or "" for item in items]
        if not texts:
            return []
        return [GuardScore(float(p)) for p in Logistic.from_params(self.params).proba(
            _embed(texts))]

    def warm(self) -> None:
        """Load the MiniLM weights now, so that timings measure scoring only."""
        _embed(["warm-up"])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.params, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingGuard:
        return cls(json.loads(Path(path).read_text()))


def labelled_queries(source: str):
    """Queries from any source with ``y`` = 1 for harmful, 0 for benign, and a pair group."""
    import polars as pl

    from medharm_nb.data import load_queries

    q = load_queries(source)
    group = (pl.when(pl.col("pair_id").is_null()).then(pl.col("id"))
             .when(pl.col("id") < pl.col("pair_id")).then(pl.col("id"))
             .otherwise(pl.col("pair_id")))
    return q.with_columns((pl.col("risk") == "harmful").cast(pl.Int8).alias("y"),
                          group.alias("group"))


def training_hash(queries) -> str:
    """Hash of the rows a guard is trained on (id, text, risk)."""
    return stable_hash(*queries.select("id", "text", "risk").rows())


def train_minilm(source: str = "medharm-open", C: float = 1.0, folds: int = 5,  # noqa: N803
                 seed: int = 0) -> EmbeddingGuard:
    """Fit the MiniLM guard on ``source``; held-out AUROC from folds grouped by twin pair.

    A harmful query and its benign twin always fall in the same fold, so the held-out score
    cannot come from memorising a topic.
    """
    from sklearn.linear_model import LogisticRegression

    from medharm_nb.metrics import auroc

    q = labelled_queries(source)
    x, y = _embed(q["text"].to_list()), q["y"].to_numpy()
    groups = sorted(set(q["group"].to_list()))
    random.Random(seed).shuffle(groups)
    fold_of = {g: i % folds for i, g in enumerate(groups)}
    fold = np.array([fold_of[g] for g in q["group"].to_list()])
    held = np.zeros(len(y))
    for f in range(folds):
        clf = LogisticRegression(C=C, max_iter=2000).fit(x[fold != f], y[fold != f])
        held[fold == f] = clf.predict_proba(x[fold == f])[:, 1]
    clf = LogisticRegression(C=C, max_iter=2000).fit(x, y)
    return EmbeddingGuard({
        "kind": "minilm-logreg", "version": "v1", "train_source": source,
        "train_sha256": training_hash(q),
        "embedding_sha256": embedding_weights_sha256(), "n_train": len(y), "C": C,
        "heldout_auroc": auroc(held[y == 1].tolist(), held[y == 0].tolist()),
        "heldout_folds": folds, "coef": clf.coef_[0].round(6).tolist(),
        "intercept": float(clf.intercept_[0])})
