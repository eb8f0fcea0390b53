"""What every generation backend speaks: a request, its output, and the backend protocol.

Its own module, imported by the backends and re-exported by ``medharm_nb.generate``, so that
no backend imports the package that imports it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from medharm_nb.records import GenConfig


@dataclass(frozen=True)
class Request:
    """One prompt to answer: what the model sees, and the id its answer is stored under."""

    gen_id: str
    messages: list[dict[str, str]]
    rendered: str
    sample: int = 0
    seed: int = 0
    query_id: str | None = None
    """The query's id (a backend that looks answers up by id, e.g. replay, reads it)."""


@dataclass
class Output:
    """What a backend returns for one request; ``error`` set means no response.

    ``finish_reason`` ``content_filter`` without an ``error`` means a provider blocked it:
    no text, and ``block_reason`` says what the provider said.
    """

    text: str | None
    n_prompt_tokens: int = 0
    n_new_tokens: int = 0
    seconds: float = 0.0
    error: str | None = None
    finish_reason: str | None = None
    """stop | length (hit max_new_tokens) | content_filter | error; None: unknown."""
    block_reason: str | None = None
    """With finish_reason content_filter: the provider's code and message, in short."""
    batch_size: int | None = None
    """Rows in the forward batch that made it (hf backend)."""


class Backend(Protocol):
    """What every generation backend provides.

    A backend may also have ``notes(requests) -> list[str]``: given every request of a
    model, problems that no single answer carries (a replay file's rows that match none).
    """

    def render(self, messages: list[dict[str, str]]) -> str:
        """Return the exact text the model sees (or a canonical form of the chat)."""

    def prepare(self) -> None:
        """Load weights or check the server (called only when there is work)."""

    def generate(self, requests: Sequence[Request],
                 config: GenConfig) -> Iterator[list[tuple[Request, Output]]]:
        """Answer requests, yielding finished groups so the caller can save each group."""
