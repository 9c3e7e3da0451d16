"""HTTP/1.1 on one Unix-socket connection: httptools parses, this loop reads and writes.

The loop knows nothing of tokens: it hands each complete request (method, target and
body) to a handler and writes back the bytes it returns. A handler answers with

* ``bytes`` — a whole response, the fast path: no await between parse and send;
* an awaitable of ``bytes`` — when the answer needs the refresh engine;
* a :class:`Takeover` — the handler owns the stream from then on (the event stream).

Limits (:class:`Limits`) bound the head (request line + headers: bytes and count), the
body, the time from a request's first byte to its last and the idle time between
requests. A request that breaks one is answered 400/413/414/431 and the connection
closes. All timeouts here are real time: they protect sockets, not tokens.

Connection deadlines are a float per connection (:attr:`HttpConnection.deadline`, on the
connection's monotonic clock, ``time.monotonic`` unless a test passes a manual one) that
the server's watchdog checks a few times a second, cancelling
:attr:`HttpConnection.scope` when one passes. Moving an anyio cancel-scope deadline on
every request re-arms an event-loop timer each time, which measured at about half the
throughput under uvloop; a float store costs nothing. Waits off the hot path (the refresh
engine, event writes, lingering closes) use ``anyio.fail_after``/``move_on_after``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

import anyio
import anyio.abc
import httptools
import structlog

from haasd.server.tally import Tally

__all__ = [
    "Handler",
    "HttpConnection",
    "Limits",
    "Takeover",
    "error_body",
    "head_only",
    "json_response",
    "response",
]

_log = structlog.get_logger("haasd.server")


_MAY_BE_ZERO: Final = frozenset({"admin_connections", "audit_window", "refusal_window"})


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may cost. Times are real seconds."""

    #: bytes of request line + headers
    max_head: int = 16 * 1024
    max_headers: int = 64
    max_body: int = 64 * 1024
    #: from a request's first byte to its last (slowloris)
    request_timeout: float = 10.0
    #: a kept-alive connection waiting for its next request
    idle_timeout: float = 60.0
    #: writing one answer (or one event) to a reader that does not read
    write_timeout: float = 10.0
    #: waiting for the refresh engine on a client's behalf
    handler_timeout: float = 30.0
    max_connections: int = 512
    #: of ``max_connections``, this many only peers with an admin rule may use (at most
    #: half of them), so apps filling the server never lock an operator out
    admin_connections: int = 16
    max_connections_per_uid: int = 64
    #: the largest ``min_ttl`` a client may ask for, in seconds
    max_min_ttl: int = 86400
    #: events a slow ``/v1/events`` reader may fall behind before it gets ``lost``
    events_queue: int = 256
    heartbeat: float = 15.0
    #: in-flight requests get this long to finish when the server stops
    shutdown_grace: float = 5.0
    #: repeats of one token to one connection within this many seconds share an audit
    #: line (its ``count`` says how many); 0 logs every handout on its own line
    audit_window: float = 1.0
    #: repeats of a refusal or error by one peer within this many seconds share a line
    #: (its ``count`` says how many; see :mod:`haasd.server.tally`); 0 logs each
    refusal_window: float = 10.0

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            low_ok = value >= 0 if name in _MAY_BE_ZERO else value > 0
            if not low_ok or (isinstance(value, float) and not math.isfinite(value)):
                raise ValueError(f"Limits.{name} must be a positive number, got {value!r}")

    @property
    def admin_reserve(self) -> int:
        """Connections only admins may use: ``admin_connections``, at most half of all."""
        return min(self.admin_connections, self.max_connections // 2)

    @property
    def watchdog_tick(self) -> float:
        """How often the server looks for connections past their deadline."""
        shortest = min(self.request_timeout, self.idle_timeout, self.write_timeout)
        return min(1.0, max(0.02, shortest / 8))


class Takeover:
    """A handler's answer that takes the stream over (and closes it when done).

    ``head`` is the response head the takeover starts with, all a ``HEAD`` request gets.
    """

    __slots__ = ("head", "run")

    def __init__(self, run: Callable[[anyio.abc.ByteStream], Awaitable[None]], head: bytes) -> None:
        self.run = run
        self.head = head


#: ``handler(method, target, body)``; the body is ``b""`` when the request has none
Handler = Callable[[bytes, bytes, bytes], bytes | Awaitable[bytes] | Takeover]

# --- responses ---------------------------------------------------------------------------

JSON: Final = b"application/json"
_CLOSE: Final = b"Connection: close\r\n"


def _status_line(status: int) -> bytes:
    return f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode("ascii")


_STATUS: Final = {s.value: _status_line(s.value) for s in HTTPStatus if s.value >= 200}
_NO_STORE: Final = b"Cache-Control: no-store\r\n"


def response(
    status: int,
    body: bytes = b"",
    *,
    content_type: bytes = JSON,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """A whole response: status line, ``Cache-Control: no-store``, length, body."""
    parts = [_STATUS[status], _NO_STORE]
    if headers:
        parts.extend(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers.items())
    if status == 204:  # RFC 9110: a 204 has no Content-Length (and no body)
        parts.append(b"\r\n")
        return b"".join(parts)
    parts += (b"Content-Type: ", content_type, b"\r\nContent-Length: ")
    parts += (str(len(body)).encode("ascii"), b"\r\n\r\n", body)
    return b"".join(parts)


def json_response(status: int, document: object, headers: Mapping[str, str] | None = None) -> bytes:
    body = json.dumps(document, separators=(",", ":")).encode("utf-8")
    return response(status, body, headers=headers)


def error_body(status: int, error_type: str, message: str, **extra: object) -> dict[str, object]:
    """The seed's error shape: ``{"error": {"code", "type", "message", ...}}``."""
    return {"error": {"code": status, "type": error_type, "message": message, **extra}}


def _with_close(answer: bytes) -> bytes:
    cut = answer.index(b"\r\n") + 2
    return answer[:cut] + _CLOSE + answer[cut:]


def head_only(answer: bytes) -> bytes:
    """The answer to a ``HEAD``: the ``GET`` answer's status and headers (its
    ``Content-Length`` too, RFC 9110 §9.3.2), without the body."""
    return answer[: answer.index(b"\r\n\r\n") + 4]


_REJECT_TYPES: Final = {
    400: ("invalid_request", "malformed HTTP request"),
    413: ("payload_too_large", "request body too large"),
    414: ("uri_too_long", "request target too long"),
    431: ("request_header_fields_too_large", "request head too large or too many headers"),
}
_RECEIVE_SIZE: Final = 65536
_GONE: Final = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)
#: after a refusal, how long and how much we read so the client sees the answer
_LINGER_SECONDS: Final = 0.5
_LINGER_BYTES: Final = 256 * 1024


class _Reject(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


_INTERNAL_ERROR: Final = _with_close(
    json_response(500, error_body(500, "internal_error", "haasd failed to answer; see its log"))
)
_INTERNAL_ERROR_HEAD: Final = head_only(_INTERNAL_ERROR)


def rejection(status: int, message: str | None = None) -> bytes:
    error_type, default = _REJECT_TYPES[status]
    answer = json_response(status, error_body(status, error_type, message or default))
    return _with_close(answer)


async def linger_close(stream: anyio.abc.ByteStream, answer: bytes) -> None:
    """Send a last answer, half-close, and drain briefly so the client can read it."""
    with anyio.move_on_after(_LINGER_SECONDS):
        try:
            await stream.send(answer)
            await stream.send_eof()
            drained = 0
            while drained < _LINGER_BYTES:
                drained += len(await stream.receive(_RECEIVE_SIZE))
        except _GONE:
            pass


class HttpConnection:
    """One connection's read-parse-answer loop; also the httptools callback object."""

    __slots__ = (
        "_begun",
        "_body",
        "_chunks",
        "_done",
        "_error",
        "_handler",
        "_head",
        "_headers",
        "_in_head",
        "_in_message",
        "_limits",
        "_now",
        "_parser",
        "_partial",
        "_progress",
        "_stream",
        "_tally",
        "_uid",
        "_upgrade",
        "_url",
        "busy",
        "closing",
        "deadline",
        "scope",
    )

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        handler: Handler,
        limits: Limits,
        *,
        tally: Tally | None = None,
        uid: int = -1,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._handler = handler
        self._limits = limits
        #: where rejections and failures are counted, as the peer ``uid``'s (None: logged)
        self._tally = tally
        self._uid = uid
        self._parser = httptools.HttpRequestParser(self)
        self._done: list[tuple[bytes, bytes, bytes, bool]] = []
        self._chunks: list[bytes] = []
        self._url = b""
        self._head = self._partial = self._headers = self._body = 0
        self._in_head = self._in_message = self._begun = self._progress = False
        self._upgrade = False
        self._error = 0
        #: answering a request (a stop lets it finish); False while idle or streaming
        self.busy = False
        #: set by the server when it stops: close after the answer in flight
        self.closing = False
        #: real seconds on this clock: the deadlines protect sockets, not tokens
        self._now = monotonic
        #: the ``monotonic()`` instant past which the watchdog closes the connection
        self.deadline = monotonic() + limits.idle_timeout
        self.scope = anyio.CancelScope()

    # --- httptools callbacks (synchronous, inside feed_data) --------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._head = self._partial = self._headers = self._body = 0
        self._in_head = self._in_message = self._begun = self._progress = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head += len(url)
        self._progress = True
        if self._head > self._limits.max_head:
            self._fail(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers += 1
        self._head += len(name) + len(value) + 4
        self._partial = 0
        self._progress = True
        if self._headers > self._limits.max_headers or self._head > self._limits.max_head:
            self._fail(431)
        if (
            len(name) == 14
            and name.lower() == b"content-length"
            and (not value.isdigit() or int(value) > self._limits.max_body)
        ):
            self._fail(413 if value.isdigit() else 400)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._progress = True

    def on_body(self, body: bytes) -> None:
        self._body += len(body)
        if self._body > self._limits.max_body:
            self._fail(413)
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        parser = self._parser
        chunks = self._chunks
        if chunks:  # most requests have no body: no allocation for them
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._chunks = []
        else:
            body = b""
        self._done.append((parser.get_method(), self._url, body, parser.should_keep_alive()))
        self._in_message = False

    def _fail(self, status: int) -> None:
        self._error = status
        raise _Reject(status)

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve requests until the client closes, a limit is hit, or the server stops."""
        stream = self._stream
        limits = self._limits
        scope = self.scope
        feed = self._parser.feed_data
        done = self._done
        with scope:
            while True:
                try:
                    data = await stream.receive(_RECEIVE_SIZE)
                except _GONE:
                    return
                was_in_head = self._in_head
                self._progress = False
                try:
                    feed(data)
                except httptools.HttpParserUpgrade:
                    self._upgrade = True  # answer what came, then close: no protocol switch
                except httptools.HttpParserError:
                    if not done or self._error:
                        await self._reject(self._error or 400)
                        return
                    self._upgrade = True  # complete requests first, then close
                if was_in_head and self._in_head and not self._progress:
                    # the whole chunk went into one unfinished header line
                    self._partial += len(data)
                    if self._head + self._partial > limits.max_head:
                        await self._reject(431)
                        return
                if done:
                    if not await self._answer_all():
                        return
                    if self._upgrade:
                        return
                elif self._upgrade:
                    await self._reject(400)
                    return
                if self._begun:
                    self._begun = False
                    if self._in_message:
                        self.deadline = self._now() + limits.request_timeout

    async def _answer_all(self) -> bool:
        """Answer every complete request in order; False when the connection must close."""
        handler = self._handler
        stream = self._stream
        self.busy = True
        try:
            for method, target, body, keep_alive in self._done:
                head = method == b"HEAD"  # answered as a GET, without the body
                try:
                    answer = handler(b"GET" if head else method, target, body)
                    if not isinstance(answer, bytes):
                        if isinstance(answer, Takeover):
                            if head:
                                await stream.send(answer.head)
                                return False
                            self.busy = False
                            self.deadline = math.inf  # it keeps its own deadlines
                            await answer.run(stream)
                            return False
                        self.deadline = math.inf  # the handler bounds its own wait
                        answer = await answer
                except _GONE:
                    return False
                except Exception:
                    self._note(
                        "error",
                        "server.handler_failed",
                        method=method,
                        target=target[:256],
                        exc_info=True,
                    )
                    await linger_close(stream, _INTERNAL_ERROR_HEAD if head else _INTERNAL_ERROR)
                    return False
                if head:
                    answer = head_only(answer)
                self.deadline = self._now() + self._limits.write_timeout
                if not keep_alive or self.closing:
                    await stream.send(_with_close(answer))
                    return False
                await stream.send(answer)
        except _GONE:
            return False
        finally:
            self.busy = False
            self._done.clear()
        if self.closing:
            return False
        self._begun = self._in_message  # a pipelined request already begun: its own clock
        self.deadline = self._now() + self._limits.idle_timeout
        return True

    async def _reject(self, status: int) -> None:
        """Answer a request that broke the protocol or a limit, then close."""
        self._note("warning", "request.rejected", status=status, reason=_REJECT_TYPES[status][1])
        await linger_close(self._stream, rejection(status))

    def _note(self, level: str, event: str, **fields: object) -> None:
        if self._tally is None:
            getattr(_log, level)(event, peer_uid=self._uid, **fields)
        else:
            self._tally.note(_log, level, event, self._uid, **fields)

    def expire(self, now: float) -> None:
        """Close the connection if its deadline has passed (the watchdog calls this)."""
        if now >= self.deadline:
            self.scope.cancel()
