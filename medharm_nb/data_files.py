"""Reading query and pair files as they are: every value a string, positions kept for
error messages (``_line``), and every problem a ``QueryValidationError`` naming the file and
the line. ``data`` validates what these read; ``finetune`` and the replay backend read their
files through them too.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import polars as pl

from medharm_nb.labels import QUERY_COLUMNS


class QueryValidationError(ValueError):
    """Raised with every problem found in a query table, each naming file and line or id."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        shown = "\n  ".join(errors[:50])
        more = f"\n  ... and {len(errors) - 50} more" if len(errors) > 50 else ""
        super().__init__(f"{len(errors)} problem(s) in the queries:\n  {shown}{more}")


def read_query_file(path: Path) -> tuple[pl.DataFrame, str]:
    """Read a CSV / JSONL / Parquet file as strings, with a ``_line`` column for error messages.

    Returns:
        The frame and the word used for positions ("line" or "row").
    """
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            df = pl.read_parquet(path)
        except Exception as err:  # polars raises several kinds for a damaged file
            raise QueryValidationError(
                [f"{path}: not a readable Parquet file ({str(err).splitlines()[0]})"]) from None
        nested = [f"{c} ({t})" for c, t in df.schema.items() if t.is_nested()]
        if nested:
            raise QueryValidationError([f"{path}: column(s) {', '.join(nested)} hold lists or "
                                        "structs; every query field must be a single value"])
        df = df.with_columns(pl.all().cast(pl.String))
        return df.with_row_index("_line", offset=1), "row"
    text = decode_text(path)
    if suffix == ".csv":
        # Old Mac files end lines with a lone CR, which polars reads as one long header line.
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        header = next(csv.reader(io.StringIO(text)), [])
        twice = sorted({h for h in header if header.count(h) > 1})
        if twice:
            raise QueryValidationError(
                [f"{path}:1: column(s) {twice} named more than once in the header"])
        try:
            df = pl.read_csv(io.StringIO(text), infer_schema=False)
        except (pl.exceptions.ComputeError, pl.exceptions.NoDataError) as err:
            # polars names neither the file nor the line; find the ragged lines ourselves.
            raise QueryValidationError(_ragged_csv_lines(path, text) or [
                f"{path}: not a readable CSV ({str(err).splitlines()[0]})"]) from None
        # Header is line 1; a quoted field may span lines, so this is the record's first line
        # for ordinary files.
        return df.with_row_index("_line", offset=2), "line"
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path, text), "line"
    raise QueryValidationError([f"{path}: unsupported file type {suffix!r} (csv, jsonl, parquet)"])


def _ragged_csv_lines(path: Path, text: str) -> list[str]:
    rows = csv.reader(io.StringIO(text))
    header = next(rows, [])
    return [f"{path}:{rows.line_num}: {len(row)} fields, but the header has {len(header)}"
            for row in rows if row and len(row) != len(header)]


def decode_text(path: Path) -> str:
    """A file's text as UTF-8 (a BOM dropped); bytes that are not UTF-8 are an error naming the
    line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise QueryValidationError(
            [f"{path}:{line}: not valid UTF-8 (byte {raw[err.start]:#04x}); save the file as UTF-8"]
        ) from None


def _read_jsonl(path: Path, text: str) -> pl.DataFrame:
    rows, errors = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            errors.append(f"{path}:{number}: not valid JSON ({err.msg})")
            continue
        if not isinstance(obj, dict):
            errors.append(f"{path}:{number}: expected a JSON object per line")
            continue
        nested = [k for k, v in obj.items() if k in QUERY_COLUMNS and isinstance(v, dict | list)]
        if nested:
            errors.append(f"{path}:{number}: field(s) {nested} hold a list or object; every "
                          "query field must be a single value")
            continue
        obj = {k: (None if v is None else v if isinstance(v, str) else json.dumps(v)
                   if isinstance(v, (dict, list)) else str(v)) for k, v in obj.items()}
        rows.append({**obj, "_line": number})
    if errors:
        raise QueryValidationError(errors)
    return pl.DataFrame(rows, infer_schema_length=None)


def read_hf(name: str, split: str = "train",
            data_files: str | list[str] | None = None) -> pl.DataFrame:
    """Read one split of anything ``datasets`` loads as strings, unvalidated.

    Args:
        name: Hub name, builder (``csv``, ``json`` with ``data_files``) or a folder written
            by ``save_to_disk``.
        split: The split to read.
        data_files: ``data_files`` for builders.
    """
    import datasets  # heavy import, only when needed

    path = Path(name)
    # save_to_disk writes state.json for a Dataset and dataset_dict.json for a DatasetDict.
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if path.is_dir() and any((path / f).exists() for f in markers):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
    else:
        ds = datasets.load_dataset(name, split=split, data_files=data_files)
    return pl.from_arrow(ds.data.table).with_columns(pl.all().cast(pl.String))
