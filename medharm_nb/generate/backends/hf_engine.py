"""The hf backend's decoding loop: continuous batching over a key-value cache of fixed slots.

The cache (``hf_slots.SlotCache``) is allocated once per run: for every layer a keys and a
values tensor of ``rows x heads x columns x head_dim``. Each row (slot) holds one answer in
progress; all rows write their next token into the same column, so one step writes one
column in place (transformers' ``DynamicCache`` instead concatenates, copying the whole
cache, every step). Attention reads the window of columns ``[lo, hi]`` that live rows use,
through a view; a boolean mask hides each row's padding and its slot's former occupants.

- **Prefill**: the prompts' shared beginning (chat template, system prompt) runs once per
  run and is copied into each newcomer's slot; the rest of the newcomers' prompts run in
  groups of similar length (padding is computed too), right-aligned to end at ``hi``.
- **Refill**: when a row finishes (a stop token, or its limit of new tokens), its slot is
  free. While prompts wait, free slots are refilled with the next ones, which join the
  next decoding step: the batch stays full instead of running empty rows.
- **Compaction**: when no prompt waits, the last live rows move into the free slots (a copy
  of those rows only), so the batch shrinks and every step costs only its live rows.
- **Shift**: when ``hi`` reaches the end of the buffer, the window moves back to the start
  (one copy of the live window, at most once every ``width / SLACK_SHARE`` steps).

Per step, the Python work does not grow with the rows: picking, stop checks, counting and
keeping the new tokens are tensor operations, with one host sync to learn which rows ended;
an answer's tokens are read back and turned into text once, when it ends. Sliding-window
layers (Mistral, Qwen2, Gemma) get a mask of their window from each column's position.

Greedy float32 output equals a one-prompt-at-a-time run (padding and the other rows are
masked); sampled output is reproducible, each request drawing from its own generator.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

from medharm_nb.generate.backends.hf_slots import (
    PREFIX_MIN,
    SlotCache,
    attention_kinds,
    base_model,
    cache_keyword,
    shared_prefix,
)
from medharm_nb.generate.backends.hf_steplog import Clock, StepLog
from medharm_nb.records import GenConfig

REFILL_SHARE = 16
"""Refill once free slots are 1/REFILL_SHARE of the rows (or every waiting prompt fits), so
newcomers are prefilled a few at a time rather than one forward pass per finished row."""
SLACK_SHARE = 4
"""The buffer holds width + width/SLACK_SHARE columns: the window shifts back that rarely."""
PAD_SHARE = 0.25
"""A prefill group takes the next prompt while its padding stays under this share of its
real tokens (prefill costs padded tokens; a group per length keeps them few)."""

class _Slots:
    """One engine run's state: the cache, and per slot its prompt, position, new tokens."""

    def __init__(self, model, prompts: Sequence[list[int]], limits: Sequence[int],
                 seeds: Sequence[int], config: GenConfig, rows: int, stop_ids: set[int],
                 pad_id: int, log: StepLog | None):
        import torch

        self.model, self.prompts, self.limits, self.seeds = model, prompts, limits, seeds
        self.config, self.rows, self.pad_id, self.log = config, rows, pad_id, log
        self.device = device = model.device
        # Room for the longest prompt and answer. The longest of the prompts still waiting
        # decides how far right the window must stay for a newcomer's prompt to fit.
        width = max(map(len, prompts)) + max(limits)
        self.longest_from = [0] * (len(prompts) + 1)
        for i in range(len(prompts) - 1, -1, -1):
            self.longest_from[i] = max(self.longest_from[i + 1], len(prompts[i]))
        self.cache = SlotCache(model, rows, columns(width))
        self.kinds = attention_kinds(model, width)
        self.window = (base_model(model).config.get_text_config(decoder=True).sliding_window
                       if self.kinds else 0)
        self.keyword = cache_keyword(model)

        def zeros(*shape, dtype=torch.long):
            return torch.zeros(shape, dtype=dtype, device=device)

        width = self.cache.columns
        self.valid = zeros(rows, width, dtype=torch.bool)  # which columns a row attends
        self.colpos = zeros(rows, width) if self.kinds else None  # positions (windows)
        self.pos, self.tokens, self.count = zeros(rows), zeros(rows), zeros(rows)
        self.limit = zeros(rows)
        self.new = zeros(rows, max(limits) + 1)  # each row's new tokens so far
        self.stops = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
        self.every = torch.arange(rows, device=device)
        self.sampled = config.temperature > 0
        self.idle = torch.Generator(device=device)  # free slots draw from it, wasted
        self.generators = [self.idle] * rows
        self.owner: list[int | None] = [None] * rows  # slot -> prompt index; None: free
        self.starts = [0] * rows  # slot -> its first valid column
        self.free: list[int] = []  # free slots below n
        self.queue = deque(range(len(prompts)))
        self.cache.hi = self.longest_from[0]
        self.n = self.live = 0  # slots in use (free ones included), and live rows
        self.filled = (0, 0)  # the last prefill's rows and padded tokens (for the log)

    def per_row(self):
        """The tensors that hold one value or row per slot (moved with the slot)."""
        row = (self.valid, self.pos, self.tokens, self.count, self.limit, self.new)
        return row + ((self.colpos,) if self.colpos is not None else ())

    def wants_refill(self) -> bool:
        room = len(self.free) + self.rows - self.n
        return bool(self.queue) and room > 0 and room >= min(
            max(1, self.rows // REFILL_SHARE), len(self.queue))

    def refill(self) -> list[tuple[int, list[int]]]:
        """Prefill the next waiting prompts into the free slots (below n first), in groups
        of similar length; return the answers that ended at once."""
        take = min(len(self.free) + self.rows - self.n, len(self.queue))
        slots = sorted(self.free)[:take]
        slots += list(range(self.n, self.n + take - len(slots)))
        self.free = sorted(set(self.free) - set(slots))
        self.n = max(self.n, slots[-1] + 1)
        chosen = [self.queue.popleft() for _ in slots]
        done, start, padded = [], 0, 0
        shared = self.cache.shared
        for size in _length_groups([len(self.prompts[i]) - shared for i in chosen]):
            done += self._prefill(slots[start:start + size], chosen[start:start + size])
            padded += size * max(len(self.prompts[i]) - shared
                                 for i in chosen[start:start + size])
            start += size
        self.filled = (len(slots), padded)
        return done

    def _prefill(self, slots: list[int], chosen: list[int]) -> list[tuple[int, list[int]]]:
        """One forward pass over prompts ``chosen`` (after the shared prefix), left-padded
        to the longest, into ``slots``: the prefix, padding and prompt end at ``hi``."""
        import torch

        cache, device, shared = self.cache, self.device, self.cache.shared
        batch = [self.prompts[i][shared:] for i in chosen]
        longest = max(map(len, batch))
        ids = torch.tensor([[self.pad_id] * (longest - len(p)) + p for p in batch],
                           device=device)
        mask = torch.tensor([[1] * shared + [0] * (longest - len(p)) + [1] * len(p)
                             for p in batch], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        index = torch.tensor(slots, device=device)
        first = cache.hi - longest - shared
        cache.fill = (index, first)
        try:
            logits = self.model(input_ids=ids, attention_mask=mask,
                                position_ids=positions[:, shared:], use_cache=True,
                                logits_to_keep=1, **{self.keyword: cache}).logits[:, -1]
        finally:
            cache.fill = None
        self.valid[index] = False
        self.valid[index, first:cache.hi] = mask.bool()
        if self.colpos is not None:
            self.colpos[index, first:cache.hi] = positions
        self.pos[index] = torch.tensor([len(self.prompts[i]) for i in chosen], device=device)
        self.limit[index] = torch.tensor([self.limits[i] for i in chosen], device=device)
        self.count[index] = 0
        for slot, i in zip(slots, chosen):
            self.owner[slot], self.starts[slot] = i, first
            if self.sampled:
                self.generators[slot] = torch.Generator(device=device).manual_seed(
                    self.seeds[i])
        cache.lo = min(cache.lo, first) if self.live else first
        self.live += len(slots)
        picked = _pick(logits, self.config, [self.generators[s] for s in slots])
        self.tokens[index] = picked
        return self.settle(index, picked)

    def capture_prefix(self) -> None:
        """Run the prompts' shared beginning (chat template, system prompt) once, if it is
        at least ``PREFIX_MIN`` tokens; every prefill then starts after it."""
        import torch

        shared = shared_prefix(self.prompts) if len(self.prompts) > 1 else 0
        if shared < PREFIX_MIN:
            return
        self.cache.capturing = True
        try:
            self.model(input_ids=torch.tensor([self.prompts[0][:shared]], device=self.device),
                       use_cache=True, logits_to_keep=1, **{self.keyword: self.cache})
        finally:
            self.cache.capturing = False
        self.filled = (1, shared)

    def settle(self, index, picked) -> list[tuple[int, list[int]]]:
        """Keep each row's new token unless it is a stop; free the rows that ended."""
        import torch

        count = self.count[index]
        stop = torch.isin(picked, self.stops)
        # A free slot's count runs on (its tokens are never read): clamp where it writes.
        self.new[index, count.clamp(max=self.new.shape[1] - 1)] = picked
        count += ~stop
        self.count[index] = count
        done = []
        for k in (stop | (count >= self.limit[index])).nonzero().flatten().tolist():
            slot = int(index[k])
            i = self.owner[slot]
            if i is None:  # a free slot
                continue
            done.append((i, self.new[slot, :int(self.count[slot])].tolist()))
            self.owner[slot], self.generators[slot] = None, self.idle
            self.free.append(slot)
            self.live -= 1
        if done and self.live:
            self.cache.lo = min(self.starts[s] for s in range(self.n)
                                if self.owner[s] is not None)
        return done

    def compact(self) -> None:
        """Move the last live rows into the free slots below them: only those rows are
        copied, and every later step costs only the live rows."""
        import torch

        tail = [s for s in range(self.n - 1, -1, -1) if self.owner[s] is not None]
        moves = [(src, hole) for hole, src in zip(sorted(self.free), tail) if src > hole]
        for src, dst in moves:
            self.owner[dst], self.starts[dst] = self.owner[src], self.starts[src]
            self.generators[dst], self.owner[src] = self.generators[src], None
        if moves:
            src = torch.tensor([m[0] for m in moves], device=self.device)
            dst = torch.tensor([m[1] for m in moves], device=self.device)
            self.cache.move_rows(src, dst)
            for tensor in self.per_row():
                tensor[dst] = tensor[src]
        self.n = max((s + 1 for s in range(self.n) if self.owner[s] is not None), default=0)
        self.free = [s for s in range(self.n) if self.owner[s] is None]

    def shift(self) -> None:
        """Move the window back to the buffer's start, keeping room before ``hi`` for the
        longest waiting prompt."""
        cache = self.cache
        waiting = self.longest_from[len(self.prompts) - len(self.queue)]
        by = cache.hi - max(cache.hi - cache.lo, waiting)
        cache.n = self.n
        cache.shift(by)
        for tensor in (self.valid, self.colpos):
            if tensor is not None:
                tensor[:self.n, cache.lo - by:cache.hi - by] = (
                    tensor[:self.n, cache.lo:cache.hi].clone())
        cache.lo, cache.hi = cache.lo - by, cache.hi - by
        self.starts = [s - by for s in self.starts]

    def forward(self):
        """One decoding step's forward pass over the first n rows; its last logits."""
        cache, n = self.cache, self.n
        hi = cache.hi
        cache.n = n
        self.valid[:n, hi] = True
        mask = self.valid[:n, None, None, cache.lo:hi + 1]
        if self.kinds:
            self.colpos[:n, hi] = self.pos[:n]
            near = (self.pos[:n, None] - self.colpos[:n, cache.lo:hi + 1]
                    < self.window)[:, None, None]
            mask = ({"full_attention": mask, "sliding_attention": mask & near}
                    if self.kinds == "mixed" else mask & near)
        logits = self.model(input_ids=self.tokens[:n, None], attention_mask=mask,
                            position_ids=self.pos[:n, None], use_cache=True,
                            **{self.keyword: cache}).logits[:, -1]
        cache.hi += 1
        self.pos[:n] += 1
        return logits

    def pick(self, logits) -> list[tuple[int, list[int]]]:
        """Choose the n rows' next tokens; return the answers that ended."""
        picked = _pick(logits, self.config, self.generators[:self.n] if self.sampled else [])
        self.tokens[:self.n] = picked
        return self.settle(self.every[:self.n], picked)


def decode(model, prompts: Sequence[list[int]], limits: Sequence[int], seeds: Sequence[int],
           config: GenConfig, rows: int, stop_ids: set[int], pad_id: int,
           log: StepLog | None = None, oom_above: int | None = None,
           ) -> Iterator[list[tuple[int, list[int]]]]:
    """Answer ``prompts``, admitted in the order given, at most ``rows`` at a time; yield
    ``(index, new tokens)`` of the answers that ended (stop token excluded), step by step.

    Args:
        model: A loaded causal LM.
        prompts: Token ids per prompt.
        limits: New tokens per prompt at most.
        seeds: Each prompt's sampling seed (unused when greedy).
        config: Temperature and top_p.
        rows: Slots in the cache.
        stop_ids: Token ids that end an answer.
        pad_id: The padding token.
        log: Where the step timings go (None: not kept).
        oom_above: Testing hook: raise out-of-memory when ``rows`` is above this.
    """
    import torch

    rows = min(rows, len(prompts))
    if oom_above is not None and rows > oom_above:
        raise torch.cuda.OutOfMemoryError(f"injected: {rows} rows > {oom_above}")
    run = _Slots(model, prompts, limits, seeds, config, rows, stop_ids, pad_id, log)
    clock = Clock(log, model.device)
    with torch.inference_mode():
        clock.start()
        clock.time("prefill", run.capture_prefix)
        clock.prefilled(run.filled)
        while run.queue or run.live:
            clock.start()
            if run.wants_refill():
                done = clock.time("prefill", run.refill)
                clock.prefilled(run.filled)
            else:
                done = []
                if run.free and not run.queue:
                    clock.time("copy", run.compact)
            if run.live and run.cache.hi == run.cache.columns:
                clock.time("copy", run.shift)
            if done:
                yield from clock.away([done])
            if not run.live:
                continue
            logits = clock.time("forward", run.forward)
            done = run.pick(logits)
            clock.step(run.n, run.cache.hi - run.cache.lo)
            if done:
                yield from clock.away([done])


def columns(width: int) -> int:
    """Cache columns for answers of at most ``width`` tokens, prompt included: the width
    and the slack that lets the window run before it shifts back."""
    return width + max(1, width // SLACK_SHARE)


def _length_groups(lengths: Sequence[int]) -> list[int]:
    """Sizes of consecutive groups whose padding to their longest stays within
    ``PAD_SHARE`` of their real tokens."""
    sizes, start = [], 0
    while start < len(lengths):
        end, longest, real = start + 1, lengths[start], lengths[start]
        while end < len(lengths):
            top = max(longest, lengths[end])
            if (end + 1 - start) * top > (1 + PAD_SHARE) * (real + lengths[end]):
                break
            end, longest, real = end + 1, top, real + lengths[end]
        sizes.append(end - start)
        start = end
    return sizes


def _pick(logits, config: GenConfig, generators: list):
    """Next token per row: argmax, or a nucleus sample drawn from that row's own generator."""
    import torch

    if config.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / config.temperature, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    if config.top_p < 1.0:  # keep the smallest head of the distribution with mass >= top_p
        sorted_p = sorted_p.masked_fill(sorted_p.cumsum(-1) - sorted_p >= config.top_p, 0.0)
    cumulative = sorted_p.cumsum(-1)
    draws = torch.stack([torch.rand((), generator=g, device=logits.device) for g in generators])
    choice = torch.searchsorted(cumulative, (draws * cumulative[:, -1])[:, None], right=True)
    return order.gather(-1, choice.clamp_(max=probs.shape[-1] - 1)).squeeze(-1)
