"""How far each judge can be trusted: agreement with human labels, on both splits.

Every rate this project reports rests on one of two judge outputs, so each is checked on
labels of its own kind (``judge.gold``):

- the **compliance split**: ``Judgement.complied`` against people's compliance labels
  (XSTest; partial compliance counts as complied, as everywhere in ``records.complied``),
  plus XSTest's own 3-way accuracy;
- the **unsafe split**: ``Judgement.unsafe`` against people's harm labels (HarmBench's
  validation set, or any file with an ``unsafe`` column). A judge that does not measure harm
  (the rules) is "not measured" there, never scored 0 or 1;
- **specificity**: Spearman's rank correlation with an ordinal human label, where a gold
  file carries one.

Per judge, split and group (and pooled): n, accuracy with a percentile-bootstrap 95% CI
(``scipy.stats.bootstrap``), Cohen's kappa with its CI (scikit-learn), the confusion matrix
and the unscored count (an unscored verdict counts as wrong, never dropped). A trained judge
evaluated on its own training labels is marked ``in_sample``: that figure is development-set.
``false_alarms`` counts compliance and harm verdicts on MedSafetyBench's safe responses.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy.stats import bootstrap, spearmanr
from sklearn.metrics import cohen_kappa_score, confusion_matrix

from medharm_nb import records
from medharm_nb.judge.base import judge_batch
from medharm_nb.judge.gold import (
    HARMBENCH_PUBLISHED,
    TO_XSTEST,
    data_sha256,
    load_gold,
    safe_responses,
)
from medharm_nb.judge.panel import disagreements
from medharm_nb.metrics import wilson_interval

SPLITS: tuple[str, ...] = ("compliance", "unsafe", "label3")
"""``compliance``: complied vs refused; ``unsafe``: harmful help or not; ``label3``: XSTest's
full compliance / partial / full refusal."""


def judge_frame(judge: Any, frame: pl.DataFrame) -> pl.DataFrame:
    """Judge every row of a ``prompt, response`` frame (in one batch when the judge can).

    Returns:
        ``frame`` plus ``judge`` (its id), ``label``, ``pred`` (mapped to XSTest's 3-way),
        ``complied``, ``unsafe``, ``p_unsafe``, ``specificity``, ``flags``, ``rationale``.
    """
    verdicts = judge_batch(judge, frame["prompt"].to_list(), frame["response"].to_list())
    return frame.with_columns(
        pl.lit(judge.id).alias("judge"),
        pl.Series("label", [v.label for v in verdicts], dtype=pl.String),
        pl.Series("pred", [TO_XSTEST[v.label] for v in verdicts], dtype=pl.String),
        pl.Series("complied", [v.complied for v in verdicts], dtype=pl.Boolean),
        pl.Series("unsafe", [v.unsafe for v in verdicts], dtype=pl.Boolean),
        pl.Series("p_unsafe", [v.p_unsafe for v in verdicts], dtype=pl.Float64),
        pl.Series("specificity", [v.specificity for v in verdicts], dtype=pl.Int64),
        pl.Series("flags", [v.flags for v in verdicts], dtype=pl.String),
        pl.Series("rationale", [v.rationale for v in verdicts], dtype=pl.String),
    )


def agreement(gold: Sequence[str], pred: Sequence[str], n_boot: int = 1000, seed: int = 0,
              level: float = 0.95) -> dict[str, Any]:
    """Agreement of predicted with gold labels (any label set; ``unscored`` never matches).

    Returns:
        ``n``, ``accuracy`` with ``accuracy_lo`` / ``_hi``, ``kappa`` (Cohen's, scikit-learn)
        with ``kappa_lo`` / ``_hi`` (percentile bootstrap over items, seeded; NaN with
        ``n_boot`` 0), ``unscored`` (predictions that are ``unscored``: counted wrong).
    """
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} labels but pred has {len(pred)}")
    n = len(gold)
    out = {"n": n, "unscored": sum(p == "unscored" for p in pred)}
    if n == 0:
        return {**out, **dict.fromkeys(("accuracy", "accuracy_lo", "accuracy_hi", "kappa",
                                        "kappa_lo", "kappa_hi"), math.nan)}
    labels = sorted(set(gold) | set(pred))
    code = {lab: i for i, lab in enumerate(labels)}
    g, p = np.array([code[x] for x in gold]), np.array([code[x] for x in pred])
    out["accuracy"] = float((g == p).mean())
    out["kappa"] = _kappa(g, p)
    (out["accuracy_lo"], out["accuracy_hi"]), (out["kappa_lo"], out["kappa_hi"]) = (
        _interval(g, p, stat, n_boot, seed, level)
        for stat in (lambda a, b: float((a == b).mean()), _kappa))
    return out


def _kappa(g: np.ndarray, p: np.ndarray) -> float:
    """Cohen's kappa; 1 when both raters use one identical label (no chance to correct)."""
    if len(set(g.tolist()) | set(p.tolist())) == 1:
        return 1.0
    return float(cohen_kappa_score(g, p))


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


def _split_labels(items: pl.DataFrame, split: str) -> tuple[list[str], list[str]]:
    """Gold and predicted labels of one split, for the rows that have gold on it."""
    def word(value: bool | None, yes: str, no: str) -> str:
        return "unscored" if value is None else yes if value else no

    if split == "label3":
        rows = items.filter(pl.col("gold").is_not_null())
        return rows["gold"].to_list(), rows["pred"].to_list()
    if split == "compliance":
        rows = items.filter(pl.col("gold").is_not_null())
        gold = [word(records.complied(g), "complied", "refused") for g in rows["gold"]]
        return gold, [word(c, "complied", "refused") for c in rows["complied"]]
    rows = items.filter(pl.col("gold_unsafe").is_not_null())
    gold = [word(u, "unsafe", "safe") for u in rows["gold_unsafe"]]
    return gold, [word(u, "unsafe", "safe") for u in rows["unsafe"]]


@dataclass
class Evaluation:
    """Judges scored against the same gold labels.

    Attributes:
        summary: Per judge, split and group (and ``all``): ``n``, ``accuracy`` with
            ``accuracy_lo/hi``, ``kappa`` with ``kappa_lo/hi``, ``unscored``.
        confusion: Long: ``judge, split, source_model, gold, pred, n`` (pooled as ``all``).
        specificity: Per judge: Spearman's rho of its specificity with a human ordinal label
            (``rho``, ``p_value``, ``n``), where the gold has one.
        items: Every judged response: the gold frame plus the judge's outputs.
    """

    summary: pl.DataFrame
    confusion: pl.DataFrame
    specificity: pl.DataFrame
    items: pl.DataFrame


def evaluate(judges: Sequence[Any], gold: pl.DataFrame, by: str = "source_model",
             n_boot: int = 1000, seed: int = 0) -> Evaluation:
    """Score judges against gold labels on every split the gold carries, per group and
    pooled. A judge that never answers ``unsafe`` is left out of the unsafe split (not
    measured), rather than scored as all-unscored."""
    items = pl.concat([judge_frame(j, gold) for j in judges], how="vertical")
    rows, tables, rhos = [], [], []
    for (judge_id,), per_judge in items.group_by("judge", maintain_order=True):
        groups = sorted(per_judge[by].unique().to_list())
        for split in SPLITS:
            if split == "unsafe" and per_judge["unsafe"].is_null().all():
                continue
            for key in [*groups, "all"]:
                part = per_judge if key == "all" else per_judge.filter(pl.col(by) == key)
                g, p = _split_labels(part, split)
                if not g:
                    continue
                rows.append({"judge": judge_id, "split": split, by: key,
                             **agreement(g, p, n_boot, seed)})
                if key == "all" or len(groups) == 1:
                    tables.append(confusion(g, p).with_columns(
                        pl.lit(judge_id).alias("judge"), pl.lit(split).alias("split"),
                        pl.lit(key).alias(by)))
        known = per_judge.filter(pl.col("gold_specificity").is_not_null()
                                 & pl.col("specificity").is_not_null())
        if known.height >= 3:
            res = spearmanr(known["gold_specificity"], known["specificity"])
            rhos.append({"judge": judge_id, "n": known.height, "rho": float(res.statistic),
                         "p_value": float(res.pvalue)})
    conf = (pl.concat(tables).select("judge", "split", by, "gold", "pred", "n").unique()
            .sort("judge", "split", by, "gold", "pred") if tables else pl.DataFrame())
    return Evaluation(pl.DataFrame(rows), conf, pl.DataFrame(
        rhos, schema={"judge": pl.String, "n": pl.Int64, "rho": pl.Float64,
                      "p_value": pl.Float64}), items)


def false_alarms(judges: Sequence[Any], safe: pl.DataFrame) -> pl.DataFrame:
    """How often judges call known-safe responses compliant or unsafe.

    Returns:
        Per judge: ``n``, ``unscored``, ``complied_k`` and ``complied_rate`` (called
        complied, of those scored), ``unsafe_k`` / ``unsafe_n`` / ``unsafe_rate`` (called
        unsafe, of those whose harm it assessed; NaN when it does not measure harm), each
        with Wilson ``_lo`` / ``_hi``.
    """
    rows = []
    for judge in judges:
        out = judge_frame(judge, safe)
        scored = out.filter(pl.col("label") != "unscored")
        assessed = scored.filter(pl.col("unsafe").is_not_null())
        row = {"judge": judge.id, "n": out.height, "unscored": out.height - scored.height}
        for name, part, k in (("complied", scored, int(scored["complied"].sum())),
                              ("unsafe", assessed, int(assessed["unsafe"].sum()))):
            lo, hi = wilson_interval(k, part.height)
            row.update({f"{name}_k": k, f"{name}_n": part.height,
                        f"{name}_rate": k / part.height if part.height else math.nan,
                        f"{name}_lo": lo, f"{name}_hi": hi})
        rows.append(row)
    return pl.DataFrame(rows)


def published_baselines(gold: pl.DataFrame, by: str = "source_model") -> pl.DataFrame:
    """Accuracy of the classifiers whose verdicts ship with a gold set (HarmBench's
    ``HARMBENCH_PUBLISHED``) on exactly its items, per group and pooled: the anchors a judge
    is compared with on the unsafe split. Empty for gold without them."""
    names = [col for col, _ in HARMBENCH_PUBLISHED.values() if col in gold.columns]
    known = gold.filter(pl.col("gold_unsafe").is_not_null())
    rows = []
    for name in names:
        for key in [*sorted(known[by].unique().to_list()), "all"]:
            part = known if key == "all" else known.filter(pl.col(by) == key)
            said = part.filter(pl.col(name).is_not_null())
            if said.height:
                rows.append({"split": "unsafe", by: key, "anchor": name, "n": said.height,
                             "accuracy": float((said[name] == said["gold_unsafe"]).mean())})
    return pl.DataFrame(rows, schema={"split": pl.String, by: pl.String, "anchor": pl.String,
                                      "n": pl.Int64, "accuracy": pl.Float64})


def sample_per_group(frame: pl.DataFrame, limit: int | None, by: str = "source_model",
                     seed: int = 0) -> pl.DataFrame:
    """At most ``limit`` rows per group, drawn with a fixed seed (all rows when None)."""
    if limit is None:
        return frame
    return pl.concat([g.sample(min(limit, g.height), seed=seed)
                      for _, g in frame.group_by(by, maintain_order=True)]).sort(by, "id")


@dataclass
class ValidationReport:
    """What ``validate`` found; a missing source is recorded in ``skipped``, not raised.

    Attributes:
        judges: Ids of the judges evaluated.
        evaluation: Agreement with the gold labels of every source (None when none found).
        false_alarm: ``false_alarms`` table (None when no safe set was found).
        in_sample: ``(judge id, gold source)`` pairs where a trained judge was trained on
            that source's labels: those figures are development-set.
        cross_validation: Trained judges' held-out results stored when they were trained
            (the test suite recomputes them from the data).
        disagreements: Gold responses on which the judges disagree (complied vs refused),
            with the human label beside them: the queue for human review.
        baselines: Published classifiers' accuracy on the same gold items
            (``published_baselines``), where the gold set ships their verdicts.
        skipped: Why a part was skipped.
    """

    judges: list[str]
    evaluation: Evaluation | None = None
    false_alarm: pl.DataFrame | None = None
    in_sample: list[tuple[str, str]] = field(default_factory=list)
    cross_validation: pl.DataFrame | None = None
    disagreements: pl.DataFrame | None = None
    baselines: pl.DataFrame | None = None
    skipped: list[str] = field(default_factory=list)


def validate(judge_names: Sequence[str], gold: Sequence[str | Path] | str | Path | None,
             safe: str | Path | None = None, limit: int | None = None,
             n_boot: int = 1000, seed: int = 0) -> ValidationReport:
    """Evaluate judges on gold sources and a false-alarm set, skipping what is absent.

    Args:
        judge_names: Names for ``load_judge``.
        gold: One or more ``load_gold`` sources (e.g. XSTest for compliance and HarmBench
            for harm), or None.
        safe: A MedSafetyBench folder (safe reference responses), or None.
        limit: At most this many responses per group and source (seeded sample).
        n_boot: Bootstrap resamples.
        seed: Sampling and bootstrap seed.
    """
    from medharm_nb.judge import load_judge

    judges = [load_judge(name) for name in judge_names]
    report = ValidationReport([j.id for j in judges])
    sources = [gold] if isinstance(gold, (str, Path)) else list(gold or [])
    if not sources:
        report.skipped.append("gold labels: no source given")
    frames = []
    for source in sources:
        try:
            frame = load_gold(source)
        except FileNotFoundError as err:
            report.skipped.append(f"gold labels: {err}")
            continue
        digest = data_sha256(frame) if frame["gold"].is_not_null().any() else None
        report.in_sample += [(j.id, str(source)) for j in judges
                             if (digest and _trained_on(j) == digest)
                             or _harm_seen(j, frame)]
        frames.append(sample_per_group(frame, limit, seed=seed))
    if frames:
        everything = pl.concat(frames, how="diagonal_relaxed")
        report.evaluation = evaluate(judges, everything, n_boot=n_boot, seed=seed)
        report.baselines = published_baselines(everything)
        if len(judges) > 1:
            items = report.evaluation.items.with_columns(
                (pl.col("source_model") + "/" + pl.col("id")).alias("key"))
            report.disagreements = disagreements(items, key="key").join(
                items.select("key", "gold", "gold_unsafe", "prompt", "response").unique("key"),
                on="key")
    stored = [pl.DataFrame(params["cross_validation"]["results"]).with_columns(
                  pl.lit(j.id).alias("judge"))
              for j in judges if "cross_validation" in (params := getattr(j, "params", {}))]
    report.cross_validation = pl.concat(stored, how="diagonal") if stored else None
    if safe is not None:
        try:
            msb = sample_per_group(safe_responses(safe), limit, seed=seed)
            report.false_alarm = false_alarms(judges, msb)
        except FileNotFoundError as err:
            report.skipped.append(f"false-alarm set: {err}")
    return report


def _harm_seen(judge: Any, frame: pl.DataFrame) -> int:
    """How many of ``frame``'s (prompt, response) pairs the judge's harm model learned from
    (by content digest; 0 for judges without one)."""
    seen = getattr(getattr(judge, "harm", None), "seen", None)
    return seen(frame["prompt"].to_list(), frame["response"].to_list()) if seen else 0


def _trained_on(judge: Any) -> str | None:
    """The SHA-256 of the labels a trained judge learned from (None for other judges)."""
    return (getattr(judge, "params", None) or {}).get("training", {}).get("data_sha256")


def report_lines(report: ValidationReport) -> list[str]:
    """The report as text; the last lines are one per judge and split:
    ``judge=ID split=S n=N acc=X [lo,hi] kappa=X [lo,hi] unscored=K`` and, with a safe set,
    one per judge: ``judge=ID false_complied=X false_unsafe=X``."""
    lines = [f"skipped: {why}" for why in report.skipped]
    ev, fa = report.evaluation, report.false_alarm
    with pl.Config(tbl_rows=80, tbl_cols=20, tbl_width_chars=220, float_precision=3,
                   tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        if ev is not None:
            lines += ["agreement with human labels (percentile bootstrap 95% CIs):",
                      str(ev.summary)]
            for (judge_id, split), conf in ev.confusion.filter(
                    pl.col("source_model") == "all").group_by(["judge", "split"],
                                                              maintain_order=True):
                lines += [f"confusion of {judge_id} on {split} (rows: gold; columns: judged):",
                          str(conf.pivot(on="pred", index="gold", values="n"))]
            if not ev.specificity.is_empty():
                lines += ["specificity vs human ordinal labels (Spearman):", str(ev.specificity)]
        for judge_id, source in report.in_sample:
            lines.append(f"in-sample: {judge_id} was trained on {source}: its figures there "
                         f"are development-set; see its stored cross-validation")
        if fa is not None:
            lines += ["false alarms on safe reference responses:", str(fa)]
    if ev is not None:
        pooled = ev.summary.filter(pl.col("source_model") == "all")
        for row in pooled.filter(pl.col("split") != "label3").iter_rows(named=True):
            lines.append(
                f"judge={row['judge']} split={row['split']} n={row['n']} "
                f"acc={row['accuracy']:.3f} [{row['accuracy_lo']:.3f},{row['accuracy_hi']:.3f}]"
                f" kappa={row['kappa']:.3f} [{row['kappa_lo']:.3f},{row['kappa_hi']:.3f}] "
                f"unscored={row['unscored']}")
    if fa is not None:
        for row in fa.iter_rows(named=True):
            unsafe = ("not measured" if not row["unsafe_n"]
                      else f"{row['unsafe_rate']:.3f}")
            lines.append(f"judge={row['judge']} false_complied={row['complied_rate']:.3f} "
                         f"false_unsafe={unsafe}")
    return lines


def throughput(judge: Any, frame: pl.DataFrame, repeat: int = 3) -> dict[str, float]:
    """Responses judged per second of CPU time (one core) and of wall time; best of
    ``repeat`` passes over ``frame``'s ``prompt, response`` columns."""
    prompts, responses = frame["prompt"].to_list(), frame["response"].to_list()
    cpu, wall = math.inf, math.inf
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        judge_batch(judge, prompts, responses)
        cpu = min(cpu, time.process_time() - c0)
        wall = min(wall, time.perf_counter() - w0)
    n = len(prompts)
    return {"n": n, "per_cpu_second": n / cpu if cpu else math.inf,
            "per_wall_second": n / wall if wall else math.inf}
