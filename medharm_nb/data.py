"""Queries: load any supported source into one validated table in the query schema.

Sources (``load_queries(source)``):

- ``"medharm-open"``: our open set, the current version (v2: ``data/medharm_open_v2.csv``,
  2,200 queries with ``tier``); ``"medharm-open@v1"`` pins the first version (420 queries,
  ``data/medharm_open_v1.csv``), ``"medharm-open@v2"`` this one.
- a path to ``.csv``, ``.jsonl``/``.json`` or ``.parquet`` in the query schema; a ``mapping``
  renames the file's columns to ours (this is how the paper's restricted MedHarm data loads).
- ``"hf:<name or path>"``: anything ``datasets.load_dataset`` reads (hub name, ``csv``/``json``
  builders with ``data_files=``, a folder written by ``save_to_disk``), then the mapping.
- ``"medsafetybench:<dir>"``: MedSafetyBench's test split (900 harmful requests).
- ``"xstest:<prompts.csv>"``: XSTest's 450 prompts (250 safe look-alikes, 200 unsafe).

Files are read as strings with their line numbers by ``data_files``; this module maps,
validates and selects.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from pathlib import Path

import polars as pl

from medharm_nb.data_files import QueryValidationError, decode_text, read_hf, read_query_file
from medharm_nb.labels import (
    CATEGORIES,
    EXPECTED,
    FRAMINGS,
    OPTIONAL_QUERY_COLUMNS,
    QUERY_COLUMNS,
    RISKS,
    TIERS,
    UNTIERED,
)
from medharm_nb.settings import QuerySelection

PACKAGE_DIR = Path(__file__).resolve().parent
OPEN_SET_NAME = "medharm-open"
OPEN_SET_VERSIONS = {"v1": "medharm_open_v1.csv", "v2": "medharm_open_v2.csv"}
"""Every published version of MedHarm-Open, pinned by ``medharm-open@<version>``; ids are
stable across versions (a query in both has the same id and text)."""
OPEN_SET_CURRENT = "v2"
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


def open_set_version(source: str) -> str | None:
    """The MedHarm-Open version a source names (``medharm-open`` is the current one), or None
    for any other source.

    Raises:
        ValueError: ``medharm-open@<version>`` with a version that does not exist.
    """
    name, _, version = str(source).partition("@")
    if name != OPEN_SET_NAME:
        return None
    version = version or OPEN_SET_CURRENT
    if version not in OPEN_SET_VERSIONS:
        raise ValueError(f"{source!r}: no such MedHarm-Open version; there are "
                         f"{', '.join(f'{OPEN_SET_NAME}@{v}' for v in OPEN_SET_VERSIONS)}")
    return version


def open_set_path(version: str = OPEN_SET_CURRENT) -> Path:
    """Return the path of a MedHarm-Open version's CSV (package copy first, then data/)."""
    name = OPEN_SET_VERSIONS[version]
    for candidate in (PACKAGE_DIR / "assets" / name, PACKAGE_DIR.parent / "data" / name):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"MedHarm-Open {version} not found: expected data/{name} in the repo")


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
    version = open_set_version(source)
    if version is not None:
        return _load_file(open_set_path(version), None, CATEGORIES)
    if source.startswith("medsafetybench:"):
        return load_medsafetybench(source.split(":", 1)[1])
    if source.startswith("xstest:"):
        return load_xstest_prompts(source.split(":", 1)[1])
    if source.startswith("hf:"):
        return _load_hf(source[3:], mapping, categories, split, data_files)
    allowed = tuple(categories) if categories is not None else CATEGORIES
    return _load_file(Path(source), mapping, allowed)


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
    df = df.with_columns((pl.col("tier").fill_null(UNTIERED) if "tier" in df.columns
                          else pl.lit(UNTIERED)).alias("tier"))
    errors = validate_frame(df, where, unit, tuple(categories))
    if errors:
        raise QueryValidationError(errors)
    standard = (*QUERY_COLUMNS, *OPTIONAL_QUERY_COLUMNS)
    extra = [c for c in df.columns if c not in standard and c != "_line"]
    return df.select([*standard, *extra])


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
               "risk": RISKS, "expected": EXPECTED, "tier": (*TIERS, UNTIERED)}
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
            if column == "tier" and row.get("tier") is None:
                continue  # optional: no tier reads as unspecified
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


# -- Hugging Face datasets (data_files.read_hf) ------------------------------------------

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
        df = pl.read_csv(io.StringIO(decode_text(f)), infer_schema=False)
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
    df = pl.read_csv(io.StringIO(decode_text(path)), infer_schema=False)
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
    tiers: Iterable[str] | None = None,
    with_twins: bool = True,
) -> pl.DataFrame:
    """Pick a deterministic subset: ``per_cell`` harmful queries in each category x framing
    cell, plus their benign twins.

    Within a cell the harmful queries are taken across tiers in turn (the first of one tier,
    the first of the next, ...; by id within a tier), and the tier that goes first rotates
    from cell to cell, so even ``per_cell=1`` samples every tier about equally. A set without
    tiers is taken by id.

    Args:
        df: A validated query table.
        per_cell: Harmful queries to keep per category x framing; None keeps all.
        categories: Keep only these categories.
        framings: Keep only these framings.
        tiers: Keep only these tiers (``labels.TIERS``; twins carry their pair's tier).
        with_twins: Add the benign twin of every harmful query kept.

    Raises:
        ValueError: a filter names a value the set does not hold.
    """
    keep = pl.lit(True)
    for column, wanted in (("category", categories), ("framing", framings), ("tier", tiers)):
        if wanted is not None:  # checked against the whole set, before any filter applies
            keep &= pl.col(column).is_in(_known_values(df, column, wanted))
    df = df.filter(keep)
    if per_cell is None:
        return df
    order = [t for t in (*TIERS, UNTIERED) if t in set(df["tier"].to_list())]
    cells = (df.select("category", "framing").unique().sort("category", "framing")
             .with_row_index("cell"))
    harmful = (
        df.filter(pl.col("risk") == "harmful").sort("id").join(cells, on=["category", "framing"])
        .with_columns(
            pl.int_range(pl.len()).over("category", "framing", "tier").alias("_round"),
            ((pl.col("tier").replace_strict(order, list(range(len(order))), return_dtype=pl.Int64)
              - pl.col("cell")) % len(order)).alias("_turn"))
        .sort("_round", "_turn", "id")
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
                        framings=selection.framings, tiers=selection.tiers)
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
    if open_set_version(source) is not None or Path(rest).is_absolute():
        return source
    candidate = Path(base_dir) / rest
    if not candidate.exists():
        return source
    return f"{prefix}:{candidate}" if prefix else str(candidate)
