"""The scheduler: one heap of deadlines, a ready queue, a loop and a few workers.

The loop sleeps until the earliest deadline (or :data:`MAX_SLEEP`, or an earlier entry
being placed), then hands each grant whose deadline came to ``due``; ``due`` decides and
may :meth:`Scheduler.make_ready` it. Workers take ready grants — the access token that
ends first, first — and hand each to ``work``. What a deadline or a refresh *means* is
the engine's; this module only keeps the queues (:class:`haasd.schedule.Schedule`) moving.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Final

import anyio
from anyio.abc import TaskGroup

from haasd.clock import Clock
from haasd.schedule import Schedule

__all__ = ["MAX_SLEEP", "Scheduler"]

#: the longest the scheduler sleeps without looking again (wall-clock steps, reloads)
MAX_SLEEP: Final = 600.0

Due = Callable[[str, float], Awaitable[None]]
Work = Callable[[str], Awaitable[None]]
Look = Callable[[], None]


def _nothing() -> None:
    pass


class Scheduler:
    """Deadlines and ready grants; :meth:`start_workers`, then :meth:`loop`."""

    __slots__ = (
        "_clock", "_due", "_look", "_ready_event", "_schedule", "_wakeup", "_work", "_workers",
    )  # fmt: skip

    def __init__(
        self, clock: Clock, *, workers: int, due: Due, work: Work, look: Look = _nothing
    ) -> None:
        """``look`` is called before each turn reads the clock (the engine's check for a
        wall clock set back)."""
        self._clock = clock
        self._look = look
        self._workers = workers
        self._due = due
        self._work = work
        self._schedule = Schedule()
        self._wakeup = anyio.Event()
        self._ready_event = anyio.Event()

    # --- the queues ---------------------------------------------------------------------

    def place(self, human_id: str, when: float | None) -> None:
        """(Re)place the grant's one deadline at ``when``; None: it has none any more."""
        if when is None:
            self._schedule.drop(human_id)
        elif self._schedule.place(human_id, when):
            self._wakeup.set()  # the new entry is first: the loop must look again

    def place_all(self, deadlines: Iterable[tuple[str, float | None]]) -> None:
        """:meth:`place` for many grants at once (at start), in O(n)."""
        schedule = self._schedule

        def placed() -> Iterator[tuple[str, float]]:
            for human_id, when in deadlines:
                if when is None:
                    schedule.drop(human_id)
                else:
                    yield human_id, when

        schedule.place_all(placed())
        self._wakeup.set()

    def drop(self, human_id: str) -> None:
        self._schedule.drop(human_id)

    def next_deadline(self) -> float | None:
        return self._schedule.next_deadline()

    def make_ready(self, human_id: str, access_expires_at: float) -> None:
        """Queue the grant for a worker (the token that ends first goes first)."""
        self._schedule.make_ready(human_id, access_expires_at)
        self._ready_event.set()

    @property
    def backlog(self) -> int:
        """Grants due for a refresh and waiting for a worker."""
        return self._schedule.backlog

    def ready_expiries(self) -> list[float]:
        """The waiting grants' access-token expiries, earliest first."""
        return self._schedule.ready_expiries()

    # --- running ------------------------------------------------------------------------

    def start_workers(self, tg: TaskGroup) -> None:
        """Start the workers in ``tg`` (the engine's task group)."""
        for _ in range(self._workers):
            tg.start_soon(self._worker)

    async def loop(self) -> None:
        """Hand each grant whose deadline comes to ``due``, until cancelled."""
        while True:
            self._look()
            now = self._clock.time()
            for human_id in self._schedule.pop_due(now):
                await self._due(human_id, now)
            delay = MAX_SLEEP
            next_deadline = self._schedule.next_deadline()
            if next_deadline is not None:
                delay = min(delay, next_deadline - now)
            self._wakeup = anyio.Event()
            await self._sleep_or_wakeup(delay)

    async def _sleep_or_wakeup(self, delay: float) -> None:
        async with anyio.create_task_group() as tg:

            async def sleeper() -> None:
                await self._clock.sleep(delay)
                tg.cancel_scope.cancel()

            tg.start_soon(sleeper)
            await self._wakeup.wait()
            tg.cancel_scope.cancel()

    async def _worker(self) -> None:
        while True:
            while (human_id := self._schedule.take_ready()) is None:
                self._ready_event = anyio.Event()
                await self._ready_event.wait()
            await self._work(human_id)
