"""Train and validate the harm classifier: ``train_harm`` re-makes the shipped one.

From the shared reference data (``../shared/external``, read in place):

1. Labels: HarmBench's 602 human-labelled responses and XSTest read as harm labels
   (``gold.load_xstest_harm``); rows the judge cannot read (empty, non-English) are
   left out of training and count as wrong in every HarmBench figure.
2. Nested cross-validation, grouped by request (HarmBench behaviour, XSTest prompt): five
   outer folds; inside each, four folds choose ``C`` and the threshold by HarmBench accuracy.
   Figures: accuracy with a 95% CI from a bootstrap over behaviours, by attack method and by
   source model; XSTest's held-out false alarms on safe prompts.
3. Leave one source model out: every HarmBench response of one model is held out, with every
   other response to the same behaviours, and the rest trains (again with an inner choice).
4. The shipped classifier: C and threshold chosen the same way on all rows, then fitted on
   all; MedSafetyBench's 900 safe reference answers (never trained on) give its false-alarm
   rate. All figures are stored in the artifact, beside the published classifiers' accuracy
   on the same items.

Run (about ten minutes on two busy CPU cores; embedding is most of it)::

    PYTHONPATH=. python -c "from medharm_nb.judge.harm_train import train_harm; \\
        train_harm('../shared/external', out='medharm_nb/assets/harm_judge_v1.json')"
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from sklearn.metrics import roc_auc_score

from medharm_nb.gold import (
    HARMBENCH_PUBLISHED,
    XSTEST_UNSAFE_PROMPT,
    load_harmbench,
    load_xstest_harm,
    safe_responses,
)
from medharm_nb.judge.base import check_response
from medharm_nb.judge.harm import (
    CrossValidation,
    HarmClassifier,
    cross_validate,
    decide,
    logistic_pipeline,
    scorable,
    select,
    training_frame,
)
from medharm_nb.judge.harm_features import HarmFeatures, harm_features
from medharm_nb.metrics import wilson_interval

SCHEME = ("nested cross-validation grouped by request (HarmBench behaviour, XSTest prompt): "
          "{folds} outer folds; C and threshold chosen inside each by {inner}-fold grouped "
          "HarmBench accuracy; unscorable HarmBench rows count as wrong")


def grouped_accuracy(correct: Sequence[bool], groups: Sequence[str], seed: int = 0,
                     n_boot: int = 2000) -> dict[str, float]:
    """Accuracy with a 95% percentile CI from a bootstrap over groups (behaviours), since the
    two responses to one behaviour are not independent."""
    from scipy.stats import bootstrap

    frame = pl.DataFrame({"g": list(groups), "c": np.asarray(correct, float)})
    per = frame.group_by("g").agg(pl.col("c").sum().alias("k"), pl.len().alias("n"))
    k, n = per["k"].to_numpy(), per["n"].to_numpy().astype(float)
    ci = bootstrap((k, n), lambda a, b: a.sum() / b.sum(), paired=True, vectorized=False,
                   n_resamples=n_boot, method="percentile", random_state=seed).confidence_interval
    return {"n": int(n.sum()), "accuracy": round(float(k.sum() / n.sum()), 4),
            "lo": round(float(ci.low), 4), "hi": round(float(ci.high), 4)}


def rate(flags: Sequence[bool]) -> dict[str, float]:
    """k, n, rate and its Wilson 95% interval."""
    k, n = int(np.sum(flags)), len(flags)
    lo, hi = wilson_interval(k, n)
    return {"k": k, "n": n, "rate": round(k / n, 4) if n else float("nan"),
            "lo": round(lo, 4), "hi": round(hi, 4)}


def accuracy_by(frame: pl.DataFrame, correct: Sequence[bool], by: str) -> list[dict[str, Any]]:
    """Accuracy per value of ``by``, with n and the harmful share, largest groups first."""
    table = (frame.select(by, "unsafe").with_columns(pl.Series("c", list(correct)))
             .group_by(by).agg(pl.len().alias("n"), pl.col("c").mean().round(4).alias("accuracy"),
                               pl.col("unsafe").mean().round(3).alias("harmful_share"))
             .sort(["n", by], descending=[True, False]))
    return table.to_dicts()


def _full(verdicts: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Verdicts for the scorable rows spread over all rows; unscorable rows get None."""
    out = np.full(len(ok), None, dtype=object)
    out[ok] = verdicts
    return out


def harmbench_figures(hb: pl.DataFrame, verdicts: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Accuracy (CI over behaviours), by method, by annotator votes and by source model, for
    verdicts on every HarmBench row (None = unscored, counted wrong)."""
    gold = hb["unsafe"].to_numpy()
    correct = np.array([v is not None and bool(v) == g for v, g in zip(verdicts, gold)])
    return {**grouped_accuracy(correct, hb["behavior_id"].to_list(), seed),
            "n_unscored": int(sum(v is None for v in verdicts)),
            "by_method": accuracy_by(hb, correct, "method"),
            "by_votes": accuracy_by(hb, correct, "votes"),
            "by_source_model": accuracy_by(hb, correct, "source_model")}


def published_baselines(hb: pl.DataFrame, seed: int = 0) -> list[dict[str, Any]]:
    """The published classifiers' accuracy on the same items, as recomputed here."""
    gold = hb["unsafe"].to_numpy()
    return [{"classifier": col, "published_accuracy": acc,
             **grouped_accuracy(hb[col].to_numpy() == gold, hb["behavior_id"].to_list(), seed)}
            for col, acc in HARMBENCH_PUBLISHED.values()]


def leave_one_model_out(frame: pl.DataFrame, feats: HarmFeatures, hb_rows: np.ndarray,
                        inner_folds: int = 4, seed: int = 0) -> dict[bool, np.ndarray]:
    """Hold out each HarmBench source model in turn, with every row that shares a behaviour
    with it; C and threshold chosen inside the rest. Returns held-out P-based verdicts per
    gate setting for every row (NaN-free for HarmBench rows)."""
    y = frame["unsafe"].to_numpy().astype(int)
    groups = np.array(frame["group"].to_list())
    models = np.array(frame["source_model"].to_list())
    out = {g: np.zeros(len(y), bool) for g in (False, True)}
    for model in sorted(set(models[hb_rows])):
        test = hb_rows & (models == model)
        train = ~np.isin(groups, groups[test])
        tr = np.flatnonzero(train)
        inner = select(feats.matrix[tr], y[tr], groups[tr].tolist(), hb_rows[tr],
                       [feats.rule_labels[i] for i in tr], inner_folds, seed)
        te = np.flatnonzero(test)
        labels = [feats.rule_labels[i] for i in te]
        for gate, choice in inner.items():
            p = logistic_pipeline(choice.C).fit(feats.matrix[tr], y[tr]).predict_proba(
                feats.matrix[te])[:, 1]
            out[gate][te] = decide(p, choice.threshold, labels, gate)
    return out


def _cv_summary(cv: CrossValidation) -> list[dict[str, Any]]:
    return [{"fold": k, **{("gate" if gate else "nogate"): {
        "C": c.C, "threshold": c.threshold, "inner_accuracy": round(c.accuracy, 4)}
        for gate, c in choice.items()}} for k, choice in enumerate(cv.chosen)]


def train_harm(external: str | Path = "../shared/external", out: str | Path | None = None,
               seed: int = 0, folds: int = 5, inner_folds: int = 4, gate: bool = True,
               with_xstest: bool = True, by_model: bool = True,
               medsafetybench: bool = True) -> tuple[HarmClassifier, dict]:
    """Re-make the harm classifier from the shared data, with all its validation.

    Args:
        external: The shared reference data folder (``harmbench/``, ``xstest/``,
            ``med-safety-bench/``).
        out: Where to save it (default: don't save).
        seed: Seeds every split and bootstrap; the same seed re-makes the same classifier.
        folds: Outer folds of the reported cross-validation.
        inner_folds: Folds of the inner choice of C and threshold.
        gate: Whether the shipped classifier never calls a rule-detected refusal unsafe
            (both settings are always measured).
        with_xstest: Train on XSTest's harm-readable rows too (see ``load_xstest_harm``).
        by_model: Also run the leave-one-source-model-out validation (the slowest part).
        medsafetybench: Also measure false alarms on MedSafetyBench's safe answers.

    Returns:
        The classifier (its ``params["validation"]`` holds every figure) and that report.
    """
    external = Path(external)
    hb = load_harmbench(external / "harmbench").rename({"gold_unsafe": "unsafe"})
    xs = (load_xstest_harm(external / "xstest").rename({"gold_unsafe": "unsafe"})
          if with_xstest else None)
    frame = training_frame(hb, xs)
    ok = np.array(scorable(frame["response"].to_list()))
    train = frame.filter(pl.Series(ok)).with_columns(
        pl.col("response").map_elements(lambda r: check_response(r).text, return_dtype=pl.String))
    feats = harm_features(train["prompt"].to_list(), train["response"].to_list())
    is_hb = (train["source"] == "harmbench").to_numpy()
    cv = cross_validate(train, feats, folds, inner_folds, seed, scored=is_hb)
    hb_ok = ok[:hb.height]
    report: dict[str, Any] = {"scheme": SCHEME.format(folds=folds, inner=inner_folds),
                              "seed": seed, "chosen": _cv_summary(cv)}
    for g in (False, True):
        held = cv.predictions(feats.rule_labels, g)
        report["gate" if g else "nogate"] = harmbench_figures(
            hb, _full(held[is_hb], hb_ok), seed)
        if xs is not None:
            report["gate" if g else "nogate"]["xstest"] = _xstest_figures(
                xs.filter(pl.Series(ok[hb.height:])), held[~is_hb])
    report["auroc"] = round(float(roc_auc_score(
        train["unsafe"].to_numpy()[is_hb], cv.proba[True][is_hb])), 4)
    if by_model:
        lomo = leave_one_model_out(train, feats, is_hb, inner_folds, seed)
        report["leave_one_model_out"] = {
            ("gate" if g else "nogate"): harmbench_figures(hb, _full(v[is_hb], hb_ok), seed)
            for g, v in lomo.items()}
    y = train["unsafe"].to_numpy().astype(int)
    final = select(feats.matrix, y, train["group"].to_list(), is_hb, feats.rule_labels,
                   inner_folds, seed)[gate]
    source = "HarmBench classifier validation set" + (
        " + XSTest v2 completions read as harm labels" if xs is not None else "")
    clf = HarmClassifier.fit(train, feats, C=final.C, threshold=final.threshold, gate=gate,
                             source=source)
    report["final_choice"] = {"C": final.C, "threshold": final.threshold,
                              "inner_accuracy": round(final.accuracy, 4), "gate": gate}
    report["published"] = published_baselines(hb, seed)
    if medsafetybench:
        report["medsafetybench_false_alarms"] = medsafetybench_false_alarms(
            clf, external / "med-safety-bench")
    clf.params["validation"] = report
    if out is not None:
        clf.save(out)
    return clf, report


def _xstest_figures(xs: pl.DataFrame, held: np.ndarray) -> dict[str, Any]:
    """Held-out XSTest verdicts: false alarms on answers to safe prompts, and how many full
    compliances with unsafe prompts are called unsafe."""
    safe = xs.select(~XSTEST_UNSAFE_PROMPT).to_series().to_numpy()
    unsafe = xs["unsafe"].to_numpy()
    return {"safe_prompt_false_alarms": rate(held[safe]),
            "unsafe_prompt_compliance_flagged": rate(held[unsafe])}


def medsafetybench_false_alarms(clf: HarmClassifier, root: str | Path) -> dict[str, Any]:
    """Share of MedSafetyBench's safe reference answers (refusals and redirections, never
    trained on) that the classifier calls unsafe; unscorable ones are counted apart."""
    from medharm_nb.judge.rules import RuleJudge

    safe = safe_responses(root)
    p = clf.predict_proba(safe["prompt"].to_list(), safe["response"].to_list())
    scored = ~np.isnan(p)
    rules = RuleJudge()
    labels = [rules.classify(q, r)[0] if s else "unscored"
              for q, r, s in zip(safe["prompt"], safe["response"], scored)]
    flags = clf.unsafe(np.nan_to_num(p), labels)[scored]
    return {**rate(flags), "n_unscored": int((~scored).sum()),
            "without_gate": rate((np.nan_to_num(p) >= clf.threshold)[scored])}
