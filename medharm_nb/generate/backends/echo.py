"""echo backend: answers every request with its own user prompt. No model, no server, no
file: for tests and dry runs of the machinery around generation (the runner, the store,
judges and reports), in milliseconds.

    - name: parrot
      backend: echo
      source: echo          # any label; two echo specs with different sources differ

A system prompt is kept in the rendered chat (and so in the id) but not in the answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from medharm_nb.generate.base import BaseBackend, Output, Request
from medharm_nb.records import GenConfig, ModelSpec


class EchoBackend(BaseBackend):
    """Answers each request with its last user message, ``finish_reason`` stop."""

    name = "echo"
    key_fields = ("system_prompt",)

    @classmethod
    def plan(cls, spec: ModelSpec, config: GenConfig, n: int) -> dict[str, Any]:
        """Nothing to load and nothing to generate."""
        return {"where": "echo (the prompt itself)", "new_tokens": 0,
                "weights": "no weights"}

    def __init__(self, spec: ModelSpec):
        self.validate(spec)
        self.spec = spec

    def render(self, messages: list[dict[str, str]]) -> str:
        """The chat as canonical JSON."""
        return json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))

    def prepare(self) -> None:
        """Nothing to load."""

    def generate(self, requests: Sequence[Request],
                 config: GenConfig) -> Iterator[list[tuple[Request, Output]]]:
        """One group: every request answered with its prompt."""
        if requests:
            yield [(r, Output(r.messages[-1]["content"], finish_reason="stop"))
                   for r in requests]
