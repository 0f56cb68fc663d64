"""The scheduler alone (service.scheduling): merging, splitting, the two lanes, errors and cancellation, with a model
run we control. Every test checks the order and size of runs, never their timing."""

import asyncio
import os
import threading

import numpy as np
import pytest

from service.scheduling import BULK_NICE, Scheduler


class Gate:
    """A model run that records what it was given, in which lane, and holds the runs it is told to hold until
    released, so requests queue behind them."""

    def __init__(self, hold: int = 1, lane: str = "fast") -> None:
        self.runs: list[tuple[str, list[float]]] = []
        self.release, self.started = threading.Event(), threading.Event()
        self.hold, self.lane = hold, lane

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        name = threading.current_thread().name  # ganserve-fast_0, ganserve-bulk_0, or the event loop's
        lane = name.split("-")[1].split("_")[0] if name.startswith("ganserve-") else "loop"
        self.runs.append((lane, rows[:, 0].tolist()))
        if lane == self.lane and sum(1 for name, _ in self.runs if name == lane) <= self.hold:
            self.started.set()
            assert self.release.wait(10)
        if (rows < 0).any():
            raise RuntimeError("negative row")
        return rows * 10

    def rows(self, lane: str | None = None) -> list[list[float]]:
        return [r for name, r in self.runs if lane in (None, name)]


def rows(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)[:, None]


def by_candidates(r: np.ndarray) -> np.ndarray:
    """Weights as the service gives them: a row's value above 100 stands for a candidate bound."""
    return np.where(r[:, 0] > 100, r[:, 0] - 100, 1).astype(np.int64)


async def _queued(run: Gate, scheduler: Scheduler, first: np.ndarray, later: tuple, cancel=()) -> list:
    tasks = [asyncio.create_task(scheduler.draw(first))]
    await asyncio.to_thread(run.started.wait, 5)  # the first run is in flight, held by the gate
    for r in later:
        tasks.append(asyncio.create_task(scheduler.draw(r)))
        await asyncio.sleep(0)  # each request reaches its queue in order
    for i in cancel:
        tasks[1 + i].cancel()
    run.release.set()
    return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)


def play(*later, run_images=256, small_images=256, weigh=None, on_run=None, cancel=(), hold_lane="fast", first=None):
    """A request (row 0) runs alone and is held; the ``later`` requests queue meanwhile (those at the ``cancel``
    positions are then cancelled); then the run is released. Returns the gate and each request's outcome."""
    run = Gate(lane=hold_lane)

    async def scenario() -> list:
        s = Scheduler(run, run_images=run_images, small_images=small_images, weigh=weigh, on_run=on_run)
        try:
            return await _queued(run, s, rows(0) if first is None else first, later, cancel)
        finally:
            s.close()

    return run, asyncio.run(scenario())


def values(result: np.ndarray) -> list[float]:
    return result[:, 0].tolist()


def test_an_idle_lane_runs_a_lone_request_at_once_and_requests_that_arrive_meanwhile_share_the_next_run():
    seen = []
    run, results = play(rows(2, 3), rows(4), rows(5, 6, 7), on_run=lambda *size: seen.append(size))
    assert run.rows() == [[0], [2, 3, 4, 5, 6, 7]]
    assert seen == [("fast", 1, 1), ("fast", 3, 6)]
    assert [values(r) for r in results] == [[0], [20, 30], [40], [50, 60, 70]]


def test_a_run_takes_queued_requests_first_fit_up_to_run_images_but_always_one():
    run, _ = play(rows(1), rows(2, 3), rows(4, 5, 6, 7), rows(9), run_images=3, small_images=3)
    # (4..7) is too large for the fast lane: the bulk lane runs it in pieces of 3; (1) and (2, 3) fill a run of 3,
    # so (9) goes into the next one
    assert run.rows("fast") == [[0], [1, 2, 3], [9]]
    assert run.rows("bulk") == [[4, 5, 6], [7]]


def test_a_large_request_is_split_into_bounded_runs_in_the_bulk_lane_and_comes_back_whole():
    run, (_, large) = play(rows(*range(1, 11)), run_images=4, small_images=2)
    assert run.rows("bulk") == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert values(large) == [10 * v for v in range(1, 11)]


def test_a_small_request_overtakes_a_large_one_whose_run_is_in_flight():
    async def scenario() -> tuple[Gate, list[str]]:
        run = Gate(hold=1, lane="bulk")
        s = Scheduler(run, run_images=4, small_images=1)
        done: list[str] = []

        async def ask(name: str, r: np.ndarray) -> None:
            await s.draw(r)
            done.append(name)

        large = asyncio.create_task(ask("large", rows(*range(10, 22))))
        await asyncio.to_thread(run.started.wait, 5)  # the large request's first piece is running, held
        await ask("small", rows(1))  # finishes although the bulk lane is still held
        run.release.set()
        await asyncio.wait_for(large, 10)
        s.close()
        return run, done

    run, done = asyncio.run(scenario())
    assert done == ["small", "large"]
    assert run.runs == [("bulk", [10, 11, 12, 13]), ("fast", [1]), ("bulk", [14, 15, 16, 17]),
                        ("bulk", [18, 19, 20, 21])]  # fmt: skip


def test_a_run_of_at_most_inline_images_runs_on_the_event_loop_and_a_larger_one_in_the_lane():
    async def scenario() -> Gate:
        run = Gate(hold=0)
        s = Scheduler(run, run_images=8, small_images=4, inline_images=2)
        await s.draw(rows(1, 2))
        await s.draw(rows(3, 4, 5))
        await s.draw(rows(*range(6, 16)))
        s.close()
        return run

    bulk = [("bulk", [6, 7, 8, 9, 10, 11, 12, 13]), ("bulk", [14, 15])]
    assert asyncio.run(scenario()).runs == [("loop", [1, 2]), ("fast", [3, 4, 5]), *bulk]


def test_rows_weigh_their_candidate_bound_so_rejection_sampling_goes_to_the_bulk_lane():
    run, _ = play(rows(103), rows(1, 102, 2), run_images=3, small_images=2, weigh=by_candidates)
    assert run.rows("fast") == [[0]]
    assert run.rows("bulk") == [[103], [1, 102], [2]]  # 3 images, then 1 + 2 (the next row would make 4), then 1


def test_background_work_runs_alone_in_the_bulk_lane_at_a_lower_cpu_priority():
    async def scenario() -> tuple[str, int, int]:
        s = Scheduler(lambda r: r, run_images=4, small_images=1)
        try:

            def where() -> tuple[str, int]:
                return threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

            name, nice = await s.background(where)
            return name, nice, os.getpriority(os.PRIO_PROCESS, 0)
        finally:
            s.close()

    name, nice, ours = asyncio.run(scenario())
    assert name.startswith("ganserve-bulk")
    assert nice == min(ours + BULK_NICE, 19)


def test_an_error_reaches_the_requests_of_its_run_and_no_other():
    run, (first, bad, neighbour, after) = play(rows(-1), rows(2), rows(3), run_images=2, small_images=2)
    assert run.rows() == [[0], [-1, 2], [3]]
    assert isinstance(bad, RuntimeError) and isinstance(neighbour, RuntimeError)
    assert values(first) == [0] and values(after) == [30]


def test_a_split_request_fails_with_any_of_its_pieces_and_its_other_pieces_are_called_off():
    run, (_, bad, fine) = play(rows(-1, 1, 2, 3, 4, 5), rows(7), run_images=2, small_images=1, hold_lane="bulk",
                               first=rows(1, 2, 3))  # fmt: skip
    assert isinstance(bad, RuntimeError) and values(fine) == [70]
    assert [-1, 1] in run.rows("bulk") and [4, 5] not in run.rows("bulk")


def test_a_request_cancelled_while_queued_is_left_out_of_the_run():
    run, (_, gone, stays) = play(rows(1), rows(2), cancel=(0,))
    assert run.rows() == [[0], [2]] and isinstance(gone, asyncio.CancelledError) and values(stays) == [20]


def test_a_cancelled_drain_cancels_its_requests_instead_of_leaving_them_hanging():
    async def scenario() -> list:
        run = Gate()
        s = Scheduler(run, run_images=256, small_images=256)
        tasks = [asyncio.create_task(s.draw(rows(0)))]
        await asyncio.to_thread(run.started.wait, 5)
        tasks.append(asyncio.create_task(s.draw(rows(1))))
        await asyncio.sleep(0)
        s.fast.draining.cancel()  # as at shutdown
        run.release.set()
        out = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        s.close()
        return out

    assert all(isinstance(r, asyncio.CancelledError) for r in asyncio.run(scenario()))


@pytest.mark.parametrize(("small", "run"), [(0, 4), (5, 4)])
def test_the_bounds_must_nest(small, run):
    with pytest.raises(ValueError, match="small_images <= run_images"):
        Scheduler(lambda r: r, run_images=run, small_images=small)
