"""The compare view: filter a study's responses and read them side by side.

Everything it decides is done by ``review.layout`` (filters, units, guard verdicts) over the
lazy ``ReviewSource``; this module only wires ipywidgets to it and renders one unit at a time
(the texts of a page of units are fetched in one scan and cached). Plain ipywidgets only, so it
runs in JupyterLab, classic Notebook and VS Code alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import ipywidgets as w
import polars as pl

from medharm_nb.review.cards import esc, unit_html
from medharm_nb.review.layout import (
    MODES,
    Filters,
    Pager,
    build_layout,
    disagreements,
    find_unit,
    guard_verdicts,
    matching_gens,
    units,
)
from medharm_nb.review.source import ReviewSource

ALL = "(all)"
"""The dropdown choice that filters nothing."""


def key_box(actions: Mapping[str, Callable[[], None]], description: str = "Keys:") -> w.Text:
    """A text box that turns typed keys into actions (ipywidgets has no key events).

    Click into it and type: each key runs its action and the box empties again. Works in every
    front end that shows ipywidgets (no extension needed).
    """
    hint = " · ".join(f"{k} {getattr(f, '__name__', '')}".strip() for k, f in actions.items())
    box = w.Text(description=description, placeholder=hint, continuous_update=True,
                 layout=w.Layout(width="340px"))

    def typed(change):
        value = change["new"]
        if not value:
            return
        box.value = ""
        for key in value:
            if key in actions:
                actions[key]()

    box.observe(typed, "value")
    return box


def _dropdown(description: str, values: list, width: str = "210px") -> w.Dropdown:
    return w.Dropdown(options=[ALL, *values], value=ALL, description=description,
                      layout=w.Layout(width=width), style={"description_width": "80px"})


class CompareView(Pager):
    """Filter responses and read them side by side, one unit (query, pair ...) at a time.

    Args:
        results: A run folder (its results table is scanned lazily), a Parquet path, or a
            ``metrics.results_table`` frame.
        mode: Initial side-by-side mode, one of ``layout.MODES``.
        guard_scores: Per-item guard scores for the ``guard`` mode: columns ``guard``,
            ``p_unsafe``, optional ``blocked``, and ``gen_id`` (a response's score) and/or
            ``query_id`` (a prompt's score); ``review.guard_scores`` makes one.
        guard_threshold: P(unsafe) at or above which a score blocks, where ``blocked`` is
            absent.
        fine_tunes: ``{fine-tune model: its base model}`` for the ``fine_tune`` mode.
        redact: Start with flagged spans masked (the default; the *Redact* toggle unmasks).
        page: Units whose texts are fetched together (one scan per page).
    """

    def __init__(self, results: str | Path | pl.DataFrame | pl.LazyFrame, *,
                 mode: str = "models", guard_scores: pl.DataFrame | None = None,
                 guard_threshold: float = 0.5, fine_tunes: Mapping[str, str] | None = None,
                 redact: bool = True, page: int = 20):
        self.source = ReviewSource(results)
        index = self.source.index
        self.fine_tunes = dict(fine_tunes or {})
        self.page = page
        self.verdicts = (guard_verdicts(guard_scores, index, guard_threshold)
                         if guard_scores is not None else None)
        self.guards = (sorted(self.verdicts["guard"].unique().to_list())
                       if self.verdicts is not None else [])
        self._disagreement = disagreements(index)
        self._layouts: dict[str, pl.DataFrame] = {}
        self.units: list[str] = []
        self.position = 0
        self.matched: set[str] = set()

        modes = [(label, key) for key, label in MODES.items() if self._available(key)]
        self.mode = w.Dropdown(options=modes, value=mode if self._available(mode) else "models",
                               description="Side by side:", style={"description_width": "90px"},
                               layout=w.Layout(width="380px"))
        models = self.source.values("model")
        self.models = w.SelectMultiple(options=models, value=tuple(models), description="Models:",
                                       rows=min(5, max(2, len(models))),
                                       layout=w.Layout(width="300px"))
        self.category = _dropdown("Category:", self.source.values("category"), "260px")
        self.framing = _dropdown("Framing:", self.source.values("framing"))
        self.tier = _dropdown("Tier:", self.source.values("tier"))
        self.variant = _dropdown("Variant:", self.source.values("variant"))
        self.risk = _dropdown("Risk:", self.source.values("risk"))
        self.judge = w.Dropdown(options=["(any)", *self.source.values("judge")], value="(any)",
                                description="Judge:", layout=w.Layout(width="210px"),
                                style={"description_width": "80px"})
        self.label = _dropdown("Label:", self.source.values("label"))
        self.unsafe = _dropdown("Unsafe:", ["yes", "no", "unknown"])
        self.specificity = w.IntRangeSlider(value=(0, 4), min=0, max=4, description="Specificity:",
                                            layout=w.Layout(width="260px"),
                                            style={"description_width": "80px"})
        self.disagree = w.Checkbox(description="Judges disagree", indent=False,
                                   layout=w.Layout(width="140px"))
        self.search = w.Text(description="Search:", placeholder="text in response or query, "
                             "then Enter", continuous_update=False,
                             layout=w.Layout(width="330px"), style={"description_width": "80px"})
        self.goto = w.Text(description="Go to id:", placeholder="query id, then Enter",
                           continuous_update=False, layout=w.Layout(width="260px"),
                           style={"description_width": "80px"})
        self.prev_button = w.Button(description="◀ Previous", layout=w.Layout(width="110px"))
        self.next_button = w.Button(description="Next ▶", layout=w.Layout(width="110px"))
        self.redact = w.ToggleButton(value=redact, description="Redact", icon="eye-slash",
                                     tooltip="Mask the sentences that hand over operational "
                                             "detail (on by default)",
                                     layout=w.Layout(width="100px"))

        def previous():
            self.step(-1)

        def next_():
            self.step(1)

        def toggle_redaction():
            self.redact.value = not self.redact.value

        next_.__name__, previous.__name__, toggle_redaction.__name__ = "next", "prev", "redact"
        self.keys = key_box({"n": next_, "j": next_, "p": previous, "k": previous,
                             "r": toggle_redaction})
        self.status, self.body = w.HTML(), w.HTML()

        for control in (self.mode, self.models, self.category, self.framing, self.tier,
                        self.variant,
                        self.risk, self.judge, self.label, self.unsafe, self.specificity,
                        self.disagree, self.search):
            control.observe(lambda _: self.refresh(), "value")
        self.goto.observe(lambda change: self.jump(change["new"]), "value")
        self.redact.observe(lambda _: self.show(), "value")
        self.prev_button.on_click(lambda _: self.step(-1))
        self.next_button.on_click(lambda _: self.step(1))
        filters = w.VBox([
            w.HBox([self.mode, self.category, self.framing, self.tier, self.variant]),
            w.HBox([self.risk, self.judge, self.label, self.unsafe]),
            w.HBox([self.specificity, self.disagree, self.search])])
        self.widget = w.VBox([
            w.HBox([filters, self.models]),
            w.HBox([self.prev_button, self.next_button, self.goto, self.keys, self.redact]),
            self.status, self.body])
        self.refresh()

    def _available(self, mode: str) -> bool:
        index = self.source.index
        return {"models": True, "variants": index["variant"].n_unique() > 1,
                "guard": bool(self.guards), "fine_tune": bool(self.fine_tunes),
                "twins": index["pair_id"].drop_nulls().len() > 0}[mode]

    def layout(self) -> pl.DataFrame:
        """The current mode's layout (built once per mode)."""
        mode = self.mode.value
        if mode not in self._layouts:
            self._layouts[mode] = build_layout(self.source.index, mode, self.fine_tunes,
                                             self.guards)
        return self._layouts[mode]

    def filters(self) -> Filters:
        """The filters as set in the widgets."""
        def value(control):
            return None if control.value == ALL else control.value

        models = tuple(self.models.value)
        return Filters(
            category=value(self.category), framing=value(self.framing), tier=value(self.tier),
            variant=value(self.variant), risk=value(self.risk), label=value(self.label),
            unsafe=value(self.unsafe), specificity=tuple(self.specificity.value),
            judge=None if self.judge.value == "(any)" else self.judge.value,
            disagree=self.disagree.value,
            models=None if len(models) == len(self.models.options) else models,
            text=self.search.value)

    def refresh(self) -> None:
        """Apply the filters: recompute the units, stay on the current one if it is kept."""
        current = self.current()
        filters = self.filters()
        hits = self.source.search(filters.text) if filters.text.strip() else None
        self.matched = matching_gens(self.source.index, filters, hits, self._disagreement)
        table = self.layout()
        if filters.models is not None:
            table = table.filter(pl.col("model").is_in(list(filters.models)))
        self._table = table
        self.keep(units(table, self.matched), current)

    def jump(self, wanted: str) -> None:
        """Show the unit holding a query id (or base id, gen id, unit name); the box empties
        again for the next id."""
        if not wanted.strip():
            return
        self.goto.value = ""
        found = find_unit(self._table, self.units, wanted)
        if found is None:
            self.status.value = (f"<b style='color:#c0392b'>{esc(wanted)} is not among the "
                                 f"{len(self.units)} units these filters keep</b>")
            return
        self.position = found
        self.show()

    def panes(self, unit: str) -> list[dict]:
        """The layout rows of one unit."""
        return self._table.filter(pl.col("unit") == unit).to_dicts()

    def show(self) -> None:
        """Render the current unit (and fetch the texts of its page if not cached)."""
        if not self.units:
            self.status.value = "<b>0 units</b> match these filters"
            self.body.value = "<i>nothing to show: no response matches these filters</i>"
            return
        unit = self.units[self.position]
        panes = self.panes(unit)
        gen_ids = [p["gen_id"] for p in panes]
        if not self.source.cached(gen_ids):  # one scan for this unit and the page around it
            window = self.units[max(0, self.position - self.page // 4):
                                self.position + self.page]
            page = self._table.filter(pl.col("unit").is_in(window))["gen_id"].to_list()
            self.source.texts(page)
        texts = self.source.texts(gen_ids)
        rows = self.source.index.filter(pl.col("gen_id").is_in(gen_ids)).to_dicts()
        verdicts: dict[str, list[dict]] = {}
        for r in rows:
            verdicts.setdefault(r["gen_id"], []).append(r)
        guard_rows = None
        if self.verdicts is not None and any(p["guard"] for p in panes):
            guard_rows = {(r["gen_id"], r["guard"]): r for r in self.verdicts.filter(
                pl.col("gen_id").is_in(gen_ids)).to_dicts()}
        n_matched = sum(g in self.matched for g in dict.fromkeys(gen_ids))
        self.status.value = (
            f"<b>{self.position + 1} / {len(self.units)}</b> · {esc(unit)} · "
            f"{len(panes)} panes, {n_matched} picked by the filters · redaction "
            f"{'on' if self.redact.value else '<b>off</b>'}")
        self.body.value = unit_html(panes, verdicts, texts, redact=self.redact.value,
                                    matched=self.matched, guard_rows=guard_rows)

