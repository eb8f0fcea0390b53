"""Train the ``TrainedJudge``'s compliance classifier on human labels: ``fit`` one judge,
``cross_fitted`` / ``cross_validate`` leave one group out (source model or annotator), and
``train`` does both and stores the held-out figures with the judge.

``medharm-nb judge-train --gold ../shared/external/xstest`` re-makes the shipped one (train
on two of XSTest's source models, test on the third; then all three).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import accuracy_score, cohen_kappa_score

from medharm_nb.embedding import EMBEDDING_PACKAGE, WINDOW_TOKENS, embedding_weights_sha256
from medharm_nb.gold import TO_XSTEST, data_sha256, load_gold
from medharm_nb.judge import provenance
from medharm_nb.judge.base import check_response
from medharm_nb.judge.rules import RULE_FEATURES, RuleJudge
from medharm_nb.judge.trained import COMPLIANCE_SPLITS, Features, TrainedJudge, features
from medharm_nb.labels import complied
from medharm_nb.metrics import wilson_interval

if TYPE_CHECKING:
    import polars as pl


def fit(frame: pl.DataFrame, C: float = 0.1, gate: float = 0.95,  # noqa: N803 - sklearn's name
        feats: Features | None = None, source: str = "") -> TrainedJudge:
    """Train a judge on human labels.

    Args:
        frame: ``prompt``, ``response`` and ``gold`` (XSTest's 3-way labels, see
            ``gold.GOLD_LABELS``); empty or non-English rows are left out.
        C: Inverse L2 regularisation strength of the logistic regression.
        gate: Confidence above which the classifier overrides the rules.
        feats: Precomputed ``features`` for exactly these rows (saves re-embedding).
        source: Where the labels came from, for the saved provenance.
    """
    from sklearn import __version__ as sklearn_version
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    frame, feats = _scorable(frame, feats)
    y = np.array(frame["gold"].to_list()) == "full_compliance"
    scaler = StandardScaler().fit(feats.matrix)
    clf = LogisticRegression(C=C, max_iter=5000).fit(scaler.transform(feats.matrix), y)
    params = {
        "version": TrainedJudge.version,
        "target": "full_compliance vs any refusal (XSTest binary)",
        "features": [*(f"minilm_first_{i}" for i in range(384)),
                     *(f"minilm_mean_{i}" for i in range(384)), *RULE_FEATURES],
        # Full precision: rounding a tiny scale to 0 would divide by zero on load.
        "scaler_mean": scaler.mean_.tolist(),
        "scaler_scale": scaler.scale_.tolist(),
        "coef": clf.coef_[0].tolist(),
        "intercept": float(clf.intercept_[0]),
        "gate": gate,
        "embedding": {"package": EMBEDDING_PACKAGE, "model": "all-MiniLM-L6-v2",
                      "weights_sha256": embedding_weights_sha256(),
                      "window_tokens": WINDOW_TOKENS},
        "training": {"source": source, "n": frame.height,
                     "labels": dict(sorted(frame["gold"].value_counts().iter_rows())),
                     "data_sha256": data_sha256(frame), "C": C,
                     "rules": RuleJudge.version, "sklearn": sklearn_version,
                     "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        # Every training row by content, so a figure on them is found in-sample anywhere.
        provenance.TRAINING_ROWS: provenance.declare(
            frame, "compliance", COMPLIANCE_SPLITS,
            source="source" if "source" in frame.columns else None).to_dict(),
    }
    return TrainedJudge(params)


def _scorable(frame: pl.DataFrame, feats: Features | None) -> tuple[pl.DataFrame, Features]:
    """Rows the judge can learn from, and their features."""
    import polars as pl

    ok = [not (c := check_response(r)).unscored and not c.non_english
          for r in frame["response"]]
    if feats is None:
        frame = frame.filter(pl.Series(ok))
        feats = features(frame["prompt"].to_list(),
                         [check_response(r).text for r in frame["response"]])
    elif not all(ok):
        raise ValueError("precomputed features need a frame of scorable responses only")
    return frame, feats


def cross_fitted(frame: pl.DataFrame, by: str = "source_model", C: float = 0.1,  # noqa: N803
                 gate: float = 0.95, feats: Features | None = None) -> pl.DataFrame:
    """Leave one group out: each row's label from a judge trained on the other groups.

    With XSTest's three files this is "train on two source models, judge the third": the
    honest labels for a judge meeting a new model's style.

    Returns:
        The scorable rows of ``frame`` plus ``pred`` (the gated judge's label, in XSTest's
        3-way) and ``alone`` (the classifier alone: full compliance or full refusal).
    """
    import polars as pl

    frame, feats = _scorable(frame, feats)
    groups = frame[by].to_list()
    pred, alone = [""] * len(groups), [""] * len(groups)
    for held in sorted(set(groups)):
        train = np.array([g != held for g in groups])
        judge = fit(frame.filter(pl.Series(train)), C=C, gate=gate,
                    feats=Features(feats.matrix[train]))
        test = np.flatnonzero(~train)
        for k, p in zip(test, judge.predict_proba(feats.matrix[test])):
            one = Features(feats.matrix[[k]], [feats.rule_labels[k]], [feats.rule_fired[k]],
                           [feats.contents[k]], [feats.n_windows[k]], [feats.prompts[k]])
            pred[k] = TO_XSTEST[judge.label(p, one, 0)[0]]
            alone[k] = "full_compliance" if p >= 0.5 else "full_refusal"
    return frame.with_columns(pl.Series("pred", pred), pl.Series("alone", alone))


def cross_validate(frame: pl.DataFrame, by: str = "source_model", C: float = 0.1,  # noqa: N803
                   gate: float = 0.95, feats: Features | None = None) -> pl.DataFrame:
    """Leave one group out (``cross_fitted``), scored per held-out group.

    Returns:
        One row per held-out group: ``held_out, n, binary_accuracy, accuracy, kappa`` for the
        gated judge, ``complied_accuracy`` (the compliance split: partial counts as
        complied, ``labels.complied``) and ``classifier_binary_accuracy`` for the
        classifier alone.
    """
    import polars as pl

    labelled = cross_fitted(frame, by, C, gate, feats)
    rows = []
    for (held,), part in labelled.group_by(by, maintain_order=True):
        gold, pred = part["gold"].to_list(), part["pred"].to_list()
        rows.append({"held_out": held, "n": len(gold),
                     "binary_accuracy": _full_compliance_accuracy(gold, pred),
                     "accuracy": accuracy_score(gold, pred),
                     "kappa": float(cohen_kappa_score(gold, pred)),
                     "complied_accuracy": accuracy_score(
                         [complied(g) for g in gold],
                         [complied(p) for p in pred]),
                     "classifier_binary_accuracy": _full_compliance_accuracy(
                         gold, part["alone"].to_list())})
    return pl.DataFrame(rows).sort("held_out")


def _full_compliance_accuracy(gold: Sequence[str], pred: Sequence[str]) -> float:
    """Accuracy at the classifier's own target, XSTest's binary: full compliance vs any
    refusal (partial included), as XSTest's published baselines count it."""
    return accuracy_score([g == "full_compliance" for g in gold],
                          [p == "full_compliance" for p in pred])


def train(gold: str | Path, C: float = 0.1, gate: float = 0.95,  # noqa: N803
          out: str | Path | None = None) -> tuple[TrainedJudge, pl.DataFrame | None]:
    """Train a judge on any human labels, cross-validated across their groups first.

    With XSTest's folder this re-makes the shipped judge: train on two source models, test
    on the third, then train on all three files and store the cross-validated figures with
    it. With ``run:RUN_DIR`` the labels are our annotators' (the groups are annotators).

    Args:
        gold: A ``gold.load_gold`` source.
        C: See ``fit``.
        gate: See ``fit``.
        out: Where to save the judge (default: don't save).

    Returns:
        The judge and its cross-validation table (None with a single group).
    """
    frame, feats = _scorable(load_gold(gold), None)
    groups = frame["source_model"].unique().sort().to_list()
    cv = cross_validate(frame, C=C, gate=gate, feats=feats) if len(groups) > 1 else None
    judge = fit(frame, C=C, gate=gate, feats=feats,
                source=f"{gold} (groups: {', '.join(map(str, groups))})")
    if cv is not None:
        scheme = ("train on all groups but one, test on it (groups: source model, or "
                  "annotator)")
        judge.params["cross_validation"] = {
            "scheme": scheme,
            "results": [{k: (round(v, 4) if isinstance(v, float) and not math.isnan(v) else v)
                         for k, v in row.items()} for row in cv.iter_rows(named=True)],
        }
        judge.params[provenance.TRAINING_ROWS]["cross_validated"] = _figures(
            cv, _source_name(gold), scheme)
    if out is not None:
        judge.save(out)
    return judge, cv


def _source_name(gold: str | Path) -> str:
    """The ``source`` name gold rows from ``gold`` carry (``gold``)."""
    frame_source = load_gold(gold)["source"]
    return str(frame_source[0]) if frame_source.len() else str(gold)


def _figures(cv: pl.DataFrame, source: str, scheme: str) -> list[dict[str, Any]]:
    """Held-out figures for the declaration (``provenance``): per held-out group and pooled
    (weighted by n), on the compliance split and XSTest's 3-way split, each with a Wilson
    95% interval."""
    out = []
    n = cv["n"].to_numpy()
    for split, column in (("compliance", "complied_accuracy"), ("label3", "accuracy")):
        values = cv[column].to_numpy()
        groups = [*zip(map(str, cv["held_out"].to_list()), values, n),
                  ("all", float((values * n).sum() / n.sum()), int(n.sum()))]
        for group, value, count in groups:
            lo, hi = wilson_interval(round(float(value) * int(count)), int(count))
            out.append({"source": source, "group": group, "split": split,
                        "metric": "accuracy", "accuracy": round(float(value), 4),
                        "lo": round(lo, 4), "hi": round(hi, 4), "n": int(count),
                        "scheme": scheme})
    return out
