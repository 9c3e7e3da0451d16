"""The in-process event bus: lifecycle events out to whoever listens.

Publishing never blocks and never fails: each subscriber has a bounded queue, and a
subscriber that falls behind loses the oldest events and is told how many with a
``lost`` notice — a slow reader can never stall the refresh engine or other readers.
Events carry ids, times and reasons, never a token.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import anyio

from haasd.clock import rfc3339

__all__ = ["EVENT_TYPES", "Event", "EventBus", "Subscription"]

#: every event type haasd publishes (``lost`` is per subscriber)
EVENT_TYPES: Final = frozenset(
    {
        "token.refreshed",
        "refresh.failed",
        "grant.reconsent_due",
        "grant.needs_reconsent",
        "consent.started",
        "consent.granted",
        "consent.denied",
        "consent.failed",
        "consent.abandoned",
        "lost",
    }
)


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    human_id: str | None
    at: float  # wall-clock epoch seconds
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "human_id": self.human_id,
            "at": rfc3339(self.at),
            **self.details,
        }


class Subscription:
    """One reader's bounded queue. Iterate it with ``async for``."""

    __slots__ = ("_accepts", "_lost", "_queue", "_wakeup")

    def __init__(self, maxsize: int, accepts: Callable[[Event], bool] | None) -> None:
        self._queue: collections.deque[Event] = collections.deque(maxlen=maxsize)
        self._accepts = accepts
        self._lost = 0
        self._wakeup = anyio.Event()

    def offer(self, event: Event) -> None:
        """Queue ``event`` if this reader accepts it, dropping the oldest when full (the
        reader then gets a ``lost`` notice first). Never blocks: the bus calls it."""
        if self._accepts is not None and not self._accepts(event):
            return
        if len(self._queue) == self._queue.maxlen:
            self._lost += 1  # the deque drops the oldest for us
        self._queue.append(event)
        self._wakeup.set()

    def get_nowait(self) -> Event | None:
        """The next event, a ``lost`` notice if some were dropped, or None."""
        if self._lost:
            lost, self._lost = self._lost, 0
            at = self._queue[0].at if self._queue else 0.0
            return Event("lost", None, at, {"count": lost})
        return self._queue.popleft() if self._queue else None

    async def get(self) -> Event:
        while True:
            event = self.get_nowait()
            if event is not None:
                return event
            self._wakeup = anyio.Event()
            await self._wakeup.wait()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        return await self.get()


class EventBus:
    """Fan-out of events to subscribers; ``publish`` is synchronous and O(subscribers)."""

    __slots__ = ("_subscribers", "published")

    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()
        self.published: collections.Counter[str] = collections.Counter()

    def publish(self, event: Event) -> None:
        self.published[event.type] += 1
        for sub in self._subscribers:
            sub.offer(event)

    @contextmanager
    def subscribe(
        self, *, maxsize: int = 256, accepts: Callable[[Event], bool] | None = None
    ) -> Iterator[Subscription]:
        sub = Subscription(maxsize, accepts)
        self._subscribers.add(sub)
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
