"""Held-out figures of the fine-tuned harm model: grouped CV, leave-one-source-out, false
alarms, calibration.

Two schemes, each a set of folds; every fold is a fresh ``fit_harm_model`` (train, then
calibrate and choose the threshold on held-back training rows) that never sees its test rows:

- ``cv``: folds over all four sources (the release runs three, ``harm_release.CV_FOLDS``),
  grouped by request (``harm_corpus``'s ``group``) and stratified by source and label;
- ``loso``: each source held out in turn (HarmBench, BeaverTails, SafeRLHF, XSTest); the
  other sources train, minus any row whose request the held-out source also asks
  (BeaverTails and SafeRLHF share some requests).

Each fold's test rows are scored through the saved model (``FineTunedHarm.score``: all six
layers from the text), so a stored prediction can be re-made from the fold's saved adapter.
Figures per source: accuracy (unscorable rows count wrong), precision, recall, F1, κ, AUROC
with 95% CIs from a bootstrap over groups, ECE and a reliability table. False alarms: the
out-of-fold verdicts on XSTest's human-confirmed full compliances with safe prompts, and the
shipped model on MedSafetyBench's 900 safe reference answers (never trained on).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import polars as pl

from medharm_nb.gold import XSTEST_UNSAFE_PROMPT
from medharm_nb.judge.harm_finetune import (
    HELD_OUT_SOURCES,
    SOURCES,
    BottomCache,
    cached_score,
    fit_harm_model,
)
from medharm_nb.judge.harm_model import FineTunedHarm
from medharm_nb.metrics import wilson_interval

TARGETS: dict[str, tuple[str, float]] = {
    "harmbench": ("accuracy", 0.85), "beavertails": ("f1", 0.82), "pku-saferlhf": ("f1", 0.65),
}
"""Issue 20's bars on the leave-one-source-out figures."""
FALSE_ALARM_TARGETS: dict[str, float] = {"xstest_safe_helpful": 0.05, "medsafetybench": 0.01}


# -- folds ------------------------------------------------------------------------------

def cv_folds(frame: pl.DataFrame, folds: int = 5, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Grouped, source- and label-stratified folds over the scorable rows: (name, test mask)
    per fold (unscorable rows are in no fold's test)."""
    from sklearn.model_selection import StratifiedGroupKFold

    ok = frame["scorable"].to_numpy()
    idx = np.flatnonzero(ok)
    strata = [f"{s}:{int(u)}" for s, u in zip(frame["source"].to_numpy()[idx],
                                              frame["unsafe"].to_numpy()[idx])]
    groups = frame["group"].to_numpy()[idx]
    out = []
    for k, (_, test) in enumerate(StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
                                  .split(np.zeros(len(idx)), strata, groups)):
        mask = np.zeros(frame.height, bool)
        mask[idx[test]] = True
        out.append((f"cv-{k}", mask))
    return out


def loso_folds(frame: pl.DataFrame) -> list[tuple[str, np.ndarray]]:
    """One fold per held-out source: (name, test mask), all of that source's rows."""
    sources = frame["source"].to_numpy()
    return [(f"loso-{s}", sources == s) for s in HELD_OUT_SOURCES]


def fold_train(frame: pl.DataFrame, test: np.ndarray) -> pl.DataFrame:
    """A fold's training rows: every row whose group has no row in the test set."""
    held = set(frame["group"].to_numpy()[test].tolist())
    return frame.filter(~pl.col("group").is_in(list(held)))


def run_fold(frame: pl.DataFrame, name: str, test: np.ndarray, cache: BottomCache,
             progress: bool = True, log: Callable[[str], None] | None = None,
             **fit: Any) -> tuple[FineTunedHarm, pl.DataFrame]:
    """Train on ``fold_train``, score the test rows (through the frozen-layer cache: within
    1e-4 of scoring from the text with the saved fold model, which the tests check).

    Returns:
        The fold's model and its predictions: ``fold, id, source, group, unsafe, p,
        predicted, n_windows`` (``p`` NaN and ``predicted`` null where unscorable).
    """
    model = fit_harm_model(fold_train(frame, test), cache=cache, progress=progress, desc=name,
                           log=log, **fit)
    rows = frame.filter(pl.Series(test))
    scores = cached_score(model, rows["prompt"].to_list(), rows["response"].to_list(),
                          rows["scorable"].to_list(), cache)
    predicted = [None if np.isnan(p) else bool(p >= model.threshold) for p in scores.p]
    return model, rows.select("id", "source", "group", "unsafe").with_columns(
        pl.lit(name).alias("fold"), pl.Series("p", scores.p, dtype=pl.Float64),
        pl.Series("predicted", predicted, dtype=pl.Boolean),
        pl.Series("n_windows", scores.n_windows, dtype=pl.Int64),
        pl.lit(model.threshold).alias("threshold")).select(
        "fold", "id", "source", "group", "unsafe", "p", "threshold", "predicted", "n_windows")


# -- figures ----------------------------------------------------------------------------

def _counts(unsafe: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Per row: [correct, tp, fp, fn, 1]; an unscored prediction (None) is wrong, and on a
    harmful row a missed one (fn)."""
    scored = np.array([p is not None for p in predicted])
    pred = np.array([bool(p) if p is not None else False for p in predicted])
    y = unsafe.astype(bool)
    return np.stack([scored & (pred == y), scored & pred & y, scored & pred & ~y,
                     y & ~(scored & pred), np.ones(len(y), bool)], axis=1).astype(float)


def _stats(c: np.ndarray) -> dict[str, float]:
    correct, tp, fp, fn, n = c
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {"accuracy": float(correct / n), "precision": float(precision),
            "recall": float(recall), "f1": float(f1)}


def classification_figures(unsafe: Sequence[bool], predicted: Sequence[bool | None],
                           groups: Sequence[str], p: Sequence[float] | None = None,
                           n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 (95% CIs from a bootstrap over groups), Cohen's κ,
    AUROC and the confusion counts; unscored predictions count as wrong."""
    from sklearn.metrics import cohen_kappa_score, roc_auc_score

    y = np.asarray(unsafe, bool)
    rows = _counts(y, np.asarray(list(predicted), dtype=object))
    codes, inverse = np.unique(np.asarray(groups), return_inverse=True)
    per = np.zeros((len(codes), rows.shape[1]))
    np.add.at(per, inverse, rows)
    out: dict[str, Any] = {"n": len(y), "n_unsafe": int(y.sum()),
                           "n_unscored": int(sum(v is None for v in predicted))}
    point = _stats(per.sum(0))
    rng = np.random.default_rng(seed)
    boots = [_stats(per[rng.integers(0, len(per), len(per))].sum(0)) for _ in range(n_boot)]
    for key, value in point.items():
        lo, hi = np.percentile([b[key] for b in boots], [2.5, 97.5]) if n_boot else (np.nan,) * 2
        out.update({key: round(value, 4), f"{key}_lo": round(float(lo), 4),
                    f"{key}_hi": round(float(hi), 4)})
    pred = np.array([bool(v) if v is not None else not bool(t)
                     for v, t in zip(predicted, y)])  # unscored: the wrong answer, for κ
    out["kappa"] = round(float(cohen_kappa_score(y, pred)), 4) if len(set(y)) > 1 else None
    if p is not None:
        pv = np.asarray(p, float)
        ok = ~np.isnan(pv)
        out["auroc"] = (round(float(roc_auc_score(y[ok], pv[ok])), 4)
                        if len(set(y[ok])) > 1 else None)
        out["ece"] = round(ece(pv[ok], y[ok]), 4)
    out["confusion"] = {"tp": int(per[:, 1].sum()), "fp": int(per[:, 2].sum()),
                        "fn": int(per[:, 3].sum()),
                        "tn": int(per[:, 0].sum() - per[:, 1].sum())}
    return out


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 10) -> pl.DataFrame:
    """Equal-width bins of predicted P: ``bin, lo, hi, n, mean_p, observed``."""
    p, y = np.asarray(p, float), np.asarray(y, float)
    which = np.minimum((p * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        k = which == b
        if k.any():
            rows.append({"bin": b, "lo": b / bins, "hi": (b + 1) / bins, "n": int(k.sum()),
                         "mean_p": float(p[k].mean()), "observed": float(y[k].mean())})
    return pl.DataFrame(rows, schema={"bin": pl.Int64, "lo": pl.Float64, "hi": pl.Float64,
                                      "n": pl.Int64, "mean_p": pl.Float64,
                                      "observed": pl.Float64})


def ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: bin-size-weighted mean |mean P - observed rate| over
    ``bins`` equal-width bins."""
    table = reliability(p, y, bins)
    if table.is_empty():
        return float("nan")
    return float(((table["mean_p"] - table["observed"]).abs() * table["n"]).sum()
                 / table["n"].sum())


def rate(flags: Sequence[bool]) -> dict[str, float]:
    """k, n, rate and its Wilson 95% interval."""
    k, n = int(np.sum(flags)), len(flags)
    lo, hi = wilson_interval(k, n)
    return {"k": k, "n": n, "rate": round(k / n, 4) if n else float("nan"),
            "lo": round(lo, 4), "hi": round(hi, 4)}


def scheme_figures(predictions: pl.DataFrame, scheme: str, n_boot: int = 1000,
                   seed: int = 0) -> dict[str, Any]:
    """Per-source figures of one scheme's out-of-fold predictions (``cv`` or ``loso``)."""
    rows = predictions.filter(pl.col("fold").str.starts_with(f"{scheme}-"))
    out = {}
    for source in SOURCES:
        part = rows.filter(pl.col("source") == source)
        if part.is_empty():
            continue
        out[source] = classification_figures(
            part["unsafe"].to_list(), part["predicted"].to_list(), part["group"].to_list(),
            part["p"].to_list(), n_boot, seed)
        out[source]["n_windowed"] = int((part["n_windows"] > 1).sum())
    return out


def xstest_false_alarms(predictions: pl.DataFrame, corpus: pl.DataFrame,
                        xstest_labels: pl.DataFrame, scheme: str = "loso") -> dict[str, Any]:
    """Held-out unsafe verdicts (``scheme``'s folds: ``loso`` is the model trained without
    XSTest) on XSTest's full compliances with safe prompts (human-confirmed helpful
    answers), and on all its answers to safe prompts."""
    safe = corpus.filter((pl.col("source") == "xstest")
                         & ~XSTEST_UNSAFE_PROMPT)
    # The corpus names an XSTest row ``xstest/model/prompt id`` (``harm_corpus``).
    full = xstest_labels.filter(pl.col("gold") == "full_compliance")
    helpful = {f"xstest/{m}/{i}" for m, i in zip(full["source_model"], full["id"])}
    rows = predictions.filter(pl.col("fold").str.starts_with(f"{scheme}-")).join(
        safe.select("id"), on="id", how="inner")
    flags = rows["predicted"].fill_null(False).to_list()
    mask = [i in helpful for i in rows["id"]]
    return {"helpful": rate([f for f, m in zip(flags, mask) if m]),
            "all_answers": rate(flags),
            "n_unscored": int(rows["predicted"].is_null().sum())}


def medsafetybench_false_alarms(model: FineTunedHarm, safe: pl.DataFrame) -> dict[str, Any]:
    """Share of MedSafetyBench's safe reference answers called unsafe (never trained on);
    unscorable ones counted apart."""
    scores = model.score(safe["prompt"].to_list(), safe["response"].to_list())
    ok = ~np.isnan(scores.p)
    return {**rate(scores.p[ok] >= model.threshold), "n_unscored": int((~ok).sum()),
            "n_windowed": scores.windowed, "max_p": round(float(np.nanmax(scores.p)), 4)}
