"""The engine on a realistic mixed-length workload: against static batching, with its ceiling.

``medharm-nb bench generate --workload mixed`` gives every prompt its own answer length
(most short, a few at the cap) and answers them all three ways: a naive loop (one prompt at
a time, on the first ``naive_n``), plain ``model.generate`` in static batches (each batch runs
to its longest answer, every answer then cut to its own length) at several sizes, the best
kept, and the hf engine (finished rows leave, waiting prompts take their slots). Greedy
float32 outputs must be identical. Besides the rates it reports where the engine's time
goes (the model's forward against the rest, per step, by live rows), the per-step cost
curve, and the ceiling: how much dropping rows could save at most (row-steps) and what the
curve allows. Timings are wall-clock; never assert them in tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from medharm_nb.bench import bench_prompts, naive_answer, static_generate
from medharm_nb.records import GenConfig, ModelSpec


def mixed_limits(n: int, cap: int, seed: int = 0) -> list[int]:
    """Per-prompt answer lengths like a real study's: most answers short (refusals), some
    medium, a few running to the cap (long compliant answers); fixed by ``seed``.

    Shares: 60% between 8 and 32 tokens, 30% between 32 and cap/2, 10% at the cap; none
    over the cap.
    """
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        r = rng.random()
        out.append(min(cap, rng.randint(8, 32) if r < 0.6
                       else rng.randint(32, max(33, cap // 2)) if r < 0.9 else cap))
    return out


def static_sizes(n: int) -> tuple[int, ...]:
    """Static batch sizes to try: the four largest powers of two up to ``n`` (at most 256;
    smaller ones only lose on a CPU, where a step costs at least a read of the weights)."""
    top = 1 << (min(n, 256).bit_length() - 1)
    return tuple(s for s in (top // 8, top // 4, top // 2, top) if s >= 1)


def bench_mixed(spec: ModelSpec, n: int = 64, cap: int = 128,
                batch_sizes: tuple[int, ...] | None = None, engine_batch: int = 64,
                naive_n: int = 64, log: Callable[[str], None] = print) -> dict:
    """The engine against the naive loop and static batching on ``n`` mixed-length answers.

    Args:
        spec: The model (an hf spec).
        n: Prompts.
        cap: ``max_new_tokens``: the longest answer.
        batch_sizes: Static batch sizes to try (default ``static_sizes(n)``).
        engine_batch: The engine's rows at most.
        naive_n: The naive loop answers the first this many prompts (0: skip it).
        log: Where progress lines go.

    Returns:
        ``naive_tok_s``, ``batched_tok_s`` at ``best_batch``, ``engine_tok_s``,
        ``engine_vs_batched``, ``engine_vs_naive``, ``mismatches`` (prompts whose answers
        differ between any two ways), ``static`` (per size: tok/s, row-steps), ``tokens``
        (useful), ``split``/``fit``/totals from the engine's ``StepLog`` and ``ceiling``.
    """
    import torch

    from medharm_nb.generate import Request, build_messages
    from medharm_nb.generate.backends.hf import HFBackend
    from medharm_nb.generate.backends.hf_steplog import StepLog

    limits = mixed_limits(n, cap)
    backend = HFBackend(spec, answer_lengths={str(i): k for i, k in enumerate(limits)})
    backend.prepare()
    rendered = [backend.render(build_messages(spec, p)) for p in bench_prompts(n)]
    log(f"{n} prompts, answer lengths {min(limits)}-{max(limits)} (mean "
        f"{sum(limits) / n:.0f}), {torch.get_num_threads()} torch thread(s)")
    requests = [Request(gen_id=str(i), messages=[], rendered=r) for i, r in enumerate(rendered)]
    config = GenConfig(max_new_tokens=cap, batch_size=engine_batch)
    naive_answer(backend, rendered[0], 2)  # warm-up, both paths
    list(backend.generate(requests[:2], config.model_copy(update={"max_new_tokens": 2})))
    out: dict = {"n": n, "engine_batch": engine_batch, "load_before": load_average()}

    naive: list[list[int]] = []
    if naive_n:
        with Timer() as t:
            naive = [naive_answer(backend, r, k) for r, k in zip(rendered[:naive_n], limits)]
        tokens = sum(map(len, naive))
        out.update(naive_tok_s=tokens / t.wall, naive_cpu_tok_s=tokens / t.cpu)
        log(f"naive loop (first {len(naive)}): {tokens} tokens, {t.line(tokens)}")

    out["static"] = []
    for size in batch_sizes or static_sizes(n):
        with Timer() as t:
            answers, row_steps = static_generate(backend, rendered, limits, size)
        tokens = sum(map(len, answers))
        out["static"].append({"batch": size, "tok_s": tokens / t.wall,
                              "cpu_tok_s": tokens / t.cpu, "seconds": t.wall,
                              "cpu_seconds": t.cpu, "row_steps": row_steps,
                              "answers": answers})
        log(f"static generate, batch {size}: {t.line(tokens)}; {row_steps} row-steps for "
            f"{tokens} tokens")
    best = max(out["static"], key=lambda s: s["tok_s"])
    best_cpu = max(out["static"], key=lambda s: s["cpu_tok_s"])
    out["tokens"] = tokens = sum(map(len, best["answers"]))

    backend.step_log = steps = StepLog()
    with Timer() as t:
        engine = {r.gen_id: o for g in backend.generate(requests, config) for r, o in g}
    backend.step_log = None
    outputs = [engine[str(i)] for i in range(n)]
    log(f"engine (batch {engine_batch}): {t.line(tokens)}; {steps.row_steps} row-steps, "
        f"{len(steps.decode)} steps")

    tok = backend.tokenizer
    mismatches = [i for i, (o, static) in enumerate(zip(outputs, best["answers"]))
                  if (i < len(naive) and naive[i] != static) or o.n_new_tokens != len(static)
                  or o.text != tok.decode(static, skip_special_tokens=True).strip()
                  or any(s["answers"][i] != static for s in out["static"])]
    engine_tokens = sum(o.n_new_tokens for o in outputs)
    out.update(engine_tok_s=engine_tokens / t.wall, engine_cpu_tok_s=engine_tokens / t.cpu,
               engine_seconds=t.wall, engine_cpu_seconds=t.cpu,
               batched_tok_s=best["tok_s"], best_batch=best["batch"],
               batched_cpu_tok_s=best_cpu["cpu_tok_s"], best_cpu_batch=best_cpu["batch"],
               mismatches=len(mismatches), mismatched=mismatches[:10])
    out["engine_vs_batched"] = out["engine_tok_s"] / best["tok_s"]
    out["engine_vs_batched_cpu"] = out["engine_cpu_tok_s"] / best_cpu["cpu_tok_s"]
    if naive:
        out["engine_vs_naive"] = out["engine_tok_s"] / out["naive_tok_s"]
    for s in out["static"]:
        del s["answers"]
    out.update(engine_report(steps, best["row_steps"], best["batch"], best["seconds"],
                             t.wall, tokens))
    out["load"] = load_average()
    return out


class Timer:
    """Wall-clock and CPU seconds of a block. On a shared machine the CPU seconds of a
    one-thread run are the steadier measure: time the process waited for a core is not in
    them (its caches and memory bandwidth are still shared)."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = -time.perf_counter(), -time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall += time.perf_counter()
        self.cpu += time.process_time()

    def line(self, tokens: int) -> str:
        """'X tok/s (W s), Y tok/s of CPU time (C s)'."""
        return (f"{tokens / self.wall:.1f} tok/s ({self.wall:.1f} s), "
                f"{tokens / self.cpu:.1f} tok/s of CPU time ({self.cpu:.1f} s)")


def load_average() -> str | None:
    """The machine's load averages (1, 5, 15 minutes), where ``/proc/loadavg`` exists."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return None


def engine_report(steps, static_row_steps: int, static_batch: int, static_seconds: float,
                  engine_seconds: float, tokens: int) -> dict:
    """The split, the cost curve and the ceiling from an engine run's ``StepLog``.

    The ceiling has two parts. Row-steps: a static batch computes ``static_row_steps`` for
    ``tokens`` useful tokens; if a step cost were proportional to its rows, dropping
    finished rows could gain at most their ratio. The curve: a step costs a + b x rows
    (fitted on the engine's own forward passes), so a static batch's decoding costs
    steps x (a + b x batch) and the engine's schedule the sum of a + b x rows over its
    steps; their ratio is what this machine allows for decoding, before prefill.
    """
    a, b = steps.fit()
    static_steps = static_row_steps / static_batch
    static_decode = static_steps * (a + b * static_batch)
    engine_decode = sum(a + b * s[0] for s in steps.decode)
    forward, other = steps.forward_seconds, steps.other_seconds
    prefill, text = steps.prefill_seconds, steps.text_seconds
    return {
        "split": steps.split(), "fit_a_ms": 1000 * a, "fit_b_ms": 1000 * b,
        "forward_s": forward, "other_s": other, "prefill_s": prefill, "text_s": text,
        "copy_s": steps.copy_seconds,
        "prefill_tokens": sum(p[1] for p in steps.prefill),
        "outside_share": (other + text) / (forward + prefill + other + text),
        "engine_row_steps": steps.row_steps, "static_row_steps": static_row_steps,
        "row_step_ratio": static_row_steps / tokens,
        "curve_decode_ratio": static_decode / engine_decode,
        "curve_static_decode_s": static_decode, "curve_engine_decode_s": engine_decode,
        "zero_overhead_ratio": static_seconds / (forward + prefill),
        "measured_ratio": static_seconds / engine_seconds,
    }


def report_lines(out: dict) -> list[str]:
    """The split, curve and ceiling as lines for the terminal (and RESULTS.md)."""
    lines = ["engine split by live rows (decoding steps; prefill apart):",
             "  rows   steps  columns  forward ms/step  other ms/step  other share"]
    for g in out["split"]:
        lines.append(f"  {g['rows']:>5}  {g['steps']:>5}  {g['columns']:>7.0f}  "
                     f"{g['forward_ms']:>15.1f}  {g['other_ms']:>13.2f}  "
                     f"{100 * g['other_share']:>10.1f}%")
    lines += [
        f"engine totals: forward {out['forward_s']:.1f} s, prefill {out['prefill_s']:.1f} s "
        f"({out['prefill_tokens']} padded tokens), outside the model {out['other_s']:.2f} s "
        f"per-step work (of which copies {out['copy_s']:.2f} s) + {out['text_s']:.3f} s text "
        f"= {100 * out['outside_share']:.1f}% of the engine's time",
        f"per-step cost curve (forward): {out['fit_a_ms']:.0f} ms + {out['fit_b_ms']:.2f} ms "
        f"x rows (fitted on the engine's steps; per-group means above)",
        f"ceiling: static batch {out['best_batch']} runs {out['static_row_steps']} row-steps "
        f"for {out['tokens']} tokens (row-step ratio {out['row_step_ratio']:.2f}); the engine "
        f"runs {out['engine_row_steps']}. By the curve, static decoding costs "
        f"{out['curve_static_decode_s']:.0f} s and the engine's "
        f"{out['curve_engine_decode_s']:.0f} s: {out['curve_decode_ratio']:.2f}x for decoding. "
        f"Static {out['best_batch']} took {out['measured_ratio']:.2f}x the engine's time "
        f"({out['zero_overhead_ratio']:.2f}x its forward and prefill alone).",
    ]
    return lines
