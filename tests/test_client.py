"""haasd.client against a real TokenServer on a real Unix socket (the fake service of
test_server behind it); httpx.MockTransport only stands in for the HaaS API that
HaasdAuth talks to."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, asynccontextmanager, closing, contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from support import (
    MARIA,
    NOW,
    TOKEN,
    FakeService,
    Served,
    eventually,
    isort_order,
    make_grant,
    rule,
    serving,
    socket_dir,
)

import haasd.client
from haasd.client import (
    AsyncHaasdClient,
    DaemonUnreachable,
    Forbidden,
    HaasdAuth,
    HaasdClient,
    HaasdClientError,
    NeedsReconsent,
    Token,
    TokenUnavailable,
    UnknownHuman,
)
from haasd.client._cache import TokenCache, whole_seconds
from haasd.client._errors import error_from_response, error_from_transport
from haasd.client._model import EventParser
from haasd.config import AccessRule
from haasd.errors import HaasdError, NeedsReconsentError, TokenUnavailableError
from haasd.events import Event
from haasd.grants import State
from haasd.secret import Secret

NEW_TOKEN = "fake-access-maria-2"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """AsyncHaasdClient is for asyncio and trio alike: every async test runs on both."""
    return str(request.param)


class Ticks:
    """A monotonic clock for the client's cache that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def client_of(
    service: FakeService | None = None,
    *,
    rules: Sequence[AccessRule] = (),
    refresh_margin: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[tuple[Served, AsyncHaasdClient]]:
    """(served, client) for a server with ``service`` (default: MARIA's grant)."""
    async with (
        serving(service, rules) as s,
        AsyncHaasdClient(s.path, refresh_margin=refresh_margin, clock=clock) as client,
    ):
        yield s, client


# --- tokens and the cache ------------------------------------------------------------------


async def test_a_token_is_typed_and_its_repr_hides_it() -> None:
    async with client_of() as (_, client):
        token = await client.token(MARIA)
    assert (token.human_id, token.token_type, token.environment) == (MARIA, "Bearer", "test")
    assert (token.expires_at, token.expires_in) == (NOW + 3600, 3600)
    assert token.scope == ("tasks:dispatch", "status:read")
    assert token.access_token.reveal() == TOKEN
    assert token.authorization == f"Bearer {TOKEN}"
    assert TOKEN not in repr(token) and TOKEN not in str(token)


async def test_a_cached_token_costs_no_request() -> None:
    async with client_of() as (s, client):
        first = await client.token(MARIA)
        second = await client.token(MARIA, scope=[])
    assert first.access_token == second.access_token
    assert s.service.served == [(MARIA, NOW)]


async def test_the_cache_lets_a_token_go_refresh_margin_before_it_expires() -> None:
    ticks = Ticks()
    async with client_of(clock=ticks, refresh_margin=60) as (s, client):
        await client.token(MARIA)
        ticks.now += 3600 - 61
        cached = await client.token(MARIA)
        assert len(s.service.served) == 1
        ticks.now += 2  # 59 s left: within the margin
        await client.token(MARIA)
    assert cached.expires_in == 61
    assert len(s.service.served) == 2


async def test_min_ttl_beyond_the_cached_token_asks_haasd_for_a_longer_one() -> None:
    service = FakeService([make_grant()])
    service.outcome[MARIA] = make_grant(token=NEW_TOKEN, ttl=7200)
    async with client_of(service) as (_, client):
        await client.token(MARIA)
        longer = await client.token(MARIA, min_ttl=3700)
        again = await client.token(MARIA, min_ttl=3700)
    assert longer.access_token.reveal() == again.access_token.reveal() == NEW_TOKEN
    assert service.ensured == [(MARIA, 3700.0)]


async def test_a_token_with_less_than_the_margin_left_is_not_cached() -> None:
    async with client_of(FakeService([make_grant(ttl=30)])) as (s, client):
        await client.token(MARIA)
        await client.token(MARIA)
    assert len(s.service.served) == 2


async def test_tokens_are_cached_per_scope_and_invalidated_per_human() -> None:
    async with client_of() as (s, client):
        await client.token(MARIA, scope="status:read")
        await client.token(MARIA, scope=["status:read"])
        await client.token(MARIA)
        assert len(s.service.served) == 2
        await client.invalidate(MARIA)
        await client.token(MARIA, scope="status:read")
        await client.token(MARIA)
    assert len(s.service.served) == 4


async def test_fifty_concurrent_callers_share_one_request() -> None:
    service = FakeService([make_grant(ttl=10)])
    service.outcome[MARIA] = make_grant(token=NEW_TOKEN)
    service.gate = anyio.Event()
    tokens: list[Token] = []
    async with client_of(service) as (_, client):

        async def ask() -> None:
            tokens.append(await client.token(MARIA, min_ttl=60))

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(ask)
            await eventually(lambda: len(service.ensured) == 1)
            await anyio.wait_all_tasks_blocked()
            service.gate.set()
    assert service.ensured == [(MARIA, 60.0)]
    assert {NEW_TOKEN} == {t.access_token.reveal() for t in tokens} and len(tokens) == 50


async def test_callers_waiting_on_a_failing_request_share_its_error() -> None:
    service = FakeService([make_grant(ttl=10)])
    service.gate = anyio.Event()  # then: 503, refresh failing
    errors: list[HaasdClientError] = []
    async with client_of(service) as (_, client):

        async def ask() -> None:
            try:
                await client.token(MARIA, min_ttl=60)
            except TokenUnavailable as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(ask)
            await eventually(lambda: len(service.ensured) == 1)
            await anyio.wait_all_tasks_blocked()
            service.gate.set()
        # a new call, after the failure, asks again
        with pytest.raises(TokenUnavailable):
            await client.token(MARIA, min_ttl=60)
    assert (len(errors), len(service.ensured)) == (10, 2)


# --- errors ---------------------------------------------------------------------------------


def _dead() -> FakeService:
    return FakeService([make_grant(ttl=0, state=State.NEEDS_RECONSENT)])


def _expired() -> FakeService:
    return FakeService([make_grant(ttl=-5)])


@pytest.mark.parametrize(
    ("service", "rules", "human_id", "scope", "error", "status", "error_type"),
    [
        (None, (), "usr_nobody", None, UnknownHuman, 404, "unknown_human"),
        (None, [rule(uid=4242)], MARIA, None, Forbidden, 403, "forbidden"),
        (None, (), MARIA, "profile:read", Forbidden, 403, "insufficient_scope"),
        (_dead, (), MARIA, None, NeedsReconsent, 409, "needs_reconsent"),
        (
            lambda: FakeService([make_grant(ttl=-5)]),
            (),
            MARIA,
            None,
            TokenUnavailable,
            503,
            "token_unavailable",
        ),
        (None, (), "maria", None, HaasdClientError, 400, "invalid_request"),
    ],
)
async def test_error_answers_map_to_exceptions(
    service: Callable[[], FakeService] | None,
    rules: Sequence[AccessRule],
    human_id: str,
    scope: str | None,
    error: type[HaasdClientError],
    status: int,
    error_type: str,
) -> None:
    async with client_of(service() if service else None, rules=rules) as (_, client):
        with pytest.raises(error) as caught:
            await client.token(human_id, scope=scope)
    assert (error, status, error_type) == (
        type(caught.value),
        caught.value.status,
        caught.value.error_type,
    )
    assert isinstance(caught.value, HaasdError)
    if error is TokenUnavailable:
        assert caught.value.retry_after == 42


async def test_a_missing_socket_is_daemon_unreachable_naming_it_and_what_to_check() -> None:
    path = str(Path(socket_dir()) / "missing.sock")
    async with AsyncHaasdClient(path) as client:
        with pytest.raises(DaemonUnreachable) as caught:
            await client.token(MARIA)
    message = str(caught.value)
    assert path in message and "no socket there" in message
    assert "systemctl status haasd" in message and f"haasd health --socket {path}" in message
    assert (caught.value.status, caught.value.error_type) == (None, "unreachable")


@contextmanager
def raw_server(answer: bytes | None) -> Iterator[str]:
    """A socket that answers every connection with ``answer`` (None: accepts, never
    answers; b"": nothing listens)."""
    directory = socket_dir()
    path = str(Path(directory) / "s.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                if answer:
                    conn.sendall(answer)
                stop.wait(2)

    thread = threading.Thread(target=serve, daemon=True)
    if answer != b"":
        listener.listen()
        thread.start()
    try:
        yield path
    finally:
        stop.set()
        listener.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize(
    ("answer", "error", "error_type", "words"),
    [
        (b"", DaemonUnreachable, "unreachable", "nothing listens"),
        (None, DaemonUnreachable, "unreachable", "no answer within 0.2s"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]",
            HaasdClientError,
            "malformed_response",
            "not what its API documents",
        ),
        (b"SSH-2.0-nope\r\n\r\n", HaasdClientError, "protocol_error", "not HTTP/1.1"),
    ],
)
async def test_what_comes_back_from_something_that_is_not_haasd(
    answer: bytes | None, error: type[HaasdClientError], error_type: str, words: str
) -> None:
    # the async client: httpcore's sync backend leaks (ResourceWarning) the socket of a
    # refused connect, which the strict warning filter would report against this test
    with raw_server(answer) as path:
        async with AsyncHaasdClient(path, timeout=0.2) as client:
            with pytest.raises(error) as caught:
                await client.health()
    assert (error, error_type) == (type(caught.value), caught.value.error_type)
    assert words in str(caught.value)


# --- humans, health, events -----------------------------------------------------------------


async def test_status_humans_health_refresh_and_delete() -> None:
    service = FakeService([make_grant(), make_grant("usr_ana_1", last_error="timeout")])
    service.outcome[MARIA] = make_grant(token=NEW_TOKEN, ttl=3000)
    async with client_of(service) as (_, client):
        status = await client.status(MARIA)
        humans = await client.humans()
        health = await client.health()
        service.reasons.append("store not writable")
        degraded = await client.health()
        refreshed = await client.refresh(MARIA)
        await client.delete("usr_ana_1")
        with pytest.raises(UnknownHuman):
            await client.delete("usr_ana_1")
    assert (status.state, status.access_expires_at, status.last_refresh_at) == (
        "active",
        NOW + 3600,
        NOW - 60,
    )
    assert status.to_json()["access_expires_at"] == "2027-01-15T09:00:00Z"
    assert [(h.human_id, h.last_error) for h in humans] == [("usr_ana_1", "timeout"), (MARIA, None)]
    assert (health.ok, degraded.ok, degraded.reasons) == (True, False, ("store not writable",))
    assert refreshed.access_expires_at == NOW + 3000
    assert service.grant("usr_ana_1") is None


async def test_a_failed_refresh_carries_the_last_error() -> None:
    service = FakeService([make_grant()])
    service.outcome[MARIA] = NeedsReconsentError(MARIA, "invalid_grant")
    async with client_of(service) as (_, client):
        with pytest.raises(NeedsReconsent):
            await client.refresh(MARIA)
        service.outcome[MARIA] = TokenUnavailableError(MARIA, "rate limited", 7.0)
        with pytest.raises(TokenUnavailable) as caught:
            await client.refresh(MARIA)
    assert caught.value.retry_after == 7


async def test_humans_needs_an_admin() -> None:
    async with client_of(rules=[rule()]) as (_, client):
        with pytest.raises(Forbidden, match="admin"):
            await client.humans()


# httpx reads a response through nested async generators; closing the outer one early
# leaves the inner ones for the garbage collector, which trio (not asyncio) warns of. The
# client closes the response itself, and trio closes those generators anyway.
@pytest.mark.filterwarnings("ignore:Async generator 'httpx.:ResourceWarning")
async def test_events_yield_what_the_bus_publishes() -> None:
    async with client_of() as (s, client), aclosing(client.events()) as events:
        received: list[dict[str, Any]] = []

        async def read_one() -> None:
            received.append(await anext(events))

        async with anyio.create_task_group() as tg:
            tg.start_soon(read_one)
            await eventually(lambda: s.service.events.subscriber_count == 1)
            s.service.events.publish(Event("token.refreshed", MARIA, NOW, {"expires_in": 3600}))
    assert received == [
        {
            "type": "token.refreshed",
            "human_id": MARIA,
            "at": "2027-01-15T08:00:00Z",
            "expires_in": 3600,
        }
    ]


async def test_events_refused_raise_before_the_first_event() -> None:
    async with client_of(rules=[rule(uid=4242)]) as (_, client):
        with pytest.raises(Forbidden):
            await anext(client.events())


def test_the_event_parser_skips_comments_and_joins_data_lines() -> None:
    parser = EventParser()
    lines = [": haasd events", "", "event: lost", 'data: {"count":', "data: 3}", "id: 7", ""]
    assert [e for x in lines if (e := parser.feed(x))] == [{"type": "lost", "count": 3}]
    with pytest.raises(ValueError, match="JSON object"):
        parser.feed("data: [1]") or parser.feed("")


@pytest.mark.parametrize(
    ("cause", "reason"),
    [
        (PermissionError(13, "Permission denied"), "permission denied"),
        (IsADirectoryError(21, "Is a directory"), "Is a directory"),
        (None, "boom"),
    ],
)
def test_the_reason_haasd_is_unreachable_comes_from_the_os(
    cause: OSError | None, reason: str
) -> None:
    error = httpx.ConnectError("boom")
    error.__cause__ = cause
    mapped = error_from_transport("/nonexistent/s.sock", error, 5.0)
    assert isinstance(mapped, DaemonUnreachable) and reason in mapped.reason


@pytest.mark.parametrize(
    ("body", "headers", "message", "retry_after"),
    [
        (b"<html>busy</html>", {"Retry-After": "3"}, "haasd answered HTTP 503", 3.0),
        (b'{"error": {"message": "later", "retry_after": "soon"}}', {}, "later", None),
    ],
)
def test_an_error_answer_not_in_haasd_shape_still_maps(
    body: bytes, headers: dict[str, str], message: str, retry_after: float | None
) -> None:
    error = error_from_response(httpx.Response(503, content=body, headers=headers))
    assert (type(error), str(error), error.error_type) == (HaasdClientError, message, "http_503")
    assert error.retry_after == retry_after


def test_cache_arithmetic() -> None:
    cache = TokenCache(60)
    token = Token(MARIA, Secret("x"), "Bearer", NOW, 100, (), "test")
    cache.put((MARIA, ()), token, asked_at=0.0)
    assert cache.get((MARIA, ()), 0, now=39.5) is not None
    assert cache.get((MARIA, ()), 0, now=40.0) is None
    assert cache.get((MARIA, ()), 70, now=31.0) is None
    assert (whole_seconds(0.2), whole_seconds(3)) == (1, 3)
    for bad in (-1, float("nan")):
        with pytest.raises(ValueError, match="min_ttl"):
            whole_seconds(bad)
    with pytest.raises(ValueError, match="refresh_margin"):
        TokenCache(-1)


# --- the sync client, from threads, against a server on a portal's loop ------------------


@contextmanager
def served_in_thread(
    service: Callable[[], FakeService] = lambda: FakeService([make_grant()]),
) -> Iterator[tuple[Served, BlockingPortal]]:
    with start_blocking_portal("asyncio") as portal:
        fake = portal.call(service)
        with portal.wrap_async_context_manager(serving(fake)) as s:
            yield s, portal


def test_sync_client_caches_and_maps_errors() -> None:
    with served_in_thread() as (s, _), HaasdClient(s.path) as client:
        first = client.token(MARIA)
        second = client.token(MARIA)
        with pytest.raises(UnknownHuman):
            client.token("usr_nobody")
        assert client.status(MARIA).human_id == MARIA
        assert [h.human_id for h in client.humans()] == [MARIA]
        assert client.health().ok
        client.delete(MARIA)
        with pytest.raises(UnknownHuman):
            client.refresh(MARIA)
    assert first.access_token == second.access_token and len(s.service.served) == 1


def test_sync_client_threads_share_one_request() -> None:
    def service() -> FakeService:
        fake = FakeService([make_grant(ttl=10)])
        fake.outcome[MARIA] = make_grant(token=NEW_TOKEN)
        fake.gate = anyio.Event()
        return fake

    with (
        served_in_thread(service) as (s, portal),
        HaasdClient(s.path) as client,
        ThreadPoolExecutor(20) as pool,
    ):
        futures = [pool.submit(client.token, MARIA, min_ttl=60) for _ in range(20)]
        portal.call(eventually, lambda: len(s.service.ensured) == 1)
        portal.call(anyio.sleep, 0.05)  # let the others queue behind the first
        assert s.service.gate is not None
        portal.call(s.service.gate.set)
        tokens = {f.result().access_token.reveal() for f in futures}
    assert ({NEW_TOKEN}, 1) == (tokens, len(s.service.ensured))


def test_sync_events_yield_what_the_bus_publishes() -> None:
    with (
        served_in_thread() as (s, portal),
        HaasdClient(s.path) as client,
        closing(client.events()) as events,
        ThreadPoolExecutor(1) as pool,
    ):
        first = pool.submit(next, events)
        portal.call(eventually, lambda: s.service.events.subscriber_count == 1)
        portal.call(s.service.events.publish, Event("grant.reconsent_due", MARIA, NOW))
        event = first.result(timeout=5)
    assert event == {"type": "grant.reconsent_due", "human_id": MARIA, "at": "2027-01-15T08:00:00Z"}


# --- HaasdAuth against a fake HaaS API ------------------------------------------------------


HAAS_INVALID = "https://haas.invalid"


class FakeApi:
    """The HaaS API: 401 for the tokens in ``rejected``, 200 otherwise; records headers."""

    def __init__(self, *rejected: str) -> None:
        self.rejected = {f"Bearer {t}" for t in rejected}
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.content == b'{"task":"walk"}'  # the body is sent again on a retry
        self.seen.append(request.headers["authorization"])
        return httpx.Response(401 if self.seen[-1] in self.rejected else 200)


def _short_lived() -> FakeService:
    """MARIA's token has 30 s left (under the margin); haasd refreshes on min_ttl."""
    service = FakeService([make_grant(ttl=30)])
    service.outcome[MARIA] = make_grant(token=NEW_TOKEN)
    return service


@pytest.mark.parametrize(
    ("rejected", "statuses", "ensured"),
    [
        ((), [200, 200], []),
        ((TOKEN,), [200, 200], [(MARIA, 60.0)]),
        ((TOKEN, NEW_TOKEN), [401, 200], [(MARIA, 60.0)]),
    ],
)
async def test_auth_adds_the_token_and_retries_once_after_a_401(
    rejected: tuple[str, ...], statuses: list[int], ensured: list[tuple[str, float]]
) -> None:
    api = FakeApi(*rejected)
    async with client_of(_short_lived()) as (s, haasd_client):
        auth = HaasdAuth(MARIA, async_client=haasd_client, origins=HAAS_INVALID)
        async with httpx.AsyncClient(transport=httpx.MockTransport(api), auth=auth) as http:
            first = await http.post("https://haas.invalid/v1/tasks", json={"task": "walk"})
            api.rejected.discard(f"Bearer {NEW_TOKEN}")
            second = await http.post("https://haas.invalid/v1/tasks", json={"task": "walk"})
    assert statuses == [first.status_code, second.status_code]
    assert ensured == s.service.ensured
    retried = 2 if rejected else 1
    assert [f"Bearer {TOKEN}"] + [f"Bearer {NEW_TOKEN}"] * (retried - 1) == api.seen[:retried]


@pytest.mark.parametrize("rejected", [(), (TOKEN,), (TOKEN, NEW_TOKEN)])
def test_sync_auth_adds_the_token_and_retries_once_after_a_401(
    rejected: tuple[str, ...],
) -> None:
    api = FakeApi(*rejected)
    with served_in_thread(_short_lived) as (s, _), HaasdClient(s.path) as haasd_client:
        auth = HaasdAuth(MARIA, client=haasd_client, origins=[HAAS_INVALID])
        with httpx.Client(transport=httpx.MockTransport(api), auth=auth) as http:
            response = http.post("https://haas.invalid/v1/tasks", json={"task": "walk"})
    expected = [TOKEN] if not rejected else [TOKEN, NEW_TOKEN]
    assert [f"Bearer {t}" for t in expected] == api.seen
    assert (401 if len(rejected) == 2 else 200) == response.status_code


class Origins:
    """Every origin a request reached: the HaaS API redirects ``/moved`` to another
    host; each answers 401 to ``/deny`` and 200 otherwise; records what each got."""

    def __init__(self, redirect_to: str = "https://elsewhere.example/landing") -> None:
        self.redirect_to = redirect_to
        self.seen: list[tuple[str, str | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((str(request.url), request.headers.get("authorization")))
        if request.url.path == "/moved":
            return httpx.Response(302, headers={"Location": self.redirect_to})
        return httpx.Response(401 if request.url.path == "/deny" else 200)


#: (URL, whether HaasdAuth's default origins send it the token)
DEFAULT_ORIGINS = [
    ("https://api.api4human.com/v1/humans/usr_maria_42/status", True),
    ("https://API.api4human.com:443/v1/tasks", True),
    ("http://api.api4human.com/v1/tasks", False),  # another scheme: another origin
    ("https://api.api4human.com:8443/v1/tasks", False),  # another port
    ("https://api.api4human.com.evil.example/v1/tasks", False),
    ("https://auth.api4human.com/token", False),  # HaaS's, but not the API
    ("https://elsewhere.example/v1/tasks", False),
]


async def test_auth_sends_the_token_only_to_the_haas_api_origin() -> None:
    api = Origins()
    others = [url for url, sent in DEFAULT_ORIGINS if not sent]
    haas = [url for url, sent in DEFAULT_ORIGINS if sent]
    async with client_of() as (s, haasd_client):
        auth = HaasdAuth(MARIA, async_client=haasd_client)
        async with httpx.AsyncClient(transport=httpx.MockTransport(api), auth=auth) as http:
            for url in others:
                await http.get(url)
            assert s.service.served == []  # haasd was not even asked
            for url in haas:
                await http.get(url)
    expected = [(url, None) for url in others] + [(url, f"Bearer {TOKEN}") for url in haas]
    assert [(str(httpx.URL(u)), h) for u, h in expected] == api.seen


def test_sync_auth_sends_the_token_only_to_the_haas_api_origin() -> None:
    api = Origins()
    with served_in_thread() as (s, _), HaasdClient(s.path) as haasd_client:
        auth = HaasdAuth(MARIA, client=haasd_client)
        with httpx.Client(transport=httpx.MockTransport(api), auth=auth) as http:
            http.get("https://elsewhere.example/v1/tasks")
            assert s.service.served == []  # haasd was not even asked
            for url, _ in DEFAULT_ORIGINS:
                http.get(url)
    expected = [(url, f"Bearer {TOKEN}" if sent else None) for url, sent in DEFAULT_ORIGINS]
    expected.insert(0, ("https://elsewhere.example/v1/tasks", None))
    assert [(str(httpx.URL(u)), h) for u, h in expected] == api.seen


async def test_a_redirect_to_another_origin_does_not_carry_the_token() -> None:
    api = Origins("https://elsewhere.example/deny")
    async with client_of(_short_lived()) as (s, haasd_client):
        auth = HaasdAuth(MARIA, async_client=haasd_client, origins=HAAS_INVALID)
        async with httpx.AsyncClient(
            transport=httpx.MockTransport(api), auth=auth, follow_redirects=True
        ) as http:
            response = await http.get("https://haas.invalid/moved")
    assert response.status_code == 401
    assert [
        ("https://haas.invalid/moved", f"Bearer {TOKEN}"),
        ("https://elsewhere.example/deny", None),
    ] == api.seen
    assert s.service.ensured == []  # another origin's 401 asks haasd for nothing newer


def test_sync_redirect_within_the_origin_keeps_the_token_and_leaving_it_drops_it() -> None:
    with served_in_thread() as (s, _), HaasdClient(s.path) as haasd_client:
        auth = HaasdAuth(MARIA, client=haasd_client, origins=[HAAS_INVALID])
        for target, carried in [
            ("https://haas.invalid:443/landing", f"Bearer {TOKEN}"),
            ("https://elsewhere.example/landing", None),
            ("http://haas.invalid/landing", None),
        ]:
            api = Origins(target)
            with httpx.Client(
                transport=httpx.MockTransport(api), auth=auth, follow_redirects=True
            ) as http:
                assert http.get("https://haas.invalid/moved").status_code == 200
            first = ("https://haas.invalid/moved", f"Bearer {TOKEN}")
            assert [first, (str(httpx.URL(target)), carried)] == api.seen


@pytest.mark.parametrize(
    "origins",
    [
        "https://api.api4human.com/v1",
        "ftp://api.api4human.com",
        "api.api4human.com",
        (),
        "https://",
    ],
)
def test_auth_refuses_what_is_not_an_origin(origins: str | tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="origin"):
        HaasdAuth(MARIA, origins=origins)


def test_auth_makes_the_missing_client_on_the_given_ones_socket() -> None:
    with HaasdClient("/nonexistent/a.sock") as given:
        auth = HaasdAuth(MARIA, client=given)
        assert auth.async_client.socket_path == "/nonexistent/a.sock"


def test_default_socket_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAASD_SOCKET", "/nonexistent/env.sock")
    with HaasdClient() as client:
        assert client.socket_path == "/nonexistent/env.sock"
    monkeypatch.delenv("HAASD_SOCKET")
    assert haasd.client.default_socket() == "/run/haasd/haasd.sock"


def test_public_surface_is_complete_and_sorted() -> None:
    exported = haasd.client.__all__
    assert sorted(exported, key=isort_order) == list(exported)
    assert all(hasattr(haasd.client, name) for name in exported)
    for name in ("_async", "_auth", "_cache", "_errors", "_model", "_sync", "_wire"):
        module = getattr(haasd.client, name)
        assert sorted(module.__all__, key=isort_order) == list(module.__all__)
        assert all(hasattr(module, n) for n in module.__all__)
