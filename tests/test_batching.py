"""The in-process batcher alone: merging, splitting, limits, errors and cancellation, with a run we control."""

import asyncio
import threading

import numpy as np
import pytest

from service.batching import Batcher


class Gate:
    """A model run that records what it was given and holds its first run until released, so requests queue."""

    def __init__(self) -> None:
        self.batches: list[list[float]] = []
        self.release = threading.Event()

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.batches.append(rows[:, 0].tolist())
        if len(self.batches) == 1:
            assert self.release.wait(10)
        if (rows < 0).any():
            raise RuntimeError("negative row")
        return rows * 10


def rows(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)[:, None]


def play(*later: np.ndarray, max_rows: int = 256, on_batch=None, cancel: tuple[int, ...] = ()) -> tuple[list, list]:
    """A request of row 0 runs alone and is held; the ``later`` requests queue meanwhile (those at the ``cancel``
    positions are then cancelled); then the run is released. Returns the runs' rows and each request's outcome."""

    async def scenario() -> tuple[list, list]:
        run = Gate()
        batcher = Batcher(run, max_rows=max_rows, on_batch=on_batch)
        tasks = [asyncio.create_task(batcher(rows(0)))]
        await asyncio.sleep(0.05)  # the first run is in flight, held by the gate
        for r in later:
            tasks.append(asyncio.create_task(batcher(r)))
            await asyncio.sleep(0)  # each request reaches the queue in order
        for i in cancel:
            tasks[1 + i].cancel()
        run.release.set()
        return run.batches, await asyncio.gather(*tasks, return_exceptions=True)

    return asyncio.run(scenario())


def values(result: np.ndarray) -> list[float]:
    return result[:, 0].tolist()


def test_requests_that_arrive_during_a_run_share_the_next_run_and_get_their_own_rows_back():
    seen = []
    batches, results = play(rows(2, 3), rows(4), rows(5, 6, 7), on_batch=lambda requests, n: seen.append((requests, n)))
    assert batches == [[0], [2, 3, 4, 5, 6, 7]]  # a lone request ran at once; the rest went together
    assert seen == [(1, 1), (3, 6)]
    assert [values(r) for r in results] == [[0], [20, 30], [40], [50, 60, 70]]


def test_a_run_takes_at_most_max_rows_but_always_one_request():
    batches, _ = play(rows(1), rows(2, 3), rows(4, 5, 6, 7, 8), rows(9), max_rows=3)
    assert batches == [[0], [1, 2, 3], [4, 5, 6, 7, 8], [9]]


def test_an_error_reaches_the_requests_of_its_run_and_no_other():
    batches, (first, bad, neighbour, after) = play(rows(-1), rows(2), rows(3), max_rows=2)
    assert batches == [[0], [-1, 2], [3]]
    assert isinstance(bad, RuntimeError) and isinstance(neighbour, RuntimeError)
    assert values(first) == [0] and values(after) == [30]


def test_a_request_cancelled_while_queued_is_left_out_of_the_run():
    batches, (_, gone, stays) = play(rows(1), rows(2), cancel=(0,))
    assert batches == [[0], [2]] and isinstance(gone, asyncio.CancelledError) and values(stays) == [20]


def test_a_cancelled_drain_cancels_its_requests_instead_of_leaving_them_hanging():
    async def scenario() -> list:
        run = Gate()
        batcher = Batcher(run, max_rows=256)
        tasks = [asyncio.create_task(batcher(rows(0)))]
        await asyncio.sleep(0.05)
        tasks.append(asyncio.create_task(batcher(rows(1))))
        await asyncio.sleep(0)
        batcher._draining.cancel()  # as at shutdown
        run.release.set()
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)

    assert all(isinstance(r, asyncio.CancelledError) for r in asyncio.run(scenario()))


def test_max_rows_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        Batcher(lambda r: r, max_rows=0)
