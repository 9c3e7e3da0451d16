"""Single flight: at most one refresh per grant in flight, whoever asks; the rest join it.

A flight runs in the engine's own task group (:class:`Background`), never in the task of
whoever started it, so a caller that goes away — a client hanging up, a timeout — cannot
cut a refresh between spending the refresh token and writing the new one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVarTuple, Unpack

import anyio
from anyio.abc import TaskGroup

from haasd.errors import HaasdError, TokenUnavailableError

__all__ = ["Background", "Flight", "SingleFlight"]

_Args = TypeVarTuple("_Args")

#: one refresh: what it met (None: the grant was refreshed)
Work = Callable[[], Awaitable[HaasdError | None]]


class Background:
    """The engine's task group, for work that outlives whoever asked for it."""

    __slots__ = ("_tg",)

    def __init__(self) -> None:
        self._tg: TaskGroup | None = None

    def bind(self, tg: TaskGroup) -> None:
        self._tg = tg

    @property
    def running(self) -> bool:
        return self._tg is not None

    def start_soon(
        self, func: Callable[[Unpack[_Args]], Coroutine[Any, Any, object]], *args: *_Args
    ) -> None:
        assert self._tg is not None, "the refresher is not running"  # noqa: S101
        self._tg.start_soon(func, *args)


@dataclass(slots=True)
class Flight:
    """One refresh under way: ``done`` is set when it ended, ``error`` is what it met."""

    done: anyio.Event = field(default_factory=anyio.Event)
    error: HaasdError | None = None

    async def landed(self, human_id: str, wait: float) -> None:
        """Wait up to ``wait`` seconds for it to end, else :class:`TokenUnavailableError`
        (the refresh goes on)."""
        with anyio.move_on_after(wait):
            await self.done.wait()
            return
        raise TokenUnavailableError(
            human_id, f"the refresh is still under way after {wait:g}s; ask again shortly", 1.0
        )


class SingleFlight:
    """The refreshes in flight, one per grant at most."""

    __slots__ = ("_background", "_flights")

    def __init__(self, background: Background) -> None:
        self._background = background
        self._flights: dict[str, Flight] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def get(self, human_id: str) -> Flight | None:
        """The flight under way for ``human_id``, if any (to join it)."""
        return self._flights.get(human_id)

    def fly(self, human_id: str, work: Work) -> Flight:
        """The flight under way for ``human_id``, or a new one running ``work``."""
        flight = self._flights.get(human_id)
        if flight is None:
            flight = Flight()
            self._background.start_soon(self._run, human_id, flight, work)
            self._flights[human_id] = flight
        return flight

    async def _run(self, human_id: str, flight: Flight, work: Work) -> None:
        try:
            flight.error = await work()
        finally:
            del self._flights[human_id]
            flight.done.set()
