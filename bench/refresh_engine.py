"""Refresh-engine benchmark: N dormant grants — start-up, memory, scheduler CPU.

Builds a real encrypted store of ``--grants`` consents that look like a fleet (consented
over the last 30 days, one-hour access tokens, not served for over a day so every grant
is idle under ``Policy(refresh_idle=24h)``), then measures, in one process (the
numbers are the output's sections; 1 is the store itself):

2. start-up: ``Store.open`` until ``Refresher.run`` reports started, with RSS;
3. idle CPU on the real :class:`~haasd.clock.SystemClock` (and that no token request
   goes out: the token URL is an unused loopback port);
4. scheduler CPU per simulated hour and day on a :class:`~haasd.clock.ManualClock`;
5. the rejected alternative — a poll every 60 s over all grants — for the same hour;
6. a restart after ``--downtime-hours`` down, when many grants changed state meanwhile.

Run: ``.venv/bin/python bench/refresh_engine.py [--grants 100000]``.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import importlib.util
import os
import platform
import random
import resource
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO
from urllib.parse import quote

import anyio

from haasd.authclient import AuthClient
from haasd.clock import Activity, Clock, ManualClock, SystemClock
from haasd.crypto import Key, Sealer
from haasd.events import EventBus
from haasd.grantpack import Sealed
from haasd.grants import Grant, Policy, State, refresh_due_at, state_at
from haasd.logs import configure_logging
from haasd.ratelimit import RateBudget
from haasd.refresher import Refresher
from haasd.secret import Secret
from haasd.store import Store

HOUR: Final = 3600.0
DAY: Final = 86400.0
#: the discard port: nothing listens, so a request would fail at once (and be counted)
TOKEN_URL: Final = "http://127.0.0.1:9/token"
SCOPE: Final = ("tasks:dispatch", "status:read")
BATCH: Final = 5_000
POLL_INTERVAL: Final = 60.0
STATE_EVENTS: Final = ("grant.reconsent_due", "grant.needs_reconsent")
POLICY: Final = Policy()  # refresh_idle 24 h, reconsent_warning 7 d, 30-day limit


# --- measuring -----------------------------------------------------------------------------


def cpu_seconds() -> float:
    """User + system CPU of the whole process (every thread: aiosqlite, to_thread)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def proc_status(name: str) -> int:
    """A ``VmRSS``-style line of /proc/self/status, in bytes."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {name}")


@dataclass
class Span:
    """Wall and process-CPU time of a stretch of code."""

    wall: float = 0.0
    cpu: float = 0.0
    _wall0: float = 0.0
    _cpu0: float = 0.0

    def __enter__(self) -> Span:
        self._wall0, self._cpu0 = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.wall = time.perf_counter() - self._wall0
        self.cpu = cpu_seconds() - self._cpu0


@dataclass
class Table:
    title: str
    rows: list[tuple[str, str]] = field(default_factory=list)

    def add(self, label: str, value: str) -> None:
        self.rows.append((label, value))

    def print(self, out: TextIO) -> None:
        width = max(len(label) for label, _ in self.rows)
        print(f"\n{self.title}", file=out)
        print("-" * len(self.title), file=out)
        for label, value in self.rows:
            print(f"  {label:<{width}}  {value}", file=out)


def wall_cpu(span: Span) -> str:
    return f"{secs(span.wall)}  (CPU {secs(span.cpu)})"


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def secs(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 10 else f"{s:.1f} s"


def state_events(bus: EventBus) -> int:
    return sum(bus.published[kind] for kind in STATE_EVENTS)


# --- the fleet -----------------------------------------------------------------------------


def make_grant(i: int, now: float, rng: random.Random) -> Grant:
    """Human ``i``: consented 25 h to 30 d ago, served once just after, token < 1 h old."""
    consented = now - rng.uniform(POLICY.refresh_idle + HOUR, POLICY.refresh_token_lifetime)
    limit = consented + POLICY.refresh_token_lifetime
    issued = now - rng.uniform(0.0, HOUR)
    return Grant(
        human_id=f"usr_bench_{i:07d}",
        environment="test",
        scope=SCOPE,
        access_token=Secret(f"haas_at_bench{i:07d}_{rng.getrandbits(128):032x}"),
        access_expires_at=issued + HOUR,
        refresh_token=Secret(f"haas_rt_bench{i:07d}_{rng.getrandbits(128):032x}"),
        refresh_expires_at=limit,
        consented_at=consented,
        last_refresh_at=issued,
        state=state_at(State.ACTIVE, limit, now, POLICY),
        next_refresh_at=refresh_due_at(issued, HOUR, POLICY, rng),
        last_served_at=consented + rng.uniform(0.0, HOUR),
    )


async def build_store(path: Path, sealer: Sealer, n: int, seed: int) -> Span:
    rng = random.Random(seed)
    now = time.time()
    with Span() as span:
        store = await Store.open(path, sealer)
        try:
            for start in range(0, n, BATCH):
                batch = [make_grant(i, now, rng) for i in range(start, min(n, start + BATCH))]
                await store.put_grants(batch)
        finally:
            await store.close()
    return span


def raw_fetch(path: Path) -> int:
    """Read every grant row with plain sqlite3 (no decryption): the SQL share of a load."""
    uri = "file:" + quote(str(path.absolute())) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        rows = conn.execute(
            "SELECT human_id, environment, scope, access_token, access_expires_at,"
            " refresh_token, refresh_expires_at, consented_at, last_refresh_at, state,"
            " last_error, consecutive_failures, next_refresh_at, last_served_at,"
            " intent_attempt_id, intent_fingerprint, intent_started_at"
            " FROM grants ORDER BY human_id"
        ).fetchall()
    finally:
        conn.close()
    return len(rows)


# --- one engine ----------------------------------------------------------------------------


class TimedStore(Store):
    """The real store, noting how long each ``read_grants`` (the engine's load) took."""

    __slots__ = ("load",)
    load: Span

    async def read_grants(
        self, take: Callable[[list[Grant | Sealed]], None], *, warn: bool = True
    ) -> None:
        with Span() as span:
            await super().read_grants(take, warn=warn)
        self.load = span


@dataclass
class Engine:
    store: TimedStore
    refresher: Refresher
    auth: AuthClient
    events: EventBus
    open: Span
    start: Span  # Refresher construction + run() until started: load + schedule
    rss_before: int
    rss_after: int

    @property
    def schedule(self) -> Span:
        """run() until started, less the load: the in-memory scheduling."""
        load = self.store.load
        return Span(self.start.wall - load.wall, self.start.cpu - load.cpu)

    @property
    def requests(self) -> int:
        return sum(self.auth.stats.requests.values())


@asynccontextmanager
async def engine(path: Path, sealer: Sealer, clock: Clock, seed: int) -> AsyncIterator[Engine]:
    """Open the store and start a Refresher on it, timing both; stop it on exit."""
    activity = Activity()
    if isinstance(clock, ManualClock):
        clock.add_settle_hook(activity.wait_idle)  # disk writes in flight hold time still
    events = EventBus()
    budget = RateBudget(60, clock)  # the Free plan: dormant consents must not need more
    async with AsyncExitStack() as stack:
        auth = AuthClient(
            token_url=TOKEN_URL,
            client_id="app_bench_client",
            client_secret=Secret("bench-client-secret"),
            budget=budget,
            activity=activity,
        )
        stack.push_async_callback(auth.aclose)
        gc.collect()
        rss_before = proc_status("VmRSS")
        with Span() as open_span:
            store = await TimedStore.open(path, sealer)
            assert isinstance(store, TimedStore)  # Store.open builds ``cls``
        stack.push_async_callback(store.close)
        with Span() as start_span:
            refresher = Refresher(
                store=store,
                auth=auth,
                clock=clock,
                policy=POLICY,
                events=events,
                budget=budget,
                rng=random.Random(seed),
                activity=activity,
            )
            tg = await stack.enter_async_context(anyio.create_task_group())
            await tg.start(refresher.run)
        gc.collect()
        rss_after = proc_status("VmRSS")
        try:
            yield Engine(
                store, refresher, auth, events, open_span, start_span, rss_before, rss_after
            )
        finally:
            tg.cancel_scope.cancel()


# --- the rejected design: poll every grant every minute ----------------------------------


def naive_poll(grants: list[Grant], start: float, passes: int) -> tuple[int, int]:
    """``passes`` walks over all grants, one per POLL_INTERVAL from ``start``: the state
    check and the is-a-refresh-due check the heap replaces. (state changes, due found)"""
    states = [g.state for g in grants]
    changes = due = 0
    idle = POLICY.refresh_idle
    for k in range(1, passes + 1):
        now = start + k * POLL_INTERVAL
        for i, g in enumerate(grants):
            state = state_at(states[i], g.refresh_expires_at, now, POLICY)
            if state is not states[i]:
                states[i] = state
                changes += 1
            last = g.last_served_at if g.last_served_at is not None else g.consented_at
            if (
                state is not State.NEEDS_RECONSENT
                and now - last <= idle
                and (g.next_refresh_at is None or g.next_refresh_at <= now)
            ):
                due += 1
    return changes, due


def heap_build(grants: list[Grant]) -> tuple[float, float]:
    """Seconds to build a heap of one 4-tuple per grant: n heappush vs one heapify."""
    entries = [
        (g.refresh_expires_at - POLICY.reconsent_warning, i, g.human_id, 1)
        for i, g in enumerate(grants)
    ]
    t0 = time.perf_counter()
    pushed: list[tuple[float, int, str, int]] = []
    for entry in entries:
        heapq.heappush(pushed, entry)
    t1 = time.perf_counter()
    heapq.heapify(entries)
    return t1 - t0, time.perf_counter() - t1


# --- the run -------------------------------------------------------------------------------


def fs_type(path: Path) -> str:
    """The filesystem type of the mount holding ``path`` (fsync cost depends on it)."""
    target = str(path.resolve())
    best, kind = "", "?"
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            parts = line.split()
            mount = parts[1].replace("\\040", " ")
            prefix = mount.rstrip("/") + "/"
            if (target == mount or target.startswith(prefix)) and len(mount) > len(best):
                best, kind = mount, parts[2]
    return kind


def startup_rows(table: Table, e: Engine) -> None:
    table.add("start-up total (open -> started)", secs(e.open.wall + e.start.wall))
    table.add("Store.open (incl. quick_check)", secs(e.open.wall))
    table.add("run() until started", f"{secs(e.start.wall)}  (CPU {secs(e.start.cpu)})")


async def bench(args: argparse.Namespace, out: TextIO) -> None:
    n: int = args.grants
    sealer = Sealer(Key.generate())
    with tempfile.TemporaryDirectory(prefix="haasd-bench-", dir=args.dir) as tmp:
        path = Path(tmp) / "haasd.db"
        print(f"store filesystem: {fs_type(Path(tmp))}", file=out)

        built = await build_store(path, sealer, n, args.seed)
        table = Table(f"1. Store: {n:,} dormant grants (consented over the last 30 days)")
        table.add("build (put_grants, batches of 5,000)", secs(built.wall))
        wal = path.with_name(path.name + "-wal")
        size = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
        table.add("store file size", f"{mb(size)}  ({size / n:.0f} B per grant)")
        table.print(out)

        # --- 2 + 3: the real clock ------------------------------------------------------
        async with engine(path, sealer, SystemClock(), args.seed) as e:
            hwm = proc_status("VmHWM")
            changes0 = state_events(e.events)
            with Span() as idle:
                await anyio.sleep(args.idle_seconds)
            if e.requests:
                raise SystemExit(
                    f"FAIL: idle grants sent {e.requests} token request(s): "
                    f"{dict(e.auth.stats.requests)}"
                )
            if e.refresher.stats.refreshes:
                raise SystemExit(f"FAIL: refreshes attempted: {dict(e.refresher.stats.refreshes)}")
            idle_changes = state_events(e.events) - changes0
            # aiosqlite's worker thread keeps its last result (the load's raw rows) alive
            # until the next query: one cheap query lets them go
            await e.store.count_grants()
            gc.collect()
            rss_steady = proc_status("VmRSS")
            table2 = Table("2. Start-up on the system clock")
            table2.add(
                "RSS before -> after started",
                f"{mb(e.rss_before)} -> {mb(e.rss_after)}"
                f"  (+{(e.rss_after - e.rss_before) / n:.0f} B per grant)",
            )
            table2.add(
                "  -> after one more store query",
                f"{mb(rss_steady)}  (+{(rss_steady - e.rss_before) / n:.0f} B per grant)",
            )
            table2.add("peak RSS so far (VmHWM)", mb(hwm))
            startup_rows(table2, e)
            load, schedule = e.store.load, e.schedule
            table3 = Table(f"3. Idle on the system clock ({idle.wall:.1f} s real time)")
            table3.add("process CPU", f"{secs(idle.cpu)}  = {idle.cpu / idle.wall:.3%} of one core")
            table3.add("token requests sent", f"{e.requests}  (asserted 0)")
            table3.add("state changes meanwhile", str(idle_changes))
        del e
        gc.collect()

        # the load once more, in parts, with no grants held (as at the first start)
        async with await TimedStore.open(path, sealer) as store:
            with Span() as fetch:
                await anyio.to_thread.run_sync(raw_fetch, path)
            gc.disable()
            try:
                with Span() as load_nogc:
                    chunks: list[int] = []
                    await store.read_grants(lambda chunk: chunks.append(len(chunk)))
                    loaded = sum(chunks)
            finally:
                gc.enable()
                gc.collect()
        assert loaded == n, loaded

        table2.add("  of which read_grants (into the engine)", wall_cpu(load))
        table2.add("    SQL fetch alone (plain sqlite3, again)", wall_cpu(fetch))
        table2.add("    sealed rows, packed and placed (the rest)", secs(load.wall - fetch.wall))
        table2.add("    read_grants alone, kept nowhere, GC off", wall_cpu(load_nogc))
        table2.add(
            "  of which scheduling (the rest)",
            f"{wall_cpu(schedule)}  {schedule.cpu / n * 1e6:.1f} us CPU per grant",
        )
        table2.add("state changes applied at start", str(changes0))
        table2.print(out)
        table3.print(out)

        # --- 4 + 5: the manual clock, and the poll loop it replaces ----------------------
        start = time.time()
        clock = ManualClock(start=start)
        async with engine(path, sealer, clock, args.seed) as e:
            grants = list(e.refresher.grants())
            table = Table("4. Scheduler on a manual clock (start = now)")
            warm_start = e.open.wall + e.start.wall
            table.add("start-up again (warm file cache)", secs(warm_start))
            changes0 = state_events(e.events)
            with Span() as hour:
                await clock.advance(HOUR)
            hour_changes = state_events(e.events) - changes0
            with Span() as day:
                await clock.advance(DAY)
            day_changes = state_events(e.events) - changes0 - hour_changes
            if e.requests:
                raise SystemExit(f"FAIL: {e.requests} token request(s) on the manual clock")
            table.add(
                "1 simulated hour: CPU / wall",
                f"{secs(hour.cpu)} / {secs(hour.wall)}  ({hour_changes} state-change events)",
            )
            table.add(
                "next simulated day: CPU / wall",
                f"{secs(day.cpu)} / {secs(day.wall)}  ({day_changes} state-change events)",
            )
            per_event = day.cpu / day_changes if day_changes else 0.0
            table.add(
                "  CPU per state-change event",
                f"{per_event * 1e6:.0f} us (synced write, log, event)",
            )
            table.print(out)
            end = clock.time()

        with Span() as poll:
            poll_changes, poll_due = naive_poll(grants, start, round(HOUR / POLL_INTERVAL))
        push, heapify = heap_build(grants)
        table = Table(f"5. The rejected design: poll all grants every {POLL_INTERVAL:.0f} s")
        table.add(
            "60 passes (1 simulated hour): CPU",
            f"{secs(poll.cpu)}  ({poll_changes} state changes, {poll_due} refreshes due)",
        )
        table.add("  no writes, no events, no logs", "(the heap's figure includes all three)")
        ratio = poll.cpu / hour.cpu if hour.cpu > 0 else float("inf")
        table.add("ratio poll / heap, per simulated hour", f"{ratio:.0f}x")
        table.add(
            "share of one core, poll / heap", f"{poll.cpu / HOUR:.3%} / {hour.cpu / HOUR:.4%}"
        )
        table.add(f"heap of {n:,}: heappush each / heapify", f"{secs(push)} / {secs(heapify)}")
        table.print(out)
        del grants
        gc.collect()

        # --- 6: a restart after downtime ----------------------------------------------------
        if args.downtime_hours > 0:
            down = args.downtime_hours * HOUR
            clock = ManualClock(start=end + down)
            async with engine(path, sealer, clock, args.seed) as e:
                changed = state_events(e.events)
                table = Table(f"6. Restart after {args.downtime_hours:g} h down")
                table.add("state changes applied before started", str(changed))
                startup_rows(table, e)
                table.add(
                    "  more than the warm start of part 4",
                    f"{secs(e.open.wall + e.start.wall - warm_start)}"
                    f"  ({(e.open.wall + e.start.wall - warm_start) / max(1, changed) * 1e3:.2f}"
                    " ms per state change)",
                )
                table.print(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--grants", type=int, default=100_000, help="grants in the store")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="real idle time")
    parser.add_argument("--downtime-hours", type=float, default=12.0, help="0: skip part 6")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", default=None, help="where the temporary store goes")
    parser.add_argument("--no-uvloop", action="store_true", help="plain asyncio event loop")
    args = parser.parse_args(argv)
    if args.grants < 1:
        parser.error("--grants must be at least 1")

    use_uvloop = not args.no_uvloop and importlib.util.find_spec("uvloop") is not None
    out = sys.stdout
    command = (
        f".venv/bin/python bench/refresh_engine.py --grants {args.grants}"
        f" --idle-seconds {args.idle_seconds:g} --downtime-hours {args.downtime_hours:g}"
        f" --seed {args.seed}" + (" --no-uvloop" if args.no_uvloop else "")
    )
    print("haasd refresh-engine benchmark", file=out)
    print(f"reproduce: {command}", file=out)
    print(
        f"machine: {os.cpu_count()} CPUs, {platform.system()} {platform.machine()},"
        f" Python {platform.python_version()}, SQLite {sqlite3.sqlite_version},"
        f" event loop {'uvloop' if use_uvloop else 'asyncio'},"
        f" load average {os.getloadavg()[0]:.2f} (other work skews every figure)",
        file=out,
    )
    # the daemon's real logging (JSON, redacted, info level), rendered into the void
    with open(os.devnull, "w", encoding="utf-8") as sink:
        configure_logging("info", "json", stream=sink)
        with Span() as total:
            anyio.run(
                bench, args, out, backend="asyncio", backend_options={"use_uvloop": use_uvloop}
            )
    print(f"\ntotal: {secs(total.wall)} wall, {secs(total.cpu)} CPU", file=out)


if __name__ == "__main__":
    main()
