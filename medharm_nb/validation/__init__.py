"""How far each judge can be trusted: agreement with human labels, on both splits.

Every rate this project reports rests on one of two judge outputs, so each is checked on
labels of its own kind (``gold``):

- the **compliance split**: ``Judgement.complied`` against people's compliance labels
  (XSTest; partial compliance counts as complied, as everywhere in ``labels.complied``),
  plus XSTest's own 3-way accuracy;
- the **unsafe split**: ``Judgement.unsafe`` against people's harm labels (HarmBench's
  validation set, or any file with an ``unsafe`` column). A judge that does not measure harm
  (the rules) is "not measured" there, never scored 0 or 1;
- **specificity**: Spearman's rank correlation with an ordinal human label, where a gold
  file carries one.

Per judge, split, source and group (and pooled per source): n, accuracy, F1 (binary splits)
and Cohen's kappa, each with a percentile-bootstrap 95% CI (``scipy.stats.bootstrap``;
``validation.stats``), the confusion matrix and the unscored count (an unscored verdict
counts as wrong, never dropped), with published baselines beside them
(``published_baselines``). Every row is checked against the training rows the judge's
classifiers declare (``judge.provenance``, by content hash): a figure on rows a judge learned
from is marked ``in-sample`` or ``partly in-sample``, and the honest figure is put beside it
(its stored cross-validation, or the rows it did not learn from). ``false_alarms`` counts
compliance and harm verdicts on MedSafetyBench's safe responses.

This package is the 03b_judge_validation stage's home, beside judging (``judge``), not in
it: ``stats`` holds the statistics on label lists, ``shares`` XSTest's label shares, and the
human-labelled sets themselves are read by ``gold``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from scipy.stats import spearmanr

from medharm_nb.gold import (
    HARMBENCH_PUBLISHED,
    PUBLISHED_F1,
    TO_XSTEST,
    load_gold,
    safe_responses,
)
from medharm_nb.judge import load_judge, provenance
from medharm_nb.judge.base import judge_batch
from medharm_nb.judge.panel import disagreements
from medharm_nb.metrics import rate_text, wilson_interval
from medharm_nb.validation.stats import POSITIVE, agreement, confusion, honest, split_labels

SPLITS: tuple[str, ...] = ("compliance", "unsafe", "label3")
"""``compliance``: complied vs refused; ``unsafe``: harmful help or not; ``label3``: XSTest's
full compliance / partial / full refusal."""

SUMMARY_COLUMNS: tuple[str, ...] = (
    "judge", "split", "source", "source_model", "n", "accuracy", "accuracy_lo", "accuracy_hi",
    "f1", "kappa", "unscored", "status", "n_trained", "honest_accuracy", "honest_kind")
"""The agreement table's columns a reader needs, in order (``headline``): ``status`` says
whether a figure is held-out or in-sample, ``honest_accuracy`` is the one to quote."""


def headline(summary: pl.DataFrame) -> pl.DataFrame:
    """The agreement table (``Evaluation.summary``) cut to ``SUMMARY_COLUMNS`` (those it has)."""
    return summary.select([c for c in SUMMARY_COLUMNS if c in summary.columns])


def confusion_wide(confusion: pl.DataFrame) -> pl.DataFrame:
    """The pooled confusion counts (``Evaluation.confusion``, ``source_model == "all"``) one
    row per judge, split, source and human label, one column per judged label."""
    index = [c for c in ("judge", "split", "source", "gold") if c in confusion.columns]
    return (confusion.filter(pl.col("source_model") == "all")
            .pivot(on="pred", index=index, values="n", aggregate_function="sum")
            .sort(index))


def judge_frame(judge: Any, frame: pl.DataFrame) -> pl.DataFrame:
    """Judge every row of a ``prompt, response`` frame (in one batch when the judge can).

    Returns:
        ``frame`` plus ``judge`` (its id), ``row_hash`` (``provenance.row_hash``),
        ``label``, ``pred`` (mapped to XSTest's 3-way), ``complied``, ``unsafe``,
        ``p_unsafe``, ``specificity``, ``flags``, ``rationale``.
    """
    verdicts = judge_batch(judge, frame["prompt"].to_list(), frame["response"].to_list())
    return frame.with_columns(
        pl.lit(judge.id).alias("judge"),
        pl.Series("row_hash", provenance.row_hashes(frame["prompt"], frame["response"]),
                  dtype=pl.String),
        pl.Series("label", [v.label for v in verdicts], dtype=pl.String),
        pl.Series("pred", [TO_XSTEST[v.label] for v in verdicts], dtype=pl.String),
        pl.Series("complied", [v.complied for v in verdicts], dtype=pl.Boolean),
        pl.Series("unsafe", [v.unsafe for v in verdicts], dtype=pl.Boolean),
        pl.Series("p_unsafe", [v.p_unsafe for v in verdicts], dtype=pl.Float64),
        pl.Series("specificity", [v.specificity for v in verdicts], dtype=pl.Int64),
        pl.Series("flags", [v.flags for v in verdicts], dtype=pl.String),
        pl.Series("rationale", [v.rationale for v in verdicts], dtype=pl.String),
    )


@dataclass
class Evaluation:
    """Judges scored against the same gold labels.

    Attributes:
        summary: Per judge, split, source and group (and ``all`` per source): ``n``,
            ``accuracy``, ``kappa`` and ``f1`` (binary splits) with ``_lo`` / ``_hi``,
            ``unscored``, and how far it is a validation (``agreement.honest``: ``status``,
            ``n_trained``, held-out-rows and cross-validated figures, ``honest_accuracy``
            with ``honest_kind``).
        confusion: Long: ``judge, split, source, source_model, gold, pred, n`` (pooled per
            source as ``all``).
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
    """Score judges against gold labels on every split the gold carries, per source and
    group, and pooled per source. A judge that never answers ``unsafe`` is left out of the
    unsafe split (not measured), rather than scored as all-unscored. Rows a judge's
    classifier for that split was trained on (``provenance``) make the figure in-sample:
    the summary says so and puts the honest figure beside it."""
    if "source" not in gold.columns or gold["source"].null_count():
        gold = gold.with_columns(pl.col("source").fill_null("gold") if "source" in gold.columns
                                 else pl.lit("gold").alias("source"))
    items = pl.concat([judge_frame(j, gold) for j in judges], how="vertical")
    rows, tables, rhos = [], [], []
    for judge in judges:
        per_judge = items.filter(pl.col("judge") == judge.id)
        for split in SPLITS:
            if split == "unsafe" and per_judge["unsafe"].is_null().all():
                continue
            trained = provenance.hashes_for(judge, split)
            figures = provenance.cross_validated(judge, split)
            for source in sorted(per_judge["source"].unique().to_list()):
                of_source = per_judge.filter(pl.col("source") == source)
                groups = sorted(of_source[by].unique().to_list())
                for key in [*groups, "all"]:
                    part = of_source if key == "all" else of_source.filter(pl.col(by) == key)
                    g, p, hashes = split_labels(part, split)
                    if not g:
                        continue
                    full = agreement(g, p, n_boot, seed, positive=POSITIVE.get(split))
                    rows.append({"judge": judge.id, "split": split, "source": source, by: key,
                                 **full, **honest(full, g, p, hashes, trained, figures, source,
                                                  key, split, n_boot, seed)})
                    if key == "all" or len(groups) == 1:
                        tables.append(confusion(g, p).with_columns(
                            pl.lit(judge.id).alias("judge"), pl.lit(split).alias("split"),
                            pl.lit(source).alias("source"), pl.lit(key).alias(by)))
        known = per_judge.filter(pl.col("gold_specificity").is_not_null()
                                 & pl.col("specificity").is_not_null())
        if known.height >= 3:
            res = spearmanr(known["gold_specificity"], known["specificity"])
            rhos.append({"judge": judge.id, "n": known.height, "rho": float(res.statistic),
                         "p_value": float(res.pvalue)})
    conf = (pl.concat(tables).select("judge", "split", "source", by, "gold", "pred", "n")
            .unique().sort("judge", "split", "source", by, "gold", "pred")
            if tables else pl.DataFrame())
    return Evaluation(pl.DataFrame(rows), conf, pl.DataFrame(
        rhos, schema={"judge": pl.String, "n": pl.Int64, "rho": pl.Float64,
                      "p_value": pl.Float64}), items)


def false_alarms(judges: Sequence[Any], safe: pl.DataFrame) -> pl.DataFrame:
    """How often judges call known-safe responses compliant or unsafe.

    Returns:
        Per judge: ``n``, ``unscored``, ``n_trained`` (rows the judge learned from: then
        the rates are development-set), ``complied_k`` and ``complied_rate`` (called
        complied, of those scored), ``unsafe_k`` / ``unsafe_n`` / ``unsafe_rate`` (called
        unsafe, of those whose harm it assessed; NaN when it does not measure harm), each
        with Wilson ``_lo`` / ``_hi``.
    """
    rows = []
    for judge in judges:
        out = judge_frame(judge, safe)
        scored = out.filter(pl.col("label") != "unscored")
        assessed = scored.filter(pl.col("unsafe").is_not_null())
        every = frozenset().union(*(r.hashes for r in provenance.declared(judge)))
        row = {"judge": judge.id, "n": out.height, "unscored": out.height - scored.height,
               "n_trained": int(out["row_hash"].is_in(list(every)).sum())}
        for name, part, k in (("complied", scored, int(scored["complied"].sum())),
                              ("unsafe", assessed, int(assessed["unsafe"].sum()))):
            lo, hi = wilson_interval(k, part.height)
            row.update({f"{name}_k": k, f"{name}_n": part.height,
                        f"{name}_rate": k / part.height if part.height else math.nan,
                        f"{name}_lo": lo, f"{name}_hi": hi})
        rows.append(row)
    return pl.DataFrame(rows)


def false_alarm_view(alarms: pl.DataFrame) -> pl.DataFrame:
    """The ``false_alarms`` table for reading: per judge ``n``, ``unscored``, ``n_trained`` and
    each rate as ``k/n = r% [lo-hi%]`` (Wilson 95%), or ``not measured`` where the judge
    does not measure it (no response assessed)."""
    return alarms.select("judge", "n", "unscored", "n_trained",
                         rate_text("complied").alias("called_complied"),
                         rate_text("unsafe").alias("called_unsafe"))


def published_baselines(gold: pl.DataFrame, by: str = "source_model") -> pl.DataFrame:
    """What a judge is compared with on the unsafe split, per source: accuracy and F1 of the
    classifiers whose per-item verdicts ship with a gold set (HarmBench's
    ``HARMBENCH_PUBLISHED``, on exactly its items, per group and pooled; ``kind`` "same
    items"), and the published F1 of guards on the sources present (``PUBLISHED_F1``;
    ``kind`` "published": their run, not ours, ``n`` null)."""
    rows = []
    known = gold.filter(pl.col("gold_unsafe").is_not_null())
    sources = (known["source"] if "source" in known.columns
               else pl.Series(["gold"] * known.height))
    for name in [col for col, _ in HARMBENCH_PUBLISHED.values() if col in gold.columns]:
        said_all = known.filter(pl.col(name).is_not_null())
        for key in [*sorted(said_all[by].unique().to_list()), "all"]:
            said = said_all if key == "all" else said_all.filter(pl.col(by) == key)
            if said.height:
                fig = agreement(["unsafe" if v else "safe" for v in said["gold_unsafe"]],
                                ["unsafe" if v else "safe" for v in said[name]], 0,
                                positive="unsafe")
                for metric in ("accuracy", "f1"):
                    rows.append({"split": "unsafe", "source": "harmbench", by: key,
                                 "anchor": name, "kind": "same items", "metric": metric,
                                 "n": said.height, "value": fig[metric]})
    for anchor, per_source in PUBLISHED_F1.items():
        for source in sorted(set(sources.to_list()) & set(per_source)):
            rows.append({"split": "unsafe", "source": source, by: "all", "anchor": anchor,
                         "kind": "published", "metric": "f1", "n": None,
                         "value": per_source[source]})
    return pl.DataFrame(rows, schema={
        "split": pl.String, "source": pl.String, by: pl.String, "anchor": pl.String,
        "kind": pl.String, "metric": pl.String, "n": pl.Int64, "value": pl.Float64})


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
        in_sample: ``(judge id, what)`` pairs where a judge's classifier was trained on rows
            it was scored on (``what``: source, split and how many rows): those figures are
            development-set; the summary puts the honest one beside them.
        cross_validation: Trained judges' held-out results stored when they were trained
            (the test suite recomputes them from the data).
        disagreements: Gold responses on which the judges disagree (complied vs refused),
            with the human label beside them: the queue for human review.
        baselines: ``published_baselines``: published classifiers on the same items, and
            published guards' F1 on the same sources.
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
        if "source" not in frame.columns or frame["source"].null_count():
            frame = frame.with_columns(pl.lit(Path(str(source)).name).alias("source"))
        frames.append(sample_per_group(frame, limit, seed=seed))
    if frames:
        everything = pl.concat(frames, how="diagonal_relaxed")
        report.evaluation = evaluate(judges, everything, n_boot=n_boot, seed=seed)
        report.baselines = published_baselines(everything)
        trained = report.evaluation.summary.filter(
            (pl.col("source_model") == "all") & (pl.col("n_trained") > 0))
        report.in_sample = [(r["judge"], f"{r['source']} ({r['split']}: {r['n_trained']} of "
                                         f"{r['n']} rows)") for r in trained.iter_rows(named=True)]
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


def report_lines(report: ValidationReport) -> list[str]:
    """The report as text; the last lines are one per judge, split and source:
    ``judge=ID split=S source=SRC n=N acc=X [lo,hi] f1=X [lo,hi] kappa=X [lo,hi]
    unscored=K status=held-out|in-sample|partly in-sample`` (an in-sample line ends with the
    honest figure: ``honest=X [lo,hi] (cross-validated | held-out rows only)``) and, with a
    safe set, one per judge: ``judge=ID false_complied=X false_unsafe=X``."""
    lines = [f"skipped: {why}" for why in report.skipped]
    ev, fa = report.evaluation, report.false_alarm
    with pl.Config(tbl_rows=80, tbl_cols=20, tbl_width_chars=220, float_precision=3,
                   tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        if ev is not None:
            lines += ["agreement with human labels (percentile bootstrap 95% CIs):",
                      str(headline(ev.summary))]
            for (judge_id, split, source), conf in ev.confusion.filter(
                    pl.col("source_model") == "all").group_by(["judge", "split", "source"],
                                                              maintain_order=True):
                lines += [f"confusion of {judge_id} on {split}, {source} (rows: gold; "
                          "columns: judged):", str(conf.pivot(on="pred", index="gold",
                                                              values="n"))]
            if not ev.specificity.is_empty():
                lines += ["specificity vs human ordinal labels (Spearman):", str(ev.specificity)]
        if report.baselines is not None and not report.baselines.is_empty():
            lines += ["published baselines (same items: their verdicts scored here; "
                      "published: their own run):",
                      str(report.baselines.filter(pl.col("source_model") == "all"))]
        for judge_id, what in report.in_sample:
            lines.append(f"in-sample: {judge_id} was trained on {what}: those figures are "
                         f"development-set; the honest figure is beside them")
        if fa is not None:
            lines += ["false alarms on safe reference responses:", str(false_alarm_view(fa))]
    if ev is not None:
        pooled = ev.summary.filter(pl.col("source_model") == "all")
        for row in pooled.filter(pl.col("split") != "label3").iter_rows(named=True):
            line = (f"judge={row['judge']} split={row['split']} source={row['source']} "
                    f"n={row['n']} acc={row['accuracy']:.3f} [{row['accuracy_lo']:.3f},"
                    f"{row['accuracy_hi']:.3f}] f1={row['f1']:.3f} [{row['f1_lo']:.3f},"
                    f"{row['f1_hi']:.3f}] kappa={row['kappa']:.3f} [{row['kappa_lo']:.3f},"
                    f"{row['kappa_hi']:.3f}] unscored={row['unscored']} status={row['status']}")
            if row["status"] != "held-out":
                line += (f" honest={row['honest_accuracy']:.3f} [{row['honest_accuracy_lo']:.3f},"
                         f"{row['honest_accuracy_hi']:.3f}] ({row['honest_kind']})")
            lines.append(line)
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
