from __future__ import annotations

import bisect
import math
import random

import anyio
import pytest
from structlog.testing import capture_logs

from haasd.clock import ManualClock
from haasd.ratelimit import MAX_WAIT, WINDOW, RateBudget
from haasd.ratewindow import RateWindow


def most_in_any_window(instants: list[float]) -> int:
    """The most send instants any half-open 60 s window holds (one starting at each)."""
    ordered = sorted(instants)
    return max(
        (bisect.bisect_left(ordered, t + WINDOW) - i for i, t in enumerate(ordered)), default=0
    )


async def test_greedy_acquirers_never_exceed_the_plan_in_any_minute() -> None:
    clock = ManualClock()
    budget = RateBudget(60, clock, safety=1.0)
    sent: dict[int, list[float]] = {n: [] for n in range(5)}

    async def greedy(n: int) -> None:
        while True:
            await budget.acquire()
            sent[n].append(clock.monotonic())

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for n in sent:
                tg.start_soon(greedy, n)
            await clock.advance(600)
            tg.cancel_scope.cancel()
    everything = [t for times in sent.values() for t in times]
    assert most_in_any_window(everything) == 60
    # the whole budget is spent: a full window at 0, 60, ..., 600
    assert len(everything) == 11 * 60
    # first come, first served: nobody starves
    shares = [len(times) for times in sent.values()]
    assert max(shares) - min(shares) <= 1


@pytest.mark.parametrize("per_minute", [60, 300, 1000])
async def test_irregular_senders_never_exceed_the_plan_in_any_minute(per_minute: int) -> None:
    clock = ManualClock()
    budget = RateBudget(per_minute, clock)
    rng = random.Random(per_minute)
    capacity = math.floor(per_minute * 0.9)
    sent: list[float] = []
    while clock.monotonic() < 600:
        await clock.advance(rng.choice([0.01, 0.3, 1.0, 7.5, 29.0, 59.9, 60.0]))
        burst = [budget.try_acquire() for _ in range(rng.randint(0, capacity // 3))]
        sent += [clock.monotonic()] * burst.count(0.0)
    assert capacity == budget.capacity
    assert capacity == most_in_any_window(sent)


async def test_try_acquire_says_how_long_to_wait_and_spends_nothing() -> None:
    clock = ManualClock()
    budget = RateBudget(2, clock, safety=1.0)
    assert [budget.try_acquire(), budget.try_acquire()] == [0.0, 0.0]
    await clock.advance(15)
    assert budget.try_acquire() == 45.0
    assert budget.try_acquire() == 45.0
    assert budget.remaining == 0
    await clock.advance(45)
    assert budget.remaining == 2
    assert budget.try_acquire() == 0.0


async def test_waiters_are_served_in_arrival_order() -> None:
    clock = ManualClock()
    budget = RateBudget(1, clock, safety=1.0)
    assert budget.try_acquire() == 0.0
    served: list[tuple[str, float]] = []

    async def waiter(name: str) -> None:
        await budget.acquire()
        served.append((name, clock.monotonic()))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for name in ("first", "second", "third"):
                tg.start_soon(waiter, name)
                await anyio.wait_all_tasks_blocked()
            await clock.advance(180)
    assert served == [("first", 60.0), ("second", 120.0), ("third", 180.0)]


async def test_a_cancelled_wait_spends_nothing() -> None:
    clock = ManualClock()
    budget = RateBudget(1, clock, safety=1.0)
    budget.block_for(30)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(budget.acquire)
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
    await clock.advance(30)
    assert budget.remaining == 1


async def test_server_saying_fewer_remain_is_trusted_until_its_reset() -> None:
    clock = ManualClock()
    budget = RateBudget(300, clock)
    assert budget.observe(300, 3, clock.time() + 40) is False
    assert budget.remaining == 3
    assert [budget.try_acquire() for _ in range(4)] == [0.0, 0.0, 0.0, 40.0]
    assert budget.blocked_until == 40.0
    await clock.advance(40)
    assert budget.blocked_until is None
    assert budget.try_acquire() == 0.0


async def test_server_saying_more_remain_does_not_loosen_our_own_count() -> None:
    clock = ManualClock()
    budget = RateBudget(60, clock, safety=1.0)
    for _ in range(60):
        budget.try_acquire()
    budget.observe(60, 50, clock.time() + 30)
    assert budget.try_acquire() == 60.0


def test_answers_in_flight_and_late_answers_cannot_raise_the_count() -> None:
    clock = ManualClock()
    budget = RateBudget(300, clock)
    reset = clock.time() + 40
    budget.observe(300, 10, reset)
    budget.observe(300, 12, reset)  # an answer to an earlier request
    assert budget.remaining == 10
    budget.try_acquire()
    budget.try_acquire()
    budget.observe(300, 9, reset)  # answers to those two, still on the way
    assert budget.remaining == 8
    budget.observe(300, 200, reset + 60)  # a new server window
    assert budget.remaining == 200
    budget.observe(300, 0, reset)  # a late answer from the window that is over
    assert budget.remaining == 200


async def test_none_remaining_blocks_acquire_until_the_reset() -> None:
    clock = ManualClock()
    budget = RateBudget(60, clock)
    budget.observe(60, 0, clock.time() + 25)
    assert budget.try_acquire() == 25.0
    acquired: list[float] = []

    async def send() -> None:
        await budget.acquire()
        acquired.append(clock.monotonic())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            await clock.advance(24.9)
            assert acquired == []
            await clock.advance(0.1)
    assert acquired == [25.0]


async def test_block_for_is_respected_exactly() -> None:
    clock = ManualClock()
    budget = RateBudget(1000, clock)
    assert budget.block_for(32) is False
    assert budget.try_acquire() == 32.0
    assert budget.blocked_until == 32.0
    assert budget.remaining == 0
    budget.block_for(5)  # a shorter block does not shorten the longer one
    acquired: list[float] = []

    async def send() -> None:
        await budget.acquire()
        acquired.append(clock.monotonic())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            await clock.advance(31.5)
            assert budget.try_acquire() == 0.5
            await clock.advance(0.5)
    assert acquired == [32.0]


def test_a_lower_server_limit_lowers_capacity_and_a_higher_one_does_not() -> None:
    clock = ManualClock()
    budget = RateBudget(300, clock)
    with capture_logs() as logs:
        budget.observe(60, None, None)
    assert (budget.limit, budget.capacity) == (60, 54)
    assert [e["event"] for e in logs] == ["rate_limit.server_limit_lower"]
    budget.observe(1000, None, None)
    assert (budget.limit, budget.capacity) == (300, 270)


@pytest.mark.parametrize(
    ("limit", "remaining", "reset_in", "blocked_for"),
    [
        (60, 0, 86400.0, MAX_WAIT),  # a reset a day away: capped
        (60, 0, math.inf, WINDOW),  # not a number of seconds: ignored, a window assumed
        (60, 0, -3600.0, WINDOW),  # long past: ignored, a window assumed
        (60, -4, 30.0, 30.0),  # negative remaining: none
        (0, 0, 30.0, 30.0),  # a zero limit: ignored
        (-5, None, None, None),
    ],
)
def test_absurd_headers_are_capped_and_reported(
    limit: int, remaining: int | None, reset_in: float | None, blocked_for: float | None
) -> None:
    clock = ManualClock()
    budget = RateBudget(60, clock)
    reset = None if reset_in is None else clock.time() + reset_in
    with capture_logs() as logs:
        assert budget.observe(limit, remaining, reset) is True
    assert blocked_for == budget.blocked_until
    assert budget.limit == 60
    assert logs and all(e["event"] == "rate_limit.absurd_value" for e in logs)


def test_reset_just_past_by_clock_skew_is_not_absurd() -> None:
    clock = ManualClock()
    budget = RateBudget(60, clock)
    with capture_logs() as logs:
        assert budget.observe(60, 0, clock.time() - 2) is False
    assert logs == []
    assert budget.try_acquire() == 1.0


@pytest.mark.parametrize(
    ("seconds", "blocked_for"), [(1e9, MAX_WAIT), (-5.0, None), (math.nan, None)]
)
def test_absurd_block_is_capped_or_ignored_and_reported(
    seconds: float, blocked_for: float | None
) -> None:
    clock = ManualClock()
    budget = RateBudget(60, clock)
    with capture_logs() as logs:
        assert budget.block_for(seconds) is True
    assert blocked_for == budget.blocked_until
    assert [e["event"] for e in logs] == ["rate_limit.absurd_value"]


@pytest.mark.parametrize(
    ("per_minute", "safety", "error"),
    [(0, 0.9, ValueError), (60, 0.0, ValueError), (60, 1.5, ValueError), (True, 0.9, TypeError)],
)
def test_nonsense_budgets_are_refused(
    per_minute: int, safety: float, error: type[Exception]
) -> None:
    with pytest.raises(error):
        RateBudget(per_minute, ManualClock(), safety=safety)


def test_a_tiny_plan_still_allows_one_request() -> None:
    assert RateBudget(1, ManualClock(), safety=0.5).capacity == 1


def test_the_window_is_arithmetic_over_the_instants_it_is_given() -> None:
    """RateWindow reads no clock: the same instants give the same answers."""
    window = RateWindow(10, safety=1.0)
    for t in range(10):
        assert window.ready_at(float(t)) == float(t)
        window.spend(float(t))
    assert window.ready_at(10.0) == WINDOW  # the first send leaves the window at 60
    assert (window.remaining(10.0), window.remaining(60.0)) == (0, 1)
    assert window.block_for(100.0, now=10.0) is False
    assert window.ready_at(10.0) == window.blocked_until(10.0) == 110.0
    assert window.block_for(MAX_WAIT + 1, now=0.0) is True  # capped, and says so
    fresh = RateWindow(10, safety=1.0)
    absurd = fresh.observe(5, 0, 1_000_030.0, now=200.0, wall=1_000_000.0)
    assert (absurd, fresh.limit, fresh.ready_at(200.0)) == (False, 5, 230.0)
