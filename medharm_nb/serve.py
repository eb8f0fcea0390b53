"""``medharm-nb serve``: the OpenAI chat-completions protocol over one of our model specs.

Useful on its own (share one GPU model with a team, point any OpenAI client at a quantized or
fine-tuned spec) and as the real server the ``openai`` backend is tested against.

Safe by default, because loopback is not a security boundary (other users of the machine
reach it, and so do web pages open in a browser): it binds 127.0.0.1; it refuses any other
address unless a bearer token is set in ``MEDHARM_SERVE_TOKEN`` (then every request must carry
it, on loopback too); it answers only requests whose ``Host`` it serves (no DNS rebinding),
refuses cross-site requests (a foreign ``Origin``, no CORS) and POSTs that are not
``application/json`` (no cross-site "simple" POSTs); request bodies, ``max_tokens`` and
requests in flight are capped; malformed requests get a 4xx with an OpenAI-shaped error, and
an internal error a 500 with an error id, its details only in the server's log.
Concurrent requests with the same decoding settings are answered in one batch.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import Request  # module level: FastAPI resolves the endpoints' annotations here
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medharm_nb.records import GenConfig, ModelSpec, stable_hash
from medharm_nb.serve_access import (  # noqa: F401 - TOKEN_ENV, is_loopback: this API too
    TOKEN_ENV,
    Access,
    ApiError,
    ServeError,
    check_access,
    check_bind,
    is_loopback,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """What one server accepts."""

    max_tokens: int = 512
    """Largest ``max_tokens`` a request may ask for (also the default when it asks none)."""
    max_concurrency: int = 64
    """Requests queued or running at once; more get 503 with Retry-After."""
    max_body_bytes: int = 1_000_000
    """Largest request body; larger gets 413."""
    batch_size: int = 8
    """Requests answered together in one forward batch."""


# -- the request body --------------------------------------------------------------------

class _Part(BaseModel):
    type: str
    text: str | None = None


class _Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_Part]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if any(p.type != "text" or p.text is None for p in self.content):
            raise ApiError(400, "only text content parts are supported", param="messages")
        return "".join(p.text for p in self.content)


class ChatRequest(BaseModel):
    """The fields of an OpenAI chat-completions request that this server honours.

    Other OpenAI fields are accepted and ignored, except those that would silently change
    the answer (``stream``, ``n`` > 1, ``stop``, ``tools``, ``logprobs``): those are refused.
    """

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[_Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    n: int = 1
    stream: bool = False


_REFUSED = ("stop", "tools", "functions", "logprobs", "response_format")


def parse_request(body: bytes, name: str, limits: Limits, has_system_prompt: bool
                  ) -> tuple[list[dict[str, str]], GenConfig, int]:
    """Validate a request body; return (messages, decoding config, seed).

    Raises:
        ApiError: 400 naming the first problem, or 404 for another model's name.
    """
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        req = ChatRequest.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ApiError(400, f"{where}: {first['msg']}", param=where) from None
    if req.model is not None and req.model != name:
        raise ApiError(404, f"model {req.model!r} is not served here; this server serves "
                            f"{name!r}", kind="not_found_error", param="model")
    if req.stream:
        raise ApiError(400, "stream=true is not supported", param="stream")
    if req.n != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
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
    return messages, config, req.seed or 0


def internal_error(what: str, err: BaseException | str) -> ApiError:
    """A 500 that names an error id, never the error: its text and traceback go to the
    server's log under that id (exception text can hold paths, settings or prompts)."""
    error_id = uuid.uuid4().hex[:12]
    if isinstance(err, BaseException):
        logger.error("error %s: %s", error_id, what, exc_info=err)
    else:
        logger.error("error %s: %s: %s", error_id, what, err)
    return ApiError(500, f"{what} (error id {error_id}; the server's log has the details)",
                    kind="server_error")


# -- batching ----------------------------------------------------------------------------

@dataclass
class _Job:
    request: Any  # generate.Request
    config: GenConfig
    future: asyncio.Future
    key: tuple = field(init=False)

    def __post_init__(self):
        # Sampled requests batch only with the same seed, so a seed means one answer.
        c = self.config
        self.key = (c.max_new_tokens, c.temperature, c.top_p,
                    c.seed if c.temperature > 0 else None)


class Batcher:
    """Collects concurrent requests and answers those with equal settings in one batch.

    The model runs in one worker thread, one batch at a time, so the event loop keeps
    answering (and refusing, when full) while it works.
    """

    def __init__(self, backend, limits: Limits):
        self.backend, self.limits = backend, limits
        self.waiting: list[_Job] = []
        self.running = 0
        self._wake = asyncio.Event()  # binds to the running loop on first use (3.10+)

    @property
    def in_flight(self) -> int:
        """Requests queued or running."""
        return len(self.waiting) + self.running

    async def submit(self, request, config: GenConfig):
        """Queue one request and wait for its Output.

        Raises:
            ApiError: 503 when ``max_concurrency`` requests are already in flight.
        """
        if self.in_flight >= self.limits.max_concurrency:
            raise ApiError(503, f"server busy: {self.in_flight} requests in flight, the cap "
                                f"is {self.limits.max_concurrency} (--max-concurrency); retry "
                                f"later", kind="server_busy", headers={"Retry-After": "1"})
        job = _Job(request, config, asyncio.get_running_loop().create_future())
        self.waiting.append(job)
        self._wake.set()
        return await job.future

    async def run(self) -> None:
        """Serve batches until cancelled."""
        while True:
            await self._wake.wait()
            self.waiting = [j for j in self.waiting if not j.future.done()]  # gone clients
            if not self.waiting:
                self._wake.clear()
                continue
            key = self.waiting[0].key
            batch = [j for j in self.waiting if j.key == key][:self.limits.batch_size]
            chosen = {id(j) for j in batch}
            self.waiting = [j for j in self.waiting if id(j) not in chosen]
            self.running = len(batch)
            try:
                outputs = await asyncio.to_thread(self._generate, batch)
            except Exception as err:  # answered to each client as a 500
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
            else:
                for job, out in zip(batch, outputs):
                    if not job.future.done():
                        job.future.set_result(out)
            finally:
                self.running = 0

    def _generate(self, batch: list[_Job]):
        config = batch[0].config.model_copy(update={"batch_size": len(batch)})
        by_id = {}
        for group in self.backend.generate([j.request for j in batch], config):
            by_id.update((req.gen_id, out) for req, out in group)
        return [by_id[j.request.gen_id] for j in batch]


# -- the app -----------------------------------------------------------------------------

def create_app(spec: ModelSpec, backend, limits: Limits = Limits(), token: str | None = None,
               host: str = "127.0.0.1", allow_hosts: Iterable[str] = ()):
    """The FastAPI app serving ``spec`` through a ready backend (hf: weights loaded).

    Args:
        spec: The model spec; its ``name`` is the model id clients ask for.
        backend: Has ``render`` and ``generate`` (see ``generate.Backend``).
        limits: Caps on request size, ``max_tokens`` and requests in flight.
        token: If set, every request must send ``Authorization: Bearer <token>``.
        host: The address it is bound to (a ``Host`` it serves, see ``Access.for_bind``).
        allow_hosts: More names clients may reach it by (``Host`` headers it serves).
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from jinja2 import TemplateError, TemplateSyntaxError
    from starlette.exceptions import HTTPException

    from medharm_nb.generate import Request as GenRequest

    batcher = Batcher(backend, limits)
    access = Access.for_bind(host, allow_hosts, token)
    fingerprint = stable_hash(spec.key())
    context = _context_length(backend)

    @asynccontextmanager
    async def lifespan(_app):
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()

    app = FastAPI(title="medharm-nb serve", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)

    def error(status: int, message: str, kind: str, param: str | None = None,
              headers: dict[str, str] | None = None) -> JSONResponse:
        body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(_request, err: ApiError):
        return error(err.status, err.message, err.kind, err.param, err.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(_request, err: HTTPException):
        return error(err.status_code, str(err.detail), "invalid_request_error")

    @app.exception_handler(Exception)
    async def _unexpected(_request, err: Exception):
        refused = internal_error("internal error", err)
        return error(refused.status, refused.message, refused.kind)

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        refused = check_access(request.method, request.headers, access)
        if refused is not None:
            return error(refused.status, refused.message, refused.kind, refused.param,
                         refused.headers)
        return await call_next(request)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [
            {"id": spec.name, "object": "model", "created": 0, "owned_by": "medharm-nb"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await _read_body(request, limits.max_body_bytes)
        messages, config, seed = parse_request(body, spec.name, limits,
                                               bool(spec.system_prompt))
        if spec.system_prompt:
            messages = [{"role": "system", "content": spec.system_prompt}, *messages]
        try:
            rendered = backend.render(messages)
        except TemplateSyntaxError as err:  # the server's template is broken, not the request
            raise internal_error("the chat template cannot be rendered", err) from None
        except TemplateError as err:  # the template's own message, e.g. roles must alternate
            raise ApiError(400, f"the chat template rejects these messages: {err}",
                           param="messages") from None
        except Exception as err:
            raise internal_error("the chat template cannot be rendered", err) from None
        n_prompt = _count_tokens(backend, rendered)
        if context and n_prompt is not None and n_prompt + config.max_new_tokens > context:
            raise ApiError(400, f"the prompt has {n_prompt} tokens; with max_tokens "
                                f"{config.max_new_tokens} that is over the model's context "
                                f"of {context}", param="messages")
        gen_id = uuid.uuid4().hex
        try:
            out = await batcher.submit(GenRequest(gen_id, messages, rendered, 0, seed), config)
        except ApiError:
            raise
        except Exception as err:  # the model failed; say so in OpenAI shape, details in the log
            raise internal_error("generation failed", err) from None
        if out.error is not None:
            raise internal_error("generation failed", out.error)
        finish = out.finish_reason or (
            "length" if out.n_new_tokens >= config.max_new_tokens else "stop")
        return {
            "id": f"chatcmpl-{gen_id}", "object": "chat.completion", "created": int(time.time()),
            "model": spec.name, "system_fingerprint": fingerprint,
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": out.text}}],
            "usage": {"prompt_tokens": out.n_prompt_tokens,
                      "completion_tokens": out.n_new_tokens,
                      "total_tokens": out.n_prompt_tokens + out.n_new_tokens},
        }

    app.state.batcher = batcher
    return app


async def _read_body(request, cap: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``cap`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad Content-Length header")
        if int(declared) > cap:
            raise ApiError(413, f"request body of {declared} bytes is over the cap of {cap} "
                                f"(--max-body-bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():  # chunked bodies have no Content-Length
        size += len(chunk)
        if size > cap:
            raise ApiError(413, f"request body is over the cap of {cap} bytes "
                                f"(--max-body-bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def _count_tokens(backend, rendered: str) -> int | None:
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is None:
        return None
    return len(tokenizer(rendered, add_special_tokens=False)["input_ids"])


def _context_length(backend) -> int | None:
    return getattr(backend, "context", None)


# -- starting it -------------------------------------------------------------------------

def spec_from_config(config_path: str | Path, model: str) -> ModelSpec:
    """The spec named ``model`` in a run config (paths resolved against the config)."""
    from medharm_nb import config as run_config

    path = Path(config_path)
    config = run_config.absolutize(run_config.load_config(path), path.resolve().parent)
    specs = {m.name: m for m in config.models}
    if model not in specs:
        raise ServeError(f"{path}: no model named {model!r}; it has: {', '.join(specs)}")
    return specs[model]


def serve(spec: ModelSpec, host: str = "127.0.0.1", port: int = 8000,
          limits: Limits = Limits(), log_level: str = "info",
          allow_hosts: Iterable[str] = ()) -> None:
    """Check the address, load the model, then serve until interrupted.

    Args:
        allow_hosts: Names clients reach it by, beyond loopback and ``host`` (``Host``
            headers it answers; see ``Access``).

    Raises:
        ServeError: a public address without a token, or a spec that is not ``hf``.
    """
    token = os.environ.get(TOKEN_ENV) or None
    check_bind(host, token)  # before the (slow) model load
    if spec.backend != "hf":
        raise ServeError(f"model {spec.name!r}: serve runs hf specs, not {spec.backend!r}")
    import uvicorn

    from medharm_nb.generate import make_backend

    backend = make_backend(spec)
    backend.prepare()
    app = create_app(spec, backend, limits, token, host, allow_hosts)
    auth = (" (bearer token required)" if token else
            f" (no bearer token: anyone on this machine can use it; set {TOKEN_ENV} on a "
            f"shared machine)")
    print(f"serving {spec.name!r} at http://{host}:{port}/v1{auth}", flush=True)
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)  # our errors beside uvicorn's
    log_config["loggers"]["medharm_nb"] = {"handlers": ["default"], "level": "INFO",
                                           "propagate": False}
    uvicorn.run(app, host=host, port=port, log_level=log_level, log_config=log_config,
                limit_concurrency=limits.max_concurrency * 2 + 16, timeout_keep_alive=30)
