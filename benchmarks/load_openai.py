"""Load test: N concurrent chat requests through the ``openai`` backend (not run in CI).

Targets a running OpenAI-compatible server (``--url``), or starts ``medharm-nb serve MODEL``
on a free loopback port for the duration (``--serve``, the default with the embedded model).
Prints throughput, the error count (must be 0: the script exits 1 otherwise) and latency
percentiles per request (first send to final answer, retries included)::

    python benchmarks/load_openai.py                          # serve smollm2-135m, 200 requests
    python benchmarks/load_openai.py --url http://127.0.0.1:8000/v1 --model my-model
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from medharm_nb.generate import Request
from medharm_nb.generate.backends.openai import OpenAIBackend
from medharm_nb.records import GenConfig, ModelSpec

TOPICS = ["the capital of France", "a primary colour", "a season of the year", "a planet",
          "a fruit that is yellow", "a musical instrument", "an ocean", "a type of tree"]


def prompts(n: int) -> list[str]:
    """n distinct, neutral questions of similar length."""
    return [f"In one short sentence, name {TOPICS[i % len(TOPICS)]}. (Question {i + 1}.)"
            for i in range(n)]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def start_server(model: str, concurrency: int, max_tokens: int, batch_size: int
                 ) -> tuple[subprocess.Popen, str, Path]:
    """``medharm-nb serve`` on a free loopback port; returns (process, base URL, log file)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = Path(tempfile.mkstemp(prefix="medharm-serve-", suffix=".log")[1])
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "medharm_nb.cli", "serve", model, "--port", str(port),
             "--max-concurrency", str(concurrency + 8), "--max-tokens-cap", str(max_tokens),
             "--batch-size", str(batch_size)],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"serve exited with {proc.returncode}; see {log}")
        try:
            # 401: up, and guarded by MEDHARM_SERVE_TOKEN (pass --api-key-env for it)
            if httpx.get(f"{url}/models", timeout=2).status_code in (200, 401):
                return proc, url, log
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    sys.exit(f"serve not ready after 300 s; see {log}")


def run_load(url: str, model: str, n: int, concurrency: int, max_tokens: int,
             api_key_env: str | None) -> int:
    """Send the requests, print the report; return the number of errors."""
    spec = ModelSpec(name="load", backend="openai", source=model, base_url=url,
                     api_key_env=api_key_env, concurrency=concurrency, timeout_s=300)
    backend = OpenAIBackend(spec)
    backend.prepare()
    requests = [Request(f"r{i}", [{"role": "user", "content": p}], p)
                for i, p in enumerate(prompts(n))]
    config = GenConfig(max_new_tokens=max_tokens, temperature=0.0)
    began = time.perf_counter()
    outputs = [out for group in backend.generate(requests, config) for _, out in group]
    wall = time.perf_counter() - began
    errors = [o.error for o in outputs if o.error is not None]
    tokens = sum(o.n_new_tokens for o in outputs)
    lat = list(backend.latencies.values())
    print(f"requests={len(outputs)} concurrency={concurrency} max_tokens={max_tokens} "
          f"errors={len(errors)}")
    print(f"wall_s={wall:.1f} throughput_req_s={len(outputs) / wall:.2f} "
          f"completion_tok_s={tokens / wall:.1f} mean_completion_tokens={tokens / n:.1f}")
    print(f"latency_s p50={percentile(lat, 50):.2f} p90={percentile(lat, 90):.2f} "
          f"p99={percentile(lat, 99):.2f} max={max(lat):.2f}")
    for error in sorted(set(errors))[:5]:
        print(f"  error: {error}")
    return len(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="A running server's base URL (else --serve starts one).")
    parser.add_argument("--serve", default="smollm2-135m",
                        help="Model for medharm-nb serve when no --url (default: %(default)s).")
    parser.add_argument("--model", help="Model name on the server (default: the --serve one).")
    parser.add_argument("--api-key-env", help="Environment variable holding the API key.")
    parser.add_argument("--n", type=int, default=200, help="Requests (default: %(default)s).")
    parser.add_argument("--concurrency", type=int, default=200,
                        help="Requests in flight (default: %(default)s).")
    parser.add_argument("--max-tokens", type=int, default=16, help="Per request.")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="The started server's batch size (default: %(default)s).")
    args = parser.parse_args()
    proc = None
    url = args.url
    try:
        if url is None:
            began = time.perf_counter()
            proc, url, log = start_server(args.serve, args.concurrency, args.max_tokens,
                                          args.batch_size)
            print(f"started medharm-nb serve {args.serve} at {url} in "
                  f"{time.perf_counter() - began:.0f} s (log: {log}, "
                  f"batch size {args.batch_size})")
        errors = run_load(url, args.model or args.serve, args.n, args.concurrency,
                          args.max_tokens, args.api_key_env)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
