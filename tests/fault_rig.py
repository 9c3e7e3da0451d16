"""One row of the server-fault table, run against the real refresh path.

The rig is haasd's engine as ``haasd run`` composes it — a SQLite store, the
:class:`~haasd.authclient.AuthClient` over real loopback HTTP, the refresher, the token
server on a real Unix socket — whose token endpoint is a :class:`FaultServer` in front of
the simulator (rotation and reuse detection on). Time is a :class:`ManualClock`; the
client's read timeout is real (short only in the rows where the server stalls).

A :class:`Row` states a fault (the script of the token endpoint's answers, from the first
refresh on) and what must come of it: the grant's state and the socket's answer, the
lifecycle events, ``GET /v1/health``, and how many more requests haasd sends in the
window after the first. :func:`run_row` measures all of it and returns an
:class:`Observed`; the test compares the two, so a failure shows every difference at once.
"""

from __future__ import annotations

import os
import random
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import httpx
from fault_server import Action, Answer, FaultServer
from harness import CLIENT_ID, CLIENT_SECRET, simulator

from haasd.authclient import AuthClient
from haasd.clock import Activity, ManualClock
from haasd.config import AccessRule, SocketConfig
from haasd.crypto import Key, Sealer
from haasd.events import EventBus, Subscription
from haasd.grants import Grant, Policy, new_grant, refresh_due_at
from haasd.ratelimit import RateBudget
from haasd.refresher import Refresher
from haasd.secret import Secret
from haasd.server import TokenServer, open_listener
from haasd.simulator import Simulator
from haasd.store import Store
from haasd.tokens import parse_token_response

__all__ = [
    "ELSEWHERE",
    "FIRST",
    "MARIA",
    "SIM_OPTIONS",
    "Observed",
    "Row",
    "expected",
    "rig",
    "run_row",
]

MARIA = "usr_maria_42"
#: in a script, a header value naming the other server (a redirect's target)
ELSEWHERE = "{elsewhere}"
#: real seconds the client waits for an answer's bytes: long enough for a loaded machine
#: (a late answer would be a lost one), but the read-timeout rows give less
READ_TIMEOUT = 5.0
#: every row's simulator: rotation and reuse detection on, no grace unless the row says
SIM_OPTIONS: dict[str, Any] = {"rotate_refresh_tokens": True, "reuse_detection": True}
#: the trust store httpx would load for every client (a fifth of a second each): loaded once
TLS = ssl.create_default_context()
#: when the first refresh goes (wall clock): the consent's due time, as haasd plans it
FIRST = refresh_due_at(ManualClock().time(), 3600, Policy(), random.Random(0))


@dataclass(frozen=True)
class Row:
    """One fault and what must come of it (see the module)."""

    name: str
    #: the token endpoint's answers from the first refresh on; ``then`` once spent
    script: tuple[Action, ...]
    then: Action
    #: the grant's state afterwards (``GET /v1/humans/{id}``) and the socket's answer to
    #: ``GET /v1/tokens/{id}`` (its status)
    state: str
    token: int
    #: the lifecycle events about the human, in order, a run of one kind written once
    #: (how many: ``further`` says, one request each or three for a lost answer)
    events: tuple[str, ...]
    #: GET /v1/health: its status, and a text one of its reasons holds ("" for none)
    health: str = "ok"
    reason: str = ""
    #: requests after the first within ``window`` seconds of it: a number, or (at least,
    #: at most) where the backoff's jitter decides
    further: int | tuple[int, int] = 0
    window: float = 600.0
    #: (at least, at most) seconds between the first request and the second
    gap: tuple[float, float] | None = None
    #: a text the grant's last_error holds ("" for no error at all)
    error: str = ""
    sim: dict[str, Any] = field(default_factory=dict)
    read_timeout: float = READ_TIMEOUT
    #: what the endpoint changes in a request's body before the simulator sees it
    inbound: Callable[[bytes], bytes] | None = None


@dataclass(frozen=True)
class Observed:
    """What a row's run showed, in the row's own terms (compare with :func:`expected`)."""

    state: str
    token: int
    events: tuple[str, ...]
    health: str
    reason: str
    further: int
    #: seconds from the first request to the second (None: there was no second)
    gap: float | None
    error: str


def expected(row: Row, seen: Observed) -> Observed:
    """The row as an :class:`Observed`: a text (health reason, last error) is as expected
    when it holds the row's ("" expects none), the gap when it lies in the row's range."""
    reason = seen.reason if _holds(seen.reason, row.reason) else row.reason
    error = seen.error if _holds(seen.error, row.error) else row.error
    gap = seen.gap
    if row.gap is not None and (seen.gap is None or not row.gap[0] <= seen.gap <= row.gap[1]):
        gap = row.gap[0]
    further = row.further
    if isinstance(further, tuple):
        further = seen.further if further[0] <= seen.further <= further[1] else further[0]
    return Observed(row.state, row.token, row.events, row.health, reason, further, gap, error)


def _holds(text: str, wanted: str) -> bool:
    return wanted in text if wanted else not text


@dataclass
class Rig:
    clock: ManualClock
    sim: Simulator
    fault: FaultServer
    elsewhere: FaultServer
    refresher: Refresher
    store: Store
    feed: Subscription
    http: httpx.AsyncClient
    policy: Policy

    async def consent(self, human_id: str = MARIA) -> Grant:
        """A human consents at the simulator itself; the grant goes into haasd."""
        answer = parse_token_response(await self.sim.consent(human_id))
        grant = new_grant(answer, "test", self.clock.time(), self.policy, random.Random(0))
        await self.refresher.add(grant)
        return grant

    def events(self, human_id: str = MARIA) -> tuple[str, ...]:
        """The events about ``human_id`` since the last call, a run of one kind once."""
        out: list[str] = []
        while (event := self.feed.get_nowait()) is not None:
            if event.human_id == human_id and (not out or out[-1] != event.type):
                out.append(event.type)
        return tuple(out)


@asynccontextmanager
async def rig(
    directory: Path,
    script: tuple[Action, ...],
    then: Action,
    sim: dict[str, Any],
    read_timeout: float = READ_TIMEOUT,
    inbound: Callable[[bytes], bytes] | None = None,
    *,
    seed: int = 42,
) -> AsyncIterator[Rig]:
    clock = ManualClock()
    simulation = simulator(clock, **{**SIM_OPTIONS, **sim})
    elsewhere = FaultServer(clock, then=Answer(200, (), b"{}"))
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(simulation.running())
        await stack.enter_async_context(elsewhere.running())
        placed = _placed((*script, then), elsewhere.url)
        fault = FaultServer(clock, simulation.base_url, placed[:-1], placed[-1], inbound=inbound)
        await stack.enter_async_context(fault.running())
        activity = Activity()
        clock.add_settle_hook(activity.wait_idle)
        clock.add_settle_hook(simulation.activity.wait_idle)
        budget = RateBudget(300, clock)
        auth = AuthClient(
            token_url=fault.url,
            revocation_url=fault.revocation_url,
            client_id=CLIENT_ID,
            client_secret=Secret(CLIENT_SECRET),
            budget=budget,
            timeout=httpx.Timeout(5.0, read=read_timeout),
            transport=httpx.AsyncHTTPTransport(verify=TLS),
            activity=activity,
        )
        stack.push_async_callback(auth.aclose)
        store = await Store.open(directory / "haasd.db", Sealer(Key.generate()))
        stack.push_async_callback(store.close)
        events, policy = EventBus(), Policy()
        refresher = Refresher(
            store=store, auth=auth, clock=clock, policy=policy, events=events,
            budget=budget, rng=random.Random(seed), activity=activity,
        )  # fmt: skip
        feed = stack.enter_context(events.subscribe(maxsize=10_000))
        server = TokenServer(refresher, [_admin()])  # its connections on real time, as deployed
        socket = directory / "haasd.sock"  # a short directory: AF_UNIX allows 108 bytes
        listener = await open_listener(SocketConfig(socket, 0o600), environ={})
        stack.push_async_callback(listener.aclose)
        transport = httpx.AsyncHTTPTransport(uds=str(socket), verify=TLS)
        http = await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://haasd")
        )
        async with anyio.create_task_group() as tg:
            await tg.start(refresher.run)
            await tg.start(server.serve, listener)
            yield Rig(clock, simulation, fault, elsewhere, refresher, store, feed, http, policy)
            tg.cancel_scope.cancel()


async def run_row(row: Row, directory: Path, *, seed: int = 42) -> tuple[Observed, Rig]:
    """Run ``row``: consent, let the first refresh meet the fault, watch ``row.window``.
    ``seed`` seeds haasd's jitter and backoff."""
    fault = row.script, row.then, row.sim, row.read_timeout, row.inbound
    async with rig(directory, *fault, seed=seed) as r:
        grant = await r.consent()
        r.events()  # the consent's own events are not the row's
        assert grant.next_refresh_at is not None
        await r.clock.advance_to(grant.next_refresh_at)
        assert r.fault.requests >= 1, "the first refresh went at its due time"
        first = r.fault.times[0]
        await r.clock.advance(row.window)
        times = r.fault.times
        assert abs(first - FIRST) < 0.001
        further = sum(1 for t in times[1:] if t <= first + row.window)
        gap = times[1] - first if len(times) > 1 else None
        events = r.events()
        health = (await r.http.get("/v1/health")).json()
        status = (await r.http.get(f"/v1/humans/{MARIA}")).json()
        assert r.elsewhere.requests == 0, "a redirect was followed"
        token = await r.http.get(f"/v1/tokens/{MARIA}")
        if token.status_code == 200:  # a served token is one the server honours
            assert r.sim.validate_access_token(token.json()["access_token"]) == MARIA
        seen = Observed(
            state=status["state"],
            token=token.status_code,
            events=events,
            health=health["status"],
            reason=" | ".join(health["reasons"]),
            further=further,
            gap=gap,
            error=status["last_error"] or "",
        )
        return seen, r


def _admin() -> AccessRule:
    return AccessRule(uid=os.geteuid(), gid=None, humans=("usr_*",), scopes=None, admin=True)


def _placed(script: tuple[Action, ...], elsewhere: str) -> tuple[Action, ...]:
    """The script with :data:`ELSEWHERE` in header values replaced by the other server."""
    out: list[Action] = []
    for action in script:
        if isinstance(action, Answer):
            headers = tuple((k, v.replace(ELSEWHERE, elsewhere)) for k, v in action.headers)
            action = replace(action, headers=headers)
        out.append(action)
    return tuple(out)
