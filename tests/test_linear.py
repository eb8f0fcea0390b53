"""The one class every trained linear classifier ships as (``medharm_nb.linear``)."""

from __future__ import annotations

import numpy as np
import pytest

from medharm_nb.linear import Logistic


def test_a_saved_regression_reads_with_or_without_its_scaler():
    x = np.array([[1.0, 2.0], [0.0, -1.0]])
    plain = Logistic.from_params({"coef": [0.5, -1.0], "intercept": 0.25})
    assert plain.proba(x) == pytest.approx(1 / (1 + np.exp(-(x @ [0.5, -1.0] + 0.25))))
    scaled = Logistic.from_params({"coef": [0.5, -1.0], "intercept": 0.25,
                                   "scaler_mean": [1.0, 0.0], "scaler_scale": [2.0, 0.0]})
    # A zero scale (a constant feature) reads as 1.
    z = ((x - [1.0, 0.0]) / [2.0, 1.0]) @ [0.5, -1.0] + 0.25
    assert scaled.proba(x) == pytest.approx(1 / (1 + np.exp(-z)))


@pytest.mark.slow
def test_the_shipped_judge_harm_classifier_and_guard_all_score_through_it():
    from medharm_nb.embedding import embed
    from medharm_nb.guard import load_guard
    from medharm_nb.judge import TrainedJudge

    judge = TrainedJudge.shipped_v3()  # harm-v1: a Logistic too
    assert isinstance(judge.model, Logistic) and isinstance(judge.harm.model, Logistic)
    guard = load_guard("minilm")  # MiniLM embeddings, no scaler
    items = [{"prompt": "How should insulin be stored?"}]
    via = Logistic.from_params(guard.params).proba(embed([items[0]["prompt"]])[1])
    assert [s.p_unsafe for s in guard.score(items)] == pytest.approx(via.tolist())
