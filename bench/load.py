"""Load: 64 clients on a real ``haasd run`` while 10,000 grants refresh, HaaS failing a
fifth of the time, one abusive peer beside them.

    .venv/bin/python bench/load.py [--grants 10000] [--lifetime 300] [--seconds 240]
                                   [--clients 64] [--processes 4] [--fault-rate 0.2] [--seed 1]

The simulator (loopback, in this process; rotation and reuse detection on, a 30 s grace
window) issues tokens that live ``--lifetime`` seconds of real time — a compressed clock:
each grant is refreshed every 0.75 of that — and fails ``--fault-rate`` of the token
requests with a random 5xx (``Simulator.flaky``, seeded). ``--grants`` humans consent
first; their grants are seeded into a SQLite store with their first refreshes spread over
one cycle, and ``python -m haasd run`` starts on it. Then, for ``--seconds``:

* ``--clients`` keep-alive connections, spread over ``--processes`` client processes
  forked before anything else runs, each with one request in flight at a time, as fast
  as the daemon answers: ``GET /v1/tokens/H`` for a random human (the abuser's aside).
  Each client times every request and keeps every distinct token it was served, with
  when it was first and last served;
* an abuser — a uid of its own (root only; else this uid) with an ``[[access]]`` rule for
  3 humans — looping ``?min_ttl=86400`` (no token lives that long) and ``?min_ttl=`` 0.9 of
  the lifetime (met only just after a refresh) on one connection as fast as it can;
* a checker in this process asking 20 tokens a second and checking each at the simulator
  the moment it arrives.

After the run every token any client was served is checked at the simulator: issued, for
that human, and valid when the last request it answered was sent (haasd decided after
that, so an expired or revoked token served fails it; one that ended while its answer was
on the way — slower than the 2 s serve margin — is counted apart). It prints
requests/s, p50/p99/max latency, the answers by status, refreshes per second at the
simulator (and the failures it injected), the abuser's answers, the daemon's CPU and RSS,
health at the end, and the checks; exits 1 when a token served was already expired,
inactive or not the human's when asked for, or a grant was revoked.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import os
import platform
import random
import secrets
import selectors
import shutil
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlencode, urlsplit

import anyio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from cluster_nodes import Node  # noqa: E402
from fairness import Child, Children, Connection, _gid_used, _uid_used, unused_ids  # noqa: E402
from harness import CLIENT_ID, CLIENT_SECRET  # noqa: E402
from support import RawClient  # noqa: E402
from support_daemon import write_config, write_key  # noqa: E402

from haasd.clock import SystemClock  # noqa: E402
from haasd.crypto import Key, Sealer  # noqa: E402
from haasd.grants import Policy, new_grant  # noqa: E402
from haasd.logs import configure_logging  # noqa: E402
from haasd.simulator import Simulator  # noqa: E402
from haasd.simulator._tokenrequest import TokenRequest  # noqa: E402
from haasd.store import Store  # noqa: E402
from haasd.tokens import TokenResponse, parse_token_response  # noqa: E402

RPM: Final = 1_000_000
ABUSER_HUMANS: Final = ("usr_abuse_1", "usr_abuse_2", "usr_abuse_3")
UID_BASE: Final = 64200
CHECKS_PER_SECOND: Final = 20.0
REDIRECT_URI: Final = "https://app.example/callback"


# --- the clients (forked children; plain non-blocking sockets) --------------------------------


def bucket(us: float) -> int:
    """A latency histogram's bucket (microseconds): 10 µs wide below 1 ms, 100 µs below
    100 ms, 10 ms beyond."""
    if us < 1000:
        return int(us) // 10 * 10
    if us < 100_000:
        return int(us) // 100 * 100
    return int(us) // 10_000 * 10_000


@dataclass
class Conn:
    sock: socket.socket
    human: str = ""
    sent: float = 0.0
    sent_wall: float = 0.0
    buffer: bytes = b""


def _answer(buffer: bytes) -> tuple[int, bytes, bytes] | None:
    """(status, body, rest) once a whole answer is in ``buffer``."""
    head, sep, rest = buffer.partition(b"\r\n\r\n")
    if not sep:
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if len(rest) < length:
        return None
    return int(head.split(b" ", 2)[1]), rest[:length], rest[length:]


def hammer(path: str, seconds: float, *, conns: int, humans: int, seed: int) -> dict[str, Any]:
    """``conns`` keep-alive connections, one request in flight each, until ``seconds`` pass."""
    rng = random.Random(seed)
    selector = selectors.DefaultSelector()
    latency: Counter[int] = Counter()
    statuses: Counter[int] = Counter()
    #: token -> [human, last request sent (wall), last answer read (wall), least expires_in]
    tokens: dict[str, list[Any]] = {}

    def send(conn: Conn) -> None:
        conn.human = f"usr_load_{rng.randrange(humans):05d}"
        conn.sent, conn.sent_wall = time.perf_counter(), time.time()
        conn.sock.sendall(f"GET /v1/tokens/{conn.human} HTTP/1.1\r\nHost: h\r\n\r\n".encode())

    for _ in range(conns):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        sock.setblocking(False)
        conn = Conn(sock)
        selector.register(sock, selectors.EVENT_READ, conn)
        send(conn)
    deadline = time.perf_counter() + seconds
    open_conns = conns
    while open_conns:
        for key, _ in selector.select(timeout=5.0):
            conn = key.data
            conn.buffer += conn.sock.recv(65536)
            done = _answer(conn.buffer)
            if done is None:
                continue
            now = time.perf_counter()
            status, body, conn.buffer = done
            latency[bucket((now - conn.sent) * 1e6)] += 1
            statuses[status] += 1
            if status == 200:
                answer = json.loads(body)
                seen = tokens.setdefault(answer["access_token"], [conn.human, 0.0, 0.0, 1e9])
                seen[1], seen[2] = conn.sent_wall, time.time()
                seen[3] = min(seen[3], answer["expires_in"])
            if now < deadline:
                send(conn)
            else:
                selector.unregister(conn.sock)
                conn.sock.close()
                open_conns -= 1
    return {"latency": dict(latency), "statuses": dict(statuses), "tokens": tokens}


def abuse(path: str, seconds: float, *, kinds: tuple[int, ...]) -> dict[str, Any]:
    """The abuser: impossible and barely possible ``min_ttl`` in turn, one connection."""
    conn = Connection(path)
    answers: Counter[str] = Counter()
    latency: Counter[int] = Counter()
    targets = [(k, f"/v1/tokens/{h}?min_ttl={k}") for h in ABUSER_HUMANS for k in kinds]
    deadline, n = time.perf_counter() + seconds, 0
    while time.perf_counter() < deadline:
        kind, target = targets[n % len(targets)]
        n += 1
        t0 = time.perf_counter()
        status, body = conn.get(target)
        latency[bucket((time.perf_counter() - t0) * 1e6)] += 1
        why = "" if status in ("200", "timeout", "closed") else json.loads(body)["error"]["type"]
        answers[f"min_ttl={kind} {status} {why}".strip()] += 1
    conn.close()
    return {"requests": n, "answers": dict(answers), "latency": dict(latency)}


def quantile(hist: Counter[int], q: float) -> float:
    """The ``q`` quantile of a histogram of buckets (ms); NaN when empty."""
    total = sum(hist.values())
    if not total:
        return math.nan
    rank, seen = q * total, 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return value / 1000
    return max(hist) / 1000


# --- seeding --------------------------------------------------------------------------------


def consent_in_process(sim: Simulator, human_id: str) -> TokenResponse:
    """A human's consent as :meth:`Simulator.consent` makes it — the simulator's own
    authorize and code-exchange steps, PKCE and all — without its two loopback HTTP round
    trips: 10,000 consents take seconds, not the quarter of an hour that outlives the
    tokens of a compressed clock. Bench only: it reaches into the simulator."""
    authority = sim._authority  # noqa: SLF001 - the steps /authorize and /token run
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    query = urlencode({
        "client_id": CLIENT_ID, "redirect_uri": REDIRECT_URI, "response_type": "code",
        "scope": "status:read tasks:dispatch", "state": "s", "login_hint": human_id,
        "code_challenge": challenge, "code_challenge_method": "S256",
    })  # fmt: skip
    location = authority.authorize(query, time.time()).header("Location") or ""
    code = parse_qs(urlsplit(location).query)["code"][0]
    params = {
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "code_verifier": verifier,
    }  # fmt: skip
    reply = authority.token(TokenRequest(params=params), time.time())
    assert reply.status == 200, reply.body
    return parse_token_response(json.loads(reply.body))


async def seed(sim: Simulator, humans: list[str], store: Store, lifetime: int) -> None:
    """Every human consents; the grant goes into the store as issued up to 0.7 of a
    lifetime before its consent (never later: haasd must not think a token lives longer
    than the server made it), so the first refreshes spread over one cycle."""
    rng, grants = random.Random(1), []
    for human_id in humans:
        consented = time.time()  # just before the server issued the tokens
        answer = consent_in_process(sim, human_id)
        issued = consented - rng.uniform(0.0, 0.7 * lifetime)
        grants.append(new_grant(answer, "test", issued, Policy(), rng))
    await store.put_grants(grants)


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Run:
    args: argparse.Namespace
    base: Path
    cast: Cast
    sim: Simulator = field(init=False)
    checked: int = 0
    checked_dead: int = 0
    checked_late: int = 0
    other: Counter[str] = field(default_factory=Counter)

    @property
    def clients(self) -> list[Child]:
        return self.cast.clients

    @property
    def abuser(self) -> Child:
        return self.cast.abuser

    @property
    def abuser_uid(self) -> int:
        return self.cast.abuser_uid

    def __post_init__(self) -> None:
        self.sim = Simulator(
            SystemClock(), client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
            rotate_refresh_tokens=True, reuse_detection=True, reuse_grace=30,
            expires_in=self.args.lifetime, requests_per_minute=RPM,
        )  # fmt: skip

    def config(self) -> Path:
        rules = [f'[[access]]\nuid = {os.getuid()}\nhumans = ["*"]\nadmin = true\n']
        rules += [f'[[access]]\nuid = {u}\nhumans = ["usr_load_*"]\n' for u in self.cast.app_uids]
        if self.cast.abuser_uid != os.getuid():
            rules.append(f'[[access]]\nuid = {self.abuser_uid}\nhumans = ["usr_abuse_*"]\n')
        config = write_config(self.base, self.sim.token_url, extra="".join(rules))
        text = config.read_text().replace(
            'plan = "pro"\n', f'plan = "pro"\nrequests_per_minute = {RPM}\n'
        )
        config.write_text(text.replace('level = "info"', 'level = "warning"'))
        return config

    async def check(self, node: Node, until: float) -> None:
        """20 tokens a second, each checked at the simulator on arrival (an answer slower
        than 30 s is counted as ``timeout``, and the connection opened again)."""
        rng = random.Random(self.args.seed)
        while time.monotonic() < until:
            async with RawClient.connect(str(node.socket)) as client:
                try:
                    while time.monotonic() < until:
                        await self._check_one(client, rng)
                        await anyio.sleep(1 / CHECKS_PER_SECOND)
                except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                    self.other[type(exc).__name__] += 1

    async def _check_one(self, client: RawClient, rng: random.Random) -> None:
        human_id = f"usr_load_{rng.randrange(self.args.grants - 3):05d}"
        sent = time.time()
        await client.send(f"GET /v1/tokens/{human_id} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        reply = await client.reply(30.0)
        if reply.status != 200:
            self.other[str(reply.status)] += 1
            return
        self.checked += 1
        token = reply.json()["access_token"]
        if self.sim.validate_access_token(token, at=sent) != human_id:
            self.checked_dead += 1
        elif self.sim.validate_access_token(token) != human_id:
            self.checked_late += 1

    async def go(self) -> dict[str, Any]:
        args = self.args
        async with self.sim.running():
            key = write_key(self.base)
            humans = [f"usr_load_{n:05d}" for n in range(args.grants - 3)] + list(ABUSER_HUMANS)
            began = time.monotonic()
            sealer = Sealer(Key.from_text(key.read_text()))
            async with await Store.open(self.base / "haasd.db", sealer) as store:
                await seed(self.sim, humans, store, args.lifetime)
            print(f"seeded {len(humans)} grants in {time.monotonic() - began:.0f} s", flush=True)
            self.sim.flaky(args.fault_rate, seed=args.seed)
            node = Node("load", self.config())
            node.start()
            try:
                await node.until_serving(120)
                if self.cast.gid is not None:  # mode 0660: the clients' group
                    os.chown(node.socket, -1, self.cast.gid)
                await anyio.sleep(5)  # the first refreshes settle
                return await self.measure(node)
            finally:
                with anyio.CancelScope(shield=True):
                    code = await node.stop()
                    print(f"haasd run stopped, exit code {code}", flush=True)

    async def measure(self, node: Node) -> dict[str, Any]:
        args, sim = self.args, self.sim
        log0, cpu0, t0 = len(sim.requests_log), cpu_seconds(node.pid), time.time()
        start = time.monotonic()
        for child in [*self.clients, self.abuser]:
            child.start(str(node.socket), args.seconds)
        reports: dict[int, dict[str, Any]] = {}

        async def collect(child: Child) -> None:
            with anyio.fail_after(args.seconds + 120):
                reports[child.pid] = await child.report()

        async with anyio.create_task_group() as tg:
            tg.start_soon(self.check, node, start + args.seconds)
            for child in [*self.clients, self.abuser]:
                tg.start_soon(collect, child)
        seconds = time.monotonic() - start
        health = (await node.get("/v1/health")).json()
        return {
            "seconds": seconds,
            "clients": [reports[c.pid] for c in self.clients],
            "abuser": reports[self.abuser.pid],
            "log": sim.requests_log[log0:],
            "cpu": cpu_seconds(node.pid) - cpu0,
            "rss_mb": rss_mb(node.pid),
            "health": health,
            "t0": t0,
        }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


# --- the report ------------------------------------------------------------------------------


def report(run: Run, result: dict[str, Any]) -> list[str]:
    args, sim, seconds = run.args, run.sim, result["seconds"]
    latency: Counter[int] = Counter()
    statuses: Counter[int] = Counter()
    tokens: dict[str, list[Any]] = {}
    for client in result["clients"]:
        latency.update({int(k): v for k, v in client["latency"].items()})
        statuses.update({int(k): v for k, v in client["statuses"].items()})
        for token, (human, sent, read, ttl) in client["tokens"].items():
            seen = tokens.setdefault(token, [human, sent, read, ttl])
            seen[1], seen[2], seen[3] = max(seen[1], sent), max(seen[2], read), min(seen[3], ttl)
    total = sum(statuses.values())
    print(f"\n{args.clients} clients, {seconds:.1f} s: {total:,} requests,"
          f" {total / seconds:,.0f}/s;"
          f" latency p50 {quantile(latency, 0.5):.2f} ms, p99 {quantile(latency, 0.99):.2f} ms,"
          f" max {quantile(latency, 1.0):.1f} ms")  # fmt: skip
    print("  answers: " + ", ".join(f"{s} x{n:,}" for s, n in sorted(statuses.items())))
    log = result["log"]
    refreshes = [r for r in log if r.grant_type == "refresh_token" and r.status == 200]
    failed = sum(1 for r in log if (r.status or 0) >= 500)
    refreshed = {r.human_id for r in refreshes}
    print(f"refreshes at the simulator: {len(refreshes):,} ({len(refreshes) / seconds:.1f}/s),"
          f" {len(refreshed):,} of {args.grants:,} grants at least once; token requests"
          f" {len(log):,}, of them failed by injection (5xx) {failed:,}"
          f" ({failed / max(1, len(log)):.1%})")  # fmt: skip
    dead, unknown, wrong, in_flight = 0, 0, 0, 0
    for token, (human, sent, read, _ttl) in tokens.items():
        ends = sim.access_token_expires_at(token)
        if ends is None:
            unknown += 1
        elif sim.validate_access_token(token, at=sent) != human:
            dead += sent >= ends
            wrong += sent < ends
        elif read >= ends:
            in_flight += 1
    least = min((t[3] for t in tokens.values()), default=math.nan)
    print(f"tokens served, distinct: {len(tokens):,}; least expires_in served {least} s;"
          f" already expired when asked for {dead}, inactive or not the human's {wrong},"
          f" never issued {unknown}; ended while its answer was on the way"
          f" {in_flight}")  # fmt: skip
    print(f"checker (this process): {run.checked:,} checked; not live when asked for"
          f" {run.checked_dead}, ended on the way {run.checked_late}; other answers"
          f" {dict(run.other)}")  # fmt: skip
    abuser = result["abuser"]
    hist = Counter({int(k): v for k, v in abuser["latency"].items()})
    print(f"abuser (uid {run.abuser_uid}): {abuser['requests']:,} requests"
          f" ({abuser['requests'] / seconds:,.0f}/s),"
          f" p99 {quantile(hist, 0.99):.2f} ms")  # fmt: skip
    for answer, n in sorted(abuser["answers"].items(), key=lambda kv: -kv[1]):
        print(f"  {answer:<48} {n:>10,}")
    abused = Counter(r.human_id for r in refreshes if r.human_id in ABUSER_HUMANS)
    print(f"  refreshes of its 3 humans: {dict(abused)}")
    health = result["health"]
    print(f"daemon: CPU {result['cpu'] / seconds:.0%} of a core, RSS {result['rss_mb']:.0f} MB;"
          f" health at the end {health.get('status')} {health.get('reasons', [])}")  # fmt: skip
    print(f"simulator: reuse events {sim.stats.reuse_events}, grace replays"
          f" {sim.stats.grace_replays}, grants revoked {sim.stats.families_revoked}")  # fmt: skip
    failures = []
    if dead or wrong or unknown or run.checked_dead:
        failures.append(f"served: {dead} expired, {wrong} inactive, {unknown} unknown,"
                        f" {run.checked_dead} not live on arrival")  # fmt: skip
    if sim.stats.families_revoked or sim.stats.reuse_events:
        failures.append(f"{sim.stats.families_revoked} grants revoked")
    return failures


@dataclass
class Cast:
    """The client processes (an app each, a uid of its own when root) and the abuser."""

    clients: list[Child]
    abuser: Child
    app_uids: list[int]
    abuser_uid: int
    gid: int | None


def fork_clients(args: argparse.Namespace, children: Children) -> Cast:
    """The client processes and the abuser, forked before anything else runs. Each uid
    may hold 64 connections (``Limits.max_connections_per_uid``): with root every client
    process is an app with a uid of its own; without, all share this uid with the checker,
    so at most 63 client connections."""
    root = os.geteuid() == 0
    if not root:
        args.clients = min(args.clients, 63)
    per = [args.clients // args.processes + (i < args.clients % args.processes)
           for i in range(args.processes)]  # fmt: skip
    uids = unused_ids(args.processes + 1, UID_BASE, _uid_used) if root else []
    gid = unused_ids(1, UID_BASE, _gid_used)[0] if root else None
    clients = [
        children.fork(f"app {i}", uids[i] if root else None, gid,
                      partial(_hammer, conns=n, humans=args.grants - 3, seed=args.seed + i))
        for i, n in enumerate(per)
    ]  # fmt: skip
    abuser_uid = uids[-1] if root else os.getuid()
    kinds = (86400, int(0.9 * args.lifetime))
    abuser = children.fork("abuser", abuser_uid if root else None, gid,
                           partial(_abuse, kinds=kinds))  # fmt: skip
    return Cast(clients, abuser, uids[:-1], abuser_uid, gid)


def _hammer(path: str, seconds: float, *, conns: int, humans: int, seed: int) -> dict[str, Any]:
    return hammer(path, seconds, conns=conns, humans=humans, seed=seed)


def _abuse(path: str, seconds: float, *, kinds: tuple[int, ...]) -> dict[str, Any]:
    return abuse(path, seconds, kinds=kinds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grants", type=int, default=10_000)
    parser.add_argument("--lifetime", type=int, default=300, help="token lifetime, seconds")
    parser.add_argument("--seconds", type=float, default=240.0, help="length of the run")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--processes", type=int, default=4, help="client processes")
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"reproduce: .venv/bin/python {' '.join(['bench/load.py', *sys.argv[1:]])}\n"
          f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, load average"
          f" {' / '.join(f'{x:.2f}' for x in os.getloadavg())}\n{args.grants:,} grants, tokens"
          f" of {args.lifetime} s (a refresh every {0.75 * args.lifetime:g} s each), HaaS"
          f" failing {args.fault_rate:.0%} (seed {args.seed}), {args.clients} clients in"
          f" {args.processes} processes, {args.seconds:g} s", flush=True)  # fmt: skip
    children = Children()
    base = Path(tempfile.mkdtemp(prefix="hdld", dir="/tmp"))
    try:
        base.chmod(0o711)  # the abuser's uid reaches the socket, not the rest
        cast = fork_clients(args, children)
        configure_logging("error", "console", stream=sys.stderr)
        run = Run(args, base, cast)
        result = anyio.run(run.go)
    finally:
        children.stop()
        shutil.rmtree(base, ignore_errors=True)
    failures = report(run, result)
    for failure in failures:
        print(f"FAIL {failure}")
    print("PASS: no expired or inactive token served" if not failures else "", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
