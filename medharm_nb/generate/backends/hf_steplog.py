"""Where the hf engine's time goes: per decoding step, the forward pass against the rest.

A backend keeps a ``StepLog`` when its ``step_log`` is set (the benchmarks set it); the
engine's ``Clock`` fills it. The log answers the questions that decide what to optimise:
how long the model's forward takes per step at each number of rows (the per-step cost
curve), and how much of a step is spent outside it (picking, stop checks, bookkeeping,
copies), which on a GPU, where a step takes milliseconds, can set the speed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class StepLog:
    """Where an engine run's time went; filled when a backend's ``step_log`` is set.

    On CUDA the device is synchronized around each forward pass while a log is kept, so the
    forward's time is the device's, not the launch's.
    """

    decode: list[tuple[int, int, float, float]] = field(default_factory=list)
    """Per decoding step: live rows, attended columns, forward seconds, other seconds (pick,
    stop checks, bookkeeping, refill and compaction copies; prefill excluded)."""
    prefill: list[tuple[int, int, float]] = field(default_factory=list)
    """Per prefill of newcomers: rows, padded prompt tokens, seconds (the forward pass and
    writing its keys and values into the slots)."""
    copy_seconds: float = 0.0
    """Of the other seconds: moving rows into free slots and shifting the window."""
    text_seconds: float = 0.0
    """Turning each answer's token ids into text (once per answer, after it ends)."""

    @property
    def forward_seconds(self) -> float:
        """Decoding forward passes, in total."""
        return sum(step[2] for step in self.decode)

    @property
    def other_seconds(self) -> float:
        """Per-step work outside the forward pass, in total."""
        return sum(step[3] for step in self.decode)

    @property
    def prefill_seconds(self) -> float:
        """Prefill of every prompt, in total."""
        return sum(p[2] for p in self.prefill)

    @property
    def row_steps(self) -> int:
        """Rows summed over decoding steps: the tokens the decode computed, used or not."""
        return sum(step[0] for step in self.decode)

    def split(self) -> list[dict]:
        """Decoding steps grouped by live rows: the most rows alone, then halving ranges
        (64; 33-63; 17-32; ...; 1). Per group: ``rows`` (a label), ``steps``, mean attended
        ``columns``, ``forward_ms`` and ``other_ms`` per step, ``other_share`` of a step."""
        if not self.decode:
            return []
        top = max(step[0] for step in self.decode)
        edges, hi = [(top, top)], top - 1
        while hi >= 1:
            lo = max(1, min(hi, top // 2 ** len(edges) + 1))
            edges.append((lo, hi))
            hi = lo - 1
        out = []
        for lo, hi in edges:
            steps = [s for s in self.decode if lo <= s[0] <= hi]
            if not steps:
                continue
            forward, other = sum(s[2] for s in steps), sum(s[3] for s in steps)
            out.append({"rows": str(lo) if lo == hi else f"{lo}-{hi}", "steps": len(steps),
                        "columns": sum(s[1] for s in steps) / len(steps),
                        "forward_ms": 1000 * forward / len(steps),
                        "other_ms": 1000 * other / len(steps),
                        "other_share": other / (forward + other)})
        return out

    def fit(self) -> tuple[float, float]:
        """The per-step cost curve as a line: forward seconds = a + b x rows, fitted by
        least squares over the decoding steps; (a, b). One row count only: (mean, 0)."""
        rows = [s[0] for s in self.decode]
        secs = [s[2] for s in self.decode]
        mean_r, mean_s = sum(rows) / len(rows), sum(secs) / len(secs)
        var = sum((r - mean_r) ** 2 for r in rows)
        if not var:
            return mean_s, 0.0
        slope = sum((r - mean_r) * (s - mean_s) for r, s in zip(rows, secs)) / var
        return mean_s - slope * mean_r, slope


class Clock:
    """Times an engine run's parts into a ``StepLog`` (no-ops without one); on CUDA it
    synchronizes around each timed part so the time is the device's."""

    def __init__(self, log: StepLog | None, device):
        import torch

        self.log = log
        self.sync = (torch.cuda.synchronize if log is not None and device.type == "cuda"
                     else lambda: None)
        self.parts: dict[str, float] = {}
        self.began = self.last = 0.0

    def start(self) -> None:
        self.parts = {"forward": 0.0, "prefill": 0.0, "copy": 0.0, "away": 0.0}
        self.began = time.perf_counter()

    def time(self, part: str, fn):
        if self.log is None:
            return fn()
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        self.last = time.perf_counter() - t0
        self.parts[part] += self.last
        return out

    def prefilled(self, filled: tuple[int, int]) -> None:
        """Log the prefill just timed: its rows and padded tokens (none: nothing ran)."""
        if self.log is not None and filled[0]:
            self.log.prefill.append((*filled, self.last))

    def away(self, groups):
        """Yield ``groups``, not counting the time the caller spends with them."""
        t0 = time.perf_counter()
        yield from groups
        self.parts["away"] += time.perf_counter() - t0

    def step(self, rows: int, columns: int) -> None:
        if self.log is None:
            return
        total = time.perf_counter() - self.began - self.parts["away"]
        p = self.parts
        self.log.decode.append((rows, columns, p["forward"],
                                total - p["forward"] - p["prefill"]))
        self.log.copy_seconds += p["copy"]

