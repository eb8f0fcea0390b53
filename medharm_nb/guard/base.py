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
