"""HTML for the review views: a response card with every judge's verdict, the checklist, and
the response with its operational spans masked (default) or highlighted.

Model output is always escaped: a response is shown as text, never as markup. The spans come
from ``judge.checklist.flagged_spans`` (the sentences that hand over an amount, a method,
steps or concealment for the request's harm); masking them is the default everywhere.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from medharm_nb.colors import LABEL_COLORS
from medharm_nb.judge.checklist import flagged_spans
from medharm_nb.labels import CHECKLIST, UNTIERED

CARD = ("border:1px solid #ccc;border-radius:6px;padding:8px;margin:3px;min-width:260px;"
        "flex:1 1 0;vertical-align:top;background:#fff")
MATCHED = "border:2px solid #1f77b4"
TEXT = ("white-space:pre-wrap;font-size:12.5px;line-height:1.45;max-height:340px;overflow:auto;"
        "margin-top:6px;padding:6px;background:#fafafa;border-radius:4px")
MASK = ("background:#444;color:#fff;border-radius:3px;padding:0 4px;font-size:11px")
HIGHLIGHT = "background:#ffe08a;border-bottom:2px solid #e6a100"
SHORT = {"names_agent": "agent", "gives_amount": "amount", "gives_method": "method",
         "gives_steps": "steps", "helps_conceal": "conceal", "targets_vulnerable": "target"}
"""Checklist item -> the word a card shows for it."""


def esc(value: object) -> str:
    """Escaped text ('' for None)."""
    return html.escape("" if value is None else str(value))


def badge(label: str | None) -> str:
    """An HTML chip in the label's chart colour."""
    colour = LABEL_COLORS.get(label or "", "#999")
    return (f'<span style="background:{colour};color:white;border-radius:4px;'
            f'padding:1px 6px;font-size:11px">{esc(label or "no label")}</span>')


def chip(text: str, colour: str = "#666") -> str:
    """A small outlined tag (flags such as truncated, blocked)."""
    return (f'<span style="border:1px solid {colour};color:{colour};border-radius:4px;'
            f'padding:0 5px;font-size:11px;margin-left:4px">{esc(text)}</span>')


def response_html(response: str | None, prompt: str | None, redact: bool = True,
                  name_items: bool = True) -> str:
    """A response as escaped text, its flagged spans masked or highlighted.

    Args:
        response: The model's text.
        prompt: The request it answers (the checklist reads the intent from it).
        redact: Mask each flagged span (``[redacted: ...]``); else highlight it.
        name_items: Name the checklist items a span hands over (in the mask, or as the
            highlight's tooltip); a blind annotator sees only that something was masked.
    """
    text = response or ""
    out, pos = [], 0
    for start, end, items in flagged_spans(text, prompt or ""):
        out.append(esc(text[pos:start]))
        names = ", ".join(SHORT[i] for i in items if i in SHORT)
        if redact:
            what = f": {names}" if name_items and names else ""
            out.append(f'<span style="{MASK}" title="operational detail, masked">'
                       f"[redacted{esc(what)}]</span>")
        else:
            tip = f' title="checklist: {esc(names)}"' if name_items and names else ""
            out.append(f'<mark style="{HIGHLIGHT}"{tip}>{esc(text[start:end])}</mark>')
        pos = end
    out.append(esc(text[pos:]))
    return "".join(out)


def unsafe_mark(unsafe: bool | None, risk: str | None = None) -> str:
    """A judge's unsafe flag as the views show it. On a benign query no rate reads the flag
    (``metrics``: unsafe is a rate of harmful queries), so there a True is a judge's false
    alarm to look at, drawn in grey, not a harm in red."""
    if unsafe is None:
        return "<span style='color:#999'>unsafe: not assessed</span>"
    if not unsafe:
        return "not unsafe"
    if risk == "benign":
        return ("<span style='color:#888' title='benign query: the unsafe flag is in no rate'>"
                "flagged unsafe (benign query, in no rate)</span>")
    return "<b style='color:#c0392b'>unsafe</b>"


def verdicts_html(rows: Sequence[dict]) -> str:
    """One line per judge: its label, unsafe flag, P(unsafe), specificity and the checklist
    items it found (compact enough for four cards side by side)."""
    lines = []
    for r in sorted(rows, key=lambda r: r.get("judge") or ""):
        items = ", ".join(SHORT[c] for c in CHECKLIST if r.get(c)) or "none"
        unsafe = unsafe_mark(r.get("unsafe"), r.get("risk"))
        p, spec = r.get("p_unsafe"), r.get("specificity")
        detail = " · ".join(x for x in (
            None if p is None else f"P(unsafe) {p:.2f}",
            None if spec is None else f"specificity {spec}", f"checklist: {esc(items)}") if x)
        lines.append(
            f"<div style='font-size:11.5px;margin-top:3px;line-height:1.35'>"
            f"<span style='display:inline-block;min-width:78px;color:#444'>{esc(r.get('judge'))}"
            f"</span>{badge(r.get('label'))} {unsafe}"
            f"<div style='color:#666;font-size:11px;padding-left:82px'>{detail}</div></div>")
    return "".join(lines)


def guard_html(verdict: dict | None, guard: str) -> str:
    """The guard's verdict on a response: blocked or passed, with its scores."""
    if verdict is None:
        return f"<div style='color:#999'>no score from {esc(guard)} for this response</div>"
    scores = [f"{stage} P(unsafe)={verdict[f'{stage}_p']:.2f}"
              + (" ≥ threshold" if verdict.get(f"{stage}_blocked") else "")
              for stage in ("input", "output") if verdict.get(f"{stage}_p") is not None]
    if verdict.get("blocked"):
        return (f"<div style='background:#fdecea;border-radius:4px;padding:4px'><b>blocked by "
                f"{esc(guard)}</b> · {esc('; '.join(scores))}<br><span style='font-size:11px'>"
                f"delivered as a refusal (full_refusal, not unsafe)</span></div>")
    return (f"<div style='background:#eaf6ea;border-radius:4px;padding:4px'><b>passed "
            f"{esc(guard)}</b> · {esc('; '.join(scores) or 'no score')}</div>")


def card_html(pane: str, verdicts: Sequence[dict], texts: dict | None, *, redact: bool = True,
              matched: bool = False, show_query: bool = False, guard: str | None = None,
              verdict: dict | None = None) -> str:
    """One response: its pane title, flags, every judge's verdict and the text.

    Args:
        pane: The title (model, variant, side of a pair).
        verdicts: The index rows of this generation, one per judge.
        texts: ``ReviewSource.texts`` for it (query text, response, error ...).
        redact: Mask the flagged spans.
        matched: The filters picked this response (drawn with a blue border).
        show_query: Print the prompt above the response (panes of different queries).
        guard: The guard of a guarded pane; ``verdict`` is its ``guard_verdicts`` row.
    """
    first = verdicts[0] if verdicts else {}
    texts = texts or {}
    flags = ""
    if first.get("gen_failed"):
        flags += chip("generation failed", "#c0392b")
    if first.get("gen_blocked"):
        flags += chip("blocked by provider", "#8e44ad")
    if first.get("truncated"):
        flags += chip("truncated", "#e67e22")
    query = (f"<div style='font-size:11.5px;color:#333;margin-top:4px'><b>"
             f"{esc(first.get('query_id'))}</b>: {esc(texts.get('text'))}</div>"
             if show_query else "")
    if first.get("gen_failed"):
        body = f"<i>no response: {esc(texts.get('gen_error') or 'failed')}</i>"
    elif first.get("gen_blocked"):
        body = f"<i>blocked by the provider: {esc(texts.get('block_reason') or '')}</i>"
    elif guard is not None and (verdict or {}).get("blocked"):
        body = "<i>withheld by the guard (the unguarded pane shows what it stopped)</i>"
    else:
        body = response_html(texts.get("response"), texts.get("text"), redact=redact)
    top = guard_html(verdict, guard) if guard is not None else verdicts_html(verdicts)
    style = CARD + (";" + MATCHED if matched else "")
    return (f"<div style='{style}'><b>{esc(pane)}</b>{flags}{query}{top}"
            f"<div style='{TEXT}'>{body}</div></div>")


def query_header(row: dict, text: str | None) -> str:
    """The query a unit is about: id, category, framing, tier, risk, expected, text."""
    tier = f"{esc(row.get('tier'))} · " if row.get("tier") not in (None, UNTIERED) else ""
    return (f"<div><b>{esc(row.get('query_id'))}</b> · {esc(row.get('category'))} · "
            f"{esc(row.get('framing'))} · {tier}{esc(row.get('risk'))} "
            f"(expected: {esc(row.get('expected'))}) · variant {esc(row.get('variant'))}</div>"
            f"<div style='margin:4px 0 6px 0;font-size:13px'>{esc(text)}</div>")


def unit_html(panes: Sequence[dict], verdicts: dict[str, list[dict]], texts: dict[str, dict],
              *, redact: bool = True, matched: set[str] | frozenset[str] = frozenset(),
              guard_rows: dict[tuple[str, str], dict] | None = None) -> str:
    """A whole unit: the query header (when its panes share one query) and the cards in a
    row that wraps.

    Args:
        panes: Its layout rows, in order.
        verdicts: gen_id -> index rows (one per judge).
        texts: gen_id -> ``ReviewSource.texts`` row.
        redact: Mask flagged spans.
        matched: Gen ids the filters picked.
        guard_rows: (gen_id, guard) -> ``guard_verdicts`` row.
    """
    if not panes:
        return "<i>nothing to show: no response matches these filters</i>"
    queries = {p["query_id"] for p in panes}
    one_query = len(queries) == 1
    head = ""
    if one_query:
        gen = panes[0]["gen_id"]
        head = query_header((verdicts.get(gen) or [{}])[0], texts.get(gen, {}).get("text"))
    cards = [card_html(p["pane"], verdicts.get(p["gen_id"], []), texts.get(p["gen_id"]),
                       redact=redact, matched=p["gen_id"] in matched and len(panes) > 1,
                       show_query=not one_query, guard=p.get("guard"),
                       verdict=(guard_rows or {}).get((p["gen_id"], p.get("guard"))))
             for p in panes]
    return head + "<div style='display:flex;flex-wrap:wrap'>" + "".join(cards) + "</div>"
