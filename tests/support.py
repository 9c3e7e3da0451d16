"""What the tests of the token server share: an in-memory engine, a server on a fresh
socket, and a hand-made HTTP/1.1 client for exact bytes.

:class:`FakeService` is the ``TokenService`` protocol over a dict; :func:`serving` runs a
real :class:`~haasd.server.TokenServer` on a real Unix socket in front of it;
:class:`RawClient` sends exact bytes and reads one reply at a time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httptools

from haasd.clock import Clock, ManualClock
from haasd.config import AccessRule, SocketConfig
from haasd.errors import HaasdError, TokenUnavailableError, UnknownHumanError
from haasd.events import EventBus
from haasd.grantpack import Times, times_of
from haasd.grants import Grant, Policy, State
from haasd.health import Health
from haasd.secret import Secret
from haasd.server import Limits, TokenServer, open_listener
from haasd.tokens import HUMAN_ID_RE

NOW = 1_800_000_000.0
MARIA = "usr_maria_42"
SCOPES = ("tasks:dispatch", "status:read")
TOKEN = "fake-access-maria-1"  # not token-shaped: the log redaction cannot hide a leak


def make_grant(
    human_id: str = MARIA,
    *,
    token: str = TOKEN,
    ttl: float = 3600.0,
    scope: tuple[str, ...] = SCOPES,
    state: State = State.ACTIVE,
    refresh_in: float = 30 * 86400.0,
    last_error: str | None = None,
) -> Grant:
    return Grant(
        human_id=human_id,
        environment="test",
        scope=scope,
        access_token=Secret(token),
        access_expires_at=NOW + ttl,
        refresh_token=Secret(f"fake-refresh-{human_id}"),
        refresh_expires_at=NOW + refresh_in,
        consented_at=NOW - 3600,
        last_refresh_at=NOW - 60,
        state=state,
        last_error=last_error,
    )


class FakeService:
    """The TokenService protocol over a dict; records what the server asked of it."""

    def __init__(self, grants: Iterable[Grant] = (), *, policy: Policy | None = None) -> None:
        self.events = EventBus()
        self.clock = ManualClock(start=NOW)
        self.policy = policy or Policy()
        self._grants = {g.human_id: g for g in grants}
        self.served: list[tuple[str, float]] = []
        self.ensured: list[tuple[str, float]] = []
        self.refreshed: list[str] = []
        #: what ensure_fresh / refresh_now do: a new grant, or an error to raise
        self.outcome: dict[str, Grant | HaasdError] = {}
        #: when set, ensure_fresh / refresh_now wait for it first
        self.gate: anyio.Event | None = None
        self.reasons: list[str] = []
        self.health_error: Exception | None = None
        #: while True, as a daemon loading its grants: grant() has none, peek() reads
        self.loading = False
        self.peeked: list[str] = []

    def grant(self, human_id: str) -> Grant | None:
        return None if self.loading else self._grants.get(human_id)

    async def peek(self, human_id: str) -> Grant | None:
        await anyio.lowlevel.checkpoint()
        self.peeked.append(human_id)
        if isinstance(outcome := self.outcome.get(f"peek {human_id}"), HaasdError):
            raise outcome
        return self._grants.get(human_id)

    def grants(self) -> Iterable[Grant]:
        return self._grants.values()

    def grant_times(self) -> Iterable[Times]:
        return [times_of(grant) for grant in self._grants.values()]

    def mark_served(self, grant: Grant, now: float) -> None:
        self.served.append((grant.human_id, now))

    async def _outcome(self, human_id: str) -> Grant:
        if self.gate is not None:
            await self.gate.wait()
        await anyio.lowlevel.checkpoint()
        if human_id not in self._grants:
            raise UnknownHumanError(human_id)
        outcome = self.outcome.get(human_id)
        if isinstance(outcome, HaasdError):
            raise outcome
        if outcome is None:
            raise TokenUnavailableError(human_id, "refresh failing", 42.0)
        self._grants[human_id] = outcome
        return outcome

    async def ensure_fresh(
        self, human_id: str, min_ttl: float, *, wait: float, peer: int | None
    ) -> Grant:
        self.ensured.append((human_id, min_ttl))
        return await self._outcome(human_id)

    async def refresh_now(self, human_id: str, *, wait: float, peer: int | None) -> Grant:
        self.refreshed.append(human_id)
        return await self._outcome(human_id)

    async def delete(self, human_id: str) -> bool:
        await anyio.lowlevel.checkpoint()
        return self._grants.pop(human_id, None) is not None

    def health(self) -> Health:
        if self.health_error is not None:
            raise self.health_error
        return Health(reasons=tuple(self.reasons))


def admin_rule(uid: int = os.geteuid(), humans: tuple[str, ...] = ("usr_*",)) -> AccessRule:
    return AccessRule(uid=uid, gid=None, humans=humans, scopes=None, admin=True)


def rule(
    uid: int | None = os.geteuid(),
    humans: tuple[str, ...] = ("usr_*",),
    *,
    gid: int | None = None,
    scopes: tuple[str, ...] | None = None,
) -> AccessRule:
    return AccessRule(uid=uid, gid=gid, humans=humans, scopes=scopes, admin=False)


@dataclass
class Served:
    server: TokenServer
    path: str
    service: FakeService
    #: cancel it to stop the server
    stop: anyio.CancelScope


def socket_dir() -> str:
    """A directory short enough for AF_UNIX's 108-byte paths (pytest's tmp_path is not)."""
    return tempfile.mkdtemp(prefix="h", dir="/tmp")


@asynccontextmanager
async def serving(
    service: FakeService | None = None,
    rules: Sequence[AccessRule] = (),
    *,
    limits: Limits | None = None,
    mode: int = 0o660,
    human_id_pattern: re.Pattern[str] = HUMAN_ID_RE,
    clock: Clock | None = None,
    starting: bool = False,
) -> AsyncIterator[Served]:
    """A TokenServer on a fresh socket, stopped (and its directory removed) on exit.

    ``clock`` times its connections (the machine's by default); a :class:`ManualClock`
    lets a test step through a timeout. ``starting``: as while the daemon loads, until
    ``server.started()``.
    """
    service = service or FakeService([make_grant()])
    directory = socket_dir()
    path = Path(directory) / "s.sock"
    server = TokenServer(
        service,
        rules,
        limits=limits or Limits(),
        human_id_pattern=human_id_pattern,
        clock=clock,
        starting=starting,
    )
    listener = await open_listener(SocketConfig(path, mode), environ={})
    stop = anyio.CancelScope()

    async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        with stop:
            await server.serve(listener, task_status=task_status)

    try:
        async with anyio.create_task_group() as tg:
            await tg.start(run)
            yield Served(server, str(path), service, stop)
            stop.cancel()
    finally:
        await listener.aclose()
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_type(self) -> str:
        return str(self.json()["error"]["type"])


class _ReplyParser:
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: dict[str, str] = {}
        self.body = b""
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


class RawClient:
    """HTTP/1.1 by hand on one connection: exact bytes out, one reply at a time back."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self._buffer = b""

    @classmethod
    @asynccontextmanager
    async def connect(cls, path: str) -> AsyncIterator[RawClient]:
        stream = await anyio.connect_unix(path)
        async with stream:
            yield cls(stream)

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def request(
        self, method: str, target: str, headers: Sequence[tuple[str, str]] = ()
    ) -> Reply:
        lines = [f"{method} {target} HTTP/1.1", "Host: haasd"]
        lines += [f"{name}: {value}" for name, value in headers]
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        return await self.reply()

    async def reply(self, seconds: float = 5.0) -> Reply:
        parser = _ReplyParser()
        with anyio.fail_after(seconds):
            while True:
                if self._buffer:
                    data, self._buffer = self._buffer, b""
                else:
                    data = await self.stream.receive()
                try:
                    parser.parser.feed_data(data)
                except httptools.HttpParserUpgrade:  # pragma: no cover - never sent
                    raise
                if parser.done:
                    break
        # a reply's bytes beyond its end are not expected in these tests (no pipelining
        # of replies is read ahead: httptools consumed exactly one message or raised)
        return Reply(parser.parser.get_status_code(), parser.headers, parser.body)

    async def closed(self, seconds: float = 5.0) -> bool:
        """True once the server has closed the connection (data before EOF is dropped)."""
        with anyio.fail_after(seconds):
            while True:
                try:
                    await self.stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return True


async def eventually(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait (polling) until ``condition()`` holds; fail after ``seconds``."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await anyio.sleep(0.01)
    raise AssertionError("the condition never held")


async def get(path: str, target: str, method: str = "GET") -> Reply:
    async with RawClient.connect(path) as client:
        return await client.request(method, target)


def isort_order(name: str) -> tuple[int, str]:
    """ruff's RUF022 order of ``__all__``: CONSTANTS, then Classes, then functions."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


# --- the event stream ---------------------------------------------------------------------


async def read_events(client: RawClient, count: int) -> list[tuple[str, dict[str, object]]]:
    """The next ``count`` events (comments skipped)."""
    events: list[tuple[str, dict[str, object]]] = []
    buffer = b""
    with anyio.fail_after(5):
        while len(events) < count:
            buffer += await client.stream.receive()
            *blocks, buffer = buffer.split(b"\n\n")
            for block in blocks:
                lines = dict(
                    line.split(": ", 1) for line in block.decode().splitlines() if line[:1] != ":"
                )
                if "event" in lines:
                    events.append((lines["event"], json.loads(lines["data"])))
    return events


async def open_stream(client: RawClient) -> bytes:
    await client.send(b"GET /v1/events HTTP/1.1\r\nHost: haasd\r\n\r\n")
    head = b""
    with anyio.fail_after(5):
        while b": haasd events\n\n" not in head:
            head += await client.stream.receive()
    return head
