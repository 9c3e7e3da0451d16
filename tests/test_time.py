"""Time going wrong under a running daemon: the host's wall clock set an hour forward or
back, the host suspended, the process frozen — past several token expiries.

The whole daemon runs in this process (real engine, SQLite store, token server on a real
Unix socket) against the simulator over loopback. haasd reads a :class:`HostClock`, whose
wall clock can be set and whose host can be suspended; the simulator — HaaS — reads the
true time (:class:`ServerClock`), which no setting of the host's clock moves. Every token
served is checked at the simulator: live, this human's, and never said to live longer
than the server issued it for. Refreshes are read from the simulator's request log.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest
from cluster_nodes import Node
from harness import CLIENT_ID, CLIENT_SECRET
from support_daemon import daemon_at, seed_grant, write_config

from haasd.clock import ManualClock, SystemClock
from haasd.refresher import MAX_SLEEP
from haasd.simulator import Simulator

HOUR = 3600.0
MINUTE = 60.0
DAY = 86400.0
HUMANS = ("usr_time_a", "usr_time_b", "usr_time_c")


class HostClock(ManualClock):
    """The host's clocks as haasd reads them.

    :meth:`step` sets the wall clock (the true time does not move); :meth:`suspend` is the
    host asleep (the wall clock and the world move on, the monotonic clock does not, as
    Linux's ``CLOCK_MONOTONIC``); :meth:`freeze` is the process stopped (both move on, and
    nothing in it runs until the next :meth:`advance`).
    """

    def __init__(self, start: float) -> None:
        super().__init__(start)
        self.setting = 0.0  # how far the wall clock is set off the true time
        self.asleep = 0.0  # how long the host has been suspended, in all

    def time(self) -> float:
        return super().time() + self.setting + self.asleep

    def true_time(self) -> float:
        return super().time() + self.asleep

    def step(self, seconds: float) -> None:
        self.setting += seconds

    def suspend(self, seconds: float) -> None:
        self.asleep += seconds

    def freeze(self, seconds: float) -> None:
        self._mono += seconds  # no sleeper is woken: the process ran not at all


class ServerClock:
    """The authorization server's clock: the true time, whatever the host's says."""

    def __init__(self, host: HostClock) -> None:
        self._host = host

    def time(self) -> float:
        return self._host.true_time()

    def monotonic(self) -> float:
        return self._host.monotonic() + self._host.asleep

    async def sleep(self, seconds: float) -> None:  # pragma: no cover - the server never waits
        raise NotImplementedError

    async def sleep_until(self, deadline: float) -> None:  # pragma: no cover - as above
        raise NotImplementedError


@dataclass
class Host:
    clock: HostClock
    sim: Simulator
    http: httpx.AsyncClient
    served: int = 0

    def refreshes(self, human_id: str, since: float = 0.0) -> list[float]:
        """When (true time) the server rotated ``human_id``'s tokens, since ``since``."""
        return [
            r.time
            for r in self.sim.requests_log
            if r.grant_type == "refresh_token"
            and r.status == 200
            and r.human_id == human_id
            and r.time >= since
        ]

    async def token(self, human_id: str) -> httpx.Response:
        """Ask for ``human_id``'s token; a 200 must be a token the server takes, whose
        ``expires_in`` is no longer than the server gave it."""
        reply = await self.http.get(f"/v1/tokens/{human_id}")
        if reply.status_code == 200:
            body = reply.json()
            token = body["access_token"]
            assert self.sim.validate_access_token(token) == human_id, (
                f"served {human_id} a token the server no longer takes"
            )
            ends = self.sim.access_token_expires_at(token)
            assert ends is not None
            assert body["expires_in"] <= ends - self.clock.true_time(), (
                f"told {body['expires_in']} s left on a token the server ends in"
                f" {ends - self.clock.true_time():.0f} s"
            )
            self.served += 1
        return reply

    async def all_served(self, humans: Sequence[str] = HUMANS) -> None:
        for human_id in humans:
            reply = await self.token(human_id)
            assert reply.status_code == 200, reply.text

    async def run_for(self, seconds: float, every: float = 10 * MINUTE) -> None:
        """Let time pass, every human's token asked for every ``every`` seconds."""
        for _ in range(round(seconds / every)):
            await self.clock.advance(every)
            await self.all_served()

    async def state(self, human_id: str) -> str:
        reply = await self.http.get(f"/v1/humans/{human_id}")
        assert reply.status_code == 200, reply.text
        return str(reply.json()["state"])


@asynccontextmanager
async def host(directory: Path, extra: str = "", **sim_options: float) -> AsyncIterator[Host]:
    """The daemon on a :class:`HostClock`, holding a grant of each of :data:`HUMANS`,
    consented at the start (tokens of an hour)."""
    clock = HostClock(start=time.time())
    sim = Simulator(
        ServerClock(clock),  # HaaS keeps the true time
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        rotate_refresh_tokens=True,
        **sim_options,  # type: ignore[arg-type]
    )
    clock.add_settle_hook(sim.activity.wait_idle)
    async with sim.running():
        config = write_config(directory, sim.token_url, extra=extra)
        for human_id in HUMANS:
            await seed_grant(directory, sim, human_id)
        async with daemon_at(config, clock) as (_daemon, http):
            yield Host(clock, sim, http)


# --- the wall clock set an hour forward or back ---------------------------------------------


async def test_a_wall_clock_set_an_hour_forward_serves_nothing_expired_and_keeps_the_schedule(
    short_dir: Path,
) -> None:
    async with host(short_dir) as h:
        await h.run_for(20 * MINUTE)
        assert not any(h.refreshes(x) for x in HUMANS), "nothing was due yet"
        h.clock.step(HOUR)  # every token now looks 20 minutes past its end
        stepped = h.clock.true_time()
        await h.all_served()  # refreshed on demand, never the old token
        for human_id in HUMANS:
            assert len(h.refreshes(human_id, since=stepped)) == 1
        await h.run_for(3 * HOUR)
        for human_id in HUMANS:
            times = h.refreshes(human_id, since=stepped)
            gaps = [b - a for a, b in itertools.pairwise(times)]
            # every 0.75 of the hour ± 5 %, on the true clock: no storm, none late
            assert all(0.69 * HOUR <= gap <= 0.81 * HOUR for gap in gaps), gaps
            assert len(times) in (4, 5), times
        assert h.served == 3 * (2 + 1 + 18)


async def test_a_wall_clock_set_an_hour_back_serves_nothing_expired_and_keeps_the_schedule(
    short_dir: Path,
) -> None:
    async with host(short_dir) as h:
        await h.run_for(20 * MINUTE)
        h.clock.step(-HOUR)  # every token now looks as if it had 1 h 40 min left
        stepped = h.clock.true_time()
        await h.run_for(3 * HOUR)
        for human_id in HUMANS:
            times = h.refreshes(human_id)
            # due 0.75 h ± 5 % after the consent, before the token's true end
            assert times[0] - stepped <= 0.46 * HOUR, "the first refresh came on time"
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert all(0.69 * HOUR <= gap <= 0.81 * HOUR for gap in gaps), gaps


# --- the host suspended, the process frozen ------------------------------------------------


@pytest.mark.parametrize("pause", ["suspend", "freeze"])
async def test_a_host_suspended_or_a_process_frozen_past_several_expiries_serves_nothing_expired(
    short_dir: Path, pause: str
) -> None:
    async with host(short_dir) as h:
        await h.run_for(30 * MINUTE)
        getattr(h.clock, pause)(3.5 * HOUR)  # three and a half token lives gone at once
        resumed = h.clock.true_time()
        reply = await h.token(HUMANS[0])  # asked for first thing: refreshed, never the dead one
        assert reply.status_code == 200, reply.text
        # the others are left to the schedule: it catches up within one turn of the
        # scheduler (a frozen process's overdue wake-up comes at once; a suspended host's
        # monotonic clock stood still, so the turn it slept into ends at most MAX_SLEEP on)
        await h.clock.advance(MAX_SLEEP)
        soonest = resumed if pause == "freeze" else resumed + MAX_SLEEP
        for human_id in HUMANS:
            times = h.refreshes(human_id, since=resumed)
            assert times, f"{human_id} was not refreshed after the pause"
            assert times[0] <= soonest
        await h.all_served()
        await h.run_for(3 * HOUR)
        for human_id in HUMANS:
            gaps = [b - a for a, b in itertools.pairwise(h.refreshes(human_id, since=resumed))]
            assert all(0.69 * HOUR <= gap <= 0.81 * HOUR for gap in gaps), gaps


# --- the re-consent flags -----------------------------------------------------------------


async def test_the_reconsent_flags_follow_the_true_time_through_a_suspend_and_a_clock_set_back(
    short_dir: Path,
) -> None:
    # the 30-day limit and its 7-day warning shortened to a day and 6 hours, tokens of 4
    # hours (the same code, fewer refreshes to simulate); the server states the limit
    extra = '[refresh]\nrefresh_token_lifetime = "1d"\nreconsent_warning = "6h"\n'
    options = {"refresh_token_lifetime": DAY, "send_refresh_token_expires_in": True}
    async with host(short_dir, extra, expires_in=4 * HOUR, **options) as h:
        await h.run_for(17 * HOUR, every=HOUR)
        assert {await h.state(x) for x in HUMANS} == {"active"}
        h.clock.suspend(2 * HOUR)  # wakes 1 h past the warning line
        assert {await h.state(x) for x in HUMANS} == {"reconsent_due"}  # at once
        await h.all_served()
        await h.run_for(4 * HOUR, every=HOUR)  # true time: 23 h
        h.clock.step(-HOUR)  # the host's clock says 22 h
        await h.run_for(HOUR + MINUTE, every=MINUTE * 61 / 6)  # true time: 24 h 01 min
        assert {await h.state(x) for x in HUMANS} == {"needs_reconsent"}
        for human_id in HUMANS:
            reply = await h.token(human_id)  # the last token while it lives, then 409
            assert reply.status_code in (200, 409), reply.text
        await h.clock.advance(4 * HOUR)
        for human_id in HUMANS:
            assert (await h.token(human_id)).status_code == 409


# --- a real `haasd run`, stopped ----------------------------------------------------------

LIFE = 2  # seconds: the simulator's tokens, refreshed every 1.5 s
STOPPED = 3.2 * LIFE  # the process stopped past three of its tokens' lives


class Served:
    """Token answers from a real process, each checked at the simulator on arrival."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.ok: dict[str, int] = dict.fromkeys(HUMANS, 0)
        self.other: list[int] = []

    def check(self, human_id: str, reply: httpx.Response) -> None:
        if reply.status_code != 200:
            self.other.append(reply.status_code)
            return
        body = reply.json()
        assert self.sim.validate_access_token(body["access_token"]) == human_id, (
            f"served {human_id} a token the server no longer takes"
        )
        ends = self.sim.access_token_expires_at(body["access_token"])
        assert ends is not None and body["expires_in"] <= ends - time.time() + 0.1
        self.ok[human_id] += 1

    async def ask(self, node: Node, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for human_id in HUMANS:
                self.check(human_id, await node.get(f"/v1/tokens/{human_id}"))
            await anyio.sleep(0.02)


@pytest.mark.slow  # about 11 s of real time: a process started, stopped 6.4 s, resumed
async def test_a_haasd_run_process_stopped_past_several_expiries_serves_nothing_expired(
    short_dir: Path,
) -> None:
    sim = Simulator(
        SystemClock(), client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
        rotate_refresh_tokens=True, expires_in=LIFE,
    )  # fmt: skip
    extra = "[refresh]\nserve_margin = 0.3\non_demand_cooldown = 1\n"
    async with sim.running():
        config = write_config(short_dir, sim.token_url, extra=extra)
        for human_id in HUMANS:
            await seed_grant(short_dir, sim, human_id)
        node = Node("stopped", config)
        node.start()
        try:
            await node.until_serving()
            served = Served(sim)
            await served.ask(node, 1.5)
            assert all(served.ok.values()), served.ok
            node.pause()
            transport = httpx.AsyncHTTPTransport(uds=str(node.socket))
            async with (
                httpx.AsyncClient(transport=transport, base_url="http://haasd") as asking,
                anyio.create_task_group() as tg,
            ):

                async def ask_while_stopped() -> None:  # answered once it runs again
                    reply = await asking.get(f"/v1/tokens/{HUMANS[0]}", timeout=30)
                    served.check(HUMANS[0], reply)

                tg.start_soon(ask_while_stopped)
                await anyio.sleep(STOPPED)
                resumed = time.time()
                node.resume()
            await served.ask(node, 1.5)
            for human_id in HUMANS:  # every grant caught up at once, none lost
                first = min(
                    (r.time for r in sim.requests_log if r.human_id == human_id
                     and r.grant_type == "refresh_token" and r.time >= resumed),
                    default=None,
                )  # fmt: skip
                assert first is not None and first - resumed < 1.0, (human_id, first)
                assert sim.has_active_grant(human_id)
            assert all(served.ok.values()), served.ok
            assert served.other.count(200) == 0
            assert sum(served.ok.values()) > 10 * len(served.other), served.other
        finally:
            assert await node.stop() == 0, node.tail()
