"""``medharm-nb serve`` in a real subprocess, with the openai backend as its client."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
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
HI = b'{"messages": [{"role": "user", "content": "hi"}]'


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
    (HI + b', "max_tokens": "4"}', 400, "max_tokens"),  # strict types: no coercion
    (HI + b', "max_tokens": true}', 400, "max_tokens"),
    (HI + b', "stream": "yes"}', 400, "stream"),
    (HI + b', "seed": 100000000000000000000000000000, "temperature": 1}', 400, "seed"),
    (HI + b', "x": ' + b"[" * 49_000 + b"]" * 49_000 + b"}", 400, "nested too deeply"),
    (HI + b', "n": 0}', 400, "n"),
    (HI + b', "n": 4}', 400, "--max-n"),  # over --max-concurrency: it could never run
    (HI + b', "stream_options": {"include_usage": true}}', 400, "stream_options"),
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


HEADER_TIMEOUT = 10  # seconds, the documented default


@pytest.mark.slow
def test_a_half_open_connection_is_closed(server):
    """A client that connects and sends nothing, half a request line or half the headers is
    cut off after the header timeout, not held open (and counted) for ever."""
    url, _ = server
    port = int(url.split(":")[2].split("/")[0])
    socks = [socket.create_connection(("127.0.0.1", port), timeout=HEADER_TIMEOUT + 8)
             for _ in range(3)]
    began = time.monotonic()
    socks[1].sendall(b"POST /v1/chat/comp")
    socks[2].sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")
    with ThreadPoolExecutor(3) as pool:
        closed = list(pool.map(lambda s: (s.recv(1024), time.monotonic() - began), socks))
    for sock in socks:
        sock.close()
    assert [data for data, _ in closed] == [b""] * 3
    assert all(HEADER_TIMEOUT - 1 < took < HEADER_TIMEOUT + 4 for _, took in closed), closed


def sdk(url: str):
    return openai.OpenAI(base_url=url, api_key=TOKEN, max_retries=0, timeout=120)


ASK = {"model": "smollm2-135m", "max_tokens": CAP, "temperature": 0,
       "messages": [{"role": "user", "content": "Name one symptom of dehydration."}]}


@pytest.mark.slow
def test_streaming_through_the_openai_sdk(server):
    url, _ = server
    client = sdk(url)
    whole = client.chat.completions.create(**ASK)
    answer = whole.choices[0].message.content
    chunks = list(client.chat.completions.create(**ASK, stream=True,
                                                 stream_options={"include_usage": True}))
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1 and chunks[0].model == "smollm2-135m"
    assert chunks[0].choices[0].delta.role == "assistant"
    *with_choices, last = chunks
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == answer
    assert sum(bool(c.choices[0].delta.content) for c in with_choices) > 1  # in pieces
    finish = [c.choices[0].finish_reason for c in with_choices]
    assert finish[-1] == whole.choices[0].finish_reason and not any(finish[:-1])
    assert last.choices == [] and last.usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in with_choices)
    # The SDK's stream helper: its events and the completion it assembles (its snapshot:
    # get_final_completion refuses a finish_reason "length", which a cap of 8 tokens gives).
    with client.chat.completions.stream(**ASK) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.current_completion_snapshot
    assert "".join(deltas) == final.choices[0].message.content == answer
    assert final.choices[0].finish_reason == whole.choices[0].finish_reason


@pytest.mark.slow
def test_n_choices_through_the_openai_sdk(server):
    url, _ = server
    client = sdk(url)
    one = client.chat.completions.create(**ASK)
    greedy = client.chat.completions.create(**ASK, n=3)
    assert [c.index for c in greedy.choices] == [0, 1, 2]
    assert [c.message.content for c in greedy.choices] == [one.choices[0].message.content] * 3
    assert greedy.usage.completion_tokens == 3 * one.usage.completion_tokens
    # Sampled: each choice has its own seed (seed + index), so they differ, and the same
    # request gives the same choices again, streamed or not.
    sampled = {**ASK, "temperature": 1.5, "seed": 11, "n": 2}
    first = [c.message.content for c in client.chat.completions.create(**sampled).choices]
    again = [c.message.content for c in client.chat.completions.create(**sampled).choices]
    streamed = ["", ""]
    for chunk in client.chat.completions.create(**sampled, stream=True):
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
    assert first == again == streamed and first[0] != first[1]
    with client.chat.completions.stream(**sampled) as stream:
        for _ in stream:
            pass
        final = stream.current_completion_snapshot
    assert [c.message.content for c in final.choices] == first


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
    call = serving.parse_request(
        b'{"messages": [{"role": "developer", "content": "Be brief."},'
        b' {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],'
        b' "max_completion_tokens": 5, "temperature": 0, "seed": 7, "user": "x", "n": 3,'
        b' "stream": true, "stream_options": {"include_usage": true}}',
        "m", limits, has_system_prompt=False)
    assert call.messages == [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "Hi"}]
    assert (call.config.max_new_tokens, call.config.temperature, call.config.seed) == (5, 0, 7)
    assert (call.n, call.seeds, call.stream, call.include_usage) == (3, [7, 8, 9], True, True)
    top = 2**63 - 1  # the largest seed: its choices' seeds still fit the model's generators
    assert serving.parse_request(HI + b', "seed": %d, "n": 2}' % top, "m", limits,
                                 False).seeds == [top, top + 1]
    with pytest.raises(serving.ApiError, match="seed: Input should be less than"):
        serving.parse_request(HI + b', "seed": %d}' % (top + 1), "m", limits, False)
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
