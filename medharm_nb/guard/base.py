"""What every guard returns, and what it judges."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Target = Literal["prompt", "response"]
"""``prompt``: is the request harmful; ``response``: is the answer, in its prompt's context."""


@dataclass(frozen=True)
class GuardScore:
    """One guard verdict: P(unsafe) and the guard's own category when it names one."""

    p_unsafe: float
    category: str | None = None


def blocks(p_unsafe, threshold):
    """Whether a guard blocks an item: its P(unsafe) is at or above the threshold (a tie
    blocks). Works alike on floats and on polars expressions; every guard rate, threshold
    choice, guarded pipeline and review view decides with it."""
    return p_unsafe >= threshold
