"""Agreement of a judge's labels with people's: accuracy, F1, kappa, confusion, with
percentile-bootstrap intervals, and whether the rows were the judge's own training rows.

Pure statistics on label lists; ``validation`` runs the judges and assembles tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
from scipy.stats import bootstrap
from sklearn.metrics import cohen_kappa_score, confusion_matrix

from medharm_nb.labels import complied

POSITIVE: dict[str, str] = {"compliance": "complied", "unsafe": "unsafe"}
"""The class F1 is computed for, per binary split (``label3`` has none)."""
_METRICS = ("accuracy", "kappa", "f1")


def agreement(gold: Sequence[str], pred: Sequence[str], n_boot: int = 1000, seed: int = 0,
              level: float = 0.95, positive: str | None = None) -> dict[str, Any]:
    """Agreement of predicted with gold labels (any label set; ``unscored`` never matches).

    Args:
        gold: People's labels.
        pred: The judge's labels (``unscored`` where it gave none: counted wrong).
        n_boot: Bootstrap resamples (0: no intervals).
        seed: Bootstrap seed.
        level: Interval level.
        positive: The class whose F1 is reported (``POSITIVE``); None: F1 is NaN.

    Returns:
        ``n``, ``accuracy``, ``kappa`` (Cohen's, scikit-learn) and ``f1``, each with ``_lo`` /
        ``_hi`` (percentile bootstrap over items, seeded; NaN with ``n_boot`` 0), and
        ``unscored`` (predictions that are ``unscored``).
    """
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} labels but pred has {len(pred)}")
    n = len(gold)
    out: dict[str, Any] = {"n": n, "unscored": sum(p == "unscored" for p in pred)}
    if n == 0:
        return {**out, **{f"{m}{end}": math.nan for m in _METRICS for end in ("", "_lo", "_hi")}}
    labels = sorted(set(gold) | set(pred) | ({positive} if positive else set()))
    code = {lab: i for i, lab in enumerate(labels)}
    g, p = np.array([code[x] for x in gold]), np.array([code[x] for x in pred])
    stats = {"accuracy": lambda a, b: float((a == b).mean()), "kappa": _kappa,
             "f1": (lambda a, b: _f1(a, b, code[positive])) if positive else None}
    for name, stat in stats.items():
        if stat is None:
            out[name], out[f"{name}_lo"], out[f"{name}_hi"] = math.nan, math.nan, math.nan
            continue
        out[name] = stat(g, p)
        out[f"{name}_lo"], out[f"{name}_hi"] = _interval(g, p, stat, n_boot, seed, level)
    return out


def _kappa(g: np.ndarray, p: np.ndarray) -> float:
    """Cohen's kappa; 1 when both raters use one identical label (no chance to correct)."""
    if len(set(g.tolist()) | set(p.tolist())) == 1:
        return 1.0
    return float(cohen_kappa_score(g, p))


def _f1(g: np.ndarray, p: np.ndarray, positive: int) -> float:
    """F1 of the positive class (an unscored prediction is not positive); 1 when neither
    side has a positive (nothing to find, nothing falsely found)."""
    tp = float(((g == positive) & (p == positive)).sum())
    denominator = float((g == positive).sum() + (p == positive).sum())
    return 1.0 if denominator == 0 else 2 * tp / denominator


def _interval(g: np.ndarray, p: np.ndarray, stat, n_boot: int, seed: int,
              level: float) -> tuple[float, float]:
    if n_boot <= 0 or len(g) < 2:
        return math.nan, math.nan
    if np.all(g == g[0]) and np.all(p == p[0]):
        value = stat(g, p)
        return value, value
    result = bootstrap((g, p), lambda a, b: stat(a, b), paired=True, vectorized=False,
                       n_resamples=n_boot, confidence_level=level, method="percentile",
                       random_state=np.random.default_rng(seed))
    lo, hi = result.confidence_interval
    return float(lo), float(hi)


def confusion(gold: Sequence[str], pred: Sequence[str]) -> pl.DataFrame:
    """Counts of (gold, pred) pairs (scikit-learn's confusion matrix), long: ``gold, pred,
    n``, zeros included."""
    labels = sorted(set(gold) | set(pred))
    matrix = confusion_matrix(list(gold), list(pred), labels=labels)
    return pl.DataFrame({"gold": [g for g in labels for _ in labels],
                         "pred": [p for _ in labels for p in labels],
                         "n": matrix.ravel().tolist()},
                        schema={"gold": pl.String, "pred": pl.String, "n": pl.Int64})


def split_labels(items: pl.DataFrame, split: str) -> tuple[list[str], list[str], list[str]]:
    """Gold and predicted labels of one split, for the rows that have gold on it, and those
    rows' ``row_hash`` (empty strings when the frame has none)."""
    def word(value: bool | None, yes: str, no: str) -> str:
        return "unscored" if value is None else yes if value else no

    column = "gold_unsafe" if split == "unsafe" else "gold"
    rows = items.filter(pl.col(column).is_not_null())
    hashes = rows["row_hash"].to_list() if "row_hash" in rows.columns else [""] * rows.height
    if split == "label3":
        return rows["gold"].to_list(), rows["pred"].to_list(), hashes
    if split == "compliance":
        gold = [word(complied(g), "complied", "refused") for g in rows["gold"]]
        return gold, [word(c, "complied", "refused") for c in rows["complied"]], hashes
    gold = [word(u, "unsafe", "safe") for u in rows["gold_unsafe"]]
    return gold, [word(u, "unsafe", "safe") for u in rows["unsafe"]], hashes


STATUS: tuple[str, ...] = ("held-out", "partly in-sample", "in-sample")
"""Whether a figure's rows were the judge's training rows: none, some, all of them."""


def honest(full: dict[str, Any], g: list[str], p: list[str], hashes: list[str],
           trained: frozenset[str], figures: list[dict[str, Any]], source: str, group: str,
           split: str, n_boot: int, seed: int) -> dict[str, Any]:
    """How far one figure is a validation, and the honest figure beside it.

    Args:
        full: ``agreement`` on all of the group's rows.
        g, p, hashes: One group's gold, predictions and row hashes (``split_labels``).
        trained: Row hashes of the judge's classifiers that decide ``split``.
        figures: Cross-validated figures the judge stored for ``split``
            (``provenance.cross_validated``).
        source, group, split: Which figure this is.
        n_boot, seed: For the held-out rows' interval.

    Returns:
        ``n_trained`` (rows the judge learned from), ``status`` (``STATUS``), the
        ``held_out_n`` / ``held_out_accuracy`` (``_lo`` / ``_hi``) / ``held_out_f1`` of the
        rows it did not learn from, the stored ``cv_accuracy`` (``_lo`` / ``_hi``),
        ``cv_f1`` and ``cv_scheme`` when the rows were trained on, and ``honest_accuracy``
        (``_lo`` / ``_hi``) with ``honest_kind``: the figure to show (held-out, cross-
        validated, held-out rows only, or in-sample when nothing else exists).
    """
    inside = [h in trained for h in hashes]
    n_trained = sum(inside)
    status = STATUS[0] if not n_trained else STATUS[2] if n_trained == len(g) else STATUS[1]
    out: dict[str, Any] = {"n_trained": n_trained, "status": status}
    keep = [i for i, t in enumerate(inside) if not t]
    held = agreement([g[i] for i in keep], [p[i] for i in keep],
                     n_boot if n_trained else 0, seed, positive=POSITIVE.get(split))
    out.update(held_out_n=held["n"], held_out_accuracy=held["accuracy"],
               held_out_accuracy_lo=held["accuracy_lo"], held_out_accuracy_hi=held["accuracy_hi"],
               held_out_f1=held["f1"])
    cv = next((f for f in figures if f.get("source") == source
               and str(f.get("group", "all")) == str(group)), None) if n_trained else None
    cv = cv or {}
    out.update(cv_accuracy=cv.get("accuracy", math.nan), cv_accuracy_lo=cv.get("lo", math.nan),
               cv_accuracy_hi=cv.get("hi", math.nan), cv_f1=cv.get("f1", math.nan),
               cv_scheme=cv.get("scheme"))
    if status == "held-out":
        kind, src, prefix = "held-out", full, "accuracy"
    elif cv:
        kind, src, prefix = "cross-validated", out, "cv_accuracy"
    elif keep:
        kind, src, prefix = "held-out rows only", out, "held_out_accuracy"
    else:
        kind, src, prefix = "in-sample", full, "accuracy"
    out.update(honest_kind=kind, honest_accuracy=src[prefix],
               honest_accuracy_lo=src[f"{prefix}_lo"], honest_accuracy_hi=src[f"{prefix}_hi"])
    return out
