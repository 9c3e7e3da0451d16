"""``GET /v1/events``: lifecycle events as a ``text/event-stream``, for as long as the
client reads.

Each event is ``event: <type>`` plus one ``data:`` line holding the event's JSON (never a
token); a comment line goes out every ``Limits.heartbeat`` seconds of silence. The
subscription is bounded (``Limits.events_queue``): a reader that falls behind loses the
oldest events and is told with a ``lost`` event, and a reader that stops reading
altogether is dropped after ``Limits.write_timeout`` — it never holds up the publisher.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Final

import anyio
import anyio.abc

from haasd.config import AccessRule
from haasd.events import Event, EventBus
from haasd.server.access import covers_everyone, is_admin, may_see
from haasd.server.http import Limits, Takeover

__all__ = ["HEAD", "encode_event", "event_stream", "subscribe"]

#: the stream's response head (all a ``HEAD /v1/events`` gets)
HEAD: Final = (
    b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Type: text/event-stream\r\n"
    b"Connection: close\r\n\r\n"
)
_HELLO: Final = b": haasd events\n\n"
_HEARTBEAT: Final = b": heartbeat\n\n"
_GONE: Final = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


def subscribe(
    events: EventBus, limits: Limits, matched: Callable[[], tuple[AccessRule, ...]]
) -> Takeover:
    """The stream for a peer whose rules are ``matched()`` (read again for each event: a
    reload applies at once). ``consent.*`` events go to admins only — of the human they
    name, or of everyone while the human is not known yet; other events go to peers the
    human's rules cover, and events about nobody to every peer."""

    def accepts(event: Event) -> bool:
        rules = matched()
        if event.type.startswith("consent."):
            if event.human_id is None:  # may end with anyone: admins of everyone only
                return covers_everyone(rule for rule in rules if rule.admin)
            return is_admin(rules, event.human_id)
        return event.human_id is None or may_see(rules, event.human_id)

    return Takeover(lambda stream: event_stream(stream, events, accepts, limits), HEAD)


def encode_event(event: Event) -> bytes:
    data = json.dumps(event.to_json(), separators=(",", ":"), default=str)
    return f"event: {event.type}\ndata: {data}\n\n".encode()


async def event_stream(
    stream: anyio.abc.ByteStream,
    bus: EventBus,
    allowed: Callable[[Event], bool],
    limits: Limits,
) -> None:
    """Stream ``bus``'s events that ``allowed`` says yes to, until the reader goes."""

    def accepts(event: Event) -> bool:
        # runs inside publish(): it must be cheap and must never raise
        try:
            return allowed(event)
        except Exception:  # noqa: BLE001 - a failing check drops the event, not the publisher
            return False

    with bus.subscribe(maxsize=limits.events_queue, accepts=accepts) as subscription:
        chunk = HEAD + _HELLO
        try:
            while True:
                with anyio.fail_after(limits.write_timeout):
                    await stream.send(chunk)
                event: Event | None = None
                with anyio.move_on_after(limits.heartbeat):
                    event = await subscription.get()
                chunk = _HEARTBEAT if event is None else encode_event(event)
        except (TimeoutError, *_GONE):
            return
