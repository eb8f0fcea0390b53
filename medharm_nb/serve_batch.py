"""Batching for ``medharm-nb serve``: concurrent requests with equal decoding settings are
answered in one forward batch, one batch at a time, in a worker thread."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from medharm_nb.records import GenConfig
from medharm_nb.serve_access import ApiError
from medharm_nb.serve_request import Limits


@dataclass
class _Job:
    request: Any  # generate.Request
    config: GenConfig
    future: asyncio.Future
    key: tuple = field(init=False)

    def __post_init__(self):
        # Sampled requests batch only with the same base seed, so a seed means one answer
        # (a request's choices share it: each has its own seed, config.seed + index).
        c = self.config
        self.key = (c.max_new_tokens, c.temperature, c.top_p,
                    c.seed if c.temperature > 0 else None)


class Batcher:
    """Collects concurrent requests and answers those with equal settings in one batch.

    The model runs in one worker thread, one batch at a time, so the event loop keeps
    answering (and refusing, when full) while it works.
    """

    def __init__(self, backend, limits: Limits):
        self.backend, self.limits = backend, limits
        self.waiting: list[_Job] = []
        self.running = 0
        self._wake = asyncio.Event()  # binds to the running loop on first use (3.10+)

    @property
    def in_flight(self) -> int:
        """Answers queued or generating."""
        return len(self.waiting) + self.running

    async def submit(self, requests: Sequence[Any], config: GenConfig) -> list:
        """Queue requests (one per answer, e.g. a request's choices) and wait for their
        Outputs, in order.

        Raises:
            ApiError: 503 when they would take more than ``max_concurrency`` answers in flight.
            Exception: what the backend raised for any of them.
        """
        if self.in_flight + len(requests) > self.limits.max_concurrency:
            raise ApiError(503, f"server busy: {self.in_flight} answers in flight, the cap "
                                f"is {self.limits.max_concurrency} (--max-concurrency); retry "
                                f"later", kind="server_busy", headers={"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        jobs = [_Job(request, config, loop.create_future()) for request in requests]
        self.waiting.extend(jobs)
        self._wake.set()
        # A client that goes away cancels its futures; run() then skips their jobs.
        return list(await asyncio.gather(*(job.future for job in jobs)))

    async def run(self) -> None:
        """Serve batches until cancelled."""
        while True:
            await self._wake.wait()
            self.waiting = [j for j in self.waiting if not j.future.done()]  # gone clients
            if not self.waiting:
                self._wake.clear()
                continue
            key = self.waiting[0].key
            batch = [j for j in self.waiting if j.key == key][:self.limits.batch_size]
            chosen = {id(j) for j in batch}
            self.waiting = [j for j in self.waiting if id(j) not in chosen]
            self.running = len(batch)
            try:
                outputs = await asyncio.to_thread(self._generate, batch)
            except Exception as err:  # answered to each client as a 500
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
            else:
                for job, out in zip(batch, outputs):
                    if not job.future.done():
                        job.future.set_result(out)
            finally:
                self.running = 0

    def _generate(self, batch: list[_Job]):
        config = batch[0].config.model_copy(update={"batch_size": len(batch)})
        by_id = {}
        for group in self.backend.generate([j.request for j in batch], config):
            by_id.update((req.gen_id, out) for req, out in group)
        return [by_id[j.request.gen_id] for j in batch]
