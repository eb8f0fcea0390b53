"""Benchmarks: the generation engine against a naive loop on the same prompts.

``medharm-nb bench generate`` runs N neutral medical questions of varied lengths through
plain ``model.generate`` one prompt at a time, then through the hf backend's engine, checks
that the greedy outputs are identical and reports tokens per second for both. Timings are
wall-clock on whatever else the machine is doing: run it on a quiet machine, and never
assert them in tests. On a small shared CPU, ``OMP_NUM_THREADS=1`` keeps torch's threads
from spinning against other jobs (that hurts the one-prompt loop most).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from medharm_nb.records import GenConfig, ModelSpec

QUESTIONS: tuple[str, ...] = (
    "What is a normal resting heart rate for an adult?",
    "How should medicines be stored safely in a home with young children?",
    "Name three common symptoms of dehydration.",
    "What does a pharmacist check before handing over a prescription?",
    "Why is hand washing important in hospitals?",
    "What is the difference between a virus and a bacterium?",
    "How do vaccines train the immune system?",
    "What is blood pressure, and what do the two numbers mean?",
    "When should someone with a fever see a doctor?",
    "What is the purpose of a tetanus booster?",
    "How does regular exercise help the heart?",
    "What is type 2 diabetes?",
    "Why do antibiotics not work against the common cold?",
    "What should be in a basic first-aid kit?",
    "How much sleep do teenagers need?",
    "What is an allergy?",
    "How can people lower their risk of food poisoning at home?",
    "What does a normal body temperature range look like?",
    "Why do doctors recommend reading medicine labels carefully?",
    "What is the role of the kidneys?",
    "How is asthma usually managed?",
    "What are the benefits of drinking enough water?",
    "What is a generic medicine?",
    "How should old or unused medicines be disposed of?",
)
CONTEXTS: tuple[str, ...] = (
    "",
    "Briefly: ",
    "I am a nursing student revising for an exam. ",
    "My grandmother asked me this and I want to give her an accurate, simple answer "
    "that she can understand without medical training. ",
    "I am writing a short health leaflet for a community centre. It should be friendly, "
    "factual and suitable for adults of all ages, and it must not replace advice from a "
    "doctor or pharmacist. Please help with this question for the leaflet. ",
)


def bench_prompts(n: int) -> list[str]:
    """``n`` neutral medical questions of varied lengths (the same ones on every call)."""
    # 24 questions x 5 contexts, coprime counts: the first 120 prompts are all different.
    return [CONTEXTS[i % len(CONTEXTS)] + QUESTIONS[i % len(QUESTIONS)] for i in range(n)]


@dataclass
class BenchResult:
    """Timings of one benchmark run; tokens exclude the stop token."""

    n: int
    naive_seconds: float
    engine_seconds: float
    naive_tokens: int
    engine_tokens: int
    mismatches: list[int] = field(default_factory=list)
    """Indices of prompts whose engine answer differs from the naive loop's."""
    float32_changed: int | None = None
    """With a reduced dtype: answers that differ from the same engine in float32."""
    float32_tok_s: float | None = None
    """With a reduced dtype: the engine's tokens per second in float32."""

    @property
    def naive_tok_s(self) -> float:
        """Naive loop: generated tokens per second."""
        return self.naive_tokens / self.naive_seconds

    @property
    def engine_tok_s(self) -> float:
        """Engine: generated tokens per second."""
        return self.engine_tokens / self.engine_seconds

    @property
    def speedup(self) -> float:
        """Engine tokens/s over naive tokens/s."""
        return self.engine_tok_s / self.naive_tok_s

    def summary(self) -> str:
        """The benchmark's last line."""
        return (f"speedup={self.speedup:.2f} naive_tok_s={self.naive_tok_s:.1f} "
                f"engine_tok_s={self.engine_tok_s:.1f}")


def naive_answer(backend, rendered: str, max_new_tokens: int) -> list[int]:
    """One prompt through plain ``model.generate`` (greedy); new tokens before the stop."""
    return static_generate(backend, [rendered], [max_new_tokens], 1)[0][0]


def static_generate(backend, rendered: list[str], limits: list[int],
                    size: int) -> tuple[list[list[int]], int]:
    """Plain ``model.generate`` in batches of ``size`` (left-padded, greedy), each running to
    its longest answer; every answer cut at its stop or its limit. Returns the answers and
    the row-steps run (rows x steps, summed over batches)."""
    import torch

    model, tok = backend.model, backend.tokenizer
    answers: list[list[int]] = []
    row_steps = 0
    for start in range(0, len(rendered), size):
        chunk = list(range(start, min(len(rendered), start + size)))
        enc = tok([rendered[i] for i in chunk], return_tensors="pt", padding=True,
                  padding_side="left", add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max(limits[i] for i in chunk),
                                 do_sample=False, eos_token_id=sorted(backend.stop_ids),
                                 pad_token_id=tok.pad_token_id, temperature=None,
                                 top_p=None, top_k=None)
        width = enc["input_ids"].shape[1]
        row_steps += len(chunk) * (out.shape[1] - width)
        for row, i in enumerate(chunk):
            new = out[row, width:].tolist()
            stops = [j for j, t in enumerate(new) if t in backend.stop_ids]
            answers.append((new[:stops[0]] if stops else new)[:limits[i]])
    return answers, row_steps


def bench_generate(spec: ModelSpec, n: int = 64, max_new_tokens: int = 64,
                   batch_size: int = 16, log: Callable[[str], None] = print) -> BenchResult:
    """Time the naive loop and the engine on the same ``n`` prompts and compare outputs.

    Args:
        spec: The model (an hf spec).
        n: Number of prompts.
        max_new_tokens: Tokens per answer at most.
        batch_size: The engine's rows per batch at most.
        log: Where progress lines go.
    """
    from medharm_nb.generate import Request, build_messages
    from medharm_nb.generate.backends.hf import HFBackend

    backend = HFBackend(spec)
    began = time.perf_counter()
    backend.prepare()
    import torch

    log(f"loaded {spec.source} (quantization {spec.quantization}) in "
        f"{time.perf_counter() - began:.1f} s on {backend.model.device}, "
        f"{torch.get_num_threads()} torch thread(s)")
    rendered = [backend.render(build_messages(spec, p)) for p in bench_prompts(n)]
    requests = [Request(gen_id=str(i), messages=[], rendered=r) for i, r in enumerate(rendered)]
    config = GenConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
    # Warm both paths up on one short prompt, so neither pays the first call's set-up.
    naive_answer(backend, rendered[0], 2)
    list(backend.generate(requests[:1], config.model_copy(update={"max_new_tokens": 2})))

    began = time.perf_counter()
    naive = [naive_answer(backend, r, max_new_tokens) for r in rendered]
    naive_seconds = time.perf_counter() - began
    log(f"naive loop: {n} prompts, {sum(map(len, naive))} tokens in {naive_seconds:.1f} s")

    began = time.perf_counter()
    engine = {req.gen_id: out for group in backend.generate(requests, config)
              for req, out in group}
    engine_seconds = time.perf_counter() - began
    outputs = [engine[str(i)] for i in range(n)]
    log(f"engine:     {n} prompts, {sum(o.n_new_tokens for o in outputs)} tokens in "
        f"{engine_seconds:.1f} s (batch_size {batch_size})")

    tok = backend.tokenizer
    mismatches = [i for i, (a, o) in enumerate(zip(naive, outputs))
                  if o.text != tok.decode(a, skip_special_tokens=True).strip()
                  or o.n_new_tokens != len(a)]
    result = BenchResult(n, naive_seconds, engine_seconds, sum(map(len, naive)),
                         sum(o.n_new_tokens for o in outputs), mismatches)
    if spec.dtype not in (None, "float32"):  # how many greedy answers the dtype changes
        reference = HFBackend(spec.model_copy(update={"dtype": "float32"}))
        reference.prepare()
        began = time.perf_counter()
        full = {r.gen_id: o for g in reference.generate(requests, config) for r, o in g}
        seconds = time.perf_counter() - began
        result.float32_tok_s = sum(o.n_new_tokens for o in full.values()) / seconds
        result.float32_changed = sum(full[str(i)].text != outputs[i].text for i in range(n))
        log(f"float32 engine: {result.float32_tok_s:.1f} tok/s; {result.float32_changed} of "
            f"{n} answers differ from {spec.dtype}")
    return result


# -- guards: one item per forward pass against batched reading ------------------------------

def bench_guard(name: str, n: int = 256, tolerance: float = 1e-3,
                log: Callable[[str], None] = print) -> dict[str, float]:
    """Score ``n`` queries' prompts with a verdict guard one item at a time and in batches
    (``VerdictGuard.score(batched=...)``), check the probabilities agree within
    ``tolerance`` and time both.

    The items are MedHarm-Open's queries (harmful and benign, 420 of them, repeated in their
    prompt variants when ``n`` is larger): real lengths, not one repeated prompt.

    Returns:
        ``n``, ``naive_items_s``, ``batched_items_s``, ``speedup``, ``max_abs_diff``,
        ``tolerance``.
    """
    from medharm_nb.data import load_queries
    from medharm_nb.guard import load_guard
    from medharm_nb.variants import VARIANTS, apply_variants

    guard = load_guard(name)
    if not hasattr(guard, "read_many"):
        raise ValueError(f"guard {name!r} is not a model guard; nothing to batch")
    texts = apply_variants(load_queries("medharm-open"), tuple(VARIANTS))["text"].to_list()
    items = [{"prompt": t} for t in texts[:n]]
    began = time.perf_counter()
    guard.warm()
    log(f"loaded {name} in {time.perf_counter() - began:.1f} s; scoring {len(items)} prompts")
    guard.score(items[:2])  # warm-up: neither path pays the first call's set-up
    began = time.perf_counter()
    naive = guard.score(items, batched=False)
    naive_s = time.perf_counter() - began
    log(f"one at a time: {naive_s:.1f} s")
    began = time.perf_counter()
    batched = guard.score(items)
    batched_s = time.perf_counter() - began
    log(f"batched:       {batched_s:.1f} s")
    diff = max(abs(a.p_unsafe - b.p_unsafe) for a, b in zip(naive, batched))
    return {"n": len(items), "naive_items_s": len(items) / naive_s,
            "batched_items_s": len(items) / batched_s, "speedup": naive_s / batched_s,
            "max_abs_diff": diff, "tolerance": tolerance}
