"""GPU benchmark of the hf engine on an 8B Llama-shaped model with random weights.

Needs no downloaded weights: the model is built from a Llama-3-8B-shaped config with random
weights (the same compute as real ones), saved to a temporary folder with a word-level
tokenizer whose vocabulary fills the model's, and loaded back through the hf backend, in
bf16 and/or quantized to nf4. For each it reports:

- naive: a few prompts of the workload, one at a time, plain ``model.generate``;
- raw: ``model.generate`` on fixed batch sizes, 128 new tokens, every sequence to the end
  (the numbers the issue quotes for an H200);
- engine: the hf backend on the whole workload, 1,100 prompts of realistic mixed lengths
  (prompts of 15 to 400 words; most answers short, one in ten 512 tokens). Random weights
  never produce a stop token, so each answer ends after its drawn length (the backend's
  ``answer_lengths`` hook), as a real model's would at its end-of-sequence token;
- raw@B on the workload: ``model.generate`` in batches of B on the same workload, where a
  batch runs until its longest answer is done: tokens/s counts the answers' tokens only;
- the engine's split: per decoding step, the model's forward pass against everything else
  (picking, stop checks, bookkeeping, copies), by live rows, with the per-step cost curve
  and the prefill (``hf_steplog.StepLog``; the device is synchronized around each forward
  pass while it is kept, so the engine run that measures it is the one reported).

    python benchmarks/gpu_bench.py                      # bf16 and nf4, the full workload
    python benchmarks/gpu_bench.py --quant nf4 --out nf4.json
    python benchmarks/gpu_bench.py --tiny               # tiny model: checks the code on a CPU

Every phase prints one line as it finishes; ``--out`` writes all numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medharm_nb.generate import Request, build_messages  # noqa: E402
from medharm_nb.generate.backends import hf, hf_models, hf_steplog  # noqa: E402
from medharm_nb.records import GenConfig, ModelSpec  # noqa: E402

WORDS = (
    "patient doctor nurse pharmacist clinic hospital medicine tablet dose label storage "
    "symptom fever cough headache pain rest water sleep exercise diet heart lung kidney "
    "liver skin blood pressure sugar vaccine infection virus bacteria allergy asthma "
    "diabetes safety question answer explain describe how what why when should could "
    "the a an of to in for with on and or is are be can do does please help me my our "
    "child adult parent older student leaflet exam course community centre simple clear "
    "short brief friendly factual accurate general advice information guideline common "
    "normal healthy risk care check visit test result treatment plan follow daily week"
).split()
SPECIALS = ["<pad>", "<unk>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} "
                 "{% endfor %}<|assistant|>")


def model_config(tiny: bool):
    """Llama-3-8B's shape, or a tiny one for checking the code on a CPU."""
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, vocab_size=1024,
                           max_position_embeddings=2048, eos_token_id=2, pad_token_id=0,
                           bos_token_id=None, tie_word_embeddings=False)
    return LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                       max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
                       eos_token_id=2, pad_token_id=0, bos_token_id=None,
                       tie_word_embeddings=False)


def build_model(folder: Path, tiny: bool) -> None:
    """Save a random-weight model (bf16) and a word-level tokenizer into ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    config = model_config(tiny)
    vocab = {w: i for i, w in enumerate(SPECIALS + list(WORDS))}
    vocab.update({f"w{i}": i for i in range(len(vocab), config.vocab_size)})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>",
        chat_template=CHAT_TEMPLATE).save_pretrained(folder)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    with torch.no_grad():  # logit 0 for EOS, below the largest of the random others: the
        model.lm_head.weight[config.eos_token_id] = 0  # answers end at their drawn length
    model.save_pretrained(folder, max_shard_size="5GB")
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


def workload(n: int, tiny: bool, seed: int = 0) -> list[tuple[str, int]]:
    """``n`` (prompt, answer length) pairs: mixed prompt lengths, most answers short."""
    rng = random.Random(seed)
    scale = 8 if tiny else 1
    out = []
    for _ in range(n):
        r = rng.random()
        words = (rng.randint(15, 60) if r < 0.7 else rng.randint(60, 200) if r < 0.95
                 else rng.randint(200, 400)) // scale
        r = rng.random()
        answer = (rng.randint(16, 64) if r < 0.6 else rng.randint(64, 192) if r < 0.9
                  else 512) // scale
        out.append((" ".join(rng.choice(WORDS) for _ in range(max(words, 3))), max(answer, 2)))
    return out


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_gib() -> dict:
    """Peak GPU memory since the last call (empty on a CPU)."""
    if not torch.cuda.is_available():
        return {}
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return {"peak_gib": round(peak, 1)}


def raw_generate(backend, prompts: list[str], new_tokens: list[int], batch: int) -> dict:
    """``model.generate`` in left-padded batches (every row runs to the batch's longest)."""
    model, tok = backend.model, backend.tokenizer
    useful = sum(new_tokens)
    peak_gib()
    sync()
    began = time.perf_counter()
    for start in range(0, len(prompts), batch):
        chunk = [backend.render(build_messages(backend.spec, p))
                 for p in prompts[start:start + batch]]
        most = max(new_tokens[start:start + batch])
        enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False,
                  padding_side="left").to(model.device)
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=most, min_new_tokens=most, do_sample=False,
                           pad_token_id=tok.pad_token_id, temperature=None, top_p=None,
                           top_k=None)
    sync()
    seconds = time.perf_counter() - began
    return {"prompts": len(prompts), "batch": batch, "tokens": useful,
            "seconds": round(seconds, 2), "tok_s": round(useful / seconds, 1), **peak_gib()}


def engine(backend, items: list[tuple[str, int]], max_new: int, batch: int) -> dict:
    """The hf backend's engine on the whole workload."""
    requests = [Request(gen_id=str(i), messages=[], sample=0, seed=0,
                        rendered=backend.render(build_messages(backend.spec, p)))
                for i, (p, _) in enumerate(items)]
    backend.answer_lengths = {str(i): n for i, (_, n) in enumerate(items)}
    backend.step_log = log = hf_steplog.StepLog()
    peak_gib()
    sync()
    began = time.perf_counter()
    groups = list(backend.generate(requests, GenConfig(max_new_tokens=max_new,
                                                       batch_size=batch)))
    sync()
    seconds = time.perf_counter() - began
    backend.step_log = None
    outputs = [o for g in groups for _, o in g]
    tokens = sum(o.n_new_tokens for o in outputs)
    assert len(outputs) == len(items) and not any(o.error for o in outputs)
    assert tokens == sum(n for _, n in items), "every answer must end at its drawn length"
    return {"prompts": len(items), "tokens": tokens, "rows": outputs[0].batch_size,
            "seconds": round(seconds, 2), "tok_s": round(tokens / seconds, 1), **peak_gib(),
            "split": split(log)}


def split(log: hf_steplog.StepLog) -> dict:
    """The engine's time: forward against the rest per step, by live rows; the cost curve."""
    a, b = log.fit()
    forward, other = log.forward_seconds, log.other_seconds
    return {"steps": len(log.decode), "row_steps": log.row_steps,
            "forward_s": round(forward, 2), "other_s": round(other, 2),
            "other_share": round(other / (forward + other), 4),
            "copy_s": round(log.copy_seconds, 3), "text_s": round(log.text_seconds, 3),
            "prefill_s": round(log.prefill_seconds, 2),
            "prefill_tokens": sum(p[1] for p in log.prefill),
            "curve_ms": [round(1000 * a, 2), round(1000 * b, 4)],
            "by_rows": [{k: round(v, 4) if isinstance(v, float) else v for k, v in g.items()}
                        for g in log.split()]}


def split_lines(name: str, split: dict) -> list[str]:
    """The split as lines: per row group, forward and other milliseconds per step."""
    lines = [f"[{name}] engine split: forward {split['forward_s']} s, outside the forward "
             f"{split['other_s']} s ({100 * split['other_share']:.1f}%), prefill "
             f"{split['prefill_s']} s ({split['prefill_tokens']} tokens), text "
             f"{split['text_s']} s; cost per step {split['curve_ms'][0]} ms + "
             f"{split['curve_ms'][1]} ms x rows"]
    lines += [f"[{name}]   rows {g['rows']:>9}: {g['steps']:>5} steps, forward "
              f"{g['forward_ms']:.2f} ms, other {g['other_ms']:.2f} ms "
              f"({100 * g['other_share']:.1f}%), {g['columns']:.0f} columns"
              for g in split["by_rows"]]
    return lines


def run_one(folder: Path, quant: str, args) -> dict:
    """All phases for one weight format; prints a line per phase."""
    name = "bf16" if quant == "none" else quant
    spec = ModelSpec(name=name, source=str(folder), quantization=quant)
    backend = hf.HFBackend(spec)
    began = time.perf_counter()
    backend.prepare()
    result = {"load_seconds": round(time.perf_counter() - began, 1)}
    if torch.cuda.is_available():
        result["weights_gib"] = round(torch.cuda.memory_allocated() / 2**30, 1)
    print(f"[{name}] loaded in {result['load_seconds']} s", flush=True)
    items = workload(args.n, args.tiny)
    prompts, lengths = [p for p, _ in items], [n for _, n in items]
    # Warm-up (kernels, allocator) outside the timings.
    raw_generate(backend, prompts[:2], [2, 2], 2)

    naive = raw_generate(backend, prompts[:args.naive_n], lengths[:args.naive_n], 1)
    result["naive"] = naive
    print(f"[{name}] naive loop: {naive}", flush=True)
    fixed = 8 if args.tiny else 128
    # Chat-length prompts (the short class) so that padding does not dominate the batch.
    short = [p for p in prompts if len(p.split()) <= (8 if args.tiny else 60)]
    result["raw_fixed"] = []
    for batch in args.batch_sizes:
        row = raw_generate(backend, (short * (batch // len(short) + 1))[:batch],
                           [fixed] * batch, batch)
        result["raw_fixed"].append(row)
        print(f"[{name}] raw generate, {fixed} new tokens: {row}", flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    eng = engine(backend, items, max(lengths), args.engine_batch)
    result["engine"] = eng
    print(f"[{name}] engine on the workload: "
          f"{ {k: v for k, v in eng.items() if k != 'split'} }", flush=True)
    print("\n".join(split_lines(name, eng["split"])), flush=True)
    if args.raw_workload_batch:
        raw = raw_generate(backend, prompts, lengths, args.raw_workload_batch)
        result["raw_workload"] = raw
        print(f"[{name}] raw generate on the workload: {raw}", flush=True)
    hf_models.load_model.cache_clear()
    hf._free_gpu_memory()
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model (checks the code on CPU)")
    parser.add_argument("--quant", default="none,nf4", help="comma list of none (bf16), nf4, int8")
    parser.add_argument("--n", type=int, default=None, help="workload prompts (1100; tiny: 64)")
    parser.add_argument("--naive-n", type=int, default=4, help="prompts for the naive loop")
    parser.add_argument("--batch-sizes", default=None,
                        help="raw generate batch sizes (1,256,1024; tiny: 1,16)")
    parser.add_argument("--engine-batch", type=int, default=4096,
                        help="engine rows per batch at most (the token budget decides)")
    parser.add_argument("--raw-workload-batch", type=int, default=256,
                        help="raw generate on the whole workload at this batch (0: skip)")
    parser.add_argument("--folder", type=Path, default=None,
                        help="reuse or keep the random-weight model here (default: temp)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    args.n = args.n or (64 if args.tiny else 1100)
    args.batch_sizes = [int(b) for b in (args.batch_sizes or
                                         ("1,16" if args.tiny else "1,256,1024")).split(",")]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"device: {device}; torch {torch.__version__}", flush=True)

    folder = args.folder or Path(tempfile.mkdtemp(prefix="medharm-gpu-bench-"))
    results = {"device": device, "tiny": args.tiny, "n": args.n, "formats": {}}
    try:
        if not (folder / "config.json").exists():
            began = time.perf_counter()
            build_model(folder, args.tiny)
            print(f"built and saved the random-weight model in "
                  f"{time.perf_counter() - began:.0f} s", flush=True)
        for quant in args.quant.split(","):
            results["formats"][quant] = run_one(folder, quant, args)
            if args.out:  # after each format, so a timeout keeps what finished
                args.out.write_text(json.dumps(results, indent=2))
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
