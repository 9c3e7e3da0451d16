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
lost to an explained reuse event.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
from cluster_nodes import Leases, Node, node_config, seed
from harness import CLIENT_ID, CLIENT_SECRET
from pg_cluster import PgCluster, PgDatabase
from support_daemon import write_key

from haasd.clock import SystemClock
from haasd.grants import Policy
from haasd.simulator import Simulator, SpentTokenRecord

#: requests per minute for the simulator and every instance: the campaign is not about
#: the rate budget
RPM = 60_000
#: haasd's refresh.serve_margin: a token served has at least this long left when served
SERVE_MARGIN = Policy().serve_margin
#: how late after a fault a request sent before it may still be handled by the simulator
#: (its latency aside): socket buffers, the event loop
ARRIVAL = 0.5


@dataclass(frozen=True)
class Plan:
    """What one campaign does; a seed repeats the choices (not the timing of the OS)."""

    seed: int
    grace: float
    kills: int
    stops: int = 2
    pg_restarts: int = 2
    humans: int = 12
    lifetime: int = 6
    lease: float = 3.0
    latency: float = 0.15
    gap: tuple[float, float] = (0.6, 1.6)
    instances: int = 3


@dataclass(frozen=True)
class Fault:
    kind: str  # "kill", "stop" or "pg"
    at: float
    until: float
    pid: int | None = None
    #: the grants whose leases the instance held when the fault struck
    leases: frozenset[str] = frozenset()


@dataclass
class Served:
    ok: int = 0
    #: live when asked for, expired by the time the answer arrived (slower than the margin)
    late: int = 0
    #: (human, when, the instance that served it) for each dead token served
    dead: list[tuple[str, float, str]] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    unreachable: int = 0


@dataclass
class Result:
    plan: Plan
    faults: list[Fault]
    spent: list[SpentTokenRecord]
    lost: list[str]
    served: Served
    refreshes: int
    crashes: dict[str, list[int]]
    seconds: float

    def explain(self, spent: SpentTokenRecord) -> Fault | None:
        """The kill or pause that put ``spent``'s rotation in the unavoidable window."""
        plan = self.plan
        for fault in self.faults:
            if fault.kind in ("kill", "stop") and spent.human_id in fault.leases:
                late = fault.at + plan.latency + ARRIVAL
                if fault.at - plan.lease - 1.0 <= spent.rotated_at <= late:
                    return fault
        return None

    def sent_late(self, spent: SpentTokenRecord) -> Fault | None:
        """The pause after which ``spent`` was sent: paused while holding the grant's
        lease, before its request went out; another instance took over and rotated; the
        resumed instance sent the spent token anyway. A known bug (the lease is checked
        before the rate budget, not right before sending): see
        ``test_a_paused_instance_sends_no_refresh_once_its_lease_has_passed``."""
        for fault in self.faults:
            paused = fault.kind == "stop" and spent.human_id in fault.leases
            if paused and fault.at <= spent.rotated_at and spent.time >= fault.until:
                return fault
        return None

    @property
    def explained(self) -> list[tuple[SpentTokenRecord, Fault]]:
        return [(s, f) for s in self.spent if (f := self.explain(s)) is not None]

    @property
    def late(self) -> list[SpentTokenRecord]:
        return [s for s in self.spent if self.explain(s) is None and self.sent_late(s)]

    @property
    def duplicates(self) -> list[SpentTokenRecord]:
        """Grace replays and reuse events no kill or pause explains."""
        return [s for s in self.spent if self.explain(s) is None and not self.sent_late(s)]

    @property
    def unexplained_losses(self) -> list[str]:
        explained = {s.human_id for s, _ in self.explained if not s.replayed}
        late = {s.human_id for s in self.late if not s.replayed}
        return [h for h in self.lost if h not in explained | late]

    @property
    def lost_late(self) -> list[str]:
        late = {s.human_id for s in self.late if not s.replayed}
        return [h for h in self.lost if h in late]

    @property
    def dead_served(self) -> list[tuple[str, float, str]]:
        """Tokens served that the simulator did not take, but of a grant not lost."""
        return [dead for dead in self.served.dead if dead[0] not in self.lost]

    def count(self, kind: str) -> int:
        return sum(1 for f in self.faults if f.kind == kind)

    def rows(self) -> list[tuple[str, str]]:
        in_window = Counter(f.kind for _, f in self.explained)
        lost_in_window = len(self.lost) - len(self.unexplained_losses) - len(self.lost_late)
        served = f"{self.served.ok} / {len(self.dead_served)}"
        late_lost = len(self.lost_late)
        return [
            ("seed", str(self.plan.seed)),
            ("reuse grace (s)", f"{self.plan.grace:g}"),
            ("wall time (s)", f"{self.seconds:.0f}"),
            ("kill -9 (in the window)", f"{self.count('kill')} ({in_window['kill']})"),
            ("SIGSTOP > lease (in the window)", f"{self.count('stop')} ({in_window['stop']})"),
            ("PostgreSQL restarts", str(self.count("pg"))),
            ("refreshes (rotations)", str(self.refreshes)),
            ("grace replays", str(sum(1 for s in self.spent if s.replayed))),
            ("reuse events", str(sum(1 for s in self.spent if not s.replayed))),
            ("grants lost (to a fault in the window)", f"{len(self.lost)} ({lost_in_window})"),
            ("sent after a pause past the lease (lost)", f"{len(self.late)} ({late_lost})"),
            ("duplicate refreshes (unexplained)", str(len(self.duplicates))),
            ("tokens served / dead at the simulator", served),
            ("answers slower than the serve margin", str(self.served.late)),
            ("instances that crashed", str(sum(len(c) for c in self.crashes.values()))),
        ]

    def table(self) -> str:
        width = max(len(name) for name, _ in self.rows())
        return "\n".join(f"{name:<{width}}  {value}" for name, value in self.rows())

    def problems(self) -> list[str]:
        """What the campaign fails on (empty: it passed)."""
        found = []
        for spent in self.duplicates:
            near = [f for f in self.faults if f.at - 10 <= spent.rotated_at <= f.until + 10]
            found.append(f"a duplicate refresh no fault explains: {spent}; faults near: {near}")
        if self.unexplained_losses:
            found.append(f"grants lost without a fault in the window: {self.unexplained_losses}")
        if self.plan.grace > 0 and set(self.lost) - set(self.lost_late):
            found.append(f"grants lost despite the grace window: {self.lost}")
        if self.dead_served:
            found.append(f"tokens served that the simulator refused: {self.dead_served[:5]}")
        if any(self.crashes.values()):
            found.append(f"instances ended by themselves: {self.crashes}")
        return found


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
        lost = [h for h in self.humans if not self.sim.has_active_grant(h)]
        crashes = {node.name: node.crashes for node in self.nodes}
        return Result(
            self.plan, self.faults, list(self.sim.stats.spent_presented), lost, self.served,
            sum(self.sim.stats.refreshes.values()), crashes, time.monotonic() - started,
        )  # fmt: skip

    async def _run_nodes(self) -> None:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            await node.until_serving()
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(self._ask_tokens)
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
        nodes = self._running()
        if not nodes:
            for node in self.nodes:
                await node.until_serving()
            nodes = self._running()
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
        await node.until_serving()

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
        deadline = time.monotonic() + 4 * self.plan.lifetime + 6 * self.plan.lease
        while time.monotonic() < deadline:
            live = [h for h in self.humans if self.sim.has_active_grant(h)]
            if all(self.sim.stats.refreshes[h] > counts.get(h, 0) for h in live):
                return
            await anyio.sleep(0.2)

    async def _final_check(self) -> None:
        """Every instance serves every live grant a token the simulator takes."""
        for node in self.nodes:
            node.check()
            if not node.alive:
                continue
            for human_id in self.humans:
                if self.sim.has_active_grant(human_id):
                    await self._ask(node, human_id)
