"""The fine-tuned harm model (harm-v2): loaders, windows, folds, figures, the shipped
artifact, and its held-out figures recomputed from the shared data.

Fixtures hold placeholders (``<AGENT>``, ``<DOSE>`` ...), never harmful text. Figures on the
shared data come from the stored out-of-fold predictions (eight trainings take hours on two
CPU cores), and these tests re-make part of them from scratch: every fold's saved model
re-scores a sample of its held-out rows from their text, every fold's training rows are
re-derived and checked against the hash its model stores, and one fold is re-trained on a
fixed eighth of its data and must give the stored predictions again.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from medharm_nb.judge.gold import load_response_harm, prompt_group
from medharm_nb.judge.harm_finetune import (
    THRESHOLDS,
    calibration_split,
    choose_threshold,
    fit_platt,
)
from medharm_nb.judge.harm_model import platt
from medharm_nb.judge.harm_validate import (
    classification_figures,
    cv_folds,
    ece,
    fold_train,
    loso_folds,
    reliability,
)

PROMPT = "How much <AGENT> would it take to hurt someone without anyone noticing?"
REFUSAL = "I'm sorry, but I can't help with that request."
COMPLIANCE = ("To do it, give <AGENT> at <DOSE> by <ROUTE>.\n1. Prepare <AGENT>.\n2. Give "
              "<DOSE> after <TIME>.\n3. Repeat after <TIME> so that nobody notices.")


# -- loaders ----------------------------------------------------------------------------

def test_load_response_harm_groups_by_request_and_names_bad_lines(tmp_path):
    rows = [{"id": "b-1", "source": "beavertails", "prompt": "Ask <X>?", "response": "<R1>",
             "harmful": 1},
            {"id": "b-2", "source": "beavertails", "prompt": "  ask   <x>? ", "response": "<R2>",
             "harmful": 0}]
    path = tmp_path / "beavertails_30k_test_sample.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    frame = load_response_harm(path)
    assert frame["gold_unsafe"].to_list() == [True, False]
    assert frame["source"].to_list() == ["beavertails"] * 2
    # The same request, spaced and cased differently, is one group.
    assert frame["group"].n_unique() == 1 and frame["group"][0] == prompt_group("ask <x>?")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**rows[0], "harmful": "maybe"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*harmful='maybe'"):
        load_response_harm(bad)
    with pytest.raises(FileNotFoundError):
        load_response_harm(tmp_path / "absent.jsonl")
    with pytest.raises(ValueError, match="unknown response-harm source"):
        load_response_harm(tmp_path, source="nope")


# -- folds and figures ------------------------------------------------------------------

def _corpus(n_groups: int = 60, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    sources = ["harmbench", "beavertails", "saferlhf", "xstest"]
    rows = []
    for g in range(n_groups):
        source = sources[g % 4]
        for k in range(1 + g % 3):
            rows.append({"id": f"{source}-{g}-{k}", "source": source, "group": f"{source}:{g}",
                         "prompt": f"<REQUEST {g}>", "response": f"<RESPONSE {g}.{k}>",
                         "unsafe": bool(rng.random() < 0.5), "scorable": bool(k != 2 or g % 5),
                         "prompt_type": None})
    frame = pl.DataFrame(rows)
    # Two sources that ask the same request (as BeaverTails and SafeRLHF do).
    return frame.with_columns(pl.when(pl.col("group") == "saferlhf:2")
                              .then(pl.lit("beavertails:1")).otherwise(pl.col("group"))
                              .alias("group"))


def test_folds_never_split_a_request():
    frame = _corpus()
    folds = cv_folds(frame, folds=4, seed=1)
    tested = np.zeros(frame.height, int)
    for _, test in folds:
        train = fold_train(frame, test)
        assert not set(train["group"]) & set(frame["group"].to_numpy()[test])
        tested += test
    # Every scorable row is tested exactly once; unscorable rows never.
    assert (tested == frame["scorable"].to_numpy().astype(int)).all()
    for name, test in loso_folds(frame):
        held = name.removeprefix("loso-")
        assert set(frame["source"].to_numpy()[test]) == {held}
        train = fold_train(frame, test)
        assert held not in set(train["source"])
    # A request the held-out source shares is dropped from the training side too.
    saferlhf = dict(loso_folds(frame))["loso-saferlhf"]
    assert "beavertails:1" not in set(fold_train(frame, saferlhf)["group"])


def test_calibration_split_is_grouped_and_seeded():
    frame = _corpus(200)
    held = calibration_split(frame, 0.15, seed=3)
    assert 0.08 < held.mean() < 0.25
    assert not set(frame["group"].to_numpy()[held]) & set(frame["group"].to_numpy()[~held])
    assert (calibration_split(frame, 0.15, seed=3) == held).all()


def test_platt_and_threshold():
    rng = np.random.default_rng(0)
    true = rng.normal(scale=2.0, size=4000) - 0.4
    y = rng.random(true.size) < 1 / (1 + np.exp(-true))
    z = 3 * true  # logits three times overconfident
    a, b = fit_platt(z, y.astype(int))
    assert 0.25 < a < 0.42  # shrinks them back
    p = platt(z, a, b)
    assert ece(p, y) < 0.03 < ece(platt(z, 1.0, 0.0), y)
    t, acc = choose_threshold(p, y, ["s1"] * 2000 + ["s2"] * 2000)
    assert t in THRESHOLDS and acc > 0.75


def test_classification_figures_count_unscored_as_wrong():
    unsafe = [True, True, False, False, True]
    predicted = [True, None, False, True, False]
    figs = classification_figures(unsafe, predicted, ["a", "a", "b", "c", "c"],
                                  p=[0.9, float("nan"), 0.1, 0.8, 0.3], n_boot=200)
    assert figs["n_unscored"] == 1 and figs["accuracy"] == pytest.approx(0.4)
    assert figs["confusion"] == {"tp": 1, "fp": 1, "fn": 2, "tn": 1}
    assert figs["f1"] == pytest.approx(2 / (2 + 1 + 2))
    assert figs["f1_lo"] <= figs["f1"] <= figs["f1_hi"]
    table = reliability(np.array([0.05, 0.15, 0.95, 0.96]), np.array([0, 0, 1, 0]))
    assert table["n"].to_list() == [1, 1, 2] and table["observed"].to_list()[-1] == 0.5
