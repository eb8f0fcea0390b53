"""``medharm-nb bench``: timings on this machine (``generate``, ``guard``, ``judge``); added
to the app by ``cli``."""

from __future__ import annotations

import typer

from medharm_nb.cli_common import fail, validation_failure

bench_app = typer.Typer(help="Benchmarks: timings on this machine (never run in tests).",
                        no_args_is_help=True)
"""``medharm-nb bench``."""


@bench_app.command("generate")
def bench_generate(
    model: str = typer.Option("smollm2-135m", help="Embedded model name, hub id or directory."),
    n: int = typer.Option(64, help="Number of prompts (neutral medical questions)."),
    max_new_tokens: int = typer.Option(64, help="Tokens per answer at most (the cap)."),
    batch_size: int = typer.Option(32, help="The engine's rows per batch at most."),
    gguf_file: str | None = typer.Option(None, help="GGUF file inside MODEL, if any."),
    quantization: str = typer.Option("none", help="none | nf4 | int8 (bitsandbytes)."),
    workload: str = typer.Option("fixed", help="fixed: every answer runs to the cap; mixed: "
                                               "each prompt its own answer length, most "
                                               "short, a few at the cap."),
    dtype: str | None = typer.Option(None, help="float32 | bfloat16 | float16 (default: the "
                                                "weights' own)."),
    naive_n: int = typer.Option(64, min=0, help="Mixed workload: the naive loop answers the "
                                                "first N prompts only (0: skip it)."),
    static_batch: list[int] = typer.Option(
        [], "--static-batch", min=1, help="Mixed workload: a static batch size to try, "
                                          "repeatable (default: the four largest powers of "
                                          "two up to N, at most 256)."),
) -> None:
    """Naive loop (one prompt at a time, plain generate) against the engine on the same
    prompts; checks the greedy outputs match. Fixed workload: the last line is
    'speedup=X.XX naive_tok_s=... engine_tok_s=...'. Mixed workload: static batches of
    plain generate at their best size too, the engine's split (forward against the rest,
    by live rows), the per-step cost curve and the ceiling; the last line is
    'engine_vs_batched=X.XX ...'."""
    from pydantic import ValidationError

    from medharm_nb.bench import bench_generate as run_bench
    from medharm_nb.bench_mixed import bench_mixed, report_lines
    from medharm_nb.config import parse_spec

    if workload not in ("fixed", "mixed"):
        fail(f"--workload is fixed or mixed, not {workload!r}")
    try:
        spec = parse_spec(model, name=model, gguf_file=gguf_file,
                          quantization=quantization, dtype=dtype)
        if workload == "mixed":
            out = bench_mixed(spec, n=n, cap=max_new_tokens, engine_batch=batch_size,
                              naive_n=naive_n, batch_sizes=tuple(static_batch) or None,
                              log=typer.echo)
            for line in report_lines(out):
                typer.echo(line)
            typer.echo(f"outputs: {out['mismatches']} of {n} differ between the ways "
                       f"{out['mismatched'] or ''}")
            typer.echo(f"load average before {out['load_before']}, after {out['load']}")
            naive = (f" engine_vs_naive={out['engine_vs_naive']:.2f} "
                     f"naive_tok_s={out['naive_tok_s']:.1f}" if naive_n else "")
            typer.echo(f"engine_vs_batched={out['engine_vs_batched']:.2f} "
                       f"engine_vs_batched_cpu={out['engine_vs_batched_cpu']:.2f} "
                       f"engine_tok_s={out['engine_tok_s']:.1f} "
                       f"batched_tok_s={out['batched_tok_s']:.1f} "
                       f"best_batch={out['best_batch']}{naive}")
            if out["mismatches"]:
                raise typer.Exit(1)
            return
        result = run_bench(spec, n=n, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           log=typer.echo)
    except ValidationError as err:
        validation_failure(err)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    if result.mismatches:
        typer.secho(f"{len(result.mismatches)} of {n} answers differ from the naive loop "
                    f"(prompts {result.mismatches[:10]}); exact in float32, while bf16/nf4/"
                    f"int8 batches round differently and can flip a near-tie token",
                    fg=typer.colors.RED, err=True)
    else:
        typer.echo(f"outputs: all {n} identical to the naive loop")
    from medharm_nb.plan import record_benchmark

    if spec.dtype in (None, "float32"):
        record_benchmark(spec.source, result.engine_tok_s)  # `medharm-nb plan` reads it
    if result.float32_changed is not None:
        typer.echo(f"{dtype}: {result.engine_tok_s / result.float32_tok_s:.2f}x the float32 "
                   f"engine's tok/s; {result.float32_changed} of {n} greedy answers change")
    typer.echo(result.summary())
    if result.mismatches:
        raise typer.Exit(1) from None



@bench_app.command("guard")
def bench_guard_command(
    guard: str = typer.Option("prompted-smollm2", help="A model guard's name."),
    n: int = typer.Option(256, min=1, help="Prompts to score (MedHarm-Open, in variants)."),
    tolerance: float = typer.Option(1e-3, help="Largest allowed difference in P(unsafe)."),
) -> None:
    """One item per forward pass against batched reading (prefill only) on the same prompts;
    checks the probabilities agree; the last line is 'speedup=X.XX naive_items_s=...
    batched_items_s=... max_abs_diff=...'."""
    from medharm_nb.bench import bench_guard

    try:
        out = bench_guard(guard, n=n, tolerance=tolerance, log=typer.echo)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    agree = out["max_abs_diff"] <= tolerance
    typer.echo(f"probabilities: {'agree' if agree else 'DIFFER'} within {tolerance:g}")
    typer.echo(f"speedup={out['speedup']:.2f} naive_items_s={out['naive_items_s']:.2f} "
               f"batched_items_s={out['batched_items_s']:.2f} "
               f"max_abs_diff={out['max_abs_diff']:.2e}")
    if not agree:
        raise typer.Exit(1)


@bench_app.command("judge")
def bench_judge(
    judge: str = typer.Option("rules", help="Judge name."),
    responses: str = typer.Option(..., help="Responses to judge: any judge-eval gold "
                                            "source or a MedSafetyBench folder."),
    repeat: int = typer.Option(3, min=1, help="Passes; the best is reported."),
    limit: int | None = typer.Option(None, min=1, help="Judge only the first N responses "
                                                       "(e.g. 1000)."),
) -> None:
    """Responses judged per CPU-second (one core) and per wall-second, and the wall time for
    1,000 responses at that rate; the last line is 'per_cpu_s=... per_wall_s=...
    wall_s_per_1000=... n=...'. The trained judge's harm model runs on a GPU when one is
    visible (batched by padded tokens)."""
    from medharm_nb import validation
    from medharm_nb.gold import load_responses
    from medharm_nb.judge import load_judge

    try:
        frame = load_responses(responses)
        frame = frame.head(limit) if limit else frame
        speed = validation.throughput(load_judge(judge), frame, repeat=repeat)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    typer.echo(f"per_cpu_s={speed['per_cpu_second']:.1f} "
               f"per_wall_s={speed['per_wall_second']:.1f} "
               f"wall_s_per_1000={1000 / speed['per_wall_second']:.1f} n={speed['n']}")
