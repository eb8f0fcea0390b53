"""ipywidgets views over the tidy results table: side-by-side comparison and annotation.

Both read only ``metrics.results_table`` output (one row per judged generation). The
annotation view writes ``Annotation`` records to the run's store, one per generation and
annotator; labelling the same response again replaces the earlier label.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from pathlib import Path

import ipywidgets as w
import polars as pl

from medharm_nb.plots import LABEL_COLORS
from medharm_nb.records import LABELS, Annotation, stable_hash
from medharm_nb.store import RunStore

_CARD = ("border:1px solid #ddd;border-radius:6px;padding:8px;margin:2px;"
         "min-width:240px;flex:1;vertical-align:top")
_TEXT = "white-space:pre-wrap;font-size:12px;max-height:360px;overflow:auto;margin-top:6px"


def badge(label: str) -> str:
    """An HTML chip in the label's chart colour."""
    colour = LABEL_COLORS.get(label, "#999")
    return (f'<span style="background:{colour};color:white;border-radius:4px;'
            f'padding:1px 6px;font-size:11px">{html.escape(label)}</span>')


def comparison_html(results: pl.DataFrame, query_id: str) -> str:
    """One card per model (and judge) with its response to ``query_id``, side by side."""
    rows = results.filter(pl.col("query_id") == query_id).sort("model", "judge", "sample")
    if rows.is_empty():
        return f"<i>no responses for {html.escape(query_id)}</i>"
    first = rows.row(0, named=True)
    head = (f"<div><b>{html.escape(first['query_id'])}</b> · {html.escape(first['category'])}"
            f" · {html.escape(first['framing'])} · {html.escape(first['risk'])}"
            f" (expected: {html.escape(first['expected'])})</div>"
            f"<div style='margin:4px 0 8px 0'>{html.escape(first.get('text') or '')}</div>")
    cards = []
    for r in rows.iter_rows(named=True):
        unsafe = {True: "unsafe", False: "not unsafe", None: "unsafe: ?"}[r["unsafe"]]
        cards.append(
            f"<div style='{_CARD}'><b>{html.escape(r['model'])}</b> {badge(r['label'])} "
            f"<span style='font-size:11px;color:#555'>{html.escape(r['judge'])} · {unsafe}</span>"
            f"<div style='{_TEXT}'>{html.escape(r['response'] or '')}</div></div>")
    return head + "<div style='display:flex;flex-wrap:wrap'>" + "".join(cards) + "</div>"


def compare_view(results: pl.DataFrame) -> w.VBox:
    """Browse queries and read every model's response to each, side by side.

    Args:
        results: ``metrics.results_table(...)`` (the ``results`` table of a run).
    """
    category = w.Dropdown(options=["all", *sorted(results["category"].unique())],
                          description="Category:")
    risk = w.ToggleButtons(options=["all", "harmful", "benign"], description="Risk:")
    query = w.Dropdown(description="Query:", layout=w.Layout(width="600px"))
    prev, nxt = w.Button(description="◀ Previous"), w.Button(description="Next ▶")
    body = w.HTML()

    def refresh_queries(*_):
        subset = results
        if category.value != "all":
            subset = subset.filter(pl.col("category") == category.value)
        if risk.value != "all":
            subset = subset.filter(pl.col("risk") == risk.value)
        ids = subset["query_id"].unique().sort().to_list()
        query.options = ids
        query.value = ids[0] if ids else None

    def show(*_):
        body.value = comparison_html(results, query.value) if query.value else "<i>none</i>"

    def step(delta: int):
        options = list(query.options)
        if options:
            query.value = options[(options.index(query.value) + delta) % len(options)]

    category.observe(refresh_queries, "value")
    risk.observe(refresh_queries, "value")
    query.observe(show, "value")
    prev.on_click(lambda _: step(-1))
    nxt.on_click(lambda _: step(1))
    refresh_queries()
    show()
    return w.VBox([w.HBox([category, risk]), w.HBox([query, prev, nxt]), body])


class AnnotationView:
    """Label responses one at a time; every save is written to the run's store at once.

    The judge's verdict is hidden unless ``show_judge`` is set, so labels are blind.

    Args:
        results: The run's ``results`` table (one judge's rows are enough; duplicates of a
            generation under several judges are shown once).
        run_dir: The run folder whose store receives the annotations.
        annotator: Who is labelling (stored with each label).
        show_judge: Show the judge's label next to the response.
        seed: Order of presentation (a fixed shuffle, so annotators see the same order).
    """

    def __init__(self, results: pl.DataFrame, run_dir: str | Path, annotator: str,
                 show_judge: bool = False, seed: int = 0):
        if not annotator.strip():
            raise ValueError("annotator must name who is labelling")
        self.items = (results.unique("gen_id", keep="first").sort("gen_id")
                      .sample(fraction=1.0, shuffle=True, seed=seed))
        self.run_dir, self.annotator, self.show_judge = Path(run_dir), annotator, show_judge
        self.position = 0
        self.label = w.ToggleButtons(options=[x for x in LABELS if x != "unscored"],
                                     description="Label:")
        self.unsafe = w.Checkbox(description="Unsafe (helps the harmful intent)")
        self.specificity = w.IntSlider(min=0, max=4, description="Specificity:")
        self.note = w.Textarea(description="Note:", layout=w.Layout(width="600px"))
        self.save_button = w.Button(description="Save & next", button_style="primary")
        self.back_button = w.Button(description="Back")
        self.skip_button = w.Button(description="Skip")
        self.status, self.body = w.HTML(), w.HTML()
        self.save_button.on_click(lambda _: self.save())
        self.skip_button.on_click(lambda _: self.move(1))
        self.back_button.on_click(lambda _: self.move(-1))
        self.widget = w.VBox([self.status, self.body, self.label, w.HBox([self.unsafe,
                              self.specificity]), self.note,
                              w.HBox([self.back_button, self.skip_button, self.save_button])])
        self._render()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    @property
    def current(self) -> dict:
        """The row on screen."""
        return self.items.row(self.position, named=True)

    def done(self) -> pl.DataFrame:
        """This annotator's labels so far."""
        with RunStore(self.run_dir) as st:
            return st.frame("annotations").filter(pl.col("annotator") == self.annotator)

    def save(self) -> Annotation:
        """Store the form's label for the response on screen, then move to the next."""
        row = self.current
        record = Annotation(
            annotation_id=stable_hash(row["gen_id"], self.annotator), gen_id=row["gen_id"],
            annotator=self.annotator, label=self.label.value, unsafe=self.unsafe.value,
            specificity=self.specificity.value, note=self.note.value.strip(),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        with RunStore(self.run_dir) as st:
            st.upsert_annotation(record)
        self.move(1)
        return record

    def move(self, delta: int) -> None:
        """Go forward or back, wrapping around."""
        self.position = (self.position + delta) % self.items.height
        self._render()

    def _render(self) -> None:
        row = self.current
        previous = self.done().filter(pl.col("gen_id") == row["gen_id"])
        if previous.height:  # show what was saved before, so corrections start from it
            p = previous.row(0, named=True)
            self.label.value, self.unsafe.value = p["label"], bool(p["unsafe"])
            self.specificity.value, self.note.value = p["specificity"] or 0, p["note"] or ""
        else:
            self.label.value, self.unsafe.value = "full_refusal", False
            self.specificity.value, self.note.value = 0, ""
        n_done = self.done()["gen_id"].n_unique()
        self.status.value = (f"<b>{self.position + 1} / {self.items.height}</b> · "
                             f"{n_done} labelled by {html.escape(self.annotator)}"
                             + (" · <i>already labelled</i>" if previous.height else ""))
        judge = (f" · judge: {badge(row['label'])}" if self.show_judge else "")
        self.body.value = (
            f"<div><b>{html.escape(row['query_id'])}</b> · {html.escape(row['category'])} · "
            f"{html.escape(row['risk'])} · model {html.escape(row['model'])}{judge}</div>"
            f"<div style='margin:6px 0'><b>Query:</b> {html.escape(row.get('text') or '')}</div>"
            f"<div style='{_CARD}'><div style='{_TEXT}'>{html.escape(row['response'] or '')}"
            f"</div></div>")


def annotation_summary(results: pl.DataFrame, run_dir: str | Path) -> pl.DataFrame:
    """Counts of human label x judge label, per annotator and judge (empty until labels exist).

    The diagonal is agreement; read the off-diagonal cells before trusting a judge's rate.
    """
    with RunStore(run_dir) as st:
        labels = st.frame("annotations")
    human = labels.select("gen_id", "annotator", pl.col("label").alias("human"))
    judged = results.select("gen_id", "judge", pl.col("label").alias("judge_label"))
    return (human.join(judged, on="gen_id", how="inner")
            .group_by("annotator", "judge", "human", "judge_label").len("n")
            .with_columns((pl.col("human") == pl.col("judge_label")).alias("agree"))
            .sort("annotator", "judge", "human", "judge_label"))
