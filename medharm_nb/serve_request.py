"""What ``medharm-nb serve`` accepts: its limits, reading a request's body, and checking it.

A request is read within a time limit and a size cap, parsed as JSON (too deep a nesting is a
400, not a crash), and checked field by field with strict types: ``"8"`` or ``true`` is not a
``max_tokens``, and a ``seed`` must fit 64 bits. Options that would silently change the answer
if ignored (``stop``, ``tools``, ``logprobs``, ...) are refused.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medharm_nb.records import GenConfig
from medharm_nb.serve_access import ApiError

SEED_RANGE = (-(2**63), 2**63 - 1)
"""The seeds a request may send: a 64-bit signed integer, as in the OpenAI protocol (the
model's generators take up to 2**64 - 1, so seed + choice index still fits)."""


@dataclass(frozen=True)
class Limits:
    """What one server accepts."""

    max_tokens: int = 512
    """Largest ``max_tokens`` a request may ask for (also the default when it asks none)."""
    max_concurrency: int = 64
    """Answers queued or generating at once (a request with ``n`` choices counts ``n`` when
    sampled); more get 503 with Retry-After."""
    max_body_bytes: int = 1_000_000
    """Largest request body; larger gets 413."""
    batch_size: int = 8
    """Requests answered together in one forward batch."""
    max_n: int = 8
    """Most choices (``n``) one request may ask for; more get 400."""
    header_timeout_s: float = 10.0
    """Seconds from a connection's first byte (or its opening) to the end of a request's
    headers; a client that is slower is disconnected, so half-open connections do not pile
    up."""
    body_timeout_s: float = 30.0
    """Seconds to receive a request's body once its headers are in; slower gets 408."""


class _Part(BaseModel):
    model_config = ConfigDict(strict=True)

    type: str
    text: str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_Part]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if any(p.type != "text" or p.text is None for p in self.content):
            raise ApiError(400, "only text content parts are supported", param="messages")
        return "".join(p.text for p in self.content)


class _StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields of an OpenAI chat-completions request that this server honours.

    Types are strict (no ``"8"`` for 8, no ``true`` for 1). Other OpenAI fields are accepted
    and ignored, except those that would silently change the answer (``stop``, ``tools``,
    ``logprobs``, ...): those are refused.
    """

    model_config = ConfigDict(extra="allow", strict=True)

    model: str | None = None
    messages: list[_Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: _StreamOptions | None = None


_REFUSED = ("stop", "tools", "functions", "logprobs", "response_format")


@dataclass(frozen=True)
class ChatCall:
    """A checked request: what to generate, and how to answer."""

    messages: list[dict[str, str]]
    """The request's messages (``developer`` spelt ``system``)."""
    config: GenConfig
    """Decoding settings; ``config.seed`` is the request's seed (0 when it sends none)."""
    n: int = 1
    """Choices to answer."""
    stream: bool = False
    """Answer as server-sent events (``chat.completion.chunk``)."""
    include_usage: bool = False
    """Streamed: end with a chunk that carries the token usage."""

    @property
    def seeds(self) -> list[int]:
        """Each choice's seed: the request's seed + the choice's index."""
        return [self.config.seed + i for i in range(self.n)]


def parse_request(body: bytes, name: str, limits: Limits, has_system_prompt: bool
                  ) -> ChatCall:
    """Validate a request body.

    Raises:
        ApiError: 400 naming the first problem, or 404 for another model's name.
    """
    deep = ApiError(400, "the request body is nested too deeply to read (arrays or objects "
                         "inside each other hundreds of levels deep)")
    try:
        raw = json.loads(body)
    except RecursionError:
        raise deep from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        req = ChatRequest.model_validate(raw)
    except RecursionError:
        raise deep from None
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ApiError(400, f"{where}: {first['msg']}", param=where) from None
    if req.model is not None and req.model != name:
        raise ApiError(404, f"model {req.model!r} is not served here; this server serves "
                            f"{name!r}", kind="not_found_error", param="model")
    if req.stream_options is not None and not req.stream:
        raise ApiError(400, "stream_options is only allowed with stream=true",
                       param="stream_options")
    most = min(limits.max_n, limits.max_concurrency)
    if req.n > most:
        raise ApiError(400, f"n {req.n} is over this server's cap of {most} choices per "
                            f"request (medharm-nb serve --max-n, at most --max-concurrency)",
                       param="n")
    for key in _REFUSED:
        if (req.model_extra or {}).get(key) not in (None, False, [], {}, ""):
            raise ApiError(400, f"{key} is not supported by this server", param=key)
    asked = req.max_completion_tokens or req.max_tokens or limits.max_tokens
    if asked > limits.max_tokens:
        raise ApiError(400, f"max_tokens {asked} is over this server's cap of "
                            f"{limits.max_tokens} (medharm-nb serve --max-tokens-cap)",
                       param="max_tokens")
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in req.messages]
    if has_system_prompt and any(m["role"] == "system" for m in messages):
        raise ApiError(400, "this server's model has a fixed system prompt; send no system "
                            "message", param="messages")
    if messages[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's", param="messages")
    config = GenConfig(max_new_tokens=asked, temperature=req.temperature, top_p=req.top_p,
                       seed=req.seed or 0, batch_size=limits.batch_size)
    return ChatCall(messages, config, req.n, req.stream,
                    bool(req.stream_options and req.stream_options.include_usage))


async def read_body(request, limits: Limits) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``max_body_bytes``, and
    with 408 if it has not all arrived within ``body_timeout_s``."""
    cap = limits.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad Content-Length header")
        if int(declared) > cap:
            raise ApiError(413, f"request body of {declared} bytes is over the cap of {cap} "
                                f"(--max-body-bytes)")

    async def chunks() -> bytes:
        parts, size = [], 0
        async for chunk in request.stream():  # chunked bodies have no Content-Length
            size += len(chunk)
            if size > cap:
                raise ApiError(413, f"request body is over the cap of {cap} bytes "
                                    f"(--max-body-bytes)")
            parts.append(chunk)
        return b"".join(parts)

    try:
        return await asyncio.wait_for(chunks(), limits.body_timeout_s)
    except asyncio.TimeoutError:  # TimeoutError itself only from Python 3.11
        raise ApiError(408, f"the request body did not arrive within "
                            f"{limits.body_timeout_s:g} s", kind="timeout",
                       headers={"Connection": "close"}) from None
