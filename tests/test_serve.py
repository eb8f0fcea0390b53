"""``medharm-nb serve`` in a real subprocess, with the openai backend as its client."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import polars as pl
import pytest
import uvicorn

from medharm_nb import generate
from medharm_nb import serve as serving
from medharm_nb.generate import Output
from medharm_nb.records import GenConfig, ModelSpec
from medharm_nb.store import RunStore

TOKEN = "medharm-serve-test-token-5f3a9c"
QUERIES = pl.DataFrame({
    "id": ["q1", "q2", "q3"],
    "text": ["What is the capital of France?", "Name one symptom of dehydration.", "Say hello."],
    "variant": ["direct"] * 3,
})
CONFIG = GenConfig(max_new_tokens=8)
CAP = 8


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def medharm(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "medharm_nb.cli", *args],
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, **kw)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The embedded model served on a free loopback port, with a bearer token set."""
    port, log = free_port(), tmp_path_factory.mktemp("serve") / "server.log"
    with log.open("wb") as out:
        proc = medharm("serve", "smollm2-135m", "--port", str(port), "--max-tokens-cap",
                       str(CAP), "--max-concurrency", "3", "--max-body-bytes", "100000",
                       env={serving.TOKEN_ENV: TOKEN}, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180  # model load: ~20 s on a quiet 2-core CPU
        while True:
            if proc.poll() is not None:
                pytest.fail(f"serve exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/models", headers=auth(), timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"serve not ready after 180 s:\n{log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def client_spec(url: str, **kw) -> ModelSpec:
    return ModelSpec(name="served", backend="openai", source="smollm2-135m", base_url=url,
                     api_key_env="MEDHARM_TEST_SERVE_KEY", concurrency=2, **kw)


def posts(log) -> int:
    return log.read_text().count('"POST /v1/chat/completions')


@pytest.mark.slow
def test_openai_backend_through_the_server_into_the_store(server, tmp_path, monkeypatch):
    url, log = server
    monkeypatch.setenv("MEDHARM_TEST_SERVE_KEY", TOKEN)
    spec = client_spec(url)
    with RunStore(tmp_path) as st:
        stats = generate.generate(QUERIES, spec, CONFIG, st, progress=False)
        frame = st.frame("generations").sort("query_id")
        sent = posts(log)
        again = generate.generate(QUERIES, spec, CONFIG, st, progress=False)
        # The same server spelt with a final "/": the same answers, no request sent.
        slash = spec.model_copy(update={"base_url": url + "/"})
        moved = generate.generate(QUERIES, slash, CONFIG, st, progress=False)
    assert (stats.generated, stats.failed) == (3, 0)
    assert all(isinstance(r, str) and r for r in frame["response"])
    assert "Paris" in frame["response"][0]
    assert frame["n_prompt_tokens"].min() > 0 and 0 < frame["n_new_tokens"].max() <= 8
    assert (again.cached, again.generated, moved.cached) == (3, 0, 3)
    assert posts(log) == sent == 3
    leaked = [p for p in [log, *tmp_path.rglob("*")]
              if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert not leaked


@pytest.mark.slow
def test_max_tokens_cap(server, tmp_path, monkeypatch):
    url, _ = server
    chat = {"messages": [{"role": "user", "content": "Count from one to thirty."}]}
    at_cap = httpx.post(f"{url}/chat/completions", json={**chat, "max_tokens": CAP,
                                                         "temperature": 0}, headers=auth(),
                        timeout=60).json()
    assert 0 < at_cap["usage"]["completion_tokens"] <= CAP
    over = httpx.post(f"{url}/chat/completions", json={**chat, "max_tokens": CAP + 1},
                      headers=auth(), timeout=10)
    assert over.status_code == 400 and f"cap of {CAP}" in over.json()["error"]["message"]
    # Through the backend: a 400 is recorded once as an error, never as an empty answer.
    monkeypatch.setenv("MEDHARM_TEST_SERVE_KEY", TOKEN)
    with RunStore(tmp_path) as st:
        stats = generate.generate(QUERIES.head(1), client_spec(url),
                                  GenConfig(max_new_tokens=100), st, progress=False)
        row = st.frame("generations").row(0, named=True)
    assert stats.failed == 1 and row["response"] is None
    assert row["error"].startswith("HTTP 400: max_tokens 100 is over")


@pytest.mark.slow
@pytest.mark.parametrize(("body", "status", "says"), [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"messages": []}', 400, "messages"),
    (b'{"messages": [{"role": "wizard", "content": "hi"}]}', 400, "messages.0.role"),
    (b'{"messages": [{"role": "user"}]}', 400, "messages.0.content"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', 400, "max_tokens"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', 400,
     "temperature"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "stream": true}', 400, "stream"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "n": 3}', 400, "n=1"),
    (b'{"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]}', 404, "gpt-x"),
    (b'{"messages": [{"role": "user", "content": "' + b"a" * 100_001 + b'"}]}', 413,
     "--max-body-bytes"),
])
def test_malformed_requests_get_a_clear_4xx(server, body, status, says):
    url, _ = server
    resp = httpx.post(f"{url}/chat/completions", content=body, timeout=10,
                      headers={**auth(), "Content-Type": "application/json"})
    assert resp.status_code == status
    error = resp.json()["error"]
    assert says in error["message"] and error["code"] == status and error["type"]


@pytest.mark.slow
def test_token_is_enforced(server, monkeypatch):
    url, _ = server
    assert httpx.get(f"{url}/models", timeout=5).status_code == 401
    wrong = httpx.get(f"{url}/models", headers=auth("guess"), timeout=5)
    assert wrong.status_code == 401 and "bearer token" in wrong.json()["error"]["message"]
    assert httpx.post(f"{url}/chat/completions", json={}, timeout=5).status_code == 401
    monkeypatch.setenv("MEDHARM_TEST_SERVE_KEY", "guess")
    with pytest.raises(PermissionError, match="MEDHARM_TEST_SERVE_KEY"):
        generate.make_backend(client_spec(url)).prepare()


@pytest.mark.slow
def test_requests_over_the_concurrency_cap_get_503(server):
    url, _ = server
    chat = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": CAP}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(
            lambda _: httpx.post(f"{url}/chat/completions", json=chat, headers=auth(),
                                 timeout=120), range(8)))
    codes = sorted(r.status_code for r in answers)
    assert codes.count(200) >= 3 and 503 in codes and set(codes) == {200, 503}
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.headers["retry-after"] and "--max-concurrency" in busy.json()["error"]["message"]


def test_public_address_refused_without_token():
    env = {k: v for k, v in os.environ.items() if k != serving.TOKEN_ENV}
    proc = subprocess.run([sys.executable, "-m", "medharm_nb.cli", "serve", "smollm2-135m",
                           "--host", "0.0.0.0", "--port", str(free_port())], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "refusing to serve on 0.0.0.0" in proc.stderr and serving.TOKEN_ENV in proc.stderr
    assert [serving.is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0",
                                             "192.168.1.5", "example.org")] == \
        [True, True, True, False, False, False]
    serving.check_bind("0.0.0.0", token="set")  # with a token it may


def test_parse_request_rules():
    limits = serving.Limits(max_tokens=32)
    messages, config, seed = serving.parse_request(
        b'{"messages": [{"role": "developer", "content": "Be brief."},'
        b' {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],'
        b' "max_completion_tokens": 5, "temperature": 0, "seed": 7, "user": "x"}',
        "m", limits, has_system_prompt=False)
    assert messages == [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Hi"}]
    assert (config.max_new_tokens, config.temperature, seed) == (5, 0.0, 7)
    with pytest.raises(serving.ApiError, match="fixed system prompt"):
        serving.parse_request(b'{"messages": [{"role": "system", "content": "x"},'
                              b' {"role": "user", "content": "Hi"}]}', "m", limits, True)
    with pytest.raises(serving.ApiError, match="last message"):
        serving.parse_request(b'{"messages": [{"role": "assistant", "content": "x"}]}',
                              "m", limits, False)
    with pytest.raises(serving.ApiError, match="stop is not supported"):
        serving.parse_request(b'{"messages": [{"role": "user", "content": "x"}],'
                              b' "stop": ["."]}', "m", limits, False)


def test_spec_from_config(tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text("name: s\nmodels:\n  - name: plain\n    source: smollm2-135m\n"
                      "  - name: guarded\n    source: smollm2-135m\n"
                      "    system_prompt: Be careful.\n")
    spec = serving.spec_from_config(config, "guarded")
    assert (spec.name, spec.system_prompt) == ("guarded", "Be careful.")
    with pytest.raises(serving.ServeError, match="no model named 'nope'; it has: plain, guarded"):
        serving.spec_from_config(config, "nope")


# -- the HTTP guards, on a real uvicorn server in a thread over a fake backend -------------

SECRET = "/srv/models/secret-weights.bin"  # stands for what an exception text may hold
CHAT = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4}


class _Canned:
    """A fake backend (machinery test only): a fixed answer; ``<FAIL>`` raises, ``<ERROR>``
    returns an error, ``<RENDER>`` breaks the template, each with ``SECRET`` in its text;
    ``<CRASH>`` returns what no backend should, so the server itself fails unforeseen."""

    tokenizer = model = None

    def __init__(self):
        self.asked = 0

    def render(self, messages):
        if "<RENDER>" in messages[-1]["content"]:
            raise KeyError(f"template variable missing in {SECRET}")
        return messages[-1]["content"]

    def generate(self, requests, config):
        self.asked += len(requests)
        if any("<FAIL>" in r.rendered for r in requests):
            raise RuntimeError(f"cannot read {SECRET}")
        yield [(r, Output(None, error=f"OutOfMemoryError at {SECRET}")
                if "<ERROR>" in r.rendered else _Broken() if "<CRASH>" in r.rendered
                else Output("Hello.", 3, 2, finish_reason="stop")) for r in requests]


class _Broken:
    """Not an Output: reading it fails where the server does not expect a failure."""

    @property
    def error(self):
        raise ValueError(f"unexpected state in {SECRET}")


@contextmanager
def running(token: str | None = None, **kw):
    """``create_app`` over ``_Canned`` on a free loopback port: (url, backend)."""
    backend, port = _Canned(), free_port()
    app = serving.create_app(ModelSpec(name="canned", source="canned"), backend,
                             serving.Limits(max_tokens=8), token, **kw)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1", backend
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def open_server():
    with running() as served:
        yield served


def refused(resp: httpx.Response, status: int) -> str:
    """The OpenAI-shaped error of a refused request (no CORS allowance); its message."""
    assert resp.status_code == status, resp.text
    assert "access-control-allow-origin" not in resp.headers
    error = resp.json()["error"]
    assert error["code"] == status and error["type"]
    return error["message"]


def test_a_dns_rebinding_host_is_refused(open_server):
    url, backend = open_server
    port = url.split(":")[2].split("/")[0]
    for host in ("evil.example", f"evil.example:{port}", f"localhost.evil.example:{port}"):
        said = refused(httpx.post(f"{url}/chat/completions", json=CHAT, headers={"Host": host},
                                  timeout=10), 421)
        assert "does not serve the host" in said and "--allow-host" in said
        refused(httpx.get(f"{url}/models", headers={"Host": host}, timeout=10), 421)
    assert backend.asked == 0
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"127.0.0.2:{port}"):
        assert httpx.get(f"{url}/models", headers={"Host": host}, timeout=10).status_code == 200


def test_configured_host_names_are_served():
    with running(allow_hosts=["gpu-box.lab"]) as (url, _):
        assert httpx.get(f"{url}/models", headers={"Host": "gpu-box.lab:8000"},
                         timeout=10).status_code == 200
        refused(httpx.get(f"{url}/models", headers={"Host": "other.lab"}, timeout=10), 421)
    access = serving.Access.for_bind("0.0.0.0")  # every interface: any address is ours
    assert access.serves("10.1.2.3:8000") and access.serves("[fd00::1]:8000")
    assert not access.serves("evil.example") and not serving.Access.for_bind(
        "127.0.0.1").serves("10.1.2.3")


def test_a_cross_site_request_is_refused(open_server):
    url, backend = open_server
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"},
                    {"Origin": "http://localhost:3000"},  # another local site is foreign too
                    {"Sec-Fetch-Site": "cross-site"}):
        said = refused(httpx.post(f"{url}/chat/completions", json=CHAT, headers=headers,
                                  timeout=10), 403)
        assert "cross-site request" in said
    preflight = httpx.options(f"{url}/chat/completions", timeout=10, headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    refused(preflight, 403)
    assert backend.asked == 0
    same = url.rsplit("/v1", 1)[0]  # this server's own origin, and no Origin at all: fine
    assert httpx.post(f"{url}/chat/completions", json=CHAT, headers={"Origin": same},
                      timeout=10).status_code == 200
    assert httpx.post(f"{url}/chat/completions", json=CHAT, timeout=10).status_code == 200


def test_a_post_that_is_not_json_is_refused(open_server):
    url, backend = open_server
    body = b'{"messages": [{"role": "user", "content": "Say hello."}]}'
    before = backend.asked
    for kind in ("text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=x", None):
        headers = {"Content-Type": kind} if kind else {}
        said = refused(httpx.post(f"{url}/chat/completions", content=body, headers=headers,
                                  timeout=10), 415)
        assert "Content-Type: application/json" in said
    assert backend.asked == before
    ok = httpx.post(f"{url}/chat/completions", content=body, timeout=10,
                    headers={"Content-Type": "Application/JSON; charset=utf-8"})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "Hello."


def test_an_internal_error_is_logged_with_an_id_and_never_answered(open_server, caplog):
    url, _ = open_server
    caplog.set_level(logging.ERROR, logger="medharm_nb")
    for prompt in ("<FAIL>", "<ERROR>", "<RENDER>", "<CRASH>"):
        chat = {"messages": [{"role": "user", "content": prompt}]}
        resp = httpx.post(f"{url}/chat/completions", json=chat, timeout=10)
        said = refused(resp, 500)
        assert SECRET not in resp.text and "Error" not in said, resp.text
        error_id = said.split("error id ")[1].split(";")[0]
        logged = [r for r in caplog.records if error_id in r.getMessage()]
        assert logged, f"no log line for error id {error_id}"
        details = logged[0].getMessage() + (logged[0].exc_text or "") + str(logged[0].exc_info)
        assert SECRET in details


def test_a_token_on_loopback_is_enforced():
    with running(token=TOKEN) as (url, backend):
        for headers in ({}, auth("guess"), {"Authorization": TOKEN}):
            said = refused(httpx.post(f"{url}/chat/completions", json=CHAT, headers=headers,
                                      timeout=10), 401)
            assert "bearer token" in said
        assert backend.asked == 0
        ok = httpx.post(f"{url}/chat/completions", json=CHAT, headers=auth(), timeout=10)
        assert ok.status_code == 200 and backend.asked == 1
