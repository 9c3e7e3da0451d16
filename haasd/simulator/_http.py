"""HTTP/1.1 on one byte stream, with h11: read a request, hand it over, write the answer.

The loop keeps the connection alive between requests (unless the client asks to close,
or speaks HTTP/1.0). Timeouts here are real time — they protect sockets, not tokens.
A handler that returns ``None`` has the connection closed without an answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from http import HTTPStatus
from typing import Final

import anyio
import anyio.abc
import h11

from haasd.clock import Activity
from haasd.simulator._messages import Reply, Request, html_reply

__all__ = ["Handler", "serve_connection"]

Handler = Callable[[Request], Awaitable[Reply | None]]

IDLE_TIMEOUT: Final = 30.0
"""Real seconds a kept-alive connection may wait for its next request."""
READ_TIMEOUT: Final = 10.0
"""Real seconds to finish receiving a request once it has begun."""
WRITE_TIMEOUT: Final = 10.0
MAX_HEAD: Final = 16 * 1024
MAX_BODY: Final = 1024 * 1024
_RECEIVE_SIZE: Final = 65536
_STREAM_GONE: Final = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


class _Reject(Exception):
    """The request cannot be read; answer ``status`` and close."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


async def serve_connection(
    stream: anyio.abc.ByteStream, handler: Handler, activity: Activity | None = None
) -> None:
    """Serve requests on ``stream`` until either side closes it.

    ``activity`` is busy from a request's last byte to its answer's (or the drop).
    """
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    async with stream:
        while True:
            try:
                request = await _receive_request(conn, stream)
            except _Reject as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    phrase = _reason(exc.status).decode()
                    await _send(conn, stream, html_reply(exc.status, phrase, phrase))
                return
            if request is None:
                return
            with _busy(activity):
                try:
                    reply = await handler(request)
                except Exception:
                    failed = html_reply(500, "Simulator bug", "The simulator raised an exception.")
                    await _send(conn, stream, failed)
                    raise
                if reply is None:
                    return  # dropped: close without an answer
                sent = await _send(conn, stream, reply, head_only=request.method == "HEAD")
            if not sent or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()


async def _receive_request(conn: h11.Connection, stream: anyio.abc.ByteStream) -> Request | None:
    """The next request in full, or ``None`` when the client closed or went idle."""
    head: h11.Request | None = None
    body = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise _Reject(exc.error_status_hint) from exc
        if event is h11.NEED_DATA:
            data: bytes | None = None
            with anyio.move_on_after(IDLE_TIMEOUT if head is None else READ_TIMEOUT):
                data = await _receive(stream)
            if data is None:
                if head is None:
                    return None
                raise _Reject(408)
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise _Reject(413)
        elif isinstance(event, h11.EndOfMessage) and head is not None:
            return _request_of(head, bytes(body))
        else:  # ConnectionClosed, PAUSED
            return None


async def _receive(stream: anyio.abc.ByteStream) -> bytes:
    """What the client sends next; ``b""`` once it has closed."""
    try:
        return await stream.receive(_RECEIVE_SIZE)
    except _STREAM_GONE:
        return b""


def _request_of(head: h11.Request, body: bytes) -> Request:
    """The request of ``head`` and ``body``; repeated headers joined with ``", "``."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in head.headers:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return Request(
        method=head.method.decode("latin-1"),
        target=head.target.decode("latin-1"),
        headers=headers,
        body=body,
    )


def _busy(activity: Activity | None) -> AbstractContextManager[None]:
    return nullcontext() if activity is None else activity.busy()


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


async def _send(
    conn: h11.Connection, stream: anyio.abc.ByteStream, reply: Reply, *, head_only: bool = False
) -> bool:
    """Write ``reply``; whether it went out."""
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in reply.headers]
    headers += [(b"Content-Length", str(len(reply.body)).encode()), (b"Server", b"haas-simulator")]
    try:
        data = conn.send(
            h11.Response(status_code=reply.status, headers=headers, reason=_reason(reply.status))
        )
        if reply.body and not head_only:
            data += conn.send(h11.Data(data=reply.body))
        data += conn.send(h11.EndOfMessage())
    except h11.LocalProtocolError:
        return False
    with anyio.move_on_after(WRITE_TIMEOUT):
        try:
            await stream.send(data)
        except _STREAM_GONE:
            return False
        return True
    return False
