"""The hf engine's key-value cache: fixed slots written in place, and what it tells the model.

``SlotCache`` is what the engine passes to a transformers model as its cache. For every
layer it holds a keys and a values tensor of ``rows x heads x columns x head_dim``,
allocated once per run: one decoding step writes one column for every row, in place
(transformers' ``DynamicCache`` concatenates, which copies the whole cache every step).
Attention reads a window of columns through a view, with a mask the engine builds.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

PREFIX_MIN = 16
"""Shared leading tokens worth computing once (a chat template's system prompt, a guard's
policy, a judge's rubric)."""


class SlotCache:
    """Keys and values of ``rows`` slots over ``columns`` columns, written in place.

    Passed to the model as its cache. ``update`` works in one of three modes: capturing the
    prompts' shared prefix (kept aside, once per run); filling slots with a prefill (the
    prefix and the new keys and values are written into the slots' columns, and returned, so
    a prompt attends to the prefix and itself only); or decoding (one column written for
    every row, the attended window returned).
    """

    def __init__(self, model, rows: int, columns: int):
        from transformers import DynamicCache

        self.rows, self.columns = rows, columns
        self.keys: list = []
        self.values: list = []
        self.prefix: list[tuple] = []  # per layer: the shared prefix's (keys, values)
        self.capturing = False
        self.fill: tuple | None = None  # (slot index tensor, first column) while prefilling
        self.n = self.lo = self.hi = 0
        # transformers' mask code asks a cache which layers slide, are linear or dummies:
        # answer as its own cache for this model would. Nothing else is delegated, so a
        # question this class does not answer fails loudly instead of being answered wrong.
        like = DynamicCache(config=base_model(model).config)
        self.is_sliding, self.is_compileable = like.is_sliding, False
        self.is_linear = getattr(like, "is_linear", [False] * len(self.is_sliding))
        self.is_dummy = getattr(like, "is_dummy", [False] * len(self.is_sliding))

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        """Capture the prefix, store a prefill, or write the current column; return what
        attention reads."""
        import torch

        if layer_idx == len(self.keys):  # allocate on the first call (heads, dims, dtype)
            for states, store in ((key_states, self.keys), (value_states, self.values)):
                store.append(torch.zeros((self.rows, states.shape[1], self.columns,
                                          states.shape[3]), dtype=states.dtype,
                                         device=states.device))
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if self.capturing:
            self.prefix.append((key_states, value_states))
            return key_states, value_states
        if self.fill is not None:
            slots, first = self.fill
            if self.prefix:
                rows = key_states.shape[0]
                key_states, value_states = (
                    torch.cat([shared.expand(rows, -1, -1, -1), states], dim=2)
                    for shared, states in zip(self.prefix[layer_idx],
                                              (key_states, value_states)))
            width = key_states.shape[2]
            keys[slots, :, first:first + width] = key_states
            values[slots, :, first:first + width] = value_states
            return key_states, value_states
        keys[:self.n, :, self.hi] = key_states[:, :, 0]
        values[:self.n, :, self.hi] = value_states[:, :, 0]
        return keys[:self.n, :, self.lo:self.hi + 1], values[:self.n, :, self.lo:self.hi + 1]

    @property
    def shared(self) -> int:
        """Tokens of the captured prefix (0: none)."""
        return self.prefix[0][0].shape[2] if self.prefix else 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Cached tokens before the query, as transformers' mask code reads it: the prefix
        while prefilling (a newcomer attends to it and its own prompt only)."""
        if self.capturing:
            return 0
        return self.shared if self.fill is not None else self.hi - self.lo

    def get_query_offset(self, layer_idx: int = 0) -> int:
        """Where the query starts, for transformers' mask code: after the cached tokens."""
        return self.get_seq_length()

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        """(key length, offset) for transformers' mask code (prefill only: decoding passes
        its own mask)."""
        return self.get_seq_length() + query_length, 0

    def move_rows(self, src, dst) -> None:
        """Copy the live window of rows ``src`` into rows ``dst`` (disjoint), every layer."""
        for store in (self.keys, self.values):
            for tensor in store:
                tensor[dst, :, self.lo:self.hi] = tensor[src, :, self.lo:self.hi]

    def shift(self, by: int) -> None:
        """Move the window ``[lo, hi)`` of the first ``n`` rows ``by`` columns to the left,
        in chunks of ``by`` columns so that no chunk overwrites what is still to be read."""
        for store in (self.keys, self.values):
            for tensor in store:
                for start in range(self.lo, self.hi, by):
                    end = min(start + by, self.hi)
                    tensor[:self.n, :, start - by:end - by] = tensor[:self.n, :, start:end]


def cache_keyword(model) -> str:
    """The keyword the model's forward takes its cache by (``cache`` in transformers 5.x,
    ``past_key_values`` before)."""
    params = inspect.signature(base_model(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def base_model(model):
    """The transformers model under a peft wrapper (the model itself when unwrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def attention_kinds(model, columns: int) -> str | None:
    """None when every layer attends to the whole cache (or its sliding window is wider than
    ``columns``); else ``'sliding'`` (every layer slides) or ``'mixed'`` (full and sliding
    layers, as ``config.layer_types`` lists them).

    Raises:
        ValueError: A layer kind the engine does not handle (linear attention, chunks).
    """
    config = base_model(model).config.get_text_config(decoder=True)
    types = getattr(config, "layer_types", None) or []
    unknown = set(types) - {"full_attention", "sliding_attention"}
    if unknown:
        raise ValueError(f"the hf engine handles full and sliding-window attention layers, "
                         f"not {sorted(unknown)} ({type(base_model(model)).__name__})")
    window = getattr(config, "sliding_window", None)
    if not window or window >= columns:
        return None
    if "sliding_attention" in types:
        return "mixed" if "full_attention" in types else "sliding"
    if types:  # every layer full: the window setting is not used
        return None
    return "sliding" if getattr(config, "use_sliding_window", True) else None


def shared_prefix(sequences: Sequence[list[int]]) -> int:
    """Leading tokens all sequences share, leaving each at least one token of its own."""
    first, shortest = sequences[0], min(map(len, sequences))
    n = 0
    while n < shortest - 1 and all(s[n] == first[n] for s in sequences):
        n += 1
    return n


