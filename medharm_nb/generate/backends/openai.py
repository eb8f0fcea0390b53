"""OpenAI-compatible chat-completions backend: vLLM, SGLang, TGI, llama.cpp, Ollama, hosted APIs.

Requests run concurrently (``spec.concurrency`` in flight) on an asyncio loop in a worker
thread, so the backend works the same from a script and from a notebook kernel that already
runs a loop. 429, 5xx, timeouts and connection errors are retried with exponential backoff and
jitter (``Retry-After`` is honoured); a request that still fails, or a 200 without text,
becomes an ``Output`` with ``error`` set, never an empty response. A provider's content filter
(a 200 with ``finish_reason`` content_filter, or a 4xx with a content-policy code) is its own
outcome: ``finish_reason`` content_filter and a ``block_reason``, stored as done, not retried.
The server's ``finish_reason`` is kept on every answer (``length``: the answer was truncated).

The API key is read from the environment variable *named* by ``spec.api_key_env``. It lives
only in the HTTP client's headers: it is never logged, never put in an error message (server
messages are scrubbed of it too) and never part of a record.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from medharm_nb.generate.base import BaseBackend, Output, Request
from medharm_nb.records import CONTENT_FILTER, GenConfig, ModelSpec

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
"""HTTP statuses worth another try (rate limits, overload, gateway trouble); other 5xx too."""

CONTENT_POLICY_CODES = frozenset({"content_filter", "content_policy_violation",
                                  "responsibleaipolicyviolation"})
"""Error codes (lower case) with which hosted APIs refuse a request on content policy: OpenAI's
``content_policy_violation``, Azure's ``content_filter`` (inner code
``ResponsibleAIPolicyViolation``). Such a 4xx is a block, not a failure."""


class OpenAIBackend(BaseBackend):
    """Client for any server that speaks ``POST {base_url}/chat/completions``.

    Args:
        spec: The model spec; ``source`` is the server's model name, ``base_url`` its URL
            (ending in ``/v1`` for most servers).
        max_attempts: Tries per request before it is recorded as an error.
        backoff_base: First retry delay in seconds; doubles per attempt, with jitter.
        backoff_max: Longest delay between two tries (also caps ``Retry-After``).
        group_size: Completions per yielded group (each group is saved at once).
        flush_s: Also yield what has finished after this many seconds without a full group.

    Raises:
        ValueError: ``base_url`` is missing, or ``api_key_env`` names an unset variable.
    """

    def __init__(self, spec: ModelSpec, *, max_attempts: int = 6, backoff_base: float = 1.0,
                 backoff_max: float = 60.0, group_size: int = 16, flush_s: float = 5.0):
        self.validate(spec)
        if not spec.base_url:
            raise ValueError(f"model {spec.name!r}: backend openai needs base_url "
                             f"(e.g. http://127.0.0.1:8000/v1)")
        self.spec = spec
        self.base_url = spec.base_url.rstrip("/")
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.group_size = group_size
        self.flush_s = flush_s
        self.latencies: dict[str, float] = {}
        """Seconds from first send to final answer (retries included), by gen_id."""
        self._key: str | None = None
        if spec.api_key_env:
            self._key = os.environ.get(spec.api_key_env) or None
            if self._key is None:
                raise ValueError(f"model {spec.name!r}: the environment variable "
                                 f"{spec.api_key_env} (api_key_env) is not set or empty")

    def __repr__(self) -> str:  # the default would be harmless, but say what it holds
        return f"OpenAIBackend(model={self.spec.source!r}, base_url={self.base_url!r})"

    # -- what the class knows about its specs (``BaseBackend``) ---------------------------

    name = "openai"
    key_fields = ("base_url", "system_prompt")
    other_fields = ("api_key_env", "concurrency", "timeout_s")

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        """The key variable is set and the server answers and serves the model
        (``prepare``), so a server that is down fails before any work."""
        cls(spec).prepare()

    @classmethod
    def plan(cls, spec: ModelSpec, config: GenConfig, n: int) -> dict[str, Any]:
        """A server: its weights are there, not here."""
        return {"where": f"server {spec.base_url}", "new_tokens": n * config.max_new_tokens,
                "weights": "weights on the server"}

    # -- protocol ------------------------------------------------------------------------

    def render(self, messages: list[dict[str, str]]) -> str:
        """A canonical JSON form of the chat: what the server's template is applied to."""
        return json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))

    def prepare(self) -> None:
        """Check that the server answers and knows the model, before any request is sent.

        Raises:
            ConnectionError: the server is down or unreachable (the message names the URL).
            PermissionError: the server rejects the API key.
            ValueError: the server lists its models and ``spec.source`` is not one of them.
        """
        url = f"{self.base_url}/models"
        try:
            with httpx.Client(headers=self._headers(),
                              timeout=min(10.0, self.spec.timeout_s)) as client:
                resp = client.get(url)
        except httpx.HTTPError as err:
            raise ConnectionError(
                f"model {self.spec.name!r}: the server at {self.base_url} does not answer "
                f"(GET {url}: {type(err).__name__}: {self._scrub(str(err))}); is it running?"
            ) from None
        if resp.status_code in (401, 403):
            where = (f"the key in ${self.spec.api_key_env}" if self.spec.api_key_env
                     else "no API key (set api_key_env)")
            raise PermissionError(f"model {self.spec.name!r}: {url} refused {where} "
                                  f"(HTTP {resp.status_code}: {self._message(resp)})")
        if resp.status_code >= 500:
            raise ConnectionError(f"model {self.spec.name!r}: the server at {self.base_url} "
                                  f"fails (GET {url}: HTTP {resp.status_code}: "
                                  f"{self._message(resp)})")
        served = _model_ids(resp)
        wanted = self.spec.source
        # Ollama lists "llama3:latest" and answers to "llama3".
        if served and not any(m == wanted or m.split(":")[0] == wanted for m in served):
            shown = ", ".join(served[:10]) + (" ..." if len(served) > 10 else "")
            raise ValueError(f"model {self.spec.name!r}: the server at {self.base_url} does "
                             f"not serve {wanted!r}; it serves: {shown}")

    def generate(self, requests: Sequence[Request],
                 config: GenConfig) -> Iterator[list[tuple[Request, Output]]]:
        """Send all requests concurrently; yield groups of finished ones as they complete.

        Each output's ``seconds`` is the wall time since the previous group, shared among the
        group, so that summed over a run it is the run's wall time (as for batched backends).
        """
        if not requests:
            return
        finished: queue.Queue = queue.Queue()
        loop = asyncio.new_event_loop()
        main = loop.create_task(self._answer_all(requests, config, finished))
        worker = threading.Thread(target=_run_loop, args=(loop, main, finished), daemon=True,
                                  name="medharm-openai")
        worker.start()
        try:
            pending, group, since = len(requests), [], time.perf_counter()
            while pending:
                try:
                    item = finished.get(timeout=self.flush_s)
                except queue.Empty:
                    item = None
                if isinstance(item, BaseException):
                    raise item
                if item is not None:
                    group.append(item)
                    pending -= 1
                if group and (len(group) >= self.group_size or not pending or item is None):
                    now = time.perf_counter()
                    share = (now - since) / len(group)
                    since = now
                    yield [(req, replace(out, seconds=share)) for req, out in group]
                    group = []
        finally:
            # Reached on normal exit and when the caller stops early (error, Ctrl-C).
            if not main.done():
                loop.call_soon_threadsafe(main.cancel)
            worker.join(timeout=30)
            if not worker.is_alive():
                loop.close()

    # -- internals -----------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}"} if self._key else {}

    def _scrub(self, text: str) -> str:
        """Remove the API key from text that may echo it (a server message, an exception)."""
        return text.replace(self._key, "[redacted]") if self._key else text

    def _message(self, resp: httpx.Response, limit: int = 300) -> str:
        """The server's error message (OpenAI shape, FastAPI shape or raw text), scrubbed."""
        try:
            body = resp.json()
        except ValueError:
            body = resp.text
        if isinstance(body, dict):
            err = body.get("error", body.get("detail", body))
            body = err.get("message", err) if isinstance(err, dict) else err
        text = body if isinstance(body, str) else json.dumps(body)
        return self._scrub(" ".join(text.split()))[:limit] or resp.reason_phrase

    def _payload(self, request: Request, config: GenConfig) -> dict[str, Any]:
        return {
            "model": self.spec.source,
            "messages": request.messages,
            "max_tokens": config.max_new_tokens,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "seed": request.seed,
        }

    def _delay(self, attempt: int, resp: httpx.Response | None) -> float:
        """Seconds to wait before try ``attempt + 1``: Retry-After if given, else backoff."""
        if resp is not None and (after := _retry_after(resp)) is not None:
            return min(after, self.backoff_max)
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return ceiling * (0.5 + random.random() / 2)  # jitter: spread retries of a burst

    async def _answer_all(self, requests: Sequence[Request], config: GenConfig,
                          finished: queue.Queue) -> None:
        limit = self.spec.concurrency
        slots = asyncio.Semaphore(limit)
        timeout = httpx.Timeout(self.spec.timeout_s, connect=min(10.0, self.spec.timeout_s))
        limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
        async with httpx.AsyncClient(base_url=self.base_url, headers=self._headers(),
                                     timeout=timeout, limits=limits) as client:
            async def one(request: Request) -> None:
                async with slots:
                    finished.put((request, await self._answer(client, request, config)))

            await asyncio.gather(*(one(r) for r in requests))

    async def _answer(self, client: httpx.AsyncClient, request: Request,
                      config: GenConfig) -> Output:
        began = time.perf_counter()
        try:
            out = await self._attempts(client, request, config)
        except Exception as err:  # anything unforeseen fails this request only
            out = Output(text=None, error=f"{type(err).__name__}: "
                                                    f"{self._scrub(str(err))}")
        self.latencies[request.gen_id] = time.perf_counter() - began
        return out

    async def _attempts(self, client: httpx.AsyncClient, request: Request,
                        config: GenConfig) -> Output:
        payload = self._payload(request, config)
        reason = "no attempt made"
        for attempt in range(1, self.max_attempts + 1):
            resp = None
            try:
                resp = await client.post("/chat/completions", json=payload)
            except httpx.RequestError as err:  # timeouts, refused or dropped connections
                reason = f"{type(err).__name__}: {self._scrub(str(err))}".rstrip(": ")
            else:
                if resp.status_code == 200:
                    return self._parse(resp)
                reason = f"HTTP {resp.status_code}: {self._message(resp)}"
                if resp.status_code not in RETRY_STATUS and resp.status_code < 500:
                    blocked = self._policy_block(resp)
                    if blocked is not None:  # the same prompt would be blocked again
                        return Output(text=None, finish_reason=CONTENT_FILTER,
                                      block_reason=blocked)
                    return Output(text=None, error=reason)  # a 400 will not get better
            if attempt < self.max_attempts:
                await asyncio.sleep(self._delay(attempt, resp))
        return Output(text=None, error=f"failed after {self.max_attempts} attempts: {reason}")

    def _parse(self, resp: httpx.Response) -> Output:
        try:
            body = resp.json()
            choice = body["choices"][0]
            message = choice["message"]
            text = message.get("content")
            usage = body.get("usage") or {}
            n_prompt = int(usage.get("prompt_tokens") or 0)
            n_new = int(usage.get("completion_tokens") or 0)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return Output(text=None, error=f"malformed response: {self._scrub(resp.text[:200])}")
        finish = choice.get("finish_reason")
        finish = finish if isinstance(finish, str) else None
        if finish == CONTENT_FILTER:
            return Output(text=None, n_prompt_tokens=n_prompt, finish_reason=CONTENT_FILTER,
                          block_reason=_filtered_200(choice, text))
        if not (isinstance(text, str) and text.strip()):
            refusal = message.get("refusal")  # the model's own refusal (structured outputs)
            if isinstance(refusal, str) and refusal.strip():
                text = refusal
            else:
                # e.g. a reasoning model that spent max_tokens before answering
                what = "empty text" if isinstance(text, str) else "no text"
                return Output(text=None, n_prompt_tokens=n_prompt, finish_reason=finish,
                              error=f"{what} in the response (finish_reason={finish})")
        return Output(text=text.strip(), n_prompt_tokens=n_prompt, n_new_tokens=n_new,
                      finish_reason=finish)

    def _policy_block(self, resp: httpx.Response) -> str | None:
        """What a content-policy refusal (4xx) says, in short; None for any other error."""
        try:
            err = resp.json().get("error")
        except (ValueError, AttributeError):
            return None
        if not isinstance(err, dict):
            return None
        inner = err.get("innererror") if isinstance(err.get("innererror"), dict) else {}
        codes = [c for c in (err.get("code"), inner.get("code"), err.get("type"))
                 if isinstance(c, str)]
        code = next((c for c in codes if c.lower() in CONTENT_POLICY_CODES), None)
        if code is None:
            return None
        filtered = _filtered(inner.get("content_filter_result"))
        where = f" in the {err['param']}" if err.get("param") in ("prompt", "response") else ""
        return (f"HTTP {resp.status_code} {code}{where}{filtered}: "
                f"{self._message(resp, limit=160)}")


def _filtered(results: Any) -> str:
    """``" (filtered: self_harm, violence)"`` from Azure's per-category filter results."""
    if not isinstance(results, dict):
        return ""
    names = [k for k, v in results.items() if isinstance(v, dict) and v.get("filtered")]
    return f" (filtered: {', '.join(names)})" if names else ""


def _filtered_200(choice: dict, text: Any) -> str:
    """The block reason of a 200 whose ``finish_reason`` is content_filter."""
    reason = "finish_reason=content_filter" + _filtered(choice.get("content_filter_results"))
    if isinstance(text, str) and text.strip():  # rare: a partial answer; not kept as one
        reason += f"; {len(text.strip())} characters of partial text not kept"
    return reason


def _run_loop(loop: asyncio.AbstractEventLoop, main: asyncio.Task,
              finished: queue.Queue) -> None:
    """Worker-thread body: run the requests; hand an unexpected crash to the caller."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(main)
    except asyncio.CancelledError:
        pass
    except BaseException as err:  # re-raised in the caller's thread
        finished.put(err)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())


def _retry_after(resp: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), if there is one."""
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _model_ids(resp: httpx.Response) -> list[str]:
    """Model ids from a ``GET /models`` answer; empty when it is not the usual list."""
    try:
        data = resp.json().get("data")
        return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]
    except (ValueError, AttributeError, TypeError):
        return []
