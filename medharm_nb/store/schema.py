"""What a declared run table is (``Table``) and how a frame or a file is checked against its
declaration; ``store.catalogue`` declares every table with it."""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel


class TableError(ValueError):
    """A frame or a file does not match its table's declaration; the message names the
    table (and the file) and the column."""


def polars_type(annotation: Any) -> pl.DataType | None:
    """Polars type of a scalar record field (optional or not); None for lists and dicts."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(inner) != 1:
            return None
        annotation = inner[0]
    if typing.get_origin(annotation) is typing.Literal:
        annotation = type(typing.get_args(annotation)[0])
    return {bool: pl.Boolean, int: pl.Int64, float: pl.Float64, str: pl.String}.get(annotation)


def record_columns(record: type[BaseModel]) -> dict[str, pl.DataType]:
    """A pydantic record's fields as table columns (scalar fields only)."""
    out = {}
    for name, info in record.model_fields.items():
        dtype = polars_type(info.annotation)
        if dtype is not None:
            out[name] = dtype
    return out


def record_defaults(record: type[BaseModel]) -> dict[str, Any]:
    """The fields of a record that have a plain default (what an older file lacks reads as)."""
    return {name: info.default for name, info in record.model_fields.items()
            if not info.is_required() and info.default_factory is None}


def _compatible(have: pl.DataType, want: pl.DataType) -> bool:
    """Whether a column of type ``have`` is stored as ``want`` without losing meaning: the
    same type, no values yet (Null), another width of integer or float, an integer as a
    float, a list of such."""
    if have == want or have == pl.Null:
        return True
    if want.is_integer():
        return have.is_integer()
    if want.is_float():
        return have.is_float() or have.is_integer()
    if isinstance(want, pl.List) and isinstance(have, pl.List):
        return _compatible(have.inner, want.inner)
    return want == pl.String and isinstance(have, (pl.Categorical, pl.Enum))


@dataclass(frozen=True)
class Table:
    """One table a run writes (see the module docstring).

    Attributes:
        name: ``tables/<name>.parquet``.
        columns: Declared columns and types, in their order in the file.
        stage: The function that writes it.
        notebook: The notebook that runs ``stage`` (None: a command or a view writes it).
        doc: What one row is.
        version: Bumped when a column is added, renamed or changes meaning.
        added: Columns later versions added: their default in a file written before (a
            value, or an expression over the older columns), filled in when it is read.
        extra: Columns beyond the declared ones are allowed (free query metadata, one
            label column per judge).
        csv: Also written as CSV (summaries people open in a spreadsheet).
        read_by: Notebooks of the series that read it.
    """

    name: str
    columns: Mapping[str, pl.DataType]
    stage: str
    notebook: str | None
    doc: str
    version: int = 1
    added: Mapping[str, Any] = field(default_factory=dict)
    extra: bool = False
    csv: bool = False
    read_by: tuple[str, ...] = ()

    @property
    def writer(self) -> str:
        """Who writes it, for messages: the notebook and stage, or the stage."""
        return f"{self.notebook} ({self.stage})" if self.notebook else self.stage

    def path(self, run_dir: str | Path) -> Path:
        """``run_dir/tables/<name>.parquet``."""
        return Path(run_dir) / "tables" / f"{self.name}.parquet"

    def empty(self) -> pl.DataFrame:
        """The table with no rows."""
        return pl.DataFrame(schema=dict(self.columns))

    def check(self, schema: Mapping[str, pl.DataType]) -> None:
        """Raise unless columns of these types match the declaration.

        Raises:
            TableError: a declared column is missing or of another type, or an undeclared
                column where the table allows none (each named).
        """
        missing = [c for c in self.columns if c not in schema]
        if missing:
            raise TableError(f"table {self.name!r}: column(s) {', '.join(map(repr, missing))} "
                             f"missing (declared in store.catalogue; written by "
                             f"{self.writer})")
        for column, want in self.columns.items():
            if not _compatible(schema[column], want):
                raise TableError(f"table {self.name!r}: column {column!r} is "
                                 f"{schema[column]}, declared {want}")
        extra = [c for c in schema if c not in self.columns]
        if extra and not self.extra:
            raise TableError(f"table {self.name!r}: column(s) {', '.join(map(repr, extra))} "
                             f"not declared (add them to store.catalogue, with a version "
                             f"bump and a default for older files)")

    def conform(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame`` as the table stores it (``check``): declared columns first, in order,
        each cast to its declared type; a frame with no columns and no rows is the empty
        table."""
        if frame.width == 0 and frame.height == 0:
            return self.empty()
        self.check(frame.schema)
        extra = [c for c in frame.columns if c not in self.columns]
        return frame.select(*(pl.col(c).cast(t) for c, t in self.columns.items()), *extra)

    def upgrade(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        """A table as read: the columns a file written before they were added get their
        declared default (in declaration order, so a default may use an earlier one)."""
        have = set(frame.collect_schema().names())
        for column, default in self.added.items():
            value = default if isinstance(default, pl.Expr) else pl.lit(default)
            # A default made from a column the file lacks too is left for ``check`` to name.
            if column not in have and set(value.meta.root_names()) <= have:
                frame = frame.with_columns(value.cast(self.columns[column]).alias(column))
                have.add(column)
        return frame
