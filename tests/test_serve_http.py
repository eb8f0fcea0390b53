"""``medharm-nb serve``'s HTTP machinery on a real uvicorn server in a thread, over a fake
backend: the access guards, internal errors, streaming and ``n`` on the wire, and the header
and body timeouts. (The real model behind the real command: ``test_serve.py``.)"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
import uvicorn
from test_serve import TOKEN, auth, free_port

from medharm_nb import serve as serving
from medharm_nb.generate import Output
from medharm_nb.records import ModelSpec

SECRET = "/srv/models/secret-weights.bin"  # stands for what an exception text may hold
CHAT = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4}
ANSWER = "Hello there. How are you?"


class _Canned:
    """A fake backend (machinery test only): a fixed answer; ``<SEED>`` answers with the
    request's seed and sample; ``<FAIL>`` raises, ``<ERROR>`` returns an error, ``<RENDER>``
    breaks the template, each with ``SECRET`` in its text; ``<CRASH>`` returns what no
    backend should, so the server itself fails unforeseen. Keeps each batch's size."""

    tokenizer = model = None

    def __init__(self):
        self.asked, self.batches = 0, []

    def render(self, messages):
        if "<RENDER>" in messages[-1]["content"]:
            raise KeyError(f"template variable missing in {SECRET}")
        return messages[-1]["content"]

    def generate(self, requests, config):
        self.asked += len(requests)
        self.batches.append(len(requests))
        if any("<FAIL>" in r.rendered for r in requests):
            raise RuntimeError(f"cannot read {SECRET}")
        yield [(r, Output(None, error=f"OutOfMemoryError at {SECRET}")
                if "<ERROR>" in r.rendered else _Broken() if "<CRASH>" in r.rendered
                else Output(f"Seed {r.seed}, sample {r.sample}.", 3, 4, finish_reason="stop")
                if "<SEED>" in r.rendered else Output(ANSWER, 3, 5, finish_reason="stop"))
               for r in requests]


class _Broken:
    """Not an Output: reading it fails where the server does not expect a failure."""

    @property
    def error(self):
        raise ValueError(f"unexpected state in {SECRET}")


@contextmanager
def running(token: str | None = None, limits=serving.Limits(max_tokens=8), **kw):
    """``create_app`` over ``_Canned`` on a free loopback port, configured as ``serve``
    runs it: (url, backend)."""
    backend, port = _Canned(), free_port()
    app = serving.create_app(ModelSpec(name="canned", source="canned"), backend, limits, token,
                             **kw)
    server = uvicorn.Server(serving.uvicorn_config(app, "127.0.0.1", port, limits,
                                                   log_config=None, log_level="warning"))
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
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == ANSWER


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


# -- streaming and n on the wire ----------------------------------------------------------

def sse(resp: httpx.Response) -> list:
    """A stream's events: each ``data:`` line's JSON, ``[DONE]`` as the string."""
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    blocks = resp.text.split("\n\n")
    assert blocks[-1] == "" and all(b.startswith("data: ") for b in blocks[:-1])
    return [b[6:] if b == "data: [DONE]" else json.loads(b[6:]) for b in blocks[:-1]]


def test_a_stream_on_the_wire(open_server):
    url, _ = open_server
    plain = httpx.post(f"{url}/chat/completions", json=CHAT, timeout=10).json()
    events = sse(httpx.post(f"{url}/chat/completions", json={
        **CHAT, "stream": True, "stream_options": {"include_usage": True}}, timeout=10))
    *chunks, usage, done = events
    assert done == "[DONE]"
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""}, {"content": "Hello "}, {"content": "there. "},
        {"content": "How "}, {"content": "are "}, {"content": "you?"}, {}]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 6 + ["stop"]
    assert {(c["object"], c["id"], c["model"], c["usage"]) for c in chunks} == {
        ("chat.completion.chunk", usage["id"], "canned", None)}
    assert usage["choices"] == [] and usage["usage"] == plain["usage"] == {
        "prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    # Without include_usage: no usage field, no usage chunk.
    bare = sse(httpx.post(f"{url}/chat/completions", json={**CHAT, "stream": True},
                          timeout=10))
    assert bare[-1] == "[DONE]" and bare[-2]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in bare[:-1])


def test_n_choices_on_the_wire(open_server):
    url, backend = open_server
    seeded = {"messages": [{"role": "user", "content": "<SEED>"}], "max_tokens": 4}
    before = len(backend.batches)
    sampled = httpx.post(f"{url}/chat/completions", timeout=10, json={
        **seeded, "n": 3, "seed": 40, "temperature": 0.7}).json()
    assert [c["message"]["content"] for c in sampled["choices"]] == [
        "Seed 40, sample 0.", "Seed 41, sample 1.", "Seed 42, sample 2."]
    assert [c["index"] for c in sampled["choices"]] == [0, 1, 2]
    assert sampled["usage"]["completion_tokens"] == 12 and backend.batches[before:] == [3]
    unseeded = httpx.post(f"{url}/chat/completions", timeout=10,
                          json={**seeded, "n": 2}).json()  # temperature 1 by default
    assert [c["message"]["content"] for c in unseeded["choices"]] == [
        "Seed 0, sample 0.", "Seed 1, sample 1."]
    # Greedy choices are one answer, generated once.
    greedy = httpx.post(f"{url}/chat/completions", timeout=10, json={
        **seeded, "n": 3, "seed": 40, "temperature": 0}).json()
    assert [c["message"]["content"] for c in greedy["choices"]] == ["Seed 40, sample 0."] * 3
    assert greedy["usage"]["completion_tokens"] == 12 and backend.batches[-1] == 1
    streamed = sse(httpx.post(f"{url}/chat/completions", timeout=10, json={
        **seeded, "n": 2, "seed": 40, "temperature": 0.7, "stream": True}))
    texts = {0: "", 1: ""}
    for chunk in streamed[:-1]:
        texts[chunk["choices"][0]["index"]] += chunk["choices"][0]["delta"].get("content", "")
    assert texts == {0: "Seed 40, sample 0.", 1: "Seed 41, sample 1."}


def test_a_failed_stream_is_a_plain_error(open_server):
    url, _ = open_server
    for prompt in ("<ERROR>", "<FAIL>"):
        resp = httpx.post(f"{url}/chat/completions", timeout=10, json={
            "messages": [{"role": "user", "content": prompt}], "stream": True, "n": 2})
        assert "generation failed" in refused(resp, 500)
        assert resp.headers["content-type"] == "application/json"


# -- the header and body timeouts ---------------------------------------------------------

def closed_after(sock: socket.socket, began: float) -> float:
    """Seconds from ``began`` until the server closed ``sock`` (reading what it sent)."""
    while sock.recv(4096):
        pass
    return time.monotonic() - began


def test_headers_must_arrive_in_time():
    limits = serving.Limits(max_tokens=8, header_timeout_s=1.0)
    with running(limits=limits) as (url, _):
        port = int(url.split(":")[2].split("/")[0])
        socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(4)]
        began = time.monotonic()
        socks[1].sendall(b"GET /v1/mod")  # half a request line
        socks[2].sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # half the headers
        # A kept-alive connection: one request answered, then half of the next.
        socks[3].sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = b""
        while not first.endswith(b"}]}"):
            first += socks[3].recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
        socks[3].sendall(b"GET /v1/models HTTP/1.1\r\nHo")
        # A slow trickle does not reset the clock.
        socks[0].sendall(b"G")
        time.sleep(0.6)
        socks[0].sendall(b"E")
        took = [closed_after(s, began) for s in socks]
        for s in socks:
            s.close()
        assert all(0.9 < t < 3.0 for t in took), took
        # Headers in two parts within the limit: answered.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as ok:
            ok.sendall(b"GET /v1/models HTTP/1.1\r\n")
            time.sleep(0.5)
            ok.sendall(b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert ok.recv(4096).startswith(b"HTTP/1.1 200")


def test_a_body_must_arrive_in_time():
    limits = serving.Limits(max_tokens=8, body_timeout_s=1.0)
    with running(limits=limits) as (url, backend):
        port = int(url.split(":")[2].split("/")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            began = time.monotonic()
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                         b'{"messages": ')
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        took = time.monotonic() - began
        assert answer.startswith(b"HTTP/1.1 408") and 0.9 < took < 3.0, (answer, took)
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert "did not arrive within 1 s" in body["error"]["message"]
        assert backend.asked == 0
