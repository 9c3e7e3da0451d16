from __future__ import annotations

import anyio
import pytest

from haasd.clock import Activity, ManualClock, ScaledClock, SystemClock, rfc3339


async def test_manual_clock_wakes_sleepers_in_order_and_instantly() -> None:
    clock = ManualClock(start=1_800_000_000.0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sleeper, "month", 30 * 86400)
            tg.start_soon(sleeper, "hour", 3600)
            tg.start_soon(sleeper, "day", 86400)
            await clock.advance(31 * 86400)
    assert woke == [("hour", 3600), ("day", 86400), ("month", 30 * 86400)]
    assert clock.time() == 1_800_000_000.0 + 31 * 86400


async def test_manual_clock_cancelled_sleeper_does_not_linger() -> None:
    clock = ManualClock()
    with anyio.move_on_after(0.01):
        await clock.sleep(100)
    assert clock.next_deadline() is None
    await clock.sleep(0)  # an elapsed deadline returns at once
    with pytest.raises(ValueError, match="does not go back"):
        await clock.advance(-1)


async def test_manual_clock_settle_hook_runs_after_each_wake() -> None:
    clock = ManualClock()
    calls: list[float] = []

    async def hook() -> None:
        calls.append(clock.monotonic())

    clock.add_settle_hook(hook)
    await clock.advance_to(clock.time() + 10)
    assert calls and calls[-1] == 10


async def test_scaled_clock_runs_faster() -> None:
    clock = ScaledClock(3600.0, start=0.0)
    before = clock.monotonic()
    await clock.sleep(36)  # 10 ms of real time
    assert clock.monotonic() - before >= 36
    assert clock.time() >= 36
    with pytest.raises(ValueError, match="positive"):
        ScaledClock(0)


async def test_system_clock() -> None:
    clock = SystemClock()
    start = clock.monotonic()
    await clock.sleep_until(start + 0.01)
    assert clock.monotonic() >= start + 0.01
    assert rfc3339(0) == "1970-01-01T00:00:00Z"


async def test_activity_drains_before_manual_time_moves() -> None:
    clock = ManualClock()
    activity = Activity()
    clock.add_settle_hook(activity.wait_idle)
    order: list[str] = []

    async def network_call() -> None:
        with activity.busy():
            await anyio.sleep(0.02)  # real time: an answer on the wire
            order.append("answered")

    async def timer() -> None:
        await clock.sleep(60)
        order.append("timer")

    async with anyio.create_task_group() as tg:
        tg.start_soon(network_call)
        tg.start_soon(timer)
        await anyio.wait_all_tasks_blocked()
        assert activity.count == 1
        await clock.advance(120)
    assert order == ["answered", "timer"]
    assert activity.count == 0


def test_time_formatting_lives_in_a_module_without_clocks() -> None:
    import haasd.clock
    import haasd.timefmt

    assert haasd.timefmt.rfc3339(1_800_000_000.5) == "2027-01-15T08:00:00Z"
    assert haasd.timefmt.utc(0).isoformat() == "1970-01-01T00:00:00+00:00"
    # the old home still names the same functions
    assert haasd.clock.rfc3339 is haasd.timefmt.rfc3339
    assert haasd.clock.utc is haasd.timefmt.utc
