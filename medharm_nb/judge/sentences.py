"""Where a response's sentences end: the one sentence scanner of the rule judge and the
specificity checklist.

A sentence ends at ``.``, ``!`` or ``?`` followed by white space, and at every line break.
A number never ends one by itself: a decimal (``0.5 mg``) has no space after its point, and a
list number that opens a line (``1. Give ...``) starts its item instead of standing alone.
A sentence that ends with a number (``... about 0.5. Then ...``) still ends there.

(The two judges used to disagree: the rules split every list number off its item, and the
checklist never ended a sentence after a digit.)
"""

from __future__ import annotations

import re

_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")
"""White space after a sentence's end mark, or a run of line breaks."""
_LIST_NUMBER = re.compile(r"[ \t]*\d+\.")
"""A list number opening its line: ``1.``, ``12.``."""


def pieces(text: str) -> list[str]:
    """``text`` cut at its sentences' ends, as ``re.split`` cuts: the pieces in order, the
    white space between them dropped, empty pieces kept (callers skip blank ones)."""
    out, start = [], 0
    for m in _BREAK.finditer(text):
        if "\n" not in m.group() and text[m.start() - 1] == ".":
            line = text.rfind("\n", 0, m.start()) + 1
            if _LIST_NUMBER.fullmatch(text, line, m.start()):
                continue  # "1. Give ...": the number opens the item
        out.append(text[start:m.start()])
        start = m.end()
    out.append(text[start:])
    return out

