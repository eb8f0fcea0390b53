"""Validate judges against human labels.

Every judge carries its agreement with people. The reference is XSTest v2 (Röttger et al.,
NAACL 2024): 3 x 450 real model responses, each labelled by two annotators as full
compliance, full refusal or partial refusal. Our judges speak a 4-way language, so
``full_refusal`` and ``safe_redirect`` both map to XSTest's full refusal. MedSafetyBench's
safe reference responses (all refusals or redirections) give a free false-alarm check.

Unscored verdicts are kept: they count as wrong in every score and are reported on their own.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from medharm_nb import data
from medharm_nb.metrics import wilson_interval

XSTEST_LABELS: dict[str, str] = {
    "1_full_compliance": "full_compliance",
    "2_full_refusal": "full_refusal",
    "3_partial_refusal": "partial",
}
"""XSTest ``final_label`` -> our 3-way gold label."""

TO_XSTEST: dict[str, str] = {
    "full_refusal": "full_refusal",
    "safe_redirect": "full_refusal",
    "partial": "partial",
    "full_compliance": "full_compliance",
    "unscored": "unscored",
}
"""Our 4-way judge label -> XSTest's 3-way; ``unscored`` stays itself and never matches gold."""

GOLD_LABELS: tuple[str, ...] = ("full_compliance", "full_refusal", "partial")

_XSTEST_GLOB = "xstest_v2_completions_*.csv"


def load_xstest_completions(path_or_dir: str | Path) -> pl.DataFrame:
    """Read XSTest v2 human-labelled completions.

    Args:
        path_or_dir: One ``xstest_v2_completions_<model>.csv`` file, or the folder holding
            them (all matching files are read).

    Returns:
        Columns ``id, source_model, prompt, response, gold``; ``source_model`` comes from the
        file name (``gpt4``, ``llama2new``, ``mistralinstruct``), ``gold`` is one of
        ``GOLD_LABELS``.

    Raises:
        FileNotFoundError: If no completion file is found.
        ValueError: If a ``final_label`` is not one of XSTest's three.
    """
    path = Path(path_or_dir)
    files = sorted(path.glob(_XSTEST_GLOB)) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise FileNotFoundError(f"no {_XSTEST_GLOB} at {path}")
    frames = [_read_xstest_file(f) for f in files]
    return pl.concat(frames, how="vertical")


def _read_xstest_file(path: Path) -> pl.DataFrame:
    """Read one completion file; the model name is the part of the stem after the prefix."""
    source = path.stem.removeprefix("xstest_v2_completions_")
    # Everything as text: ids look like "v2-1" and an empty completion must stay a string.
    raw = pl.read_csv(path, infer_schema=False)
    unknown = set(raw["final_label"].unique().to_list()) - set(XSTEST_LABELS)
    if unknown:
        raise ValueError(f"{path.name}: unknown final_label values {sorted(map(str, unknown))}")
    return raw.select(
        pl.col("id"),
        pl.lit(source).alias("source_model"),
        pl.col("prompt"),
        pl.col("completion").fill_null("").alias("response"),
        pl.col("final_label").replace_strict(XSTEST_LABELS).alias("gold"),
    )


def load_med_safety_bench(root: str | Path) -> pl.DataFrame:
    """MedSafetyBench's requests with their safe reference responses, as judge input.

    Args:
        root: The ``med-safety-bench`` folder (or its ``test`` folder, or one model folder).

    Returns:
        Columns ``id, source_model, category, prompt, response``; every ``response`` is a
        refusal or safe redirection written by GPT-4, so any compliance verdict is a false alarm.
    """
    return data.load_medsafetybench(root).select(
        "id", pl.col("generator").alias("source_model"), "category",
        pl.col("text").alias("prompt"), pl.col("safe_response").fill_null("").alias("response"),
    )


def cohen_kappa(gold: Sequence[str], pred: Sequence[str]) -> float:
    """Cohen's kappa between two label sequences.

    Args:
        gold: Reference labels.
        pred: Predicted labels; labels absent from gold (e.g. ``unscored``) simply disagree.

    Returns:
        Kappa in [-1, 1]; 1.0 when both raters use a single identical label (no chance
        agreement to correct for), NaN for empty input.
    """
    _check_lengths(gold, pred)
    n = len(gold)
    if n == 0:
        return math.nan
    observed = sum(g == p for g, p in zip(gold, pred)) / n
    gold_counts, pred_counts = Counter(gold), Counter(pred)
    expected = sum(gold_counts[k] * pred_counts[k] for k in gold_counts) / (n * n)
    if expected == 1.0:
        return 1.0 if observed == 1.0 else 0.0
    return (observed - expected) / (1.0 - expected)


def agreement(gold: Sequence[str], pred: Sequence[str]) -> dict[str, Any]:
    """Agreement of 3-way predictions with 3-way gold labels.

    Args:
        gold: Gold labels from ``GOLD_LABELS``.
        pred: Predicted labels already mapped with ``TO_XSTEST`` (may include ``unscored``).

    Returns:
        ``n``; ``accuracy`` (3-way); ``binary_accuracy`` (full compliance vs any refusal,
        partial counting as refusal) with its 95% Wilson ``binary_accuracy_ci``; ``kappa``
        (3-way Cohen's kappa); ``unscored`` (how many predictions were unscored; each is
        counted wrong, never dropped); ``confusion``, a DataFrame with one row per gold label
        and one count column per predicted label.
    """
    _check_lengths(gold, pred)
    n = len(gold)
    hits = sum(g == p for g, p in zip(gold, pred))
    binary_hits = sum(
        p != "unscored" and (g == "full_compliance") == (p == "full_compliance")
        for g, p in zip(gold, pred)
    )
    return {
        "n": n,
        "accuracy": hits / n if n else math.nan,
        "binary_accuracy": binary_hits / n if n else math.nan,
        "binary_accuracy_ci": wilson_interval(binary_hits, n),
        "kappa": cohen_kappa(gold, pred),
        "unscored": sum(p == "unscored" for p in pred),
        "confusion": confusion_matrix(gold, pred),
    }


def confusion_matrix(gold: Sequence[str], pred: Sequence[str]) -> pl.DataFrame:
    """Count (gold, pred) pairs: a ``gold`` column, then one column per predicted label."""
    _check_lengths(gold, pred)
    pred_labels = [*GOLD_LABELS, *sorted(set(pred) - set(GOLD_LABELS))]
    gold_labels = [*GOLD_LABELS, *sorted(set(gold) - set(GOLD_LABELS))]
    pairs = Counter(zip(gold, pred))
    return pl.DataFrame(
        {"gold": gold_labels} | {p: [pairs[(g, p)] for g in gold_labels] for p in pred_labels},
        schema={"gold": pl.String} | {p: pl.Int64 for p in pred_labels},
    )


def judge_frame(judge: Any, frame: pl.DataFrame) -> pl.DataFrame:
    """Label every row of a ``prompt, response`` frame with a judge.

    Args:
        judge: Object with ``judge(prompt, response) -> Judgement``.
        frame: Any frame with ``prompt`` and ``response`` columns (e.g. from the loaders).

    Returns:
        ``frame`` plus ``label`` (the judge's 4-way label), ``pred`` (mapped to XSTest's
        3-way) and ``rationale``.
    """
    verdicts = [judge.judge(p, r) for p, r in zip(frame["prompt"], frame["response"], strict=True)]
    return frame.with_columns(
        pl.Series("label", [v.label for v in verdicts], dtype=pl.String),
        pl.Series("pred", [TO_XSTEST[v.label] for v in verdicts], dtype=pl.String),
        pl.Series("rationale", [v.rationale for v in verdicts], dtype=pl.String),
    )


def agreement_by(scored: pl.DataFrame, by: str = "source_model") -> pl.DataFrame:
    """One row of agreement scores per group of a frame with ``gold`` and ``pred`` columns.

    Args:
        scored: Output of ``judge_frame`` on a gold-labelled frame.
        by: Column to group on.

    Returns:
        Columns ``by, n, accuracy, binary_accuracy, binary_lo, binary_hi, kappa, unscored``,
        sorted by group.
    """
    rows = []
    for (key,), group in scored.group_by(by, maintain_order=True):
        a = agreement(group["gold"].to_list(), group["pred"].to_list())
        lo, hi = a["binary_accuracy_ci"]
        rows.append(
            {
                by: key,
                "n": a["n"],
                "accuracy": a["accuracy"],
                "binary_accuracy": a["binary_accuracy"],
                "binary_lo": lo,
                "binary_hi": hi,
                "kappa": a["kappa"],
                "unscored": a["unscored"],
            }
        )
    return pl.DataFrame(rows).sort(by)


def _check_lengths(gold: Sequence[str], pred: Sequence[str]) -> None:
    """Refuse to score misaligned label lists: zip would silently truncate them."""
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} labels but pred has {len(pred)}")
