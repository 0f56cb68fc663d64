"""Merge the rows of concurrent requests into one model run, inside one process.

While a run is in flight (in a worker thread: onnxruntime releases the GIL, so the event loop goes on reading
requests), newly arrived rows queue up; when the run ends, everything queued goes into the next one. Nothing waits
for company: an idle batcher runs a lone request at once, as Triton does without a queue delay.

Why it pays on CPU although a batch costs the same per image as batch 1 in a tight loop (shared/design/
performance.md): under serving load the framework's code and the load evict the generator's weights (3.9 MB for the
default model) from the core's cache between requests, and a run of one image then costs 2-3x its tight-loop time.
One run for many requests streams the weights once for all of them (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable

import numpy as np

__all__ = ["Batcher"]

_Waiting = tuple[np.ndarray, asyncio.Future[np.ndarray]]  # a request's rows and the future its handler awaits


class Batcher:
    """``await batcher(rows)`` returns ``run(rows)``, computed in one call with the rows of concurrent requests.

    ``run`` maps an array of rows to an array with one output row per input row. A run takes queued requests in
    arrival order up to ``max_rows`` rows (and at least one request, however large).
    ``on_batch(requests, rows)`` is told the size of each run. An exception in ``run`` reaches every request of that
    run and no other.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        max_rows: int,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, not {max_rows}")
        self._run, self._max_rows, self._on_batch = run, max_rows, on_batch
        self._queue: list[_Waiting] = []
        self._draining: asyncio.Task[None] | None = None

    async def __call__(self, rows: np.ndarray) -> np.ndarray:
        waiter: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.append((rows, waiter))
        if self._draining is None:
            # In a fresh context: the drain outlives the request that started it and must not carry its trace span.
            self._draining = contextvars.Context().run(asyncio.create_task, self._drain())
        return await waiter

    def _next_batch(self) -> list[_Waiting]:
        """Queued requests in arrival order up to max_rows rows (at least one request, however large)."""
        self._queue = [(r, w) for r, w in self._queue if not w.done()]  # a client that went away needs no run
        batch, rows = [], 0
        while self._queue and (not batch or rows + len(self._queue[0][0]) <= self._max_rows):
            request, waiter = self._queue.pop(0)
            batch.append((request, waiter))
            rows += len(request)
        return batch

    async def _drain(self) -> None:
        batch: list[_Waiting] = []
        try:
            while self._queue:
                batch = self._next_batch()
                if batch:
                    await self._run_batch(batch)
        finally:
            self._draining = None
            for _, waiter in batch + self._queue:  # left undone only if the drain was cancelled: no request hangs
                waiter.cancel()
            self._queue = []

    async def _run_batch(self, batch: list[_Waiting]) -> None:
        try:
            rows = np.concatenate([r for r, _ in batch]) if len(batch) > 1 else batch[0][0]
            if self._on_batch is not None:
                self._on_batch(len(batch), len(rows))
            out = await asyncio.to_thread(self._run, rows)
        except Exception as error:
            for _, waiter in batch:
                if not waiter.done():
                    waiter.set_exception(error)
            return
        start = 0
        for request, waiter in batch:
            if not waiter.done():
                waiter.set_result(out[start : start + len(request)])
            start += len(request)
