"""The answers of ``medharm-nb serve`` in the OpenAI shapes: one ``chat.completion``, or a
stream of ``chat.completion.chunk`` server-sent events.

A stream is sent after the answers are generated (the local backend decodes a whole batch
before it returns), cut into pieces at word boundaries: per choice, a first chunk with the
role, chunks of content, then a chunk with ``finish_reason``; with ``include_usage`` a last
chunk with no choices and the usage; then ``data: [DONE]``. Joined, a stream's content is
exactly the text the same request gets unstreamed.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Answer:
    """What one request got: its choices' texts and finish reasons, and the token counts."""

    id: str
    model: str
    created: int
    fingerprint: str
    texts: Sequence[str | None]
    finish_reasons: Sequence[str]
    prompt_tokens: int
    completion_tokens: int
    """Summed over the choices, as the OpenAI API counts them."""

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": self.fingerprint}


def completion(answer: Answer) -> dict:
    """The ``chat.completion`` body."""
    return {**answer._head("chat.completion"),
            "choices": [{"index": i, "finish_reason": finish, "logprobs": None,
                         "message": {"role": "assistant", "content": text}}
                        for i, (text, finish) in enumerate(zip(answer.texts,
                                                               answer.finish_reasons))],
            "usage": answer.usage()}


def pieces(text: str) -> list[str]:
    """``text`` cut before each word that follows white space; joined, they are ``text``."""
    return [p for p in re.split(r"(?<=\s)(?=\S)", text) if p]


def chunks(answer: Answer, include_usage: bool) -> list[dict]:
    """The ``chat.completion.chunk`` objects of a stream, in order."""
    usage = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict, finish: str | None = None) -> dict:
        return {**answer._head("chat.completion.chunk"), **usage, "choices": [
            {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    out = []
    for i, (text, finish) in enumerate(zip(answer.texts, answer.finish_reasons)):
        out.append(chunk(i, {"role": "assistant", "content": ""}))
        out.extend(chunk(i, {"content": piece}) for piece in pieces(text or ""))
        out.append(chunk(i, {}, finish))
    if include_usage:
        out.append({**answer._head("chat.completion.chunk"), "choices": [],
                    "usage": answer.usage()})
    return out


async def events(answer: Answer, include_usage: bool) -> AsyncIterator[bytes]:
    """The stream as server-sent events, ending with ``data: [DONE]``."""
    for item in chunks(answer, include_usage):
        yield f"data: {json.dumps(item, separators=(',', ':'))}\n\n".encode()
    yield b"data: [DONE]\n\n"
