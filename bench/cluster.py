"""Three ``haasd run`` processes on one PostgreSQL store, N grants, a compressed clock.

    .venv/bin/python bench/cluster.py [--grants 10000] [--lifetime 120] [--cycles 2]
                                      [--lease 5] [--watch SECONDS]

The simulator (rotation, reuse detection, a 30 s grace window) issues tokens that live
``--lifetime`` seconds of real time, so each grant is refreshed every 0.75 of that; the
grants are seeded with their refreshes spread evenly over one cycle. It starts its own
throwaway PostgreSQL cluster (tests/pg_cluster.py) with ``pg_stat_statements`` loaded,
then prints:

* refreshes per grant per cycle over ``--cycles`` cycles (rotations the simulator made,
  grace replays and reuse events apart — which must be none);
* database round trips per refresh: every statement any session ran on the database
  (``pg_stat_statements`` calls; heartbeats, lease renewals, NOTIFY re-reads and the
  rate budget included), and the statements that account for most;
* p50/p99 time from a refresh on one instance (its ``token.refreshed`` event on
  ``/v1/events``) until each other instance holds and serves the new token (its
  ``token.refreshed`` event with ``elsewhere``), measured on the driver's clock;
* serve throughput per instance (``bench/loadgen.c``, 16 keep-alive connections, one
  human's token) beside a SQLite-backed single ``haasd run`` holding the same grants;
* a ``kill -9`` of one instance: for the grants that come due in the next ``--watch``
  seconds (default one cycle), how long past the due time the store holds (0.75 of the
  token's life, ± 5% jitter) another instance refreshed them — the victim's own grants
  (its share by the rendezvous hash) beside the others' — and how many were not.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import anyio
import anyio.abc
import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from cluster_nodes import Leases, Node, node_config  # noqa: E402
from harness import CLIENT_ID, CLIENT_SECRET  # noqa: E402
from pg_cluster import PgCluster, PgUnavailable  # noqa: E402
from socket_server import build_loadgen  # noqa: E402
from support_daemon import write_config, write_key  # noqa: E402

from haasd.clock import SystemClock  # noqa: E402
from haasd.crypto import Key, Sealer  # noqa: E402
from haasd.grants import Grant, Policy, new_grant  # noqa: E402
from haasd.logs import configure_logging  # noqa: E402
from haasd.pgstore import PgStore  # noqa: E402
from haasd.pgstore._coordination import preferred  # noqa: E402
from haasd.simulator import Simulator  # noqa: E402
from haasd.store import Store  # noqa: E402
from haasd.tokens import parse_token_response  # noqa: E402

RPM = 1_000_000


class Bench:
    def __init__(self, args: argparse.Namespace, pg: PgCluster, base: Path) -> None:
        self.args = args
        self.pg = pg
        self.db = pg.new_database()
        self.base = base
        self.humans = [f"usr_b{n}" for n in range(args.grants)]
        self.sim = Simulator(
            SystemClock(), client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
            rotate_refresh_tokens=True, reuse_detection=True, reuse_grace=30,
            expires_in=args.lifetime, requests_per_minute=RPM,
        )  # fmt: skip
        self.nodes: list[Node] = []
        #: (driver time, node name, human, elsewhere) for every token.refreshed event
        self.events: list[tuple[float, str, str, bool]] = []

    async def seed(self, key: Path) -> list[Grant]:
        """Every human consents; their refreshes are spread evenly over one cycle."""
        answers = {}
        limit = anyio.Semaphore(32)

        async def consent(human_id: str) -> None:
            async with limit:
                answers[human_id] = parse_token_response(await self.sim.consent(human_id))

        async with anyio.create_task_group() as tg:
            for human_id in self.humans:
                tg.start_soon(consent, human_id)
        now, life, rng = time.time(), self.args.lifetime, random.Random(1)
        grants = []
        for human_id in self.humans:
            # as if issued up to 0.7 of a life ago: due (0.75) from now to 0.75 life on
            issued = now - rng.uniform(0.0, 0.7 * life)
            grants.append(new_grant(answers[human_id], "bench", issued, Policy(), rng))
        sealer = Sealer(Key.from_text(key.read_text()))  # noqa: ASYNC240 - once, tiny
        async with await PgStore.open(self.db.socket_url, sealer) as store:
            await store.put_grants(grants)
        return grants

    async def sqlite_node(self, key: Path, grants: list[Grant]) -> Node:
        """A single instance on SQLite holding the same grants, never due, its token
        endpoint an unused port: it only serves."""
        directory = self.base / "sqlite"
        directory.mkdir()
        shutil.copy(key, directory / "store.key")
        config = write_config(directory, "http://127.0.0.1:9/token")
        later = time.time() + 3600
        copies = [replace(g, access_expires_at=later + 600, next_refresh_at=later) for g in grants]
        sealer = Sealer(Key.from_text(key.read_text()))  # noqa: ASYNC240 - once, tiny
        async with await Store.open(directory / "haasd.db", sealer) as store:
            await store.put_grants(copies)
        return Node("sqlite", config)

    async def listen(self, node: Node) -> None:
        """Note every ``token.refreshed`` event of ``node`` until its stream ends."""
        transport = httpx.AsyncHTTPTransport(uds=str(node.socket))
        async with httpx.AsyncClient(transport=transport, base_url="http://haasd") as client:
            try:
                async with client.stream("GET", "/v1/events", timeout=None) as stream:
                    async for line in stream.aiter_lines():
                        if line.startswith("data:") and "token.refreshed" in line:
                            event = json.loads(line[5:])
                            elsewhere = bool(event.get("elsewhere"))
                            noted = (time.monotonic(), node.name, event["human_id"], elsewhere)
                            self.events.append(noted)
            except (httpx.HTTPError, OSError):
                return

    async def statements(self) -> list[tuple[int, str]]:
        rows = await Leases(self.pg.socket_url_for("postgres")).query(
            "SELECT s.calls, s.query FROM pg_stat_statements s JOIN pg_database d"
            " ON d.oid = s.dbid WHERE d.datname = %s ORDER BY s.calls DESC",
            (self.db.name,),
        )
        return [(int(calls), str(query)) for calls, query in rows]

    async def reset_statements(self) -> None:
        await Leases(self.pg.socket_url_for("postgres")).query(
            "SELECT pg_stat_statements_reset()::text"
        )

    async def run(self) -> None:
        args = self.args
        async with self.sim.running():
            key = write_key(self.base)
            started = time.monotonic()
            grants = await self.seed(key)
            print(f"seeded {len(grants)} grants in {time.monotonic() - started:.0f}s", flush=True)
            for n in range(3):
                config = node_config(self.base / f"i{n}", key, self.sim.token_url,
                                     self.db.socket_url, lease=args.lease, rpm=RPM)  # fmt: skip
                self.nodes.append(Node(f"i{n}", config))
            sqlite = await self.sqlite_node(key, grants)
            try:
                async with anyio.create_task_group() as tg:
                    await self.measure(tg, sqlite)
                    tg.cancel_scope.cancel()
            finally:
                with anyio.CancelScope(shield=True):
                    for node in [*self.nodes, sqlite]:
                        await node.stop()

    async def measure(self, tg: anyio.abc.TaskGroup, sqlite: Node) -> None:
        args = self.args
        for node in [*self.nodes, sqlite]:
            node.start()
        started = time.monotonic()
        for node in [*self.nodes, sqlite]:
            await node.until_serving(120)
        print(f"4 instances serving after {time.monotonic() - started:.1f}s", flush=True)
        for node in self.nodes:
            tg.start_soon(self.listen, node)
        await anyio.sleep(args.lifetime * 0.1)  # the first refreshes run; the rest settle
        await self.reset_statements()
        before = sum(self.sim.stats.refreshes.values())
        window = args.cycles * 0.75 * args.lifetime
        await anyio.sleep(window)
        refreshes = sum(self.sim.stats.refreshes.values()) - before
        statements = await self.statements()
        self.report_refreshes(refreshes, window, statements)
        self.report_propagation()
        await self.report_throughput(sqlite)
        await self.report_kill()

    def report_refreshes(
        self, refreshes: int, window: float, statements: list[tuple[int, str]]
    ) -> None:
        args, stats = self.args, self.sim.stats
        cycles = window / (0.75 * args.lifetime)
        print(f"\nrefreshes per grant per cycle: {refreshes / (args.grants * cycles):.3f}"
              f"  ({refreshes} rotations, {args.grants} grants, {cycles:g} cycles of"
              f" {0.75 * args.lifetime:g}s; grace replays {stats.grace_replays}, reuse events"
              f" {stats.reuse_events})")  # fmt: skip
        total = sum(calls for calls, _ in statements)
        print(f"database statements per refresh: {total / max(1, refreshes):.2f}"
              " (pg_stat_statements calls on the database, every session)")  # fmt: skip
        for calls, query in statements[:10]:
            text = " ".join(query.split())
            text = text if len(text) <= 100 else f"{text[:55]} … {text[-40:]}"
            print(f"  {calls / max(1, refreshes):6.2f}  {text}")

    def report_propagation(self) -> None:
        """Each ``elsewhere`` event against the refreshing instance's own event for that
        human nearest to it on the driver's clock (within a quarter of a token's life),
        signed: below 0 when the other instance's event reached the driver first."""
        own: dict[str, list[float]] = defaultdict(list)
        for at, _node, human_id, elsewhere in self.events:
            if not elsewhere:
                own[human_id].append(at)
        delays, unmatched = [], 0
        for at, _node, human_id, elsewhere in self.events:
            if elsewhere:
                nearest = min(own.get(human_id, ()), key=lambda t: abs(at - t), default=None)
                # else it is no delivery of a refresh seen here (the refresher's event came
                # before the stream was read, or a resync)
                if nearest is not None and abs(at - nearest) < 0.25 * self.args.lifetime:
                    delays.append((at - nearest) * 1000)
                else:
                    unmatched += 1
        if len(delays) < 2:
            print("propagation: too few events")
            return
        q = statistics.quantiles(delays, n=100, method="inclusive")
        early = sum(1 for d in delays if d < 0)
        print(f"refresh on one instance -> served by another: p50 {q[49]:.1f} ms,"
              f" p99 {q[98]:.1f} ms, max {max(delays):.1f} ms ({len(delays)} deliveries,"
              f" {early} before the refresher's own; {unmatched} unmatched)")  # fmt: skip

    async def report_throughput(self, sqlite: Node) -> None:
        with tempfile.TemporaryDirectory() as directory:
            loadgen = build_loadgen(Path(directory))
            print("serve throughput (16 connections, GET /v1/tokens/usr_b1, 5 s):")
            for node in [*self.nodes, sqlite]:
                command = [str(loadgen), str(node.socket), "16", "1", "5",
                           "/v1/tokens/usr_b1", str(node.pid)]  # fmt: skip
                done = await anyio.run_process(command, check=False)
                fields = dict(p.split("=", 1) for p in done.stdout.decode().split())
                if done.returncode != 0:
                    print(f"  {node.name:>6}: failed: {done.stderr.decode().strip()}")
                    continue
                backend = "SQLite, alone" if node is sqlite else "PostgreSQL, 3 instances"
                print(f"  {node.name:>6} ({backend}): {float(fields['rps']):,.0f} req/s,"
                      f" p50 {float(fields['p50_us']):.0f} us, p99"
                      f" {float(fields['p99_us']):.0f} us")  # fmt: skip

    async def report_kill(self) -> None:
        """``kill -9`` one instance; for the grants that come due in the next ``--watch``
        seconds, how long after their due time (as the store holds it) another instance
        refreshed them — the victim's grants (its by the rendezvous) beside the others'."""
        life, lease = 0.75 * self.args.lifetime, self.args.lease
        watch = life if self.args.watch is None else self.args.watch
        victim, leases = self.nodes[0], Leases(self.db.socket_url)
        live = await leases.query(
            "SELECT instance_id, pid FROM haasd_instances WHERE expires_at > now()"
        )
        victim_id = next(str(i) for i, pid in live if pid == victim.pid)
        rows = await leases.query(
            "SELECT human_id, next_refresh_at FROM grants WHERE next_refresh_at IS NOT NULL"
        )
        due = {str(human_id): float(at) for human_id, at in rows}
        kill_at, wall = time.monotonic(), time.time()
        await victim.kill()
        print(f"\nkill -9 {victim.name}; watching the grants due in the next {watch:g}s"
              f" (+{2 * lease + 5:g}s) ...", flush=True)  # fmt: skip
        await anyio.sleep(watch + 2 * lease + 5)
        first: dict[str, float] = {}
        for at, _node, human_id, elsewhere in self.events:
            if not elsewhere and at > kill_at:
                first.setdefault(human_id, wall + at - kill_at)
        late: dict[bool, list[float]] = {True: [], False: []}
        missed = {True: 0, False: 0}
        for human_id, when in due.items():
            if wall < when <= wall + watch:
                victims = preferred([str(i) for i, _ in live], human_id) == victim_id
                if human_id in first:
                    late[victims].append(first[human_id] - when)
                else:
                    missed[victims] += 1
        for victims, name in ((True, f"{victim.name}'s grants"), (False, "the others' grants")):
            values = sorted(late[victims])
            if values:
                q = (
                    statistics.quantiles(values, n=100, method="inclusive")
                    if len(values) > 1
                    else values * 99
                )
                print(f"  {name}: {len(values)} refreshed after their due time by p50"
                      f" {q[49]:.1f}s, p99 {q[98]:.1f}s, max {values[-1]:.1f}s;"
                      f" {missed[victims]} not refreshed")  # fmt: skip


def prepare(pg: PgCluster) -> None:
    """Load pg_stat_statements (a restart) and create it in the maintenance database."""
    pg.psql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    pg.restart()
    pg.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grants", type=int, default=10_000)
    parser.add_argument("--lifetime", type=int, default=120)
    parser.add_argument("--cycles", type=float, default=2)
    parser.add_argument("--lease", type=float, default=5.0)
    parser.add_argument(
        "--watch", type=float, default=None, help="seconds of due grants watched after the kill"
    )
    args = parser.parse_args()
    configure_logging("error", "console", stream=sys.stderr)
    try:
        pg = PgCluster.create()
    except PgUnavailable as exc:
        print(f"skipped: {exc}")
        return 2
    base = Path(tempfile.mkdtemp(prefix="hdcb", dir="/tmp"))
    try:
        pg.start()
        prepare(pg)
        every = 0.75 * args.lifetime
        print(f"{args.grants} grants, tokens of {args.lifetime}s (refreshed every {every:g}s),"
              f" lease {args.lease:g}s, 3 instances", flush=True)  # fmt: skip
        anyio.run(Bench(args, pg, base).run)
    finally:
        pg.destroy()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
