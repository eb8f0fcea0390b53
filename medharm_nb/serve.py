"""``medharm-nb serve``: the OpenAI chat-completions protocol over one of our model specs.

Useful on its own (share one GPU model with a team, point any OpenAI client or chat UI at a
quantized or fine-tuned spec) and as the real server the ``openai`` backend is tested against.
It answers ``n`` choices and streams (server-sent ``chat.completion.chunk`` events).

Safe by default, because loopback is not a security boundary (other users of the machine
reach it, and so do web pages open in a browser): it binds 127.0.0.1; it refuses any other
address unless a bearer token is set in ``MEDHARM_SERVE_TOKEN`` (then every request must carry
it, on loopback too); it answers only requests whose ``Host`` it serves (no DNS rebinding),
refuses cross-site requests (a foreign ``Origin``, no CORS) and POSTs that are not
``application/json`` (no cross-site "simple" POSTs); request headers and bodies must arrive in
time, and bodies, ``max_tokens``, ``n`` and answers in flight are capped; malformed requests
get a 4xx with an OpenAI-shaped error, and an internal error a 500 with an error id, its
details only in the server's log. Concurrent requests with the same decoding settings are
answered in one batch.

Where the parts live: ``serve_access`` (whom it answers), ``serve_request`` (limits, reading
and checking a request), ``serve_batch`` (batching), ``serve_response`` (the answer's
shapes, streamed or not), ``serve_http`` (uvicorn with a header timeout); here, the app and
starting it.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from fastapi import Request  # module level: FastAPI resolves the endpoints' annotations here

from medharm_nb.records import ModelSpec, stable_hash
from medharm_nb.serve_access import (  # noqa: F401 - TOKEN_ENV, is_loopback: this API too
    TOKEN_ENV,
    Access,
    ApiError,
    ServeError,
    check_access,
    check_bind,
    is_loopback,
)
from medharm_nb.serve_batch import Batcher
from medharm_nb.serve_http import uvicorn_config
from medharm_nb.serve_request import ChatCall, Limits, parse_request, read_body  # noqa: F401
from medharm_nb.serve_response import Answer, completion, events

logger = logging.getLogger(__name__)


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


# -- the app -----------------------------------------------------------------------------

def create_app(spec: ModelSpec, backend, limits: Limits = Limits(), token: str | None = None,
               host: str = "127.0.0.1", allow_hosts: Iterable[str] = ()):
    """The FastAPI app serving ``spec`` through a ready backend (hf: weights loaded).

    Args:
        spec: The model spec; its ``name`` is the model id clients ask for.
        backend: Has ``render`` and ``generate`` (see ``generate.Backend``).
        limits: Caps on request size and time, ``max_tokens``, ``n`` and answers in flight.
        token: If set, every request must send ``Authorization: Bearer <token>``.
        host: The address it is bound to (a ``Host`` it serves, see ``Access.for_bind``).
        allow_hosts: More names clients may reach it by (``Host`` headers it serves).
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse
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
        call = parse_request(await read_body(request, limits), spec.name, limits,
                             bool(spec.system_prompt))
        messages = call.messages
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
        config = call.config
        n_prompt = _count_tokens(backend, rendered)
        if context and n_prompt is not None and n_prompt + config.max_new_tokens > context:
            raise ApiError(400, f"the prompt has {n_prompt} tokens; with max_tokens "
                                f"{config.max_new_tokens} that is over the model's context "
                                f"of {context}", param="messages")
        gen_id = uuid.uuid4().hex
        # Greedy choices are all the same answer: generate it once. Sampled, each choice
        # draws with its own seed (the request's + its index).
        seeds = call.seeds if config.temperature > 0 else call.seeds[:1]
        try:
            outputs = await batcher.submit(
                [GenRequest(f"{gen_id}-{i}", messages, rendered, i, seed)
                 for i, seed in enumerate(seeds)], config)
        except ApiError:
            raise
        except Exception as err:  # the model failed; say so in OpenAI shape, details in the log
            raise internal_error("generation failed", err) from None
        for out in outputs:
            if out.error is not None:
                raise internal_error("generation failed", out.error)
        outputs = outputs * call.n if len(outputs) == 1 else outputs
        answer = Answer(
            f"chatcmpl-{gen_id}", spec.name, int(time.time()), fingerprint,
            [out.text for out in outputs],
            [out.finish_reason or ("length" if out.n_new_tokens >= config.max_new_tokens
                                   else "stop") for out in outputs],
            outputs[0].n_prompt_tokens, sum(out.n_new_tokens for out in outputs))
        if call.stream:  # generated in full above, so a failure is still a clean 4xx/5xx
            return StreamingResponse(events(answer, call.include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return completion(answer)

    app.state.batcher = batcher
    return app


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
    server = uvicorn.Server(uvicorn_config(app, host, port, limits, log_level=log_level,
                                           log_config=log_config))
    server.run()
    if not server.started:
        raise ServeError(f"could not start serving on {host}:{port} (uvicorn's log above "
                         f"says why, e.g. the port is in use)")
