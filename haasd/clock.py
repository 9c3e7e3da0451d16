"""Time, injected.

Everything in haasd that asks "what time is it" or "wake me at" goes through a
:class:`Clock`. Wall time (``time()``: seconds since the epoch, UTC) is for instants that
are stored or shown — token expiries, the 30-day limit. Monotonic time
(``monotonic()``) is for scheduling and timeouts, immune to the wall clock being set.

* :class:`SystemClock` — the real thing.
* :class:`ScaledClock` — time runs ``speed`` times faster (``haasd demo``).
* :class:`ManualClock` — time moves only when a test calls :meth:`ManualClock.advance`,
  so a 31-day grant life runs in milliseconds.

Formatting an instant (:func:`rfc3339`, :func:`utc`) is :mod:`haasd.timefmt`'s, also
importable from here.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time as _time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import anyio

from haasd.timefmt import rfc3339, utc  # their old home: imported from here too

__all__ = ["Activity", "Clock", "ManualClock", "ScaledClock", "SystemClock", "rfc3339", "utc"]


class Clock(Protocol):
    """The one way haasd reads and waits for time."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; only differences mean anything."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Wait until ``monotonic()`` reaches ``deadline``."""
        ...


class SystemClock:
    """The machine's clocks."""

    __slots__ = ()

    def time(self) -> float:
        return _time.time()

    def monotonic(self) -> float:
        return _time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))

    async def sleep_until(self, deadline: float) -> None:
        await anyio.sleep(max(0.0, deadline - _time.monotonic()))


class ScaledClock:
    """Time running ``speed`` times faster than real time, from ``start`` (wall epoch)."""

    __slots__ = ("_mono0", "_speed", "_wall0")

    def __init__(self, speed: float, *, start: float | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._speed = speed
        self._mono0 = _time.monotonic()
        self._wall0 = _time.time() if start is None else start

    @property
    def speed(self) -> float:
        return self._speed

    def time(self) -> float:
        return self._wall0 + self.monotonic()

    def monotonic(self) -> float:
        return (_time.monotonic() - self._mono0) * self._speed

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds) / self._speed)

    async def sleep_until(self, deadline: float) -> None:
        await self.sleep(deadline - self.monotonic())


async def _all_tasks_blocked() -> None:
    """Return once every other task waits on something (as anyio's
    ``wait_all_tasks_blocked``, but yielding with ``sleep(0)`` rather than 0.1 s, so a
    simulated month of wake-ups costs milliseconds, not minutes)."""
    this = asyncio.current_task()
    while True:
        await asyncio.sleep(0)
        for task in asyncio.all_tasks():
            waiter = getattr(task, "_fut_waiter", None)  # what the task awaits, if anything
            if task is not this and (waiter is None or waiter.done()):
                break
        else:
            return


@dataclass(order=True, slots=True)
class _Sleeper:
    deadline: float
    seq: int
    event: anyio.Event = field(compare=False)


class ManualClock:
    """A clock that stands still until :meth:`advance` moves it.

    ``advance`` walks through every sleeper's deadline in order, wakes it, and lets the
    woken tasks run until everything is blocked again (and until each ``settle`` hook
    returns) before moving on — so a test sees the same sequence of wake-ups a real
    month would produce, in milliseconds.
    """

    __slots__ = ("_counter", "_mono", "_settle_hooks", "_sleepers", "_wall0")

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._wall0 = start
        self._mono = 0.0
        self._sleepers: list[_Sleeper] = []
        self._counter = itertools.count()
        self._settle_hooks: list[Callable[[], Awaitable[object]]] = []

    def time(self) -> float:
        return self._wall0 + self._mono

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self._mono + seconds)

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._mono:
            await anyio.lowlevel.checkpoint()
            return
        sleeper = _Sleeper(deadline, next(self._counter), anyio.Event())
        heapq.heappush(self._sleepers, sleeper)
        try:
            await sleeper.event.wait()
        finally:
            if not sleeper.event.is_set():
                # cancelled: drop it so it cannot hold up later advances
                self._sleepers.remove(sleeper)
                heapq.heapify(self._sleepers)

    def add_settle_hook(self, hook: Callable[[], Awaitable[object]]) -> None:
        """Also wait for ``hook()`` after each wake-up (e.g. "no HTTP request in flight").

        A hook returns something true when it had to wait: then everything settles again.
        """
        self._settle_hooks.append(hook)

    def next_deadline(self) -> float | None:
        """The earliest monotonic instant a task is sleeping until, if any."""
        return self._sleepers[0].deadline if self._sleepers else None

    async def settle(self) -> None:
        """Let every task run until all are blocked and no settle hook had to wait."""
        while True:
            await _all_tasks_blocked()
            waited = False
            for hook in self._settle_hooks:
                waited = bool(await hook()) or waited
            if not waited:
                return

    async def advance(self, seconds: float, *, granularity: float = 0.0) -> None:
        """Move time forward by ``seconds``, waking sleepers in deadline order.

        With ``granularity``, sleepers due within that many seconds of the first one wake
        together (at the latest of their deadlines, never early): coarser, and faster
        for simulations of many grants.
        """
        if seconds < 0:
            raise ValueError("time does not go back")
        target = self._mono + seconds
        await self.settle()
        while self._sleepers and self._sleepers[0].deadline <= target:
            first = self._sleepers[0].deadline
            batch = max(s.deadline for s in self._sleepers if s.deadline <= first + granularity)
            self._mono = max(self._mono, min(batch, target))
            while self._sleepers and self._sleepers[0].deadline <= self._mono:
                heapq.heappop(self._sleepers).event.set()
            await self.settle()
        self._mono = target
        await self.settle()

    async def advance_to(self, wall: float) -> None:
        """Move time forward to the wall-clock instant ``wall``."""
        await self.advance(max(0.0, wall - self.time()))


class Activity:
    """Counts work in flight that no clock sees: a network exchange, a disk write.

    Shutdown waits for it to drain, and a :class:`ManualClock` settle hook waits for it so
    that time does not jump while an answer is on the wire.
    """

    __slots__ = ("_count", "_idle")

    def __init__(self) -> None:
        self._count = 0
        self._idle = anyio.Event()
        self._idle.set()

    @property
    def count(self) -> int:
        return self._count

    @contextmanager
    def busy(self) -> Iterator[None]:
        if self._count == 0:
            self._idle = anyio.Event()
        self._count += 1
        try:
            yield
        finally:
            self._count -= 1
            if self._count == 0:
                self._idle.set()

    async def wait_idle(self) -> bool:
        """Wait until nothing is in flight; True if that meant waiting."""
        if self._count == 0:
            return False
        await self._idle.wait()
        return True
