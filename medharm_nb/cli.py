"""The ``medharm-nb`` command line: the app, the commands of a run (``run``, ``generate``,
``judge``, ``report``, ``plan``, ``notebooks``) and of query sets (``validate``, ``data
check``); the others live beside it, one module per subject (``cli_models``, ``cli_judges``,
``cli_bench``), and are registered at the end."""

from __future__ import annotations

from pathlib import Path

import typer

from medharm_nb import cli_bench, cli_judges, cli_models
from medharm_nb.cli_common import fail, wide_tables

app = typer.Typer(
    help="medharm-nb: measure how LLMs fail on high-risk medical questions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def validate(
    source: str = typer.Argument(
        ..., help="A query file (CSV, JSONL, Parquet), 'medharm-open', 'hf:...', "
                  "'medsafetybench:DIR' or 'xstest:FILE'."),
    mapping: list[str] = typer.Option(
        [], "--map", help="Column mapping OURS=THEIRS, repeatable (e.g. --map text=prompt)."),
    category: list[str] = typer.Option(
        [], "--category", help="Allowed category, repeatable (default: the ten MedHarm ones)."),
    conversations: bool = typer.Option(
        False, "--conversations", help="SOURCE is a JSONL file of conversations (OpenAI-style "
                                       "messages plus the query schema's fields)."),
) -> None:
    """Check a query set (or a conversations file) against the schema; exit 1 listing every
    problem, else summarise."""
    from medharm_nb import data

    try:
        pairs = dict(m.split("=", 1) for m in mapping)
    except ValueError:
        fail("--map takes OURS=THEIRS")
    try:
        if conversations:
            from medharm_nb.conversation import load_conversations

            talks = load_conversations(source, categories=category or None)
            typer.echo(f"{source}: {talks.height} conversations, "
                       f"{int(talks['n_turns'].sum())} user turns; no problems found")
            return
        df = data.load_queries(source, mapping=pairs or None, categories=category or None)
    except data.QueryValidationError as err:
        for line in err.errors:
            typer.echo(line, err=True)
        typer.secho(f"{len(err.errors)} problem(s) found", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    except FileNotFoundError as err:
        fail(str(err))
    n_harm = df.filter(df["risk"] == "harmful").height
    typer.echo(f"{source}: {df.height} queries ({n_harm} harmful, {df.height - n_harm} benign), "
               f"{df['category'].n_unique()} categories; no problems found")
    with wide_tables():
        typer.echo(data.summary_table(df))


data_app = typer.Typer(help="Query sets: quality gates.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("check")
def data_check_command(
    source: str = typer.Argument(
        "medharm-open", help="A query source, as for validate (default: medharm-open)."),
    review: bool = typer.Option(
        True, help="Also list rows the cross-validated category classifier reads as "
                   "another category (for review; never a failure)."),
) -> None:
    """Run the quality gates on a query set: balance per cell and tier, exact and near
    duplicates, twin matching, the operational-detail linter (and the category review).
    Prints one line per problem naming the row and the rule; exits 1 if a gate fails."""
    from collections import Counter

    from medharm_nb import data, data_check

    try:
        df = data.load_queries(source)
    except data.QueryValidationError as err:
        for line in err.errors:
            typer.echo(f"schema: {line}", err=True)
        fail(f"{len(err.errors)} schema problem(s): the other gates did not run")
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    found = data_check.check_queries(df, classify=review)
    for f in found:
        typer.echo(f.line(), err=f.level == "fail")
    fails = Counter(f.rule for f in found if f.level == "fail")
    reviews = sum(f.level == "review" for f in found)
    gates = ("balance", "duplicate", "twin", "operational")
    typer.echo(f"{source}: {df.height} rows; " + ", ".join(
        f"{g} {'FAIL (' + str(fails[g]) + ')' if fails[g] else 'ok'}" for g in gates)
        + (f"; {reviews} row(s) for category review" if review else ""))
    if fails:
        raise typer.Exit(1)


@app.command()
def run(
    config: Path = typer.Argument(..., help="The YAML run config, e.g. configs/demo.yaml."),
    name: str | None = typer.Option(None, help="Run name (default: the config's name)."),
    run_dir: Path | None = typer.Option(None, help="Run folder (default: runs/NAME)."),
    figures_dir: Path | None = typer.Option(None, help="Figures (default: figures/NAME)."),
    only: str | None = typer.Option(
        None, metavar="NB,NB", help="Run only these notebooks, e.g. 03_judge,07_report to "
                                    "judge and report on the stored answers."),
    skip: str | None = typer.Option(
        None, metavar="NB,NB", help="Run all notebooks but these, e.g. "
                                    "03b_judge_validation,04_guardrails,05_review."),
) -> None:
    """Validate a config, then execute the notebook series (or part of it) with papermill."""
    from medharm_nb import runner, store

    def names(value: str | None) -> list[str] | None:
        return [n.strip() for n in value.split(",") if n.strip()] if value else None

    try:
        manifest = runner.run(config, name=name, run_dir=run_dir, figures_dir=figures_dir,
                              only=names(only), skip=names(skip))
    except (runner.ConfigError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    except (runner.RunFailed, store.RunLocked) as err:
        fail(str(err))
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
        fail(str(err))
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
        talks = None
        if cfg.conversations is not None:
            from medharm_nb.conversation import build_conversations

            talks = build_conversations(queries, cfg.conversations)
    except (run_config.ConfigError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    for line in plan_lines(plan(cfg, queries.height, talks)):
        typer.echo(line)


@app.command("generate")
def generate_stage(
    config: Path = typer.Argument(..., help="The YAML run config, e.g. configs/demo.yaml."),
    run_dir: Path | None = typer.Option(None, help="Run folder (default: runs/NAME)."),
    first_queries: int | None = typer.Option(
        None, min=1, help="First N queries only (default: the config's "
                          "params.02_generate.first_queries)."),
    max_new_tokens: int | None = typer.Option(
        None, min=1, help="Override generation.max_new_tokens."),
) -> None:
    """Run only the generation stage (queries, every model, tables, manifest); resumable."""
    from medharm_nb import runner, store

    try:
        manifest = runner.generate_only(config, run_dir=run_dir, first_queries=first_queries,
                                        max_new_tokens=max_new_tokens)
    except (runner.ConfigError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    except (runner.RunFailed, store.RunLocked) as err:
        fail(str(err))
    typer.echo(f"\ngenerate {manifest['name']}: {manifest['status']} "
               f"in {manifest['seconds']:.0f} s")
    failed = 0
    for row in manifest["stages"]["generate"]:
        failed += row["failed"]
        typer.echo(f"  {row['model']}: total {row['total']}, cached {row['cached']}, "
                   f"generated {row['generated']}, failed {row['failed']}, "
                   f"blocked {row['blocked']}, "
                   + (f"{row['tokens_per_s']:.1f} tokens/s" if row["new_tokens"] else
                      "no tokens counted (nothing generated, or the backend does not count)"))
        for note in row.get("notes") or []:
            typer.secho(f"    {note}", fg=typer.colors.YELLOW)
    if failed:
        typer.secho(f"  {failed} generation(s) failed: their errors are stored; run the same "
                    f"command again to retry them", fg=typer.colors.YELLOW)
    run_path = Path(manifest["run_dir"])
    typer.echo(f"  tables:   {run_path / 'tables'}")
    typer.echo(f"  manifest: {run_path / 'manifest.json'}")
    _exit_for(manifest)


@app.command("judge")
def judge_command(
    config: Path = typer.Argument(..., help="The YAML run config, e.g. configs/demo.yaml."),
    run_dir: Path | None = typer.Option(None, help="Run folder (default: runs/NAME)."),
    judge: list[str] = typer.Option(
        [], help="Judge name, repeatable (default: the config's judges)."),
) -> None:
    """Judge the answers stored in a run folder (from `medharm-nb generate`: a model's, or a
    replayed file's) and write the results table and report.html; no notebooks, guards or
    validation, no model loaded. Stored verdicts are not asked again."""
    from medharm_nb import runner, store

    try:
        manifest = runner.judge_only(config, run_dir=run_dir, judges=judge or None)
    except (runner.ConfigError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    except (runner.RunFailed, store.RunLocked) as err:
        fail(str(err))
    typer.echo(f"\njudge {manifest['name']}: {manifest['status']} "
               f"in {manifest['seconds']:.0f} s")
    for name, row in (manifest["failures"].get("judge") or {}).items():
        typer.echo(f"  {name}: judged {row['judged']}, unscored {row['unscored']}")
    for model, row in (manifest["failures"].get("generate") or {}).items():
        if row["failed"] or row["blocked"]:
            typer.echo(f"  {model}: {row['failed']} of {row['total']} generations failed and "
                       f"{row['blocked']} were blocked; they stay in the results as such")
    run_path = Path(manifest["run_dir"])
    typer.echo(f"  tables:   {run_path / 'tables'}")
    typer.echo(f"  report:   {manifest['report']}")
    typer.echo(f"  manifest: {run_path / 'manifest.json'}")
    _exit_for(manifest)

@app.command("notebooks")
def notebooks_command(
    out: Path = typer.Argument(..., help="Folder to copy the notebook series into."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace notebooks there."),
) -> None:
    """Copy the numbered notebooks (shipped inside the package) into OUT, to open in
    JupyterLab; `medharm-nb run` does not need them copied."""
    import shutil

    from medharm_nb.config import NOTEBOOK_DIR, SERIES

    sources = [NOTEBOOK_DIR / f"{name}.ipynb" for name in SERIES]
    missing = [str(p) for p in sources if not p.is_file()]
    if missing:
        fail(f"this installation has no notebooks at {NOTEBOOK_DIR} (missing: "
              f"{', '.join(missing)})")
    there = [out / p.name for p in sources if (out / p.name).exists()]
    if there and not overwrite:
        fail(f"{', '.join(map(str, there))} exist; pass --overwrite to replace them")
    out.mkdir(parents=True, exist_ok=True)
    for path in sources:
        shutil.copyfile(path, out / path.name)
    typer.echo(f"{len(sources)} notebooks -> {out}; in each, set config_path (and run_dir) in "
               f"the parameters cell, or run them all with medharm-nb run CONFIG")


# The other commands live beside this module, one file per subject.
app.command("finetune")(cli_models.finetune_command)
app.command()(cli_models.models)
app.command()(cli_models.variants)
app.command()(cli_models.serve)
app.command("judge-eval")(cli_judges.judge_eval_command)
app.command("judge-train")(cli_judges.judge_train)
app.command("guard-eval")(cli_judges.guard_eval)
app.add_typer(cli_bench.bench_app, name="bench")


if __name__ == "__main__":
    app()
