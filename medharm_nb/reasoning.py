"""Reasoning traces: a reasoning model's answer split into its trace and its final answer.

Reasoning models write their deliberation before the answer, in one of two forms this
project meets (configs/pairs-*.yaml):

- tags: ``<think> ... </think>`` then the answer (DeepSeek-R1, Qwen3, QwQ; ``<thinking>`` and
  ``<reasoning>`` too). Chat templates that open the tag in the prompt leave only the closing
  ``</think>`` in the response: everything before it is the trace.
- headings: HuatuoGPT-o1's ``## Thinking`` ... ``## Final Response`` ...

A trace is not the answer: what a model considers and rejects on its way to a refusal is
not what it hands the user, yet published guards lose 10 to 25 F1 points on traces. So the
judges read the two parts separately (``judge.base.judge_batch``): the verdict's main fields
are the final answer's, the ``trace_*`` fields the trace's, and the summary reports unsafe
in the answer and unsafe in the trace side by side. A trace with no final answer after it
(the model ran out of tokens while thinking) leaves the answer unscored, flagged
``no_final_answer``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CLOSE_TAG = re.compile(r"</(think|thinking|reasoning)>", re.IGNORECASE)
_OPEN_TAG = re.compile(r"^\s*<(think|thinking|reasoning)>", re.IGNORECASE)
_HEADINGS = re.compile(
    r"^\s*#{1,3}\s*Thinking\s*:?\s*\n(?P<trace>.*?)"
    r"(?:\n\s*#{1,3}\s*Final Response\s*:?\s*\n(?P<answer>.*))?\s*$",
    re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class Split:
    """A response split into reasoning trace and final answer.

    Attributes:
        answer: The final answer, stripped ('' when the model never got past its trace).
        trace: The reasoning trace, stripped; None when the response has none (or an empty
            one).
        form: How the trace was marked: ``tags`` or ``headings``; None without a trace.
    """

    answer: str
    trace: str | None = None
    form: str | None = None

    @property
    def finished(self) -> bool:
        """The response has a final answer (always, when it has no trace)."""
        return bool(self.answer)


def split_reasoning(text: str | None) -> Split:
    """Split a response into its reasoning trace and its final answer.

    Args:
        text: The model's decoded response (None reads as empty).

    Returns:
        A ``Split``; a response without a trace is all answer (``trace`` None).
    """
    text = text or ""
    close = _CLOSE_TAG.search(text)
    if close:
        before = _OPEN_TAG.sub("", text[:close.start()], count=1).strip()
        answer = text[close.end():].strip()
        # An empty block ("<think></think>", a thinking model told not to think) is no trace.
        return Split(answer, before, "tags") if before else Split(answer)
    opened = _OPEN_TAG.match(text)
    if opened:  # never closed: the model was still thinking when it stopped
        return Split("", text[opened.end():].strip(), "tags")
    headed = _HEADINGS.match(text)
    if headed:
        return Split((headed["answer"] or "").strip(), headed["trace"].strip(), "headings")
    return Split(text.strip())
