"""What every ``medharm-nb`` command shares: how a failure is said, and wide tables."""

from __future__ import annotations

import typer


def fail(message: str) -> None:
    """Print ``error: message`` in red on stderr and exit 1."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def validation_failure(err) -> None:
    """Fail with a pydantic ``ValidationError``'s problems on one line, each with its field."""
    fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()))


def wide_tables():
    """A polars config that prints tables whole in a terminal (up to 100 rows, 20 columns)."""
    import polars as pl

    return pl.Config(tbl_rows=100, tbl_cols=20, tbl_width_chars=200,
                     tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True)
