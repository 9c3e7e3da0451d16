"""A scripted token endpoint on loopback: the Nth request meets the Nth scripted fault.

:class:`FaultServer` stands in front of an upstream authorization server (the
simulator, so that rotation, reuse detection and revocation are real) on its own TCP
port: ``/token`` and ``/revoke`` there are passed on to the same paths upstream. Every
request it receives takes the next :data:`Action` of its script — and, once the script
is spent, ``then`` (by default: pass it on). Actions:

* :class:`Answer` — a canned reply (status, headers, raw body); the upstream never sees
  the request.
* :class:`Forward` — pass the request on and relay the upstream's reply, its JSON body
  optionally rewritten (a field dropped or changed): the upstream acted.
* :class:`Reset` — a TCP reset (``SO_LINGER`` 0): at once on accepting the connection,
  before any of the request is read; or once the request was read; or once the
  upstream acted on it (the answer is lost).
* :class:`Stall` — read the request (and pass it on, if ``forward``), then answer
  nothing for ``seconds`` of real time: a client's read timeout ends the exchange.

Every reply says ``Connection: close``, so every request comes on a new connection and
"before the request is read" means exactly that. Each request's arrival is recorded on
the clock given (``times``): the number of requests in a window is what a test asserts.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeAlias

import anyio
import anyio.abc
import h11
import httpx

from haasd.clock import Clock

__all__ = ["Action", "Answer", "FaultServer", "Forward", "Reset", "Stall", "json_answer"]

#: a rewrite of the upstream's JSON answer (a copy: change it freely)
Rewrite: TypeAlias = Callable[[dict[str, Any]], dict[str, Any]]


#: the relay speaks plain HTTP: no trust store to load (a fifth of a second per client)
_PLAIN = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Forward:
    rewrite: Rewrite | None = None


@dataclass(frozen=True, slots=True)
class Reset:
    #: "accepted": before reading; "read": after reading; "acted": after the upstream acted
    when: str = "accepted"


@dataclass(frozen=True, slots=True)
class Stall:
    seconds: float = 5.0
    forward: bool = False


Action: TypeAlias = Answer | Forward | Reset | Stall


def json_answer(status: int, body: object, *headers: tuple[str, str]) -> Answer:
    """A canned JSON reply."""
    content = json.dumps(body).encode()
    return Answer(status, (("Content-Type", "application/json"), *headers), content)


@dataclass
class _Request:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass
class FaultServer:
    """The scripted endpoint; ``async with server.running()`` to listen (see the module)."""

    clock: Clock
    #: the upstream's base URL: a request is passed on to the same path there
    upstream: str | None = None
    script: Sequence[Action] = ()
    then: Action = field(default_factory=Forward)
    #: clock time (wall) of each request received, in order
    times: list[float] = field(default_factory=list)
    #: what each request was answered with, in order (the action taken)
    taken: list[Action] = field(default_factory=list)
    #: the bodies of the requests received, as sent
    bodies: list[bytes] = field(default_factory=list)
    #: how a request's body is changed before it is passed on (a token this server
    #: rewrote in an answer, say, given back as the upstream issued it)
    inbound: Callable[[bytes], bytes] | None = None
    _url: str | None = None
    _relay: httpx.AsyncClient | None = None

    @property
    def url(self) -> str:
        """The token endpoint's URL (``/token`` on this server's port)."""
        if self._url is None:
            raise RuntimeError("the fault server is not running")
        return f"{self._url}/token"

    @property
    def revocation_url(self) -> str:
        """The revocation endpoint's URL (``/revoke`` on this server's port)."""
        return self.url.removesuffix("/token") + "/revoke"

    @property
    def requests(self) -> int:
        return len(self.times)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - anyio's
        self._url = f"http://127.0.0.1:{port}"
        relay = httpx.AsyncHTTPTransport(verify=_PLAIN)
        async with (
            httpx.AsyncClient(transport=relay, trust_env=False, timeout=10.0) as client,
            listener,
            anyio.create_task_group() as tg,
        ):
            self._relay = client
            tg.start_soon(partial(listener.serve, self._connection, task_group=tg))
            try:
                yield self.url
            finally:
                tg.cancel_scope.cancel()
                self._url = None

    def _next(self) -> Action:
        index = len(self.taken)
        action = self.script[index] if index < len(self.script) else self.then
        self.taken.append(action)
        self.times.append(self.clock.time())
        return action

    async def _connection(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            action = self._next()
            if isinstance(action, Reset) and action.when == "accepted":
                return _reset(stream)
            request = await _read_request(stream)
            if request is None:
                return None
            self.bodies.append(request.body)
            await self._act(stream, action, request)
        return None

    async def _act(self, stream: anyio.abc.SocketStream, action: Action, request: _Request) -> None:
        match action:
            case Answer():
                await _write(stream, action)
            case Forward(rewrite):
                await _write(stream, await self._forward(request, rewrite))
            case Reset(when):
                if when == "acted":
                    await self._forward(request, None)
                _reset(stream)
            case Stall(seconds, forward):
                if forward:
                    await self._forward(request, None)
                await anyio.sleep(seconds)  # real time: the client's read timeout fires

    async def _forward(self, request: _Request, rewrite: Rewrite | None) -> Answer:
        assert self._relay is not None and self.upstream is not None
        keep = {b"content-type", b"authorization", b"accept"}
        headers = [(k.decode(), v.decode()) for k, v in request.headers if k.lower() in keep]
        content = request.body if self.inbound is None else self.inbound(request.body)
        target = self.upstream + request.target.decode("latin-1")
        reply = await self._relay.post(target, content=content, headers=headers)
        body = reply.content
        if rewrite is not None and reply.status_code == 200:
            body = json.dumps(rewrite(dict(reply.json()))).encode()
        dropped = {"content-length", "connection", "server", "date", "transfer-encoding"}
        kept = tuple((k, v) for k, v in reply.headers.items() if k.lower() not in dropped)
        return Answer(reply.status_code, kept, body)


def _reset(stream: anyio.abc.SocketStream) -> None:
    """Make the coming close a TCP reset rather than an orderly FIN."""
    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)  # noqa: S610 - anyio's
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def _read_request(stream: anyio.abc.SocketStream) -> _Request | None:
    """One whole request, or None if the client went away first."""
    conn = h11.Connection(h11.SERVER)
    head: h11.Request | None = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            try:
                conn.receive_data(await stream.receive())
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return None
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage) and head is not None:
            return _Request(head.method, head.target, list(head.headers), body)
        else:
            return None


async def _write(stream: anyio.abc.SocketStream, answer: Answer) -> None:
    head = [f"HTTP/1.1 {answer.status} Fault"]
    head += [f"{name}: {value}" for name, value in answer.headers]
    head += [f"Content-Length: {len(answer.body)}", "Connection: close", "", ""]
    try:
        await stream.send("\r\n".join(head).encode("latin-1") + answer.body)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass
