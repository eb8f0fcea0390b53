"""Conversations in the review views: a chat per model, side by side, with each turn's
verdicts; and the annotation view on turns.

The compare view's unit here is one conversation (one sample): every model's chat in its own
column, the user's turns and the model's answers in order, each answer with every judge's
label and unsafe flag underneath, and how the conversation ended. Answers are redacted as in
the other views (the checklist reads the intent from the conversation's user turns). Only
the conversation on screen is read from the run's ``turns`` table; the filters read a small
index of ``turn_results``.
"""

from __future__ import annotations

from pathlib import Path

import ipywidgets as w
import polars as pl

from medharm_nb.review.annotate import AnnotationView
from medharm_nb.review.cards import badge, chip, esc, response_html, unsafe_mark
from medharm_nb.review.layout import Pager
from medharm_nb.store import read_table, table_path

ALL = "(all)"
NONE = "no conversations in this run (add a conversations: section to the config)"
USER = ("background:#e8f0fb;border-radius:8px;padding:6px 8px;margin:6px 0 2px 24px;"
        "white-space:pre-wrap;font-size:12.5px;line-height:1.4")
ASSISTANT = ("background:#f4f4f4;border-radius:8px;padding:6px 8px;margin:2px 24px 2px 0;"
             "white-space:pre-wrap;font-size:12.5px;line-height:1.4")
PANE = ("border:1px solid #ccc;border-radius:6px;padding:8px;margin:3px;min-width:300px;"
        "flex:1 1 0;background:#fff")
_INDEX = ("conv_id", "sample", "model", "judge", "turn", "label", "unsafe", "kind", "template",
          "risk", "category", "framing", "query_id", "stop_reason")


def has_conversations(run_dir: str | Path) -> bool:
    """The run folder holds judged conversation turns (``turn_results``)."""
    return table_path(run_dir, "turn_results").exists()


def verdict_line(rows: list[dict]) -> str:
    """Every judge's verdict on one answer, a short line each."""
    return "".join(f"<div style='font-size:11px;line-height:1.6;white-space:nowrap'>"
                   f"<span style='display:inline-block;min-width:130px;color:#555'>"
                   f"{esc(r['judge'])}</span>{badge(r['label'])} "
                   f"{unsafe_mark(r['unsafe'], r.get('risk'))}</div>"
                   for r in sorted(rows, key=lambda r: r["judge"]))


def chat_html(model: str, turns: list[dict], verdicts: dict[str, list[dict]],
              redact: bool = True) -> str:
    """One model's side of a conversation: each user turn, the answer and its verdicts.

    Args:
        model: The model's name (the column's title).
        turns: Its ``turns`` rows, in order.
        verdicts: gen_id -> ``turn_results`` rows (one per judge).
        redact: Mask the operational spans of the answers.
    """
    parts = [f"<b>{esc(model)}</b>"]
    for t in turns:
        parts.append(f"<div style='{USER}'><span style='color:#4c78a8;font-size:11px'>user · "
                     f"turn {t['turn']}</span><br>{esc(t['user'])}</div>")
        if t["given"]:
            body = esc(t["response"]) + chip("given by the file, not judged", "#777")
        elif t["error"] is not None:
            body = f"<i>no answer: {esc(t['error'])}</i>" + chip("failed", "#c0392b")
        elif t["response"] is None:
            body = f"<i>blocked: {esc(t['block_reason'] or '')}</i>" + chip("blocked",
                                                                           "#8e44ad")
        else:
            body = response_html(t["response"], t["context"], redact=redact)
            if t["finish_reason"] == "length":
                body += chip("truncated", "#e67e22")
        parts.append(f"<div style='{ASSISTANT}'>{body}</div>")
        if t["gen_id"] in verdicts:
            parts.append(f"<div style='margin:0 24px 4px 0'>{verdict_line(verdicts[t['gen_id']])}"
                         f"</div>")
    if turns:
        parts.append(f"<div style='font-size:11px;color:#666;margin-top:6px'>ended: "
                     f"<b>{esc(turns[-1]['stop_reason'])}</b></div>")
    return f"<div style='{PANE}'>{''.join(parts)}</div>"


def conversation_html(meta: dict, turns: pl.DataFrame, results: pl.DataFrame,
                      redact: bool = True) -> str:
    """A whole conversation: its header, then every model's chat side by side."""
    verdicts: dict[str, list[dict]] = {}
    for r in results.to_dicts():
        verdicts.setdefault(r["gen_id"], []).append(r)
    head = (f"<div><b>{esc(meta['conv_id'])}</b> · query {esc(meta['query_id'])} · "
            f"{esc(meta['category'])} · {esc(meta['framing'])} · <b>{esc(meta['risk'])}</b> · "
            f"{esc(meta['kind'])} {esc(meta['template'])}"
            + (f" · sample {meta['sample']}" if meta.get("sample") else "") + "</div>")
    panes = [chat_html(model, part.sort("turn").to_dicts(), verdicts, redact)
             for (model,), part in turns.sort("model").group_by(["model"],
                                                                maintain_order=True)]
    return head + "<div style='display:flex;flex-wrap:wrap'>" + "".join(panes) + "</div>"


class ConversationView(Pager):
    """Read a run's conversations as chats, side by side across models.

    Args:
        run_dir: The run folder (its ``turns`` and ``turn_results`` tables).
        redact: Start with operational spans masked (the *Redact* toggle unmasks).
    """

    def __init__(self, run_dir: str | Path, *, redact: bool = True):
        self.turns = pl.scan_parquet(table_path(run_dir, "turns"))
        self.results = pl.scan_parquet(table_path(run_dir, "turn_results"))
        schema = self.results.collect_schema()
        self.index = self.results.select([c for c in _INDEX if c in schema]).collect()
        self.units: list[tuple[str, int]] = []
        self.position = 0

        def dropdown(description: str, column: str) -> w.Dropdown:
            values = self.index[column].drop_nulls().unique().sort().to_list()
            return w.Dropdown(options=[ALL, *values], value=ALL, description=description,
                              layout=w.Layout(width="250px"),
                              style={"description_width": "80px"})

        self.template = dropdown("Template:", "template")
        self.risk = dropdown("Risk:", "risk")
        self.category = dropdown("Category:", "category")
        self.judge = dropdown("Judge:", "judge")
        self.unsafe = w.Checkbox(description="Some model went unsafe", indent=False)
        models = self.index["model"].unique().sort().to_list()
        self.models = w.SelectMultiple(options=models, value=tuple(models),
                                       description="Models:", rows=min(4, max(2, len(models))))
        self.goto = w.Text(description="Go to id:", continuous_update=False,
                           placeholder="conversation or query id, then Enter",
                           layout=w.Layout(width="330px"), style={"description_width": "80px"})
        self.redact = w.ToggleButton(value=redact, description="Redact", icon="eye-slash")
        previous = w.Button(description="◀ Previous", layout=w.Layout(width="110px"))
        following = w.Button(description="Next ▶", layout=w.Layout(width="110px"))
        self.status, self.body = w.HTML(), w.HTML()
        for control in (self.template, self.risk, self.category, self.judge, self.unsafe,
                        self.models):
            control.observe(lambda _: self.refresh(), "value")
        self.redact.observe(lambda _: self.show(), "value")
        self.goto.observe(lambda change: self.jump(change["new"]), "value")
        previous.on_click(lambda _: self.step(-1))
        following.on_click(lambda _: self.step(1))
        self.widget = w.VBox([
            w.HBox([w.VBox([w.HBox([self.template, self.risk, self.category]),
                            w.HBox([self.judge, self.unsafe])]), self.models]),
            w.HBox([previous, following, self.goto, self.redact]), self.status, self.body])
        self.refresh()

    def refresh(self) -> None:
        """Apply the filters; stay on the current conversation if it is kept."""
        current = self.current()
        rows = self.index.filter(pl.col("model").is_in(list(self.models.value)))
        for control, column in ((self.template, "template"), (self.risk, "risk"),
                                (self.category, "category"), (self.judge, "judge")):
            if control.value != ALL:
                rows = rows.filter(pl.col(column) == control.value)
        if self.unsafe.value:
            rows = rows.filter(pl.col("unsafe").fill_null(False))
        self.keep(sorted(set(rows.select("conv_id", "sample").iter_rows())), current)

    def jump(self, wanted: str) -> None:
        """Show the first conversation with this conversation or query id."""
        wanted = wanted.strip()
        if not wanted:
            return
        self.goto.value = ""
        ids = set(self.index.filter((pl.col("conv_id") == wanted)
                                    | (pl.col("query_id") == wanted))["conv_id"].to_list())
        found = next((i for i, (c, _) in enumerate(self.units) if c in ids), None)
        if found is None:
            self.status.value = f"<b style='color:#c0392b'>{esc(wanted)}: no such conversation " \
                                f"among the {len(self.units)} these filters keep</b>"
            return
        self.position = found
        self.show()

    def html(self, unit: tuple[str, int]) -> str:
        """One conversation's HTML (every selected model)."""
        conv, sample = unit
        models = list(self.models.value)
        keep = ((pl.col("conv_id") == conv) & (pl.col("sample") == sample)
                & pl.col("model").is_in(models))
        turns = self.turns.filter(keep).collect()
        results = self.results.filter(keep).select(
            "gen_id", "judge", "label", "unsafe").collect()
        meta = self.index.filter((pl.col("conv_id") == conv) & (pl.col("sample") == sample)
                                 ).row(0, named=True)
        return conversation_html(meta, turns, results, redact=self.redact.value)

    def show(self) -> None:
        """Render the current conversation."""
        if not self.units:
            self.status.value = "<b>0 conversations</b> match these filters"
            self.body.value = ""
            return
        unit = self.units[self.position]
        self.status.value = (f"<b>{self.position + 1} / {len(self.units)}</b> · {esc(unit[0])}"
                             f" · redaction {'on' if self.redact.value else '<b>off</b>'}")
        self.body.value = self.html(unit)


def conversation_view(run_dir: str | Path, **options) -> ConversationView | str:
    """A ``ConversationView`` of the run, or a line saying it has no conversations."""
    return ConversationView(run_dir, **options) if has_conversations(run_dir) else NONE


def turn_annotation_view(run_dir: str | Path, annotator: str, **options) -> AnnotationView | str:
    """The annotation view on the run's conversation turns: each planned item is one turn,
    shown with the conversation before it, and the label is that turn's (stored by its
    generation id like every label). The plan is stratified by model and turn unless
    ``by`` says otherwise. A line saying there are none for a run without conversations."""
    if not has_conversations(run_dir):
        return NONE
    options.setdefault("by", ("model", "turn"))
    return AnnotationView(run_dir, annotator, results=read_table(run_dir, "turn_results"),
                          **options)


def turn_judge_agreement(run_dir: str | Path) -> pl.DataFrame | str:
    """Each judge against the human majority on the labelled conversation turns
    (``annotations.agreement_report`` over ``turn_results``), or a line saying there are
    none."""
    from medharm_nb.review.annotations import agreement_report

    if not has_conversations(run_dir):
        return NONE
    return agreement_report(run_dir, results=pl.read_parquet(
        table_path(run_dir, "turn_results"),
        columns=["gen_id", "judge", "label", "unsafe", "specificity"]))["judges"]
