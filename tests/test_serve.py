"""``medharm-nb serve`` in a real subprocess, with the openai backend as its client."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import polars as pl
import pytest

from medharm_nb import generate
from medharm_nb import serve as serving
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
        # Not even a server is needed for what is stored (base_url is not part of the key).
        elsewhere = spec.model_copy(update={"base_url": "http://127.0.0.1:9/v1"})
        moved = generate.generate(QUERIES, elsewhere, CONFIG, st, progress=False)
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
    resp = httpx.post(f"{url}/chat/completions", content=body, headers=auth(), timeout=10)
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
