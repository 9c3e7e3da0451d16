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

import math
import time
from collections.abc import Awaitable, Callable
from typing import Final

import anyio
import anyio.abc
import httptools
import structlog

from haasd.server.limits import Limits
from haasd.server.responses import (
    INTERNAL_ERROR,
    INTERNAL_ERROR_HEAD,
    REJECT_TYPES,
    error_body,
    head_only,
    json_response,
    rejection,
    response,
    with_close,
)
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

_RECEIVE_SIZE: Final = 65536
_GONE: Final = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)
#: after a refusal, how long and how much we read so the client sees the answer
_LINGER_SECONDS: Final = 0.5
_LINGER_BYTES: Final = 256 * 1024


class _Reject(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


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
        "answering",
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
        self.answering = False
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
        done = self._done
        with self.scope:
            while True:
                try:
                    data = await stream.receive(_RECEIVE_SIZE)
                except _GONE:
                    return
                status = self._feed(data)
                if status:
                    await self._reject(status)
                    return
                if done:
                    if not await self._answer_all() or self._upgrade:
                        return
                elif self._upgrade:
                    await self._reject(400)
                    return
                if self._begun:
                    self._begun = False
                    if self._in_message:
                        self.deadline = self._now() + self._limits.request_timeout

    def _feed(self, data: bytes) -> int:
        """Parse one chunk; the status to reject the request with, or 0."""
        was_in_head = self._in_head
        self._progress = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgrade = True  # answer what came, then close: no protocol switch
        except httptools.HttpParserError:
            if not self._done or self._error:
                return self._error or 400
            self._upgrade = True  # complete requests first, then close
        if was_in_head and self._in_head and not self._progress:
            # the whole chunk went into one unfinished header line
            self._partial += len(data)
            if self._head + self._partial > self._limits.max_head:
                return 431
        return 0

    async def _answer_all(self) -> bool:
        """Answer every complete request in order; False when the connection must close."""
        handler = self._handler
        stream = self._stream
        self.answering = True
        try:
            for method, target, body, keep_alive in self._done:
                head = method == b"HEAD"  # answered as a GET, without the body
                try:
                    answer = handler(b"GET" if head else method, target, body)
                except _GONE:
                    return False
                except Exception:  # noqa: BLE001 - a handler's defect costs this connection, not the server
                    await self._handler_failed(method, target, head)
                    return False
                reply = (
                    answer
                    if isinstance(answer, bytes)
                    else await self._settle(answer, method, target, head)
                )
                if reply is None:
                    return False
                if head:
                    reply = head_only(reply)
                self.deadline = self._now() + self._limits.write_timeout
                if not keep_alive or self.closing:
                    await stream.send(with_close(reply))
                    return False
                await stream.send(reply)
        except _GONE:
            return False
        finally:
            self.answering = False
            self._done.clear()
        if self.closing:
            return False
        self._begun = self._in_message  # a pipelined request already begun: its own clock
        self.deadline = self._now() + self._limits.idle_timeout
        return True

    async def _settle(
        self, answer: Awaitable[bytes] | Takeover, method: bytes, target: bytes, head: bool
    ) -> bytes | None:
        """Wait for an answer that is not ready, or hand the stream over; None: close."""
        stream = self._stream
        try:
            if isinstance(answer, Takeover):
                if head:
                    await stream.send(answer.head)
                    return None
                self.answering = False
                self.deadline = math.inf  # it keeps its own deadlines
                await answer.run(stream)
                return None
            self.deadline = math.inf  # the handler bounds its own wait
            return await answer
        except _GONE:
            return None
        except Exception:  # noqa: BLE001 - a handler's defect costs this connection, not the server
            await self._handler_failed(method, target, head)
            return None

    async def _handler_failed(self, method: bytes, target: bytes, head: bool) -> None:
        """Log a handler's failure and answer 500; the connection then closes."""
        self._note(
            "error", "server.handler_failed", method=method, target=target[:256], exc_info=True
        )
        await linger_close(self._stream, INTERNAL_ERROR_HEAD if head else INTERNAL_ERROR)

    async def _reject(self, status: int) -> None:
        """Answer a request that broke the protocol or a limit, then close."""
        self._note("warning", "request.rejected", status=status, reason=REJECT_TYPES[status][1])
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
