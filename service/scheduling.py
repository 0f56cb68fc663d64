"""Size-aware scheduling of the model's work inside one process: small requests never wait behind large ones.

Two lanes, each one thread that runs the model (onnxruntime releases the GIL, so the event loop goes on reading
requests meanwhile), each with its own queue:

- the **fast lane** takes whole small requests (at most ``small_images`` images). While a run is in flight, newly
  arrived requests queue up; when it ends, the queued ones go into the next run together, first come first, up to
  ``run_images`` images. Nothing waits for company: an idle lane runs a lone request at once, as Triton does
  without a queue delay. A run of at most ``inline_images`` images runs on the event loop itself: at n=1 the hop
  to a thread and back costs more than the run (docs/BENCHMARKS.md), and it holds the loop for a millisecond at
  most.
- the **bulk lane** takes everything larger: requests split into pieces of at most ``run_images`` images (merged
  first-fit with other pieces), and other long work handed to ``background`` (walks, encoding large files). Its
  thread runs at a lower CPU priority (nice ``+BULK_NICE``), so when both lanes and the event loop want a core, the
  operating system gives it to the small requests first; an idle machine still gives the bulk lane every cycle.

So a small request waits at most for one fast-lane run of ``run_images`` images, whatever the bulk lane holds. An
image's weight is what it costs to draw: 1, or its candidate bound for rejection sampling (``weigh``).

Why merging pays on CPU although a batch costs the same per image as batch 1 in a tight loop (shared/design/
performance.md): under serving load the framework's code evicts the generator's weights (3.9 MB for the default
model) from the core's cache between requests, and a run of one image then costs 2-3x its tight-loop time. One run
for many requests streams the weights once for all of them (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["BULK_NICE", "Scheduler"]

BULK_NICE = 10  # CFS weights 110 vs 1024: under contention the bulk lane gets a tenth of a core, never none


@dataclass
class _Job:
    """Rows to draw (``run`` merges them with others), or a call that runs alone; and the future its caller awaits."""

    waiter: asyncio.Future[Any]
    rows: np.ndarray | None = None
    weight: int = 0
    call: Callable[[], Any] | None = None


@dataclass
class _Lane:
    name: str
    executor: ThreadPoolExecutor
    queue: list[_Job] = field(default_factory=list)
    draining: asyncio.Task[None] | None = None


class Scheduler:
    """``await scheduler.draw(rows)`` returns ``run(rows)``; ``await scheduler.background(fn)`` returns ``fn()``.

    ``run`` maps an array of rows to an array with one output row per input row; ``weigh(rows)`` gives each row's
    cost in images (default 1). ``on_run(lane, requests, rows)`` is told the size of each run (lane "fast" or
    "bulk"). An exception in
    ``run`` reaches every request of that run and no other (a split request fails with any of its pieces).
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        run_images: int,
        small_images: int,
        inline_images: int = 0,
        weigh: Callable[[np.ndarray], np.ndarray] | None = None,
        on_run: Callable[[str, int, int], None] | None = None,
    ) -> None:
        if not 1 <= small_images <= run_images:
            raise ValueError(f"need 1 <= small_images <= run_images, not {small_images} and {run_images}")
        self._run, self._run_images, self._small, self._inline = run, run_images, small_images, inline_images
        self._weigh = weigh or (lambda rows: np.ones(len(rows), np.int64))
        self._on_run = on_run
        self.fast = _Lane("fast", ThreadPoolExecutor(1, "ganserve-fast"))
        self.bulk = _Lane("bulk", ThreadPoolExecutor(1, "ganserve-bulk", initializer=_lower_priority))

    async def draw(self, rows: np.ndarray) -> np.ndarray:
        weights = self._weigh(rows)
        if int(weights.sum()) <= self._small:
            return await self._submit(self.fast, _Job(_future(), rows=rows, weight=int(weights.sum())))
        pieces = [
            self._submit(self.bulk, _Job(_future(), rows=rows[start:end], weight=int(weights[start:end].sum())))
            for start, end in _pieces(weights, self._run_images)
        ]
        return np.concatenate(await _all(pieces)) if len(pieces) > 1 else await pieces[0]

    async def background(self, call: Callable[[], Any]) -> Any:
        """``call()`` in the bulk lane, between its runs: long work that must not delay small requests."""
        return await self._submit(self.bulk, _Job(_future(), call=call))

    def close(self) -> None:
        for lane in (self.fast, self.bulk):
            lane.executor.shutdown(wait=False, cancel_futures=True)

    def _submit(self, lane: _Lane, job: _Job) -> asyncio.Future[Any]:
        lane.queue.append(job)
        if lane.draining is None:
            # In a fresh context: the drain outlives the request that started it and must not carry its trace span.
            lane.draining = contextvars.Context().run(asyncio.create_task, self._drain(lane))
        return job.waiter

    def _next(self, lane: _Lane) -> list[_Job]:
        """A call alone, or queued rows first-fit in arrival order up to run_images (at least one job)."""
        lane.queue = [job for job in lane.queue if not job.waiter.done()]  # a client that went away needs no run
        if not lane.queue:
            return []
        if lane.queue[0].call is not None:
            return [lane.queue.pop(0)]
        taken, weight, left = [], 0, []
        for job in lane.queue:
            if job.call is None and (not taken or weight + job.weight <= self._run_images):
                taken.append(job)
                weight += job.weight
            else:
                left.append(job)
        lane.queue = left
        return taken

    async def _drain(self, lane: _Lane) -> None:
        jobs: list[_Job] = []
        try:
            while lane.queue:
                jobs = self._next(lane)
                if jobs:
                    await self._execute(lane, jobs)
        finally:
            lane.draining = None
            for job in jobs + lane.queue:  # left undone only if the drain was cancelled: no request hangs
                job.waiter.cancel()
            lane.queue = []

    async def _execute(self, lane: _Lane, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        try:
            if jobs[0].call is not None:
                outs = [await loop.run_in_executor(lane.executor, jobs[0].call)]
            else:
                rows = np.concatenate([job.rows for job in jobs]) if len(jobs) > 1 else jobs[0].rows
                if self._on_run is not None:
                    self._on_run(lane.name, len(jobs), len(rows))
                if lane is self.fast and sum(job.weight for job in jobs) <= self._inline:
                    out = self._run(rows)
                else:
                    out = await loop.run_in_executor(lane.executor, self._run, rows)
                ends = np.cumsum([len(job.rows) for job in jobs])
                outs = np.split(out, ends[:-1])
        except Exception as error:
            for job in jobs:
                if not job.waiter.done():
                    job.waiter.set_exception(error)
            return
        for job, out in zip(jobs, outs, strict=True):
            if not job.waiter.done():
                job.waiter.set_result(out)


def _future() -> asyncio.Future[Any]:
    return asyncio.get_running_loop().create_future()


def _pieces(weights: np.ndarray, bound: int) -> list[tuple[int, int]]:
    """Consecutive (start, end) row ranges of at most ``bound`` total weight each (at least one row each)."""
    pieces, start, total = [], 0, 0
    for i, w in enumerate(weights.tolist()):
        if i > start and total + w > bound:
            pieces.append((start, i))
            start, total = i, 0
        total += w
    pieces.append((start, len(weights)))
    return pieces


async def _all(waiters: list[asyncio.Future[Any]]) -> list[Any]:
    """Every piece's result, in order; if one fails (or the caller is cancelled), the others are called off."""
    try:
        return list(await asyncio.gather(*waiters))
    finally:
        for waiter in waiters:
            waiter.cancel()  # a no-op on those done


def _lower_priority() -> None:
    """Lower this thread's CPU priority: on Linux the nice value belongs to each thread, not the process."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not permitted: same priority, still correct
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + BULK_NICE)
