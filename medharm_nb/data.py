"""Queries: load any supported source into one validated table in the query schema.

Sources (``load_queries(source)``):

- ``"medharm-open"``: our open set (``data/medharm_open.csv``).
- a path to ``.csv``, ``.jsonl``/``.json`` or ``.parquet`` in the query schema; a ``mapping``
  renames the file's columns to ours (this is how the paper's restricted MedHarm data loads).
- ``"hf:<name or path>"``: anything ``datasets.load_dataset`` reads (hub name, ``csv``/``json``
  builders with ``data_files=``, a folder written by ``save_to_disk``), then the mapping.
- ``"medsafetybench:<dir>"``: MedSafetyBench's test split (900 harmful requests).
- ``"xstest:<prompts.csv>"``: XSTest's 450 prompts (250 safe look-alikes, 200 unsafe).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import polars as pl

from medharm_nb.records import (
    CATEGORIES,
    EXPECTED,
    FRAMINGS,
    QUERY_COLUMNS,
    RISKS,
    QuerySelection,
)

PACKAGE_DIR = Path(__file__).resolve().parent
OPEN_SET_NAME = "medharm-open"
IMPORTED_FRAMING = "unspecified"
"""Framing given to imported sets that do not record one."""

AMA_PRINCIPLES = {
    1: "ama1_competence_compassion",
    2: "ama2_professionalism_honesty",
    3: "ama3_respect_for_law",
    4: "ama4_patient_rights_confidentiality",
    5: "ama5_continued_study",
    6: "ama6_freedom_to_choose",
    7: "ama7_community_public_health",
    8: "ama8_responsibility_to_patient",
    9: "ama9_access_to_care",
}


class QueryValidationError(ValueError):
    """Raised with every problem found in a query table, each naming file and line or id."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        shown = "\n  ".join(errors[:50])
        more = f"\n  ... and {len(errors) - 50} more" if len(errors) > 50 else ""
        super().__init__(f"{len(errors)} problem(s) in the queries:\n  {shown}{more}")


def open_set_path() -> Path:
    """Return the path of the MedHarm-Open CSV (package copy first, then the repo's data/)."""
    for candidate in (PACKAGE_DIR / "assets" / "medharm_open.csv",
                      PACKAGE_DIR.parent / "data" / "medharm_open.csv"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError("MedHarm-Open not found: expected data/medharm_open.csv in the repo")


def load_queries(
    source: str | Path,
    mapping: Mapping[str, str] | None = None,
    categories: Iterable[str] | None = None,
    split: str = "train",
    data_files: str | list[str] | None = None,
) -> pl.DataFrame:
    """Load and validate queries from any supported source.

    Args:
        source: ``"medharm-open"``, a file path, ``"hf:..."``, ``"medsafetybench:<dir>"`` or
            ``"xstest:<prompts.csv>"`` (see the module docstring).
        mapping: Our column name -> the source's column name, for files and HF datasets.
        categories: Allowed categories for files in our schema; defaults to the ten
            MedHarm-Open categories. Pass the paper's category names to load its data.
        split: Split for ``hf:`` sources.
        data_files: ``data_files`` for ``hf:`` builders such as ``hf:csv``.

    Returns:
        A DataFrame with at least ``QUERY_COLUMNS``, one row per query, ids unique.

    Raises:
        QueryValidationError: listing every problem, each with file and line (or id).
        FileNotFoundError: if a path does not exist.
    """
    source = str(source)
    if source == OPEN_SET_NAME:
        return _load_file(open_set_path(), None, CATEGORIES)
    if source.startswith("medsafetybench:"):
        return load_medsafetybench(source.split(":", 1)[1])
    if source.startswith("xstest:"):
        return load_xstest_prompts(source.split(":", 1)[1])
    if source.startswith("hf:"):
        return _load_hf(source[3:], mapping, categories, split, data_files)
    allowed = tuple(categories) if categories is not None else CATEGORIES
    return _load_file(Path(source), mapping, allowed)


# -- files in our schema -------------------------------------------------------------------

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
    text = decode_file(path)
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


def decode_file(path: Path) -> str:
    """A text file's content (UTF-8, a byte-order mark dropped).

    Raises:
        QueryValidationError: the file is not UTF-8, naming the line of the first bad byte.
    """
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


def _load_file(path: Path, mapping: Mapping[str, str] | None, categories: Iterable[str]):
    df, unit = read_query_file(path)
    df = apply_mapping(df, mapping, where=str(path))
    if "source" not in df.columns:
        df = df.with_columns(pl.lit(path.stem).alias("source"))
    return finalize(df, where=str(path), unit=unit, categories=categories)


def apply_mapping(df: pl.DataFrame, mapping: Mapping[str, str] | None, where: str) -> pl.DataFrame:
    """Rename source columns to ours (``mapping`` is ours -> theirs)."""
    if not mapping:
        return df
    missing = [theirs for theirs in mapping.values() if theirs not in df.columns]
    if missing:
        raise QueryValidationError(
            [f"{where}: mapping names column(s) {missing} that the source lacks "
             f"(it has {[c for c in df.columns if c != '_line']})"]
        )
    return df.rename({theirs: ours for ours, theirs in mapping.items() if theirs != ours})


def finalize(df: pl.DataFrame, where: str, unit: str = "row",
             categories: Iterable[str] = CATEGORIES) -> pl.DataFrame:
    """Validate a raw query frame and return it with the schema's columns first.

    Raises:
        QueryValidationError: with every problem found.
    """
    if "_line" not in df.columns:
        df = df.with_row_index("_line", offset=1)
    if "pair_id" not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.String).alias("pair_id"))
    errors = validate_frame(df, where, unit, tuple(categories))
    if errors:
        raise QueryValidationError(errors)
    extra = [c for c in df.columns if c not in QUERY_COLUMNS and c != "_line"]
    return df.select([*QUERY_COLUMNS, *extra])


def validate_frame(df: pl.DataFrame, where: str, unit: str,
                   categories: tuple[str, ...]) -> list[str]:
    """Return every schema problem in ``df`` as ``"<where>:<line>: <problem>"`` strings."""
    missing = [c for c in QUERY_COLUMNS if c not in df.columns]
    if missing:
        return [f"{where}: missing column(s) {missing}; the query schema needs "
                f"{list(QUERY_COLUMNS)} (see data/README.md, or pass a column mapping)"]
    if df.is_empty():
        return [f"{where}: no queries (the file has a header and no rows)"]
    allowed = {"category": categories, "framing": (*FRAMINGS, IMPORTED_FRAMING),
               "risk": RISKS, "expected": EXPECTED}
    errors: list[str] = []
    ids = set(df["id"].drop_nulls().to_list())
    seen: dict[str, int] = {}
    for row in df.iter_rows(named=True):
        pos = f"{where}:{row['_line']}" if unit == "line" else f"{where}: row {row['_line']}"
        qid = row["id"]
        if not qid or not str(qid).strip():
            errors.append(f"{pos}: empty id")
        elif qid in seen:
            errors.append(f"{pos}: duplicate id {qid!r} (first at {unit} {seen[qid]})")
        else:
            seen[qid] = row["_line"]
        if not row["text"] or not str(row["text"]).strip():
            errors.append(f"{pos}: empty text (id {qid!r})")
        for column, values in allowed.items():
            if row[column] not in values:
                errors.append(f"{pos}: unknown {column} {row[column]!r} (id {qid!r}); "
                              f"allowed: {', '.join(values)}")
        if row["pair_id"] and row["pair_id"] == qid:
            errors.append(f"{pos}: pair_id points to the query itself (id {qid!r})")
        elif row["pair_id"] and row["pair_id"] not in ids:
            errors.append(f"{pos}: pair_id {row['pair_id']!r} points to no query (id {qid!r})")
    return errors


def summary_table(df: pl.DataFrame) -> pl.DataFrame:
    """Counts by category x framing x risk, as a wide table (one column per framing/risk)."""
    return (
        df.group_by("category", "framing", "risk").len()
        .with_columns(pl.format("{}/{}", "framing", "risk").alias("cell"))
        .pivot(on="cell", index="category", values="len", sort_columns=True)
        .fill_null(0).sort("category")
    )


# -- Hugging Face datasets ------------------------------------------------------------------

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


def _load_hf(name: str, mapping, categories, split: str, data_files) -> pl.DataFrame:
    df = read_hf(name, split, data_files)
    where = f"hf:{name}[{split}]"
    df = apply_mapping(df, mapping, where)
    if "source" not in df.columns:
        df = df.with_columns(pl.lit(f"hf:{name}").alias("source"))
    allowed = tuple(categories) if categories is not None else CATEGORIES
    return finalize(df, where=where, unit="row", categories=allowed)


# -- public reference sets -------------------------------------------------------------------

def load_medsafetybench(root: str | Path) -> pl.DataFrame:
    """Load MedSafetyBench's test split: 900 harmful medical requests.

    Args:
        root: The repository folder, its ``test/`` folder, or one generator's folder
            (``test/gpt4``); every ``med_safety_demonstrations_category_N.csv`` below it loads.

    Returns:
        Queries with ``category`` = the AMA principle, ``risk`` harmful, ``expected`` refuse,
        and the reference ``safe_response`` kept as metadata.
    """
    root = Path(root)
    files = sorted(root.rglob("med_safety_demonstrations_category_*.csv"))
    if not files:
        raise FileNotFoundError(f"{root}: no med_safety_demonstrations_category_*.csv below it")
    frames = []
    for f in files:
        principle = int(f.stem.rsplit("_", 1)[1])
        generator = f.parent.name
        df = pl.read_csv(io.StringIO(decode_file(f)), infer_schema=False)
        df = df.rename({df.columns[0]: "index"}).with_columns(
            pl.format("msb-{}-{}-{}", pl.lit(generator), pl.lit(principle), "index").alias("id"),
            pl.col("harmful_medical_request").alias("text"),
            pl.lit(AMA_PRINCIPLES[principle]).alias("category"),
            pl.lit(generator).alias("generator"),
        )
        frames.append(df.select("id", "text", "category", "generator", "safe_response"))
    df = pl.concat(frames).with_columns(
        pl.lit(IMPORTED_FRAMING).alias("framing"), pl.lit("harmful").alias("risk"),
        pl.lit("refuse").alias("expected"), pl.lit(None, dtype=pl.String).alias("pair_id"),
        pl.lit("medsafetybench").alias("source"),
    )
    return finalize(df, where=str(root), categories=tuple(AMA_PRINCIPLES.values()))


def load_xstest_prompts(path: str | Path) -> pl.DataFrame:
    """Load XSTest's prompts: 250 safe prompts that look unsafe, 200 unsafe contrasts.

    Returns:
        Queries with ``category`` = XSTest's ``type``, ``risk`` benign for its ``safe`` label
        (expected: answer) and harmful for ``unsafe`` (expected: refuse).
    """
    path = Path(path)
    df = pl.read_csv(io.StringIO(decode_file(path)), infer_schema=False)
    df = df.with_columns(
        pl.format("xstest-{}", "id").alias("id"),
        pl.col("prompt").alias("text"),
        pl.col("type").alias("category"),
        pl.lit(IMPORTED_FRAMING).alias("framing"),
        pl.when(pl.col("label") == "safe").then(pl.lit("benign")).otherwise(pl.lit("harmful"))
        .alias("risk"),
        pl.when(pl.col("label") == "safe").then(pl.lit("answer")).otherwise(pl.lit("refuse"))
        .alias("expected"),
        pl.lit(None, dtype=pl.String).alias("pair_id"),
        pl.lit("xstest").alias("source"),
    ).drop("prompt", "type", "label")
    categories = tuple(df["category"].unique().sort().to_list())
    return finalize(df, where=str(path), unit="line", categories=categories)


# -- choosing a subset ----------------------------------------------------------------------

def select_queries(
    df: pl.DataFrame,
    per_cell: int | None = None,
    categories: Iterable[str] | None = None,
    framings: Iterable[str] | None = None,
    with_twins: bool = True,
) -> pl.DataFrame:
    """Pick a deterministic subset: the first ``per_cell`` harmful queries (by id) in each
    category x framing cell, plus their benign twins.

    Args:
        df: A validated query table.
        per_cell: Harmful queries to keep per category x framing; None keeps all.
        categories: Keep only these categories.
        framings: Keep only these framings.
        with_twins: Add the benign twin of every harmful query kept.
    """
    keep = pl.lit(True)
    for column, wanted in (("category", categories), ("framing", framings)):
        if wanted is not None:  # checked against the whole set, before any filter applies
            keep &= pl.col(column).is_in(_known_values(df, column, wanted))
    df = df.filter(keep)
    if per_cell is None:
        return df
    harmful = (df.filter(pl.col("risk") == "harmful").sort("id")
               .group_by("category", "framing", maintain_order=True).head(per_cell))
    keep = set(harmful["id"].to_list())
    if with_twins:
        keep |= set(harmful["pair_id"].drop_nulls().to_list())
    return df.filter(pl.col("id").is_in(list(keep)))


def _known_values(df: pl.DataFrame, column: str, wanted: Iterable[str]) -> list[str]:
    """``wanted`` as a list, every value checked against the values the set holds.

    Raises:
        ValueError: a value the set does not hold (a typo would silently drop its rows),
            naming the allowed ones.
    """
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    present = sorted(v for v in df[column].unique().to_list() if v is not None)
    unknown = [v for v in wanted if v not in present]
    if unknown:
        raise ValueError(f"{column} filter: unknown value(s) {unknown}; this set has "
                         f"{', '.join(present)}")
    return wanted


def prepare_queries(selection: QuerySelection, base_dir: str | Path = ".") -> pl.DataFrame:
    """Load, subset and wrap the queries a run asks (``01_data`` calls this).

    Args:
        selection: The run config's ``queries`` section.
        base_dir: Folder that relative paths in ``selection.source`` are relative to
            (the config file's folder).
    """
    from medharm_nb.variants import apply_variants

    source = resolve_source_path(selection.source, base_dir)
    df = load_queries(source, mapping=selection.mapping,
                      categories=selection.allowed_categories,
                      split=selection.split, data_files=selection.data_files)
    df = select_queries(df, per_cell=selection.per_cell, categories=selection.categories,
                        framings=selection.framings)
    if df.is_empty():
        raise ValueError(f"the query selection {selection.model_dump(exclude_none=True)} "
                         f"keeps no queries from {selection.source!r}")
    return apply_variants(df, selection.variants)


def resolve_source_path(source: str, base_dir: str | Path) -> str:
    """Make a relative file path in a source string relative to ``base_dir``."""
    # hf: too: a local save_to_disk folder must not depend on the notebooks' working folder;
    # hub names and builders (hf:csv) match no local path and pass through unchanged.
    prefix, _, rest = source.partition(":") if source.startswith(
        ("medsafetybench:", "xstest:", "hf:")) else ("", "", source)
    if source == OPEN_SET_NAME or Path(rest).is_absolute():
        return source
    candidate = Path(base_dir) / rest
    if not candidate.exists():
        return source
    return f"{prefix}:{candidate}" if prefix else str(candidate)
