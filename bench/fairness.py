"""Fairness benchmark: an abusive peer and 12 unruled uids beside normal apps.

One run, two phases side by side, against the real daemon: :func:`haasd.app.run` (store,
refresh engine, consent flow, :class:`~haasd.server.TokenServer` on a real Unix socket,
audit logging on into ``/dev/null``) with the simulated HaaS over loopback HTTP
(rotation on, the ``free`` plan: 60 token requests per minute), all on a
:class:`~haasd.clock.ScaledClock` (one simulated hour per 10 s by default) so that every
human's token is refreshed several times within a minute of real time.

* **Warm-up**: 50 humans consent through the real consent flow, spread over the
  warm-up so that their refreshes are spread too.
* **Phase A (baseline)**: the normal clients, each a process with a uid of its own and
  an ``[[access]]`` rule for its humans: 4 apps fetching their humans' tokens in turn on
  one keep-alive connection each (``--rate`` requests per second each, default 200),
  and one client that opens a new connection for each request (20 per second), as
  ``haasd token`` does.
* **Phase B (abuse)**: the same clients, plus
  (1) an abuser — a uid with a rule for 3 humans — looping
  ``GET /v1/tokens/H?min_ttl=86400`` (no token can have that long) and ``?min_ttl=3500``
  (met only by a token just refreshed) on one connection as fast as it can, and
  (2) 12 uids that match no rule, each opening 64 connections, holding them 0.1 s, and
  opening them again.

Latency is real wall-clock time of each socket request, measured in the client
processes (send to the last byte of the answer). Times to expiry (``expires_in``),
cooldowns and the plan's budget are simulated seconds. Refreshes are counted from the
simulator's log of ``/token`` requests. Other uids are real: children forked before the
daemon starts drop to unused uids (root only; without root, every client runs as this
uid and the unruled uids are left out, which the output says).

Run: ``.venv/bin/python bench/fairness.py [--quick] [--no-flood]`` (about 45 s;
``--quick`` about 25 s; ``--no-flood`` leaves the unruled uids out, to tell the two
attacks' costs apart).
Exits 1 when a check fails (a normal app refused, an answer that hung, the abuser
refreshed more often than the cooldown allows, a normal human left unhealthy).
"""

from __future__ import annotations

import argparse
import grp
import importlib.util
import json
import math
import os
import platform
import pwd
import re
import resource
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final, TextIO

import anyio
import httpx

from haasd.app import Daemon, run, run_unwrapped
from haasd.clock import ScaledClock
from haasd.config import load_config
from haasd.crypto import Key
from haasd.demand import MAX_WAIT
from haasd.logs import configure_logging
from haasd.simulator import Simulator

HOUR: Final = 3600.0
CLIENT_ID: Final = "bench_fair_app"
CLIENT_SECRET: Final = "bench-fairness-client-secret"
REDIRECT_URI: Final = "http://127.0.0.1:8765/callback"
PLAN: Final = "free"
#: unruled uids in phase B: "12 unruled uids holding connections"
FLOOD_UIDS: Final = 12
#: where the children's uids and group are looked for (unused ones are taken)
UID_BASE: Final = 64100
GID_BASE: Final = 64100
#: a client gives up on an answer after this long (real seconds) and counts a hang
ANSWER_TIMEOUT: Final = MAX_WAIT + 5.0
#: health is polled this often (real seconds) during each phase
HEALTH_EVERY: Final = 0.25
#: the abuser stops after this many requests even if time is left
ABUSER_MAX_REQUESTS: Final = 5_000_000
#: a flooding uid stops after this many rounds even if time is left
FLOOD_MAX_ROUNDS: Final = 10_000
#: the abuser's two requests: never possible, and possible just after a refresh
ABUSE_KINDS: Final = (86400, 3500)
#: requests/s of the client that opens a new connection for each (as ``haasd token``)
CLI_RATE: Final = 20.0
DIGITS: Final = re.compile(r"\d+(\.\d+)?")


# --- the clients (forked children; plain blocking sockets) ---------------------------------


class Connection:
    """An HTTP/1.1 connection to the socket, opened when needed and kept alive unless
    ``fresh`` (a new connection per request, as ``haasd token`` makes)."""

    def __init__(self, path: str, *, fresh: bool = False) -> None:
        self.path = path
        self.fresh = fresh
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.connects = 0
        #: connect() found the listen backlog full (EAGAIN) and tried again
        self.backlog_full = 0

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.buffer = b""

    def _connect(self, deadline: float) -> socket.socket:
        """Connect, trying again while the listen backlog is full (a Unix socket with a
        timeout answers EAGAIN then, where a blocking one would wait)."""
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(ANSWER_TIMEOUT)
            try:
                sock.connect(self.path)
            except BlockingIOError:
                sock.close()
                self.backlog_full += 1
                if time.perf_counter() > deadline:
                    raise TimeoutError("the listen backlog stayed full") from None
                time.sleep(0.001)
                continue
            except BaseException:
                sock.close()
                raise
            self.connects += 1
            return sock

    def get(self, target: str) -> tuple[str, bytes]:
        """(status, body) of ``GET target``; status ``timeout`` or ``closed`` when none."""
        try:
            if self.sock is None:
                self.sock = self._connect(time.perf_counter() + ANSWER_TIMEOUT)
            self.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: haasd\r\n\r\n".encode("ascii"))
            status, body, keep = self._answer(self.sock)
        except TimeoutError:
            self.close()
            return "timeout", b""
        except OSError:
            self.close()
            return "closed", b""
        if self.fresh or not keep:
            self.close()
        return status, body

    def _answer(self, sock: socket.socket) -> tuple[str, bytes, bool]:
        while b"\r\n\r\n" not in self.buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("closed")
            self.buffer += chunk
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = lines[0].split(b" ", 2)[1].decode("ascii")
        length, keep = 0, True
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                keep = False
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("closed")
            rest += chunk
        self.buffer = rest[length:]
        return status, rest[:length], keep


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_app(
    path: str, humans: Sequence[str], rate: float, seconds: float, *, fresh: bool = False
) -> dict[str, Any]:
    """A normal app: its humans' tokens in turn, ``rate`` requests per second, on one
    keep-alive connection (or, ``fresh``, a new connection for each)."""
    conn = Connection(path, fresh=fresh)
    latencies: list[int] = []  # microseconds, connect included when fresh
    statuses: Counter[str] = Counter()
    least_ttl: float | None = None
    cpu0 = _cpu()
    start = time.perf_counter()
    deadline = start + seconds
    interval = 1.0 / rate
    next_at = start
    i = 0
    while (now := time.perf_counter()) < deadline:
        if next_at > now:
            time.sleep(next_at - now)
        elif now - next_at > 1.0:  # far behind after a stall: no burst to catch up
            next_at = now
        next_at += interval
        human = humans[i % len(humans)]
        i += 1
        t0 = time.perf_counter()
        status, body = conn.get(f"/v1/tokens/{human}")
        latencies.append(round((time.perf_counter() - t0) * 1e6))
        statuses[status] += 1
        if status == "200":
            ttl = float(json.loads(body)["expires_in"])
            least_ttl = ttl if least_ttl is None else min(least_ttl, ttl)
    conn.close()
    return {
        "latencies_us": latencies,
        "statuses": dict(statuses),
        "least_ttl": least_ttl,
        "connects": conn.connects,
        "backlog_full": conn.backlog_full,
        "cpu": _cpu() - cpu0,
    }


def run_abuser(path: str, humans: Sequence[str], seconds: float) -> dict[str, Any]:
    """The abuser: impossible and barely possible ``min_ttl`` in a loop, one connection."""
    conn = Connection(path)
    answers: Counter[str] = Counter()  # "min_ttl status type"
    latencies: list[int] = []  # microseconds
    cpu0 = _cpu()
    deadline = time.perf_counter() + seconds
    targets = [(k, f"/v1/tokens/{h}?min_ttl={k}") for h in humans for k in ABUSE_KINDS]
    n = 0
    while n < ABUSER_MAX_REQUESTS and time.perf_counter() < deadline:
        kind, target = targets[n % len(targets)]
        n += 1
        t0 = time.perf_counter()
        status, body = conn.get(target)
        latencies.append(round((time.perf_counter() - t0) * 1e6))
        why = ""
        if status not in ("200", "timeout", "closed"):
            why = str(json.loads(body)["error"]["type"])
        answers[f"{kind} {status} {why}".strip()] += 1
    conn.close()
    latencies.sort()
    return {
        "requests": n,
        "answers": dict(answers),
        "p50_us": percentile(latencies, 0.5),
        "p99_us": percentile(latencies, 0.99),
        "max_us": latencies[-1] if latencies else 0,
        "connects": conn.connects,
        "backlog_full": conn.backlog_full,
        "cpu": _cpu() - cpu0,
    }


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``sorted_values`` (nearest rank); NaN when empty."""
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def _first_status(sock: socket.socket) -> str:
    """The status of the answer waiting on ``sock``: ``closed`` (EOF, no answer),
    ``held`` (nothing within a second: the connection holds a slot) or ``error``."""
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        return "held"
    except OSError:
        return "error"
    parts = data.split(b" ", 2)
    return parts[1].decode("ascii", "replace") if len(parts) > 1 else "closed"


def run_flooder(path: str, count: int, pause: float, seconds: float) -> dict[str, Any]:
    """An unruled uid: open ``count`` connections, hold what stays open, again and again."""
    outcomes: Counter[str] = Counter()
    cpu0 = _cpu()
    deadline = time.perf_counter() + seconds
    rounds = 0
    while rounds < FLOOD_MAX_ROUNDS and time.perf_counter() < deadline:
        rounds += 1
        held: list[socket.socket] = []
        for _ in range(count):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(1.0)
            try:
                sock.connect(path)
            except OSError:
                outcomes["connect failed"] += 1
                sock.close()
                continue
            held.append(sock)
        for sock in held:
            outcomes[_first_status(sock)] += 1
        time.sleep(pause)  # hold them a moment, then let go and try again
        for sock in held:
            sock.close()
    return {"rounds": rounds, "outcomes": dict(outcomes), "cpu": _cpu() - cpu0}


# --- forked children -------------------------------------------------------------------------


Work = Callable[[str, float], dict[str, Any]]


@dataclass
class Child:
    """A client process: it runs ``work`` for each ``run`` command and reports JSON."""

    role: str
    uid: int
    pid: int
    commands: int
    reports: int

    def start(self, path: str, seconds: float) -> None:
        os.write(self.commands, f"{seconds!r} {path}\n".encode())

    async def report(self) -> dict[str, Any]:
        data = b""
        while not data.endswith(b"\n"):
            await anyio.wait_readable(self.reports)
            chunk = os.read(self.reports, 1 << 20)
            if not chunk:
                raise SystemExit(f"FAIL: the {self.role} client ended without a report")
            data += chunk
        result: dict[str, Any] = json.loads(data)
        if "error" in result:
            raise SystemExit(f"FAIL: the {self.role} client failed: {result['error']}")
        return result


def _child_main(  # pragma: no cover - runs in the forked child
    work: Work, uid: int | None, gid: int | None, commands: int, reports: int, others: list[int]
) -> None:
    code = 1
    try:
        for fd in others:  # the parent's ends of the other children's pipes
            os.close(fd)
        if uid is not None and gid is not None:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        with os.fdopen(commands, "r", encoding="utf-8") as lines:
            for line in lines:
                seconds, _, path = line.strip().partition(" ")
                _write_all(reports, json.dumps(work(path, float(seconds))) + "\n")
        code = 0
    except BaseException as exc:  # noqa: BLE001 - a forked child reports all and exits
        _write_all(reports, json.dumps({"error": repr(exc)}) + "\n")
    finally:
        os._exit(code)


def _write_all(fd: int, text: str) -> None:
    data = memoryview(text.encode())
    while data:
        data = data[os.write(fd, data) :]


class Children:
    """Forked client processes, forked before the daemon starts (no threads yet)."""

    def __init__(self) -> None:
        self.all: list[Child] = []

    def fork(self, role: str, uid: int | None, gid: int | None, work: Work) -> Child:
        commands_r, commands_w = os.pipe()
        reports_r, reports_w = os.pipe()
        others = [fd for c in self.all for fd in (c.commands, c.reports)]
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(commands_w)
            os.close(reports_r)
            _child_main(work, uid, gid, commands_r, reports_w, others)
        os.close(commands_r)
        os.close(reports_w)
        child = Child(role, os.getuid() if uid is None else uid, pid, commands_w, reports_r)
        self.all.append(child)
        return child

    def stop(self) -> None:
        """Close the command pipes (each child exits at EOF), reap; kill a straggler."""
        for child in self.all:
            os.close(child.commands)
        deadline = time.monotonic() + 10.0
        for child in self.all:
            while True:
                done, _ = os.waitpid(child.pid, os.WNOHANG)
                if done or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            if not done:
                os.kill(child.pid, signal.SIGKILL)
                os.waitpid(child.pid, 0)
            os.close(child.reports)
        self.all.clear()


# --- the plan of a run ------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    speed: float
    humans: int
    apps: int
    abuser_humans: int
    rate: float
    warmup: float
    phase: float
    flood_connections: int
    flood_pause: float
    root: bool
    #: run the unruled uids in phase B (needs root)
    flood: bool

    def app_humans(self, app: int) -> list[str]:
        normal = self.humans - self.abuser_humans
        return [f"usr_app{app}_{n:02d}" for n in range(app, normal, self.apps)]

    @property
    def abuser_ids(self) -> list[str]:
        return [f"usr_abuse_{n}" for n in range(1, self.abuser_humans + 1)]

    @property
    def normal_ids(self) -> list[str]:
        return [h for a in range(self.apps) for h in self.app_humans(a)]

    @property
    def all_humans(self) -> list[str]:
        return self.normal_ids + self.abuser_ids


def unused_ids(count: int, base: int, used: Callable[[int], bool]) -> list[int]:
    """``count`` ids from ``base`` up that ``used`` says nobody has."""
    found: list[int] = []
    candidate = base
    while len(found) < count:
        if not used(candidate):
            found.append(candidate)
        candidate += 1
    return found


def _uid_used(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def _gid_used(gid: int) -> bool:
    try:
        grp.getgrgid(gid)
    except KeyError:
        return False
    return True


@dataclass
class Cast:
    """Who is who in a run: the clients and the access rules naming them."""

    apps: list[Child]
    cli: Child
    abuser: Child
    flooders: list[Child]
    gid: int | None
    rules: list[dict[str, Any]]

    @property
    def normal(self) -> list[Child]:
        return [*self.apps, self.cli]


def cast(plan: Plan, children: Children) -> Cast:
    """Fork every client; with root each gets a uid of its own (the unruled ones none)."""
    if plan.root:
        uids = unused_ids(plan.apps + 2 + FLOOD_UIDS, UID_BASE, _uid_used)
        gid: int | None = unused_ids(1, GID_BASE, _gid_used)[0]
    else:
        uids, gid = [], None
    mine = iter(uids)
    rules: list[dict[str, Any]] = [{"uid": os.getuid(), "humans": ["*"], "admin": True}]

    def fork(role: str, humans: list[str], work: Work) -> Child:
        uid = next(mine, None)
        if uid is not None:
            rules.append({"uid": uid, "humans": humans})
        return children.fork(role, uid, gid, work)

    apps = [
        fork(f"app {a + 1}", [f"usr_app{a}_*"], partial(_app, humans=humans, rate=plan.rate))
        for a, humans in enumerate(map(plan.app_humans, range(plan.apps)))
    ]
    cli = fork(
        "cli", ["usr_app*"], partial(_app, humans=plan.normal_ids, rate=CLI_RATE, fresh=True)
    )
    abuser = fork("abuser", ["usr_abuse_*"], partial(_abuser, humans=plan.abuser_ids))
    flooders = []
    if plan.root and plan.flood:
        flood = partial(_flood, count=plan.flood_connections, pause=plan.flood_pause)
        flooders = [children.fork(f"unruled uid {uid}", uid, gid, flood) for uid in mine]
    return Cast(apps, cli, abuser, flooders, gid, rules)


def _app(
    path: str, seconds: float, *, humans: list[str], rate: float, fresh: bool = False
) -> dict[str, Any]:
    return run_app(path, humans, rate, seconds, fresh=fresh)


def _abuser(path: str, seconds: float, *, humans: list[str]) -> dict[str, Any]:
    return run_abuser(path, humans, seconds)


def _flood(path: str, seconds: float, *, count: int, pause: float) -> dict[str, Any]:
    return run_flooder(path, count, pause, seconds)


# --- measuring a phase ----------------------------------------------------------------------


@dataclass
class HealthLog:
    """What ``/v1/health`` said during a phase, and what the server held."""

    statuses: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    max_connections: int = 0
    least_budget: int | None = None

    def note(self, answer: dict[str, Any], connections: int) -> None:
        self.statuses[str(answer["status"])] += 1
        for reason in answer.get("reasons", []):
            shape = DIGITS.sub("N", str(reason))
            self.reasons[shape] += 1
            self.examples[shape] = str(reason)
        self.max_connections = max(self.max_connections, connections)
        remaining = answer.get("rate_budget_remaining")
        if isinstance(remaining, int):
            self.least_budget = (
                remaining if self.least_budget is None else min(self.least_budget, remaining)
            )


async def watch_health(daemon: Daemon, log: HealthLog, stop: anyio.Event) -> None:
    """Poll ``/v1/health`` over the socket as this (admin) uid until ``stop``."""
    transport = httpx.AsyncHTTPTransport(uds=str(daemon.socket_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://haasd") as client:
        while not stop.is_set():
            answer = await client.get("/v1/health")
            log.note(answer.json(), daemon.server.connections)
            with anyio.move_on_after(HEALTH_EVERY):
                await stop.wait()


@dataclass
class Phase:
    """What one phase measured."""

    name: str
    seconds: float  # real
    sim_seconds: float
    apps: list[dict[str, Any]]  # keep-alive apps
    cli: dict[str, Any]  # the new-connection-per-request client
    abuser: dict[str, Any] | None
    flooders: list[dict[str, Any]]
    health: HealthLog
    daemon_cpu: float  # this process: daemon + simulator
    refreshes: Counter[str]  # successful refresh_token requests by human
    token_statuses: Counter[int]  # every /token answer by status
    unhealthy: list[str]  # normal humans not active, or with an error, at the end

    @property
    def normal(self) -> list[dict[str, Any]]:
        return [*self.apps, self.cli]

    @staticmethod
    def latencies_ms(reports: Iterable[dict[str, Any]]) -> list[float]:
        return sorted(us / 1000 for r in reports for us in r["latencies_us"])

    def statuses(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for r in self.normal:
            total.update(r["statuses"])
        return total

    @property
    def least_ttl(self) -> float | None:
        ttls = [r["least_ttl"] for r in self.normal if r["least_ttl"] is not None]
        return min(ttls) if ttls else None

    def cpu(self, reports: Iterable[dict[str, Any]]) -> str:
        return f"{sum(r['cpu'] for r in reports) / self.seconds:.0%}"


async def run_phase(
    name: str, daemon: Daemon, sim: Simulator, plan: Plan, cast_: Cast, *, abuse: bool
) -> Phase:
    """Start the clients of the phase, poll health meanwhile, gather their reports."""
    clients = [*cast_.normal, *((cast_.abuser, *cast_.flooders) if abuse else ())]
    path = str(daemon.socket_path)
    health = HealthLog()
    stop = anyio.Event()
    sim_start = daemon.clock.time()
    first_log = len(sim.requests_log)
    cpu0 = _cpu()
    wall0 = time.perf_counter()
    reports: dict[int, dict[str, Any]] = {}

    async def collect(child: Child) -> None:
        with anyio.fail_after(plan.phase + ANSWER_TIMEOUT + 30.0):
            reports[child.pid] = await child.report()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_health, daemon, health, stop)
        for child in clients:
            child.start(path, plan.phase)
        async with anyio.create_task_group() as waiting:
            for child in clients:
                waiting.start_soon(collect, child)
        stop.set()
    seconds = time.perf_counter() - wall0
    cpu = _cpu() - cpu0
    refreshes: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    for record in sim.requests_log[first_log:]:
        statuses[record.status or 0] += 1
        if record.grant_type == "refresh_token" and record.status == 200 and record.human_id:
            refreshes[record.human_id] += 1
    return Phase(
        name=name,
        seconds=seconds,
        sim_seconds=daemon.clock.time() - sim_start,
        apps=[reports[c.pid] for c in cast_.apps],
        cli=reports[cast_.cli.pid],
        abuser=reports[cast_.abuser.pid] if abuse else None,
        flooders=[reports[c.pid] for c in cast_.flooders] if abuse else [],
        health=health,
        daemon_cpu=cpu,
        refreshes=refreshes,
        token_statuses=statuses,
        unhealthy=unhealthy(daemon, set(plan.normal_ids)),
    )


def unhealthy(daemon: Daemon, humans: set[str]) -> list[str]:
    """Those of ``humans`` whose grant is not active, or met an error, now."""
    return sorted(
        f"{g.human_id} ({g.state.value}: {g.last_error})"
        for g in daemon.refresher.grants()
        if g.human_id in humans and (g.state.value != "active" or g.last_error)
    )


# --- the run ---------------------------------------------------------------------------------


async def onboard(daemon: Daemon, sim: Simulator, humans: Sequence[str], over: float) -> None:
    """Each human consents through the real flow, spread over ``over`` simulated seconds."""
    gap = over / len(humans)
    for human_id in humans:
        pending = await daemon.consent.start(human_id=human_id)
        location = await sim.visit(pending.authorization_url)
        assert location is not None
        await daemon.consent.finish_url(location)
        await daemon.clock.sleep(gap)


async def bench_async(plan: Plan, cast_: Cast, directory: Path) -> tuple[Phase, Phase, Daemon]:
    clock = ScaledClock(plan.speed)
    sim = Simulator(
        clock,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uris=[REDIRECT_URI],
        plan=PLAN,
        rotate_refresh_tokens=True,
        reuse_grace=60.0,
    )
    for human_id in plan.all_humans:
        sim.add_human(human_id, "approve")
    async with sim.running():
        env = {
            "HAASD_HAAS_ENVIRONMENT": "test",
            "HAASD_HAAS_CLIENT_ID": CLIENT_ID,
            "HAASD_HAAS_CLIENT_SECRET": CLIENT_SECRET,
            "HAASD_HAAS_AUTHORIZE_URL": sim.authorize_url,
            "HAASD_HAAS_TOKEN_URL": sim.token_url,
            "HAASD_HAAS_REDIRECT_URI": REDIRECT_URI,
            "HAASD_HAAS_PLAN": PLAN,
            "HAASD_STORE_PATH": str(directory / "haasd.db"),
            "HAASD_STORE_KEY": Key.generate().to_text(),
            "HAASD_SOCKET_PATH": str(directory / "haasd.sock"),
            "HAASD_ACCESS": json.dumps(cast_.rules),
            "HAASD_LOG_LEVEL": "info",
        }
        config = load_config(None, env)
        async with anyio.create_task_group() as tg:
            daemon: Daemon = await tg.start(
                partial(
                    run, config, clock=clock, environ=env | {"NOTIFY_SOCKET": ""}, signals=False
                )
            )
            if cast_.gid is not None:
                os.chown(daemon.socket_path, -1, cast_.gid)  # mode 0660: the clients' group
            await onboard(daemon, sim, plan.all_humans, plan.warmup * plan.speed * 0.9)
            await anyio.sleep(plan.warmup * 0.1)
            a = await run_phase("A", daemon, sim, plan, cast_, abuse=False)
            b = await run_phase("B", daemon, sim, plan, cast_, abuse=True)
            tg.cancel_scope.cancel()
    return a, b, daemon


# --- the report -------------------------------------------------------------------------------


def ms(x: float) -> str:
    return f"{x:.2f} ms" if x < 100 else f"{x:,.0f} ms"


def sim_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    return f"{whole // 60}m {whole % 60:02d}s"


def ratio(a: float, b: float) -> str:
    return f"{b / a:.2f}x" if a > 0 else "-"


@dataclass
class Checks:
    """Pass/fail lines; a failure is a defect to report, not to work around."""

    rows: list[tuple[str, str, bool]] = field(default_factory=list)

    def add(self, label: str, value: str, ok: bool) -> None:
        self.rows.append((label, value, ok))

    @property
    def ok(self) -> bool:
        return all(ok for _, _, ok in self.rows)

    def print(self, out: TextIO) -> None:
        print("\nchecks:", file=out)
        for label, value, ok in self.rows:
            print(f"  {'PASS' if ok else 'FAIL'}  {label}: {value}", file=out)


def cooldown_bound(daemon: Daemon, sim_seconds: float) -> int:
    """The most refreshes of one abuser human the rules allow in ``sim_seconds``: one
    on-demand refresh per cooldown, plus the scheduled ones (at 70 % of the lifetime
    at the soonest)."""
    policy = daemon.refresher.policy
    scheduled = sim_seconds / (HOUR * (policy.refresh_fraction - policy.jitter_fraction))
    return math.ceil(sim_seconds / policy.on_demand_cooldown) + math.ceil(scheduled) + 1


def _others(statuses: Counter[str]) -> str:
    rest = {s: n for s, n in statuses.items() if s != "200"}
    return ", ".join(f"{s} x{n}" for s, n in sorted(rest.items())) or "0"


def side_by_side(plan: Plan, a: Phase, b: Phase, out: TextIO) -> None:
    """The table: phase A and phase B, and the ratio where one means something."""
    abusers = set(plan.abuser_ids)
    normal = len(plan.normal_ids)

    def refreshed(p: Phase, theirs: bool) -> int:
        return sum(n for h, n in p.refreshes.items() if (h in abusers) == theirs)

    def health(p: Phase) -> str:
        return ", ".join(f"{s} {n}" for s, n in sorted(p.health.statuses.items()))

    def latency(label: str, pick: Callable[[Phase], list[dict[str, Any]]], q: float) -> Row:
        x = percentile(Phase.latencies_ms(pick(a)), q)
        y = percentile(Phase.latencies_ms(pick(b)), q)
        return (label, ms(x), ms(y), ratio(x, y))

    def apps(p: Phase) -> list[dict[str, Any]]:
        return p.apps

    def cli(p: Phase) -> list[dict[str, Any]]:
        return [p.cli]

    def pair(label: str, pick: Callable[[Phase], object]) -> Row:
        return (label, str(pick(a)), str(pick(b)), "")

    rows: list[Row] = [
        pair("normal clients: requests", lambda p: f"{sum(p.statuses().values()):,}"),
        pair("  answered 200", lambda p: f"{p.statuses()['200']:,}"),
        pair("  answered otherwise", lambda p: _others(p.statuses())),
        pair("  worst expires_in served (sim)", lambda p: sim_duration(p.least_ttl)),
        latency(f"  {plan.apps} keep-alive apps: p50", apps, 0.5),
        latency("                     p99", apps, 0.99),
        latency("                     max", apps, 1.0),
        latency("  new connection each: p50", cli, 0.5),
        latency("                     p99", cli, 0.99),
        pair("refreshes (simulator log)", lambda p: sum(p.refreshes.values())),
        pair(f"  of the abuser's {len(abusers)} humans", lambda p: refreshed(p, True)),
        pair(f"  per normal human ({normal})", lambda p: f"{refreshed(p, False) / normal:.1f}"),
        pair("HaaS answers 429", lambda p: p.token_statuses[429]),
        pair("least rate budget left", lambda p: p.health.least_budget),
        pair("/v1/health samples", health),
        pair("server connections, most at once", lambda p: p.health.max_connections),
        pair("normal humans unhealthy at the end", lambda p: len(p.unhealthy)),
    ]
    width = max(len(r[0]) for r in rows)
    wide = max(16, *(len(r[1]) for r in rows), *(len(r[2]) for r in rows))
    print(
        f"\n{'':<{width}}  {'A: baseline':>{wide}}  {'B: under abuse':>{wide}}  {'B/A':>6}",
        file=out,
    )
    for label, x, y, r in rows:
        print(f"{label:<{width}}  {x:>{wide}}  {y:>{wide}}  {r:>6}", file=out)
    print(
        f"(A {a.seconds:.1f} s, B {b.seconds:.1f} s real = {sim_duration(a.sim_seconds)} and"
        f" {sim_duration(b.sim_seconds)} simulated; latency is real, expires_in simulated)",
        file=out,
    )


Row = tuple[str, str, str, str]


def abuser_section(plan: Plan, cast_: Cast, b: Phase, daemon: Daemon, out: TextIO) -> None:
    abuser = b.abuser
    assert abuser is not None
    print(
        f"\nabuser (uid {cast_.abuser.uid}, rule for {', '.join(plan.abuser_ids)}):"
        f" {abuser['requests']:,} requests on one connection"
        f" ({abuser['requests'] / b.seconds:,.0f}/s); p50 {ms(abuser['p50_us'] / 1000)},"
        f" p99 {ms(abuser['p99_us'] / 1000)}, slowest {ms(abuser['max_us'] / 1000)}",
        file=out,
    )
    for answer, n in sorted(abuser["answers"].items(), key=lambda kv: -kv[1]):
        kind, _, rest = answer.partition(" ")
        print(f"  min_ttl={kind:<6} {rest:<28} {n:>10,}", file=out)
    per_human = {h: b.refreshes[h] for h in plan.abuser_ids}
    cooldown = daemon.refresher.policy.on_demand_cooldown
    print(
        f"  refreshes of its humans in B: {per_human}; at most"
        f" {cooldown_bound(daemon, b.sim_seconds)} each allowed (one on demand per"
        f" {cooldown:g} s simulated, plus the schedule)",
        file=out,
    )
    refused = daemon.refresher.demand.refused
    print(
        "  on-demand refusals, whole run (haasd_on_demand_refused): "
        + (", ".join(f"{r.value} {n:,}" for r, n in sorted(refused.items())) or "none"),
        file=out,
    )


FLOOD_LABELS: Final = {
    "403": "403 forbidden, closed at once",
    "closed": "closed without an answer (refusals at their cap)",
    "held": "held open > 1 s (a slot taken)",
}


def flood_section(plan: Plan, b: Phase, out: TextIO) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    if not b.flooders:
        why = "--no-flood" if plan.root else "needs root to fork other uids"
        print(f"\nunruled uids: not run ({why})", file=out)
        return outcomes
    for f in b.flooders:
        outcomes.update(f["outcomes"])
    rounds = sum(f["rounds"] for f in b.flooders)
    total = sum(outcomes.values())
    print(
        f"\nunruled uids ({len(b.flooders)}, up to {plan.flood_connections} connections each"
        f" per round, {rounds:,} rounds): {total:,} connections tried"
        f" ({total / b.seconds:,.0f}/s)",
        file=out,
    )
    for outcome, n in sorted(outcomes.items(), key=lambda kv: -kv[1]):
        print(f"  {FLOOD_LABELS.get(outcome, outcome):<50} {n:>10,}", file=out)
    backlog = sum(r["backlog_full"] for r in [*b.normal, b.abuser] if r is not None)
    print(
        f"  allowed clients' connect() found the listen backlog full (EAGAIN, retried):"
        f" {backlog:,} times",
        file=out,
    )
    return outcomes


def health_section(phases: Sequence[Phase], out: TextIO) -> None:
    for p in phases:
        print(f"\n/v1/health reasons in {p.name} (polled every {HEALTH_EVERY:g} s):", file=out)
        if not p.health.reasons:
            print("  none", file=out)
        for shape, n in p.health.reasons.most_common():
            print(f"  {n:>4}x  {p.health.examples[shape]}", file=out)


def cpu_section(a: Phase, b: Phase, out: TextIO) -> None:
    line = (
        f"\nCPU, shares of one core: daemon + simulator A {a.daemon_cpu / a.seconds:.0%},"
        f" B {b.daemon_cpu / b.seconds:.0%}; normal clients A {a.cpu(a.normal)},"
        f" B {b.cpu(b.normal)}"
    )
    if b.abuser is not None:
        line += f"; abuser {b.cpu([b.abuser])}"
    if b.flooders:
        line += f"; unruled uids {b.cpu(b.flooders)}"
    print(line, file=out)


def check(plan: Plan, a: Phase, b: Phase, daemon: Daemon, flood: Counter[str]) -> Checks:
    checks = Checks()
    for p in (a, b):
        others = sum(n for s, n in p.statuses().items() if s != "200")
        checks.add(f"{p.name}: every normal request answered 200", f"{others} not", not others)
        sick = ", ".join(p.unhealthy)
        checks.add(f"{p.name}: every normal human active, no error", sick or "yes", not sick)
        rejected = p.token_statuses[429]
        checks.add(f"{p.name}: no 429 from HaaS", str(rejected), not rejected)
    bound = cooldown_bound(daemon, b.sim_seconds)
    per_human = {h: b.refreshes[h] for h in plan.abuser_ids}
    over = any(n > bound for n in per_human.values())
    checks.add(
        f"B: abuser's refreshes within the cooldown (<= {bound} each)", str(per_human), not over
    )
    assert b.abuser is not None
    answers: dict[str, int] = b.abuser["answers"]
    hung = sum(n for k, n in answers.items() if k.split()[1] in ("timeout", "closed"))
    checks.add("B: every abuser request answered", f"{hung} timed out or cut", not hung)
    served = answers.get(f"{ABUSE_KINDS[0]} 200", 0)
    checks.add(f"B: min_ttl={ABUSE_KINDS[0]} never served", str(served), not served)
    if b.flooders:
        checks.add("B: unruled uids never hold a slot", f"{flood['held']} held", not flood["held"])
    worst = f"{sim_duration(b.least_ttl)} vs {sim_duration(a.least_ttl)}"
    kept = b.least_ttl is not None and a.least_ttl is not None and b.least_ttl >= a.least_ttl - 60
    checks.add("B: worst expires_in within a minute of A's", worst, kept)
    return checks


def report(plan: Plan, cast_: Cast, a: Phase, b: Phase, daemon: Daemon, out: TextIO) -> Checks:
    side_by_side(plan, a, b, out)
    abuser_section(plan, cast_, b, daemon, out)
    flood = flood_section(plan, b, out)
    health_section((a, b), out)
    cpu_section(a, b, out)
    checks = check(plan, a, b, daemon, flood)
    checks.print(out)
    return checks


def header(plan: Plan, args: argparse.Namespace, out: TextIO) -> None:
    command = ".venv/bin/python bench/fairness.py" + (" --quick" if args.quick else "")
    command += " --no-flood" if args.no_flood else ""
    for name in ("phase", "warmup", "rate", "speed"):
        if getattr(args, name) is not None:
            command += f" --{name} {getattr(args, name):g}"
    one, five, fifteen = os.getloadavg()
    uvloop = importlib.util.find_spec("uvloop") is not None
    normal = plan.humans - plan.abuser_humans
    print("haasd fairness benchmark: an abusive peer and unruled uids beside normal apps", file=out)
    print(f"reproduce: {command}", file=out)
    print(
        f"machine:   {os.cpu_count()} CPUs, {platform.system()} {platform.machine()},"
        f" Python {platform.python_version()}, event loop {'uvloop' if uvloop else 'asyncio'},"
        f" load average {one:.2f} / {five:.2f} / {fifteen:.2f} before the run",
        file=out,
    )
    lines = [
        "daemon:    haasd.app.run (store, engine, consents, TokenServer), simulated HaaS on"
        f" loopback ({PLAN} plan, rotation on);",
        f"           ScaledClock x{plan.speed:g}"
        f" (one simulated hour per {HOUR / plan.speed:g} s); audit logging into /dev/null",
        f"humans:    {plan.humans} consented over a {plan.warmup:g} s warm-up: {normal} for"
        f" {plan.apps} apps, {plan.abuser_humans} for the abuser",
        f"apps:      {plan.apps} processes, one keep-alive connection each, {plan.rate:g}"
        " requests/s each, GET /v1/tokens/H (no min_ttl) in turn",
        f"abuser:    one connection, as fast as it can: min_ttl={ABUSE_KINDS[0]} and"
        f" min_ttl={ABUSE_KINDS[1]} in turn over its humans",
        f"unruled:   {FLOOD_UIDS} uids, {plan.flood_connections} connections each per round,"
        f" held {plan.flood_pause:g} s, again"
        if plan.flood
        else "unruled:   left out (--no-flood)"
        if plan.root
        else "unruled:   not run: not root, so no other uids (every client runs as this uid)",
        f"phases:    A (apps) {plan.phase:g} s, then B (apps + abuser"
        + (" + unruled" if plan.flood else "")
        + f") {plan.phase:g} s",
    ]
    print("\n".join(lines), file=out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="shorter phases (about 25 s)")
    parser.add_argument("--phase", type=float, default=None, help="real seconds per phase")
    parser.add_argument("--warmup", type=float, default=None, help="real seconds of onboarding")
    parser.add_argument("--rate", type=float, default=None, help="requests/s per normal app")
    parser.add_argument("--speed", type=float, default=None, help="simulated seconds per second")
    parser.add_argument(
        "--no-flood", action="store_true", help="phase B without the unruled uids (the abuser only)"
    )
    args = parser.parse_args(argv)
    plan = Plan(
        speed=args.speed or 360.0,
        humans=50,
        apps=4,
        abuser_humans=3,
        rate=args.rate or 200.0,
        warmup=args.warmup or (3.0 if args.quick else 5.0),
        phase=args.phase or (10.0 if args.quick else 20.0),
        flood_connections=64,
        flood_pause=0.1,
        root=os.geteuid() == 0,
        flood=os.geteuid() == 0 and not args.no_flood,
    )
    if min(plan.speed, plan.rate, plan.warmup, plan.phase) <= 0:
        parser.error("--phase, --warmup, --rate and --speed must be positive")
    out = sys.stdout
    header(plan, args, out)
    out.flush()
    started = time.perf_counter()
    children = Children()
    directory = Path(tempfile.mkdtemp(prefix="haasd-bench-"))
    try:
        directory.chmod(0o711)  # the clients may reach the socket, not list the directory
        cast_ = cast(plan, children)
        result: list[tuple[Phase, Phase, Daemon]] = []

        async def go() -> None:
            result.append(await bench_async(plan, cast_, directory))

        with open(os.devnull, "w", encoding="utf-8") as sink:
            configure_logging("info", "json", stream=sink)
            run_unwrapped(go)
    finally:
        children.stop()
        shutil.rmtree(directory, ignore_errors=True)
    a, b, daemon = result[0]
    checks = report(plan, cast_, a, b, daemon, out)
    print(f"\ntotal: {time.perf_counter() - started:.1f} s", file=out)
    if not checks.ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
