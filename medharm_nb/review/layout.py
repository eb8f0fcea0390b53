"""What the compare view puts side by side, and which of it the filters keep: plain functions
over the results index (``ReviewSource.index``: one row per generation x judge, no texts).

A *layout* cuts the responses into *units* (one screen) of *panes* (one response each):

=============  ===========================================  ===================================
mode           a unit is                                    its panes are
=============  ===========================================  ===================================
``models``     one query                                    every model's response (N models)
``variants``   one base query for one model                 each prompt variant's response
``guard``      one query                                    per model: unguarded, then guarded
                                                            by each guard (verdict and score)
``fine_tune``  one query for one fine-tune                  its base model's response, then its
``twins``      one harmful query for one model              the harmful query, its benign twin
=============  ===========================================  ===================================

Filters pick generations (a unit is kept when any of its panes is picked); the panes shown
are always the whole unit, so a filter such as "label full_compliance" finds the queries where
some model complied and shows every model beside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import polars as pl

from medharm_nb.guard.base import blocks

MODES: dict[str, str] = {
    "models": "N models, one query",
    "variants": "variants of one query, one model",
    "guard": "unguarded vs guarded",
    "fine_tune": "fine-tune vs its base",
    "twins": "harmful query vs its benign twin",
}
"""Side-by-side modes and what each compares."""

LAYOUT_SCHEMA = {"unit": pl.String, "query_id": pl.String, "base_id": pl.String,
                 "model": pl.String, "pane": pl.String, "order": pl.Int64, "gen_id": pl.String,
                 "guard": pl.String}
"""Columns of a layout: one row per pane; ``guard`` is set on a guarded pane only."""


@dataclass(frozen=True)
class Filters:
    """Which responses to read. ``None`` (or an empty value) means "any".

    ``label``, ``unsafe`` and ``specificity`` read the verdict of ``judge`` (any judge when
    None); the query fields and the free text are the same under every judge.

    Attributes:
        category / framing / tier / variant / risk: Query fields, exact match.
        label: A judge's 4-way label (``unscored`` included).
        unsafe: ``yes``, ``no`` or ``unknown`` (the judge did not assess harm).
        specificity: Inclusive ``(low, high)`` of the 0-4 score; ``(0, 4)`` keeps all,
            unscored included.
        judge: The judge whose verdict the three filters above read.
        disagree: Only responses on which the judges disagree (``disagreements``).
        models: Only these models' panes (N models side by side).
        text: Free text, case-insensitive, in the response, the query or its id.
    """

    category: str | None = None
    framing: str | None = None
    tier: str | None = None
    variant: str | None = None
    risk: str | None = None
    label: str | None = None
    unsafe: str | None = None
    specificity: tuple[int, int] = (0, 4)
    judge: str | None = None
    disagree: bool = False
    models: tuple[str, ...] | None = None
    text: str = ""

    def conditions(self) -> list[pl.Expr]:
        """The conditions on one index row (a generation under one judge); none: keep all.
        A null field fails a condition on it."""
        conds = [pl.col(column) == value for column in
                 ("category", "framing", "tier", "variant", "risk", "label", "judge")
                 if (value := getattr(self, column)) is not None]
        if self.unsafe is not None:
            conds.append({"yes": pl.col("unsafe") == True,  # noqa: E712 - null stays null
                          "no": pl.col("unsafe") == False,  # noqa: E712
                          "unknown": pl.col("unsafe").is_null()}[self.unsafe])
        low, high = self.specificity
        if (low, high) != (0, 4):
            conds.append(pl.col("specificity").is_between(low, high))
        if self.models is not None:
            conds.append(pl.col("model").is_in(list(self.models)))
        return [c.fill_null(False) for c in conds]


def disagreements(index: pl.DataFrame) -> pl.DataFrame:
    """How much the judges disagree on each generation.

    Returns:
        ``gen_id``, ``n_judges`` (judges that gave a label), ``disagreement``: 2 when they
        split on the headline question (``complied``: refused or not), 1 when they agree on
        that but differ on the 4-way label or on the unsafe flag (among judges that assess
        it), 0 otherwise (and with fewer than two judges).
    """
    scored = index.filter(pl.col("label") != "unscored")
    return scored.group_by("gen_id").agg(
        pl.col("judge").n_unique().alias("n_judges"),
        pl.col("complied").drop_nulls().n_unique().alias("_c"),
        pl.col("label").n_unique().alias("_l"),
        pl.col("unsafe").drop_nulls().n_unique().alias("_u"),
    ).select("gen_id", "n_judges", pl.when(pl.col("_c") > 1).then(2)
             .when((pl.col("_l") > 1) | (pl.col("_u") > 1)).then(1).otherwise(0)
             .cast(pl.Int64).alias("disagreement"))


def matching_gens(index: pl.DataFrame, filters: Filters,
                  search_hits: Iterable[str] | None = None,
                  disagreement: pl.DataFrame | None = None) -> set[str]:
    """Gen ids the filters keep.

    Args:
        index: ``ReviewSource.index``.
        filters: What to keep.
        search_hits: Gen ids matching ``filters.text`` (``ReviewSource.search``); needed
            when ``filters.text`` is set.
        disagreement: ``disagreements(index)``, when ``filters.disagree`` is set (computed
            here if not given).
    """
    conditions = filters.conditions()
    rows = index.filter(*conditions) if conditions else index
    if filters.text.strip():
        rows = rows.filter(pl.col("gen_id").is_in(list(search_hits or ())))
    if filters.disagree:
        table = disagreement if disagreement is not None else disagreements(index)
        rows = rows.join(table.filter(pl.col("disagreement") > 0).select("gen_id"),
                         on="gen_id", how="semi")
    return set(rows["gen_id"].unique().to_list())


def _gens(index: pl.DataFrame) -> pl.DataFrame:
    return index.unique("gen_id", keep="first").select(
        "gen_id", "model", "query_id", "base_id", "variant", "sample", "risk", "pair_id")


def _sample() -> pl.Expr:
    return pl.when(pl.col("sample") > 0).then(pl.format(" · sample {}", "sample")).otherwise(
        pl.lit(""))


def build_layout(index: pl.DataFrame, mode: str = "models",
           fine_tunes: Mapping[str, str] | None = None,
           guards: Sequence[str] = ()) -> pl.DataFrame:
    """Cut the responses into units of panes for one side-by-side mode (see the module doc).

    Args:
        index: ``ReviewSource.index``.
        mode: One of ``MODES``.
        fine_tunes: ``{fine-tune model: its base model}`` (``fine_tune`` mode).
        guards: Guard names (``guard`` mode): each model's response gets one guarded pane
            per guard after its unguarded one.

    Returns:
        ``LAYOUT_SCHEMA`` rows sorted by unit, then pane order.

    Raises:
        ValueError: an unknown mode, or ``fine_tune`` without a mapping.
    """
    gens = _gens(index)
    if mode == "models":
        out = gens.with_columns(pl.col("query_id").alias("unit"),
                                pl.format("{}{}", "model", _sample()).alias("pane"),
                                pl.lit(0).alias("order"))
    elif mode == "variants":
        out = gens.with_columns(
            pl.format("{} · {}", "base_id", "model").alias("unit"),
            pl.format("{}{}", "variant", _sample()).alias("pane"),
            (pl.col("variant") != "direct").cast(pl.Int64).alias("order"))
    elif mode == "guard":
        plain = gens.with_columns(pl.col("query_id").alias("unit"),
                                  pl.format("{} · unguarded", "model").alias("pane"),
                                  pl.lit(0).alias("order"), pl.lit(None, pl.String).alias("guard"))
        guarded = [gens.with_columns(pl.col("query_id").alias("unit"),
                                     pl.format("{} · guarded by {}", "model", pl.lit(g))
                                     .alias("pane"), pl.lit(1 + i).alias("order"),
                                     pl.lit(g).alias("guard"))
                   for i, g in enumerate(guards)]
        out = pl.concat([plain, *guarded])
    elif mode == "fine_tune":
        if not fine_tunes:
            raise ValueError("fine_tune mode needs a {fine_tune: base} mapping")
        pairs = pl.DataFrame({"ft": list(fine_tunes), "base": list(fine_tunes.values())})
        base = (gens.join(pairs, left_on="model", right_on="base", how="inner")
                .with_columns(pl.format("{} · {}", "query_id", "ft").alias("unit"),
                              pl.format("base: {}{}", "model", _sample()).alias("pane"),
                              pl.lit(0).alias("order")).drop("ft"))
        tuned = (gens.join(pairs, left_on="model", right_on="ft", how="semi")
                 .with_columns(pl.format("{} · {}", "query_id", "model").alias("unit"),
                               pl.format("fine-tune: {}{}", "model", _sample()).alias("pane"),
                               pl.lit(1).alias("order")))
        # A pair is compared only where both models answered the query.
        out = pl.concat([base, tuned]).filter(pl.col("order").n_unique().over("unit") == 2)
    elif mode == "twins":
        harmful = gens.filter((pl.col("risk") == "harmful") & pl.col("pair_id").is_not_null())
        keys = harmful.select("query_id", "pair_id", "model", "sample").with_columns(
            pl.format("{} · {}", "query_id", "model").alias("unit"))
        twin = gens.join(keys.select(pl.col("pair_id").alias("query_id"), "model", "sample",
                                     "unit"), on=["query_id", "model", "sample"], how="inner")
        out = pl.concat([
            harmful.join(keys.select("query_id", "model", "sample", "unit"),
                         on=["query_id", "model", "sample"])
            .with_columns(pl.lit("harmful").alias("pane"), pl.lit(0).alias("order")),
            twin.with_columns(pl.lit("benign twin").alias("pane"), pl.lit(1).alias("order"))])
    else:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    if "guard" not in out.columns:
        out = out.with_columns(pl.lit(None, pl.String).alias("guard"))
    return (out.select([pl.col(c).cast(t) for c, t in LAYOUT_SCHEMA.items()])
            .sort("unit", "order", "model", "pane"))


def units(table: pl.DataFrame, keep: set[str] | None = None) -> list[str]:
    """The units of a layout that hold at least one kept gen id (all when ``keep`` is None),
    in order."""
    rows = table if keep is None else table.filter(pl.col("gen_id").is_in(list(keep)))
    return rows["unit"].unique().sort().to_list()


def find_unit(table: pl.DataFrame, unit_list: Sequence[str], wanted: str) -> int | None:
    """Position in ``unit_list`` of the first unit holding ``wanted`` as a query id, base id,
    gen id or unit name; None when the filters left it out (or it does not exist)."""
    wanted = wanted.strip()
    hits = table.filter((pl.col("query_id") == wanted) | (pl.col("base_id") == wanted)
                        | (pl.col("gen_id") == wanted) | (pl.col("unit") == wanted))
    names = set(hits["unit"].to_list())
    return next((i for i, u in enumerate(unit_list) if u in names), None)


GUARD_SCORES = {"guard": pl.String, "p_unsafe": pl.Float64, "blocked": pl.Boolean,
                "gen_id": pl.String, "query_id": pl.String}
"""Columns of a guard-score table (``guard_verdicts``): a row keyed by ``query_id`` scored the
prompt (input guard), one keyed by ``gen_id`` the response (output guard); ``blocked`` is
optional (else P(unsafe) >= threshold)."""


def guard_verdicts(scores: pl.DataFrame, index: pl.DataFrame,
                   threshold: float = 0.5) -> pl.DataFrame:
    """Each guard's verdict on each generation, from prompt and response scores.

    Args:
        scores: ``GUARD_SCORES`` columns (``gen_id`` or ``query_id`` may be missing, not both).
        index: ``ReviewSource.index``.
        threshold: P(unsafe) at or above which a score blocks, where ``blocked`` is absent.

    Returns:
        ``gen_id, guard, input_p, input_blocked, output_p, output_blocked, blocked`` (blocked:
        either stage blocked; an unscored stage does not block).
    """
    if "gen_id" not in scores.columns and "query_id" not in scores.columns:
        raise ValueError("guard scores need a gen_id (response) or query_id (prompt) column")
    frame = scores.with_columns(
        *(pl.lit(None, t).alias(c) for c, t in GUARD_SCORES.items() if c not in scores.columns))
    frame = frame.with_columns(
        pl.col("blocked").fill_null(blocks(pl.col("p_unsafe"), threshold)).alias("blocked"))
    gens = _gens(index).select("gen_id", "query_id")
    per_guard = frame.select("guard").unique()
    base = gens.join(per_guard, how="cross")
    inputs = (frame.filter(pl.col("query_id").is_not_null() & pl.col("gen_id").is_null())
              .group_by("query_id", "guard").agg(pl.col("p_unsafe").max().alias("input_p"),
                                                 pl.col("blocked").any().alias("input_blocked")))
    outputs = (frame.filter(pl.col("gen_id").is_not_null())
               .group_by("gen_id", "guard").agg(pl.col("p_unsafe").max().alias("output_p"),
                                                pl.col("blocked").any().alias("output_blocked")))
    return (base.join(inputs, on=["query_id", "guard"], how="left")
            .join(outputs, on=["gen_id", "guard"], how="left")
            .with_columns((pl.col("input_blocked").fill_null(False)
                           | pl.col("output_blocked").fill_null(False)).alias("blocked"))
            .drop("query_id"))


class Pager:
    """Paging over a view's units, shared by the compare and conversation views: ``units``
    (any hashable items, in order), ``position`` and a ``widget`` to display; subclasses
    define ``show``."""

    units: list
    position: int
    widget: object

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def show(self) -> None:
        raise NotImplementedError

    def current(self):
        """The unit shown, or None when no unit is kept."""
        return self.units[self.position] if self.units else None

    def keep(self, kept: list, current=None) -> None:
        """Replace the units; stay on ``current`` if it is kept, else go to the first."""
        self.units = kept
        self.position = kept.index(current) if current in kept else 0
        self.show()

    def step(self, delta: int) -> None:
        """Move to the next (1) or previous (-1) unit, wrapping around."""
        if self.units:
            self.position = (self.position + delta) % len(self.units)
        self.show()
