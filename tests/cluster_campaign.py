"""The fault campaign: 3 ``haasd run`` processes on one PostgreSQL store, the simulator
with rotation and reuse detection, and faults at seeded random moments.

Faults: ``kill`` (SIGKILL an instance — half the time one that holds a lease, so that
some land mid-refresh — and start it again at once), ``stop`` (SIGSTOP an instance
holding leases for longer than the lease, then SIGCONT) and ``pg`` (restart PostgreSQL
— a fast shutdown, or a SIGKILL of the whole server — while a lease is held). Tokens
live ``lifetime`` seconds of real time, so every grant is refreshed every few seconds;
meanwhile the campaign asks random instances for random humans' tokens and checks each
one served against the simulator.

At the end (:class:`Result`): every grace replay or reuse event the simulator logged
(:class:`~haasd.simulator.SpentTokenRecord`) is *explained* when it repeats a rotation
of a grant whose lease a killed or paused instance held at that moment, made no earlier
than a lease before the fault and no later than the request could still arrive: the
request was sent, the answer never reached the store — the unavoidable window. Every
other one is a duplicate refresh. A grant lost (no live grant at the simulator) must be
lost to an explained reuse event, reported by an instance as needing re-consent, and
then the human consents again (:mod:`cluster_reconsent`), so that a long campaign with
strict reuse detection keeps every grant in play. At the end every instance serves every
live grant.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import anyio
import anyio.abc
import httpx
from cluster_nodes import START_TIMEOUT, Leases, Node, node_config, seed
from cluster_reconsent import Reconsenter
from cluster_result import LAG_NOTED, Fault, Plan, Result, Served
from harness import CLIENT_ID, CLIENT_SECRET
from pg_cluster import PgCluster, PgDatabase
from support_daemon import write_key

from haasd.clock import SystemClock
from haasd.grants import Policy
from haasd.simulator import Simulator

#: requests per minute for the simulator and every instance: the campaign is not about
#: the rate budget
RPM = 60_000
#: haasd's refresh.serve_margin: a token served has at least this long left when served
SERVE_MARGIN = Policy().serve_margin


class Campaign:
    """One run of a :class:`Plan` (see the module)."""

    def __init__(self, plan: Plan, pg: PgCluster, db: PgDatabase, base: Path) -> None:
        self.plan = plan
        self.pg = pg
        self.db = db
        self.base = base
        self.rng = random.Random(plan.seed)
        self.humans = [f"usr_f{n}" for n in range(plan.humans)]
        self.sim = Simulator(
            SystemClock(), client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
            rotate_refresh_tokens=True, reuse_detection=True, reuse_grace=plan.grace,
            expires_in=plan.lifetime, requests_per_minute=RPM,
            # within the window a spent token is honoured as often as it comes, as Okta's
            # grace period and Auth0's reuse interval do: a second kill while recovering
            # the first must not cost the grant
            grace_replays=None,
        )  # fmt: skip
        self.leases = Leases(db.socket_url)
        self.nodes: list[Node] = []
        self.faults: list[Fault] = []
        self.served = Served()
        self._serving = True
        self.lags: list[tuple[float, float]] = []
        #: instances that did not start serving after a kill (with --overlap), and why
        self.no_start: list[str] = []
        self._tasks: anyio.abc.TaskGroup
        self.reconsenter = Reconsenter(
            self.sim, self.humans, self._running, random.Random(plan.seed + 1),
            report_within=4 * plan.lifetime + 6 * plan.lease + 10,
        )  # fmt: skip

    async def run(self) -> Result:
        started = time.monotonic()
        async with self.sim.running():
            key = write_key(self.base)
            await seed(self.db.socket_url, key, self.sim, self.humans)
            self.sim.latency(self.plan.latency)
            for n in range(self.plan.instances):
                config = node_config(
                    self.base / f"i{n}", key, self.sim.token_url, self.db.socket_url,
                    lease=self.plan.lease, rpm=RPM,
                )  # fmt: skip
                self.nodes.append(Node(f"i{n}", config))
            try:
                await self._run_nodes()
            finally:
                with anyio.CancelScope(shield=True):
                    for node in self.nodes:
                        await node.stop()
        losses = self.reconsenter.losses
        still = set(self.reconsenter.pending)
        lost = [x.human_id for x in losses] + [
            h for h in self.humans if not self.sim.has_active_grant(h) and h not in still
        ]
        crashes = {node.name: node.crashes for node in self.nodes}
        return Result(
            self.plan, self.faults, list(self.sim.stats.spent_presented), lost, losses,
            self.served,
            sum(self.sim.stats.refreshes.values()), crashes, time.monotonic() - started,
            self.lags, {node.name: node.failed_starts for node in self.nodes}, self.no_start,
        )  # fmt: skip

    async def _run_nodes(self) -> None:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            await node.until_serving()
        async with anyio.create_task_group() as tg:
            self._tasks = tg
            for _ in range(4):
                tg.start_soon(self._ask_tokens)
            tg.start_soon(self.reconsenter.watch, lambda: self._serving)
            tg.start_soon(self._watch_lag)
            await self._faults()
            await self._settle()
            self._serving = False
        await self._final_check()

    # -- faults ---------------------------------------------------------------------------

    async def _faults(self) -> None:
        plan = self.plan
        kinds = ["kill"] * plan.kills + ["stop"] * plan.stops + ["pg"] * plan.pg_restarts
        self.rng.shuffle(kinds)
        for n, kind in enumerate(kinds):
            await anyio.sleep(self.rng.uniform(*plan.gap))
            for node in self.nodes:
                node.check()
            if kind == "kill":
                await self._kill()
            elif kind == "stop":
                await self._stop()
            else:
                await self._restart_pg()
            if (n + 1) % 25 == 0:
                print(f"  {n + 1}/{len(kinds)} faults, {self._progress()}", flush=True)

    def _progress(self) -> str:
        stats = self.sim.stats
        return (
            f"{sum(stats.refreshes.values())} refreshes, {stats.grace_replays} grace replays,"
            f" {stats.reuse_events} reuse events"
        )

    def _running(self) -> list[Node]:
        return [n for n in self.nodes if n.alive and n.serving and not n.paused]

    async def _target(self, prefer_holder: bool) -> Node:
        with anyio.fail_after(8 * START_TIMEOUT):  # their restarts are under way
            # processes, not tasks, are waited for: nothing to set an Event
            while not (nodes := self._running()):  # noqa: ASYNC110
                await anyio.sleep(0.1)
        if prefer_holder:
            pid = await self.leases.holder([n.pid for n in nodes], within=2.0)
            for node in nodes:
                if node.pid == pid:
                    return node
        return self.rng.choice(nodes)

    async def _kill(self) -> None:
        node = await self._target(prefer_holder=self.rng.random() < 0.5)
        pid, at = node.pid, time.time()
        await node.kill()
        held = (await self.leases.held()).get(pid, set())
        self.faults.append(Fault("kill", at, time.time(), pid, frozenset(held)))
        node.start()
        if self.plan.overlap:  # other faults meanwhile: its start may take longer
            self._tasks.start_soon(self._start_serving, node)
        else:
            await node.until_serving()

    async def _start_serving(self, node: Node) -> None:
        """Wait for a restarted instance (faults go on meanwhile); one that does not
        start is noted — a problem the result names — and started again, up to 3 times."""
        for _ in range(3):
            try:
                return await node.until_serving(4 * START_TIMEOUT)
            except AssertionError as exc:
                self.no_start.append(str(exc)[:2000])
                if node.alive:
                    await node.kill()
                node.start()
        await node.until_serving(4 * START_TIMEOUT)

    async def _stop(self) -> None:
        node = await self._target(prefer_holder=True)
        pid, at = node.pid, time.time()
        node.pause()
        held = (await self.leases.held()).get(pid, set())
        await anyio.sleep(self.plan.lease * self.rng.uniform(1.3, 2.0))
        node.resume()
        self.faults.append(Fault("stop", at, time.time(), pid, frozenset(held)))

    async def _restart_pg(self) -> None:
        await self.leases.holder([n.pid for n in self._running()], within=2.0)
        at = time.time()
        if self.rng.random() < 0.5:
            await anyio.to_thread.run_sync(self.pg.restart)
        else:
            await anyio.to_thread.run_sync(self.pg.kill)
            await anyio.to_thread.run_sync(self.pg.start)
        self.faults.append(Fault("pg", at, time.time()))

    async def _watch_lag(self) -> None:
        """Note each stall of this event loop, which the simulator answers on: a loaded
        machine delays the handling of a request sent before a fault (Result.lag_after)."""
        while self._serving:
            asked = time.monotonic()
            await anyio.sleep(0.05)
            late = time.monotonic() - asked - 0.05
            if late > LAG_NOTED:
                self.lags.append((time.time(), late))

    # -- checks ---------------------------------------------------------------------------

    async def _ask_tokens(self) -> None:
        """Ask random running instances for random humans' tokens; check each served."""
        while self._serving:
            nodes = self._running()
            if not nodes:
                await anyio.sleep(0.05)
                continue
            await self._ask(self.rng.choice(nodes), self.rng.choice(self.humans))
            await anyio.sleep(0.02)

    async def _ask(self, node: Node, human_id: str) -> None:
        asked = time.time()
        try:
            reply = await node.get(f"/v1/tokens/{human_id}", limit=3.0)
        except (httpx.HTTPError, OSError):
            self.served.unreachable += 1
            return
        self.served.statuses[reply.status_code] += 1
        if reply.status_code != 200:
            return
        token = reply.json()["access_token"]
        if self.sim.validate_access_token(token) == human_id:
            self.served.ok += 1
            return
        ends = self.sim.access_token_expires_at(token)
        if ends is not None and ends >= asked + SERVE_MARGIN:
            # live, with haasd's margin, when asked for: the answer took longer than the
            # margin to arrive (a loaded machine), not a dead token served
            self.served.late += 1
        else:
            self.served.dead.append((human_id, time.time(), node.name))

    async def _settle(self) -> None:
        """No more faults: every live grant is refreshed once more by the cluster."""
        counts = dict(self.sim.stats.refreshes)
        plan = self.plan
        deadline = time.monotonic() + 4 * plan.lifetime + 6 * plan.lease
        deadline += self.reconsenter.report_within
        while time.monotonic() < deadline:
            live = [h for h in self.humans if self.sim.has_active_grant(h)]
            settled = all(self.sim.stats.refreshes[h] > counts.get(h, 0) for h in live)
            if settled and not self.reconsenter.pending:
                return
            await anyio.sleep(0.2)

    async def _final_check(self) -> None:
        """Every instance serves every live grant a token the simulator takes, within a
        token's life (one asked for in its last seconds, when its refresh is late on a
        loaded machine, waits for that refresh: the on-demand cooldown may refuse another)."""
        for node in self.nodes:
            node.check()
            if not node.alive:
                continue
            for human_id in self.humans:
                if not self.sim.has_active_grant(human_id):
                    continue
                deadline = time.monotonic() + self.plan.lifetime + 2 * self.plan.lease
                ok = self.served.ok
                await self._ask(node, human_id)
                while self.served.ok == ok and time.monotonic() < deadline:
                    await anyio.sleep(0.5)
                    await self._ask(node, human_id)
                if self.served.ok == ok:
                    self.served.unserved.append((human_id, node.name))
