"""``medharm-nb`` commands about judges and guards: ``judge-eval``, ``judge-train``,
``guard-eval`` (registered on the app by ``cli``)."""

from __future__ import annotations

from pathlib import Path

import typer

from medharm_nb.cli_common import fail, wide_tables


def judge_eval_command(
    judge: list[str] = typer.Option(["rules"], help="Judge name, repeatable: rules, trained, "
                                                    "llm:MODEL, guard:NAME, panel:A+B."),
    gold: list[str] = typer.Option(..., help="Human labels, repeatable: an XSTest folder "
                                             "(compliance), HarmBench's validation set, the "
                                             "response-harm folder (BeaverTails, "
                                             "PKU-SafeRLHF; unsafe), run:RUN_DIR "
                                             "(annotations), or a CSV/JSONL/Parquet file "
                                             "with prompt, response and label and/or "
                                             "unsafe."),
    safe: Path | None = typer.Option(None, help="MedSafetyBench folder: false-alarm check."),
    limit: int | None = typer.Option(None, min=1, help="At most N responses per group."),
    bootstrap: int = typer.Option(1000, min=0, help="Bootstrap resamples for the CIs."),
    out: Path | None = typer.Option(None, help="Write the tables under OUT/tables/."),
) -> None:
    """Agreement of judges with human labels on the compliance split and the unsafe split,
    per source (accuracy, F1, Cohen's kappa, confusion, bootstrap CIs, unscored count, with
    published baselines beside them), specificity's rank correlation with human ordinal
    labels, and false alarms on safe responses. Rows a judge was trained on (by content
    hash) are marked in-sample, with the honest figure beside them."""
    from medharm_nb import store, validation

    try:
        report = validation.validate(judge, gold, safe, limit=limit, n_boot=bootstrap)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    if report.evaluation is None:
        fail("; ".join(report.skipped))
    if out is not None:
        store.write_table(out, store.VALIDATION_TABLES["summary"], report.evaluation.summary)
        store.write_table(out, store.VALIDATION_TABLES["confusion"],
                          report.evaluation.confusion)
        if report.baselines is not None:
            store.write_table(out, store.VALIDATION_TABLES["baselines"], report.baselines)
        if report.false_alarm is not None:
            store.write_table(out, store.VALIDATION_TABLES["false_alarm"], report.false_alarm)
    for line in validation.report_lines(report):
        typer.echo(line)


def judge_train(
    gold: str | None = typer.Option(None, help="Human compliance labels (as for judge-eval): "
                                               "XSTest's folder re-makes the shipped "
                                               "compliance classifier."),
    harm: Path | None = typer.Option(None, help="Train the harm model instead, from this "
                                                "shared data folder (../shared/external: "
                                                "harmbench, response-harm, xstest, "
                                                "med-safety-bench)."),
    out: Path = typer.Option(..., help="Where to save: medharm_nb/assets/trained_judge_v1.json "
                                       "(compliance) or medharm_nb/assets/harm_judge_v2 (harm, "
                                       "a folder) re-make the shipped ones."),
    c: float = typer.Option(0.1, "--C", help="Compliance: inverse L2 strength."),
    gate: float = typer.Option(0.95, help="Compliance: confidence above which it overrides "
                                          "the rules."),
    validate: bool = typer.Option(False, "--validate", help="Harm: also run the "
                                                            "leave-one-source-out folds "
                                                            "(four more trainings)."),
    cv: bool = typer.Option(False, "--cv", help="Harm, with --validate: also the grouped "
                                                "3-fold CV (three more trainings)."),
    figures: Path | None = typer.Option(None, help="Harm, with --validate: save the "
                                                   "reliability diagram here (docs/img)."),
    seed: int = typer.Option(0, help="Harm: seeds splits, initial weights and batch order."),
    cache: Path | None = typer.Option(None, help="Harm: a file for the frozen layers' output, "
                                                 "reused by later runs (written when "
                                                 "absent); never changes a result."),
    folds: str | None = typer.Option(None, help="Harm: run only these validation folds "
                                                "(comma-separated, e.g. loso-harmbench) and "
                                                "no final model, to share them between "
                                                "processes; finished folds are kept."),
) -> None:
    """Train a judge's classifier. With --gold, the compliance classifier: cross-validate
    across source models (or annotators), then train on all labels. With --harm, the
    fine-tuned harm model (harm-v2; progress bars, fixed seed), its model card, and with
    --validate its held-out figures."""
    if (gold is None) == (harm is None):
        fail("give --gold (compliance classifier) or --harm (harm model), not both")
    if harm is not None:
        from medharm_nb.judge.harm_release import make_harm_model

        try:
            only = [f.strip() for f in folds.split(",") if f.strip()] if folds else None
            model, report = make_harm_model(harm, out, validate_folds=validate,
                                            figures=figures, seed=seed, only=only,
                                            cache_file=cache, log=typer.echo, cv=cv)
        except (FileNotFoundError, ValueError) as err:
            fail(str(err))
        for scheme in ("loso", "cv"):
            for source, f in report.get(scheme, {}).items():
                typer.echo(f"{scheme} {source}: accuracy={f['accuracy']:.3f} f1={f['f1']:.3f} "
                           f"ece={f['ece']:.3f} n={f['n']}")
        if model is None:
            typer.echo(f"folds {folds} saved under {out}/validation/folds")
        return
    from medharm_nb.judge import trained_fit

    try:
        judge, table = trained_fit.train(gold, C=c, gate=gate, out=out)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    if table is not None:
        with wide_tables():
            typer.echo(f"train on all groups but one, test on it:\n{table}")
    typer.echo(f"saved {judge.id} to {out}")


def guard_eval(
    guard: list[str] = typer.Option(["minilm"], help="Guard name, repeatable: minilm, "
                                                     "prompted-smollm2, llama-guard-3-1b ..."),
    queries: str = typer.Option(..., help="Labelled queries: medharm-open, xstest:FILE ..."),
    train: str | None = typer.Option(None, help="Labelled queries to fit minilm on "
                                                "(default: the shipped artifact)."),
    variants: bool = typer.Option(False, "--variants", help="Also score the variant attacks "
                                                            "and report brittleness."),
    limit: int | None = typer.Option(None, min=1, help="At most N harmful and N benign."),
    threshold: float = typer.Option(0.5, help="The guards' default threshold."),
    out: Path | None = typer.Option(None, help="Write the tables under OUT/tables/."),
) -> None:
    """Score prompts with guards: AUROC, catch at a cross-fitted 5% false-block threshold,
    false blocks (with CIs), and paired brittleness under the prompt variants."""
    import polars as pl

    from medharm_nb import guard as guards
    from medharm_nb import store

    try:
        labelled = guards.first_pairs(guards.labelled_queries(queries), limit)
        loaded = {g: guards.load_guard(g, train if g == "minilm" else None) for g in guard}
        result = guards.evaluate_guards(loaded, labelled, variants=variants,
                                        threshold=threshold)
        result["guards"] = guards.describe_all(loaded, queries)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    if out is not None:
        for name, table in result.items():
            store.write_table(out, store.GUARD_TABLES[name], table)
    with wide_tables():
        if variants:
            typer.echo(result["summary"].select(
                "guard", "variant", "catch_at_budget", "catch_at_budget_lo",
                "catch_at_budget_hi", "false_block_at_budget", "budget_thresholds"))
            typer.echo(result["brittleness"])
    for row in result["guards"].filter(pl.col("in_sample")).iter_rows(named=True):
        typer.echo(f"note: {row['guard']} was trained on {queries}: its figures here are "
                   f"in-sample (development), not held out")
    for line in guards.summary_lines(result):
        typer.echo(line)
