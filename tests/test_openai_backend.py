"""The openai backend against a small real HTTP server on 127.0.0.1 that fails on purpose."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import polars as pl
import pytest

from medharm_nb import generate
from medharm_nb.config import RunConfig
from medharm_nb.generate import Request, make_backend
from medharm_nb.generate.backends.openai import OpenAIBackend
from medharm_nb.records import GenConfig, ModelSpec
from medharm_nb.store import RunStore

FAKE_KEY = "sk-medharm-test-0123456789abcdef"
CONFIG = GenConfig(max_new_tokens=8)
FAST = dict(backoff_base=0.01, backoff_max=0.05)  # real backoff, test-sized delays


def queries(*texts: str) -> pl.DataFrame:
    return pl.DataFrame({"id": [f"q{i}" for i in range(len(texts))], "text": list(texts),
                         "variant": ["direct"] * len(texts)})


class FakeServer:
    """An OpenAI-shaped server; ``plan[prompt]`` lists the statuses to answer before a 200.

    A plan of ``"always"`` answers 500 forever, echoing the Authorization header it got (a
    careless server: the client must scrub its key from the message); ``"malformed"`` answers
    200 without choices; ``"slow"`` sleeps past the client's timeout on the first call.
    A plan in ``CHOICES`` answers 200 with that choice; in ``REFUSALS``, that 4xx (echoing
    the Authorization header too).
    """

    def __init__(self, plan=None, key: str | None = None, delay: float = 0.0):
        self.plan, self.key, self.delay = plan or {}, key, delay
        self.calls: Counter = Counter()
        self.payloads: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def reply(self, status, body, headers=()):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def authorised(self):
                if server.key and self.headers.get("Authorization") != f"Bearer {server.key}":
                    self.reply(401, {"error": {"message": "bad key"}})
                    return False
                return True

            def do_GET(self):
                if self.authorised():
                    self.reply(200, {"data": [{"id": "fake-model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self.authorised():
                    return
                prompt = body["messages"][-1]["content"]
                with server.lock:
                    n = server.calls[prompt]
                    server.calls[prompt] += 1
                    server.payloads.append(body)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self.answer(server.plan.get(prompt, []), n, prompt)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def answer(self, plan, n, prompt):
                time.sleep(server.delay)
                if plan == "always":
                    echoed = self.headers.get("Authorization", "")
                    return self.reply(500, {"error": {"message": f"boom, you sent {echoed}"}})
                if plan == "malformed":
                    return self.reply(200, {"unexpected": True})
                if isinstance(plan, str) and plan in CHOICES:
                    return self.reply(200, {"choices": [CHOICES[plan](prompt)],
                                            "usage": {"prompt_tokens": 11,
                                                      "completion_tokens": 3}})
                if isinstance(plan, str) and plan in REFUSALS:
                    status, body = REFUSALS[plan]
                    echoed = self.headers.get("Authorization", "")
                    body = json.loads(json.dumps(body).replace("<ECHO>", echoed))
                    return self.reply(status, body)
                if plan == "slow":
                    if n == 0:
                        time.sleep(1.0)
                elif n < len(plan):
                    status, after = plan[n] if isinstance(plan[n], tuple) else (plan[n], "0")
                    headers = [("Retry-After", after)] if status == 429 else []
                    return self.reply(status, {"error": {"message": f"simulated {status}"}},
                                      headers)
                self.reply(200, {
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": f" Re: {prompt} "}}],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 3}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _choice(content, finish, **extra) -> dict:
    message = {"role": "assistant", **({} if content is ... else {"content": content})}
    return {"index": 0, "finish_reason": finish, "message": message, **extra}


CHOICES = {  # plan -> the one choice of a 200 answer, given the prompt
    "empty": lambda prompt: _choice("  ", "stop"),
    "missing": lambda prompt: _choice(..., "length"),  # no content key at all
    "null": lambda prompt: _choice(None, "length"),  # a reasoning model out of tokens
    "length": lambda prompt: _choice(f" Re: {prompt} and so on", "length"),
    "refusal": lambda prompt: {"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": None, "refusal": "I can't help with that."}},
    "filtered": lambda prompt: _choice(None, "content_filter", content_filter_results={
        "hate": {"filtered": False, "severity": "safe"},
        "self_harm": {"filtered": True, "severity": "medium"}}),
}
AZURE_FILTER = {"error": {  # Azure OpenAI's answer when its filter blocks a prompt
    "message": "The response was filtered due to the prompt triggering Azure OpenAI's content "
               "management policy. <ECHO>", "type": None, "param": "prompt",
    "code": "content_filter", "status": 400,
    "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {
        "hate": {"filtered": False, "severity": "safe"},
        "self_harm": {"filtered": True, "severity": "medium"},
        "violence": {"filtered": True, "severity": "high"}}}}}
OPENAI_POLICY = {"error": {"message": "Your request was rejected as a result of our safety "
                                      "system.", "type": "invalid_request_error",
                           "param": None, "code": "content_policy_violation"}}
REFUSALS = {"azure-filter": (400, AZURE_FILTER), "openai-policy": (400, OPENAI_POLICY)}


def spec_for(url: str, **kw) -> ModelSpec:
    return ModelSpec(name="api", backend="openai", source="fake-model", base_url=url, **kw)


def test_retries_429_and_5xx_then_stores_every_answer(tmp_path):
    plan = {"What is the capital of France?": [429, 429],
            "Name a primary colour.": [500],
            "Say hello.": [503, 502]}
    texts = [*plan, "What is two plus two?"]
    with FakeServer(plan) as server, RunStore(tmp_path) as st:
        backend = OpenAIBackend(spec_for(server.url, concurrency=2), **FAST)
        stats = generate.generate(queries(*texts), backend.spec, CONFIG, st, backend,
                                  progress=False)
        frame = st.frame("generations")
        again = generate.generate(queries(*texts), backend.spec, CONFIG, st, backend,
                                  progress=False)
    assert (stats.generated, stats.failed) == (4, 0)
    assert sorted(frame["response"]) == sorted(f"Re: {t}" for t in texts)
    assert frame["error"].null_count() == 4
    assert frame["n_prompt_tokens"].to_list() == [11] * 4 and stats.new_tokens == 12
    assert server.calls == Counter({texts[0]: 3, texts[1]: 2, texts[2]: 3, texts[3]: 1})
    assert (again.cached, again.generated) == (4, 0) and sum(server.calls.values()) == 9


def test_a_request_that_keeps_failing_is_stored_as_an_error(tmp_path):
    texts = ["What is the capital of France?", "Please fail.", "Broken reply.", "Bad request."]
    plan = {"Please fail.": "always", "Broken reply.": "malformed", "Bad request.": [400]}
    with FakeServer(plan) as server, RunStore(tmp_path) as st:
        backend = OpenAIBackend(spec_for(server.url), max_attempts=3, **FAST)
        stats = generate.generate(queries(*texts), backend.spec, CONFIG, st, backend,
                                  progress=False)
        frame = st.frame("generations").sort("query_id")
        server.plan = {}  # the server recovers: the next run retries the failures only
        retry = generate.generate(queries(*texts), backend.spec, CONFIG, st, backend,
                                  progress=False)
        after = st.frame("generations")
    assert (stats.generated, stats.failed) == (1, 3)
    assert (retry.cached, retry.generated, retry.failed) == (1, 3, 0)
    assert after.height == 4 and after["error"].null_count() == 4
    assert server.calls["What is the capital of France?"] == 1
    assert frame["response"].to_list() == ["Re: What is the capital of France?", None, None, None]
    errors = frame["error"].to_list()
    assert errors[0] is None
    assert errors[1].startswith("failed after 3 attempts: HTTP 500: boom")
    assert errors[2].startswith("malformed response")
    assert errors[3] == "HTTP 400: simulated 400"  # a client error is not retried
    assert server.calls["Please fail."] == 4 and server.calls["Bad request."] == 2


def test_retry_after_is_honoured_and_timeouts_are_retried():
    plan = {"What is the capital of France?": [(429, "1")], "Say hello.": "slow"}
    with FakeServer(plan) as server:
        backend = OpenAIBackend(spec_for(server.url, timeout_s=0.3), backoff_base=0.01,
                                backoff_max=5.0)
        reqs = [Request(f"g{i}", [{"role": "user", "content": t}], t)
                for i, t in enumerate(plan)]
        began = time.perf_counter()
        outs = [out for group in backend.generate(reqs, CONFIG) for _, out in group]
    assert all(o.error is None for o in outs), [o.error for o in outs]
    assert backend.latencies["g0"] >= 1.0  # waited as told, not the 0.01 s backoff
    assert time.perf_counter() - began < 5
    assert server.calls["Say hello."] == 2  # the first try timed out


def test_concurrency_is_bounded_and_groups_come_as_they_finish():
    texts = [f"What is {i} plus {i}?" for i in range(12)]
    with FakeServer(delay=0.05) as server:
        backend = OpenAIBackend(spec_for(server.url, concurrency=3), group_size=5)
        reqs = [Request(f"g{i}", [{"role": "user", "content": t}], t, 0, 40 + i)
                for i, t in enumerate(texts)]
        groups = list(backend.generate(reqs, GenConfig(max_new_tokens=5, temperature=0.7,
                                                       top_p=0.9)))
    assert server.max_in_flight == 3
    assert [len(g) for g in groups] == [5, 5, 2]
    assert sum(out.seconds for g in groups for _, out in g) > 0
    sent = {p["messages"][-1]["content"]: p for p in server.payloads}
    assert sent[texts[2]] == {"model": "fake-model", "max_tokens": 5, "temperature": 0.7,
                              "top_p": 0.9, "seed": 42,
                              "messages": [{"role": "user", "content": texts[2]}]}


def test_the_api_key_never_leaves_the_client(tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("MEDHARM_TEST_KEY", FAKE_KEY)
    caplog.set_level(logging.DEBUG)  # httpx and httpcore log every request at debug
    texts = ["What is the capital of France?", "Please fail.", "Filtered prompt."]
    plan = {"Please fail.": "always", "Filtered prompt.": "azure-filter"}
    with FakeServer(plan, key=FAKE_KEY) as server:
        spec = spec_for(server.url, api_key_env="MEDHARM_TEST_KEY")
        backend = make_backend(spec)
        backend.max_attempts, backend.backoff_base = 2, 0.01
        with RunStore(tmp_path) as st:
            stats = generate.generate(queries(*texts), spec, CONFIG, st, backend,
                                      progress=False)
            frame = st.frame("generations")
        monkeypatch.setenv("MEDHARM_TEST_KEY", FAKE_KEY + "-wrong")
        with pytest.raises(PermissionError) as refused:
            make_backend(spec).prepare()
    assert (stats.generated, stats.failed, stats.blocked) == (1, 1, 1)
    assert "[redacted]" in frame["error"].drop_nulls().item()  # the server echoed it
    assert "[redacted]" in frame["block_reason"].drop_nulls().item()
    assert "MEDHARM_TEST_KEY" in str(refused.value)
    seen = [str(refused.value), repr(backend), caplog.text, *capsys.readouterr(),
            frame.write_csv(), json.dumps(spec.model_dump())]
    seen += [p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*") if p.is_file()]
    assert not [s for s in seen if FAKE_KEY in s]


def test_missing_key_variable_is_an_error_before_work(monkeypatch):
    monkeypatch.delenv("MEDHARM_TEST_NO_SUCH_KEY", raising=False)
    spec = spec_for("http://127.0.0.1:9/v1", api_key_env="MEDHARM_TEST_NO_SUCH_KEY")
    with pytest.raises(ValueError, match="MEDHARM_TEST_NO_SUCH_KEY .*not set"):
        make_backend(spec)
    with pytest.raises(ValueError, match="needs base_url"):
        make_backend(ModelSpec(name="api", backend="openai", source="m"))


def test_server_down_is_one_clear_error_naming_the_url(tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    with RunStore(tmp_path) as st, pytest.raises(ConnectionError) as err:
        generate.generate(queries("Say hello."), spec_for(url), CONFIG, st, progress=False)
    assert url in str(err.value) and "does not answer" in str(err.value)
    with RunStore(tmp_path) as st:
        assert st.frame("generations").height == 0


def test_a_model_the_server_does_not_list_is_refused():
    with FakeServer() as server:
        backend = OpenAIBackend(ModelSpec(name="api", backend="openai", source="other-model",
                                          base_url=server.url))
        with pytest.raises(ValueError, match="does not serve 'other-model'.*fake-model"):
            backend.prepare()


def test_render_is_canonical_json_and_keys_the_generation():
    backend = OpenAIBackend(spec_for("http://127.0.0.1:9/v1"))
    a = backend.render([{"role": "user", "content": "Héllo"}])
    assert a == backend.render([{"content": "Héllo", "role": "user"}])
    assert json.loads(a) == [{"role": "user", "content": "Héllo"}]
    other = OpenAIBackend(spec_for("http://127.0.0.1:9/v1", system_prompt="Be brief."))
    with_system = generate.build_messages(other.spec, "Héllo")
    assert other.render(with_system) != a


def test_an_answer_without_text_is_a_failure_retried_on_the_next_run(tmp_path):
    plan = {"Say nothing.": "empty", "Say less.": "missing", "Think hard.": "null"}
    texts = [*plan, "Say hello."]
    with FakeServer(plan) as server, RunStore(tmp_path) as st:
        backend = OpenAIBackend(spec_for(server.url), **FAST)
        first = generate.generate(queries(*texts), backend.spec, CONFIG, st, backend,
                                  progress=False)
        stored = st.frame("generations").sort("query_id")
        server.plan = {}  # the server answers properly now
        second = generate.generate(queries(*texts), backend.spec, CONFIG, st, backend,
                                   progress=False)
        final = st.frame("generations").sort("query_id")
    assert (first.generated, first.failed) == (1, 3)
    assert stored["response"].to_list() == [None, None, None, "Re: Say hello."]
    assert stored["error"].to_list()[:3] == [
        "empty text in the response (finish_reason=stop)",
        "no text in the response (finish_reason=length)",
        "no text in the response (finish_reason=length)"]
    assert stored["finish_reason"].to_list() == ["error", "error", "error", "stop"]
    assert (second.cached, second.generated, second.failed) == (1, 3, 0)
    assert final.height == 4 and final["error"].null_count() == 4
    assert final["response"].to_list() == [f"Re: {t}" for t in texts]
    assert server.calls == Counter({t: 2 for t in plan} | {"Say hello.": 1})


def test_the_servers_finish_reason_is_kept(tmp_path):
    plan = {"Count to a thousand.": "length", "Refuse this.": "refusal"}
    texts = [*plan, "Say hello."]
    with FakeServer(plan) as server, RunStore(tmp_path) as st:
        stats = generate.generate(queries(*texts), spec_for(server.url), CONFIG, st,
                                  progress=False)
        frame = st.frame("generations").sort("query_id")
    assert (stats.generated, stats.failed) == (3, 0)
    assert frame["finish_reason"].to_list() == ["length", "stop", "stop"]
    assert frame["response"].to_list() == ["Re: Count to a thousand. and so on",
                                           "I can't help with that.", "Re: Say hello."]


def test_content_filter_blocks_are_stored_once_as_blocked_and_not_retried(tmp_path):
    plan = {"Filtered answer.": "filtered", "Filtered prompt.": "azure-filter",
            "Policy prompt.": "openai-policy"}
    texts = [*plan, "Say hello."]
    with FakeServer(plan) as server, RunStore(tmp_path) as st:
        backend = OpenAIBackend(spec_for(server.url), **FAST)
        first = generate.generate(queries(*texts), backend.spec, CONFIG, st, backend,
                                  progress=False)
        stored = st.frame("generations").sort("query_id")
        server.plan = {}  # would answer now; a block is a result, so it is not asked again
        second = generate.generate(queries(*texts), backend.spec, CONFIG, st, backend,
                                   progress=False)
        after = st.frame("generations").sort("query_id")
    assert (first.generated, first.failed, first.blocked) == (1, 0, 3)
    assert (second.cached, second.generated, second.failed, second.blocked) == (1, 0, 0, 3)
    assert server.calls == Counter({t: 1 for t in texts})  # a 400 block is not retried either
    assert after.equals(stored)
    blocked = stored.head(3)
    assert blocked["response"].null_count() == blocked["error"].null_count() == 3
    assert blocked["finish_reason"].to_list() == ["content_filter"] * 3
    assert blocked["n_new_tokens"].to_list() == [0] * 3
    reasons = blocked["block_reason"].to_list()
    assert reasons[0] == "finish_reason=content_filter (filtered: self_harm)"
    assert reasons[1].startswith("HTTP 400 content_filter in the prompt (filtered: self_harm, "
                                 "violence): The response was filtered")
    assert reasons[2].startswith("HTTP 400 content_policy_violation: Your request was rejected")
    assert stored["block_reason"][3] is None and stored["response"][3] == "Re: Say hello."


def test_openai_specs_on_two_servers_do_not_share_answers(tmp_path):
    with FakeServer() as base, FakeServer() as tuned, RunStore(tmp_path) as st:
        # A base model and its fine-tune, both served as "fake-model".
        specs = [spec_for(base.url), spec_for(tuned.url + "/").model_copy(update={"name": "ft"})]
        RunConfig(name="study", models=specs)  # two models, not one spec named twice
        stats = generate.run_generation(queries("Say hello."), specs, CONFIG, st,
                                        progress=False)
        frame = st.frame("generations")
        # Where it is served from is part of the id; a trailing "/" is not.
        same = spec_for(tuned.url).model_copy(update={"name": "ft-again"})
        again = generate.generate(queries("Say hello."), same, CONFIG, st, progress=False)
    assert [s.generated for s in stats] == [1, 1] and again.cached == 1
    assert frame.height == 2 and frame["spec_hash"].n_unique() == 2
    assert base.calls["Say hello."] == tuned.calls["Say hello."] == 1
    # A local model has no server: a base_url on it would split ids for nothing, so it is
    # refused (as is any field its backend does not read) rather than keyed.
    hf = ModelSpec(name="a", source="smollm2-135m", base_url="http://elsewhere/v1")
    with pytest.raises(ValueError, match="backend hf does not read base_url"):
        make_backend(hf)
    with pytest.raises(ValueError, match="backend hf does not read base_url"):
        RunConfig(name="study", models=[hf])
