"""The validation report behind notebook 03b and ``medharm-nb judge-eval``.

``validate`` loads judges by name, scores them on a gold source (``judge_eval.load_gold``)
and on a false-alarm set, records which trained judges are being evaluated on their own
training data, and lists the responses the judges disagree on. A source that is absent is
recorded in ``skipped`` rather than raised, so the notebook series runs in a clone without
the reference data. ``throughput`` is the speed benchmark (``medharm-nb bench judge``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from medharm_nb.judge.base import judge_batch
from medharm_nb.judge_eval import (
    Evaluation,
    evaluate,
    false_alarms,
    load_gold,
    load_med_safety_bench,
)


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
        evaluation: Agreement with the gold labels (None when no gold source was found).
        false_alarm: ``false_alarms`` table (None when no safe set was found).
        disagreements: Gold responses on which the judges disagree (binary level), with the
            gold label beside their labels: the queue for human review.
        cross_validation: The trained judges' stored leave-one-source-model-out results.
        in_sample: Judges whose training data is the gold set evaluated here.
        skipped: Why a part was skipped.
    """

    judges: list[str]
    evaluation: Evaluation | None = None
    false_alarm: pl.DataFrame | None = None
    disagreements: pl.DataFrame | None = None
    cross_validation: pl.DataFrame | None = None
    in_sample: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def validate(judge_names: Sequence[str], gold: str | Path | None,
             safe: str | Path | None = None, limit: int | None = None,
             n_boot: int = 1000, seed: int = 0) -> ValidationReport:
    """Evaluate judges on a gold source and a false-alarm set, skipping what is absent.

    Args:
        judge_names: Names for ``load_judge``.
        gold: A ``load_gold`` source, or None.
        safe: A MedSafetyBench folder (safe reference responses), or None.
        limit: At most this many responses per group (seeded sample), for quick runs.
        n_boot: Bootstrap resamples.
        seed: Sampling and bootstrap seed.
    """
    from medharm_nb.judge import load_judge
    from medharm_nb.judge.panel import disagreements
    from medharm_nb.judge.trained import TrainedJudge, data_sha256

    judges = [load_judge(name) for name in judge_names]
    report = ValidationReport([j.id for j in judges])
    trained = [j for j in judges if isinstance(j, TrainedJudge)]
    cv = [pl.DataFrame(j.params.get("cross_validation", {}).get("results", []))
          .with_columns(pl.lit(j.id).alias("judge")) for j in trained]
    report.cross_validation = pl.concat(cv, how="diagonal") if cv else None
    frame = None
    if gold is None:
        report.skipped.append("gold labels: no source given")
    else:
        try:
            frame = load_gold(gold)
        except FileNotFoundError as err:
            report.skipped.append(f"gold labels: {err}")
    if frame is not None:
        full_hash = data_sha256(frame)
        report.in_sample = [j.id for j in trained
                            if j.params["training"]["data_sha256"] == full_hash]
        frame = sample_per_group(frame, limit, seed=seed)
        report.evaluation = evaluate(judges, frame, n_boot=n_boot, seed=seed)
        if len(judges) > 1:
            items = report.evaluation.items.with_columns(
                (pl.col("source_model") + "/" + pl.col("id")).alias("key"))
            report.disagreements = disagreements(items, key="key").join(
                items.select("key", "gold", "prompt", "response").unique("key"), on="key")
    if safe is not None:
        try:
            msb = sample_per_group(load_med_safety_bench(safe), limit, seed=seed)
            report.false_alarm = false_alarms(judges, msb)
        except FileNotFoundError as err:
            report.skipped.append(f"false-alarm set: {err}")
    return report


def report_lines(report: ValidationReport) -> list[str]:
    """The report as text for the command line; the last lines are one per judge:
    ``judge=ID n=N binary_acc=X [lo,hi] acc=X [lo,hi] kappa=X [lo,hi] unscored=K
    false_alarm=X``."""
    lines = [f"skipped: {why}" for why in report.skipped]
    ev, fa = report.evaluation, report.false_alarm
    with pl.Config(tbl_rows=60, tbl_cols=20, tbl_width_chars=220, float_precision=3,
                   tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        if ev is not None:
            lines += ["agreement with human labels (bootstrap 95% CIs):", str(ev.summary)]
            pooled = ev.confusion.filter(pl.col("source_model") == "all")
            for (judge_id,), conf in pooled.group_by("judge", maintain_order=True):
                lines += [f"confusion of {judge_id} (rows: gold; columns: judged):",
                          str(conf.pivot(on="pred", index="gold", values="n"))]
        if report.in_sample:
            lines.append(f"in-sample (trained on this gold set): {report.in_sample}; see its "
                         f"cross-validated figures below")
        if report.cross_validation is not None:
            lines += ["stored cross-validation of trained judges:",
                      str(report.cross_validation)]
        if fa is not None:
            lines += ["false alarms on safe reference responses:", str(fa)]
    for judge_id in report.judges:
        parts = [f"judge={judge_id}"]
        if ev is not None:
            row = ev.summary.filter((pl.col("judge") == judge_id)
                                    & (pl.col("source_model") == "all")).row(0, named=True)
            parts += [f"n={row['n']}"] + [
                f"{short}={row[col]:.3f} [{row[lo]:.3f},{row[hi]:.3f}]"
                for short, col, lo, hi in (("binary_acc", "binary_accuracy", "binary_lo",
                                            "binary_hi"),
                                           ("acc", "accuracy", "accuracy_lo", "accuracy_hi"),
                                           ("kappa", "kappa", "kappa_lo", "kappa_hi"))
            ] + [f"unscored={row['unscored']}"]
        if fa is not None:
            row = fa.filter(pl.col("judge") == judge_id).row(0, named=True)
            parts.append(f"false_alarm={row['rate']:.3f}")
        lines.append(" ".join(parts))
    return lines
