"""Socket-server benchmark: ``GET /v1/tokens`` from haasd against the floor.

At each of ``--connections`` (default 1, 16 and 64 concurrent keep-alive connections) it
drives ``GET /v1/tokens/usr_bench_1`` against, side by side:

* **haasd** — the real :class:`~haasd.server.TokenServer` on a real Unix socket from
  :func:`~haasd.server.open_listener`, in a process of its own, with audit logging on
  (:func:`haasd.logs.configure_logging`, JSON, into ``/dev/null``). Behind it sits a small
  in-memory :class:`~haasd.server.TokenService` holding one fresh grant in a dict: the
  real :class:`~haasd.refresher.Refresher` needs a store and the network, and the
  server's fast path asks the service only ``grant()`` and ``mark_served()`` anyway;
* **the floor** — a bare anyio Unix-socket server on the same event loop, in a process of
  its own, that answers every request head with haasd's own answer, captured once.

The load comes from a small C client (``loadgen.c`` next to this file: one thread, epoll,
one request in flight per connection, no pipelining, per-request latency) that is built
with gcc into a temporary directory at every run and runs in a process of its own; it
reports its own CPU time and the server's for the measured window, so the output shows
which side was the bottleneck. haasd and the floor take turns (``--rounds`` rounds,
the order flipping each round); the figures are the medians of the rounds.

Run: ``.venv/bin/python bench/socket_server.py [--seconds 3] [--connections 1,16,64]``
(about a minute with the defaults). Exits 2 when gcc is missing, 1 when a run fails.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

import anyio
import anyio.abc

from haasd.clock import SystemClock
from haasd.config import SocketConfig
from haasd.errors import TokenUnavailableError, UnknownHumanError
from haasd.events import EventBus
from haasd.grantpack import Times, times_of
from haasd.grants import Grant, Policy
from haasd.health import Health
from haasd.logs import configure_logging
from haasd.secret import Secret
from haasd.server import Limits, TokenServer, open_listener

HERE: Final = Path(__file__).resolve().parent
LOADGEN_SOURCE: Final = HERE / "loadgen.c"
HUMAN_ID: Final = "usr_bench_1"
TARGET: Final = f"/v1/tokens/{HUMAN_ID}"
#: byte for byte what loadgen.c sends
REQUEST: Final = f"GET {TARGET} HTTP/1.1\r\nHost: haasd\r\n\r\n".encode("ascii")
HEAD_END: Final = b"\r\n\r\n"
WARMUP: Final = 0.5
READY: Final = "ready"
START_TIMEOUT: Final = 30.0
#: the targets this server was built to
TARGET_RATIO_16: Final = 0.4
TARGET_P99_16_MS: Final = 3.0
TARGET_P99_1_MS: Final = 0.5
#: a load generator above this share of one core may be what limits the figures
LOADGEN_BUSY: Final = 0.8
#: other work beyond this share of one core during a run skews the figures
OTHERS_BUSY: Final = 0.2


# --- the servers (each runs as ``socket_server.py --serve KIND`` in a process of its own) ---


class BenchService:
    """A :class:`~haasd.server.TokenService` over a dict of fresh grants.

    ``mark_served`` does what the Refresher's does on the fast path (look the grant up,
    note the time); the slow paths are never reached here, since the grant has an hour.
    """

    def __init__(self, grants: Iterable[Grant]) -> None:
        self.events = EventBus()
        self.clock = SystemClock()
        self.policy = Policy()
        self._grants = {g.human_id: g for g in grants}
        self._last_served: dict[str, float] = {}

    def grant(self, human_id: str) -> Grant | None:
        return self._grants.get(human_id)

    async def peek(self, human_id: str) -> Grant | None:
        return self._grants.get(human_id)

    def grants(self) -> Iterable[Grant]:
        return self._grants.values()

    def grant_times(self) -> Iterable[Times]:
        return [times_of(grant) for grant in self.grants()]

    def mark_served(self, grant: Grant, now: float) -> None:
        current = self._grants.get(grant.human_id)
        if current is not None:
            self._last_served[current.human_id] = now

    async def ensure_fresh(
        self, human_id: str, min_ttl: float, *, wait: float = 0.0, peer: int | None = None
    ) -> Grant:
        await anyio.lowlevel.checkpoint()
        grant = self._grants.get(human_id)
        if grant is None:
            raise UnknownHumanError(human_id)
        if grant.access_expires_at - self.clock.time() <= min_ttl:
            raise TokenUnavailableError(human_id, "the benchmark does not refresh", 60.0)
        return grant

    async def refresh_now(
        self, human_id: str, *, wait: float = 0.0, peer: int | None = None
    ) -> Grant:
        await anyio.lowlevel.checkpoint()
        raise TokenUnavailableError(human_id, "the benchmark does not refresh", 60.0)

    async def delete(self, human_id: str) -> bool:
        await anyio.lowlevel.checkpoint()
        return self._grants.pop(human_id, None) is not None

    def health(self) -> Health:
        return Health()


def bench_grant(now: float) -> Grant:
    """A fresh grant: the access token has an hour left, the refresh token 30 days."""
    return Grant(
        human_id=HUMAN_ID,
        environment="test",
        scope=("tasks:dispatch", "status:read"),
        access_token=Secret("haas_at_bench_" + "0123456789abcdef" * 3),
        access_expires_at=now + 3600.0,
        refresh_token=Secret("haas_rt_bench_" + "fedcba9876543210" * 3),
        refresh_expires_at=now + 30 * 86400.0,
        consented_at=now,
        last_refresh_at=now,
    )


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            scope.cancel()
            return


def _ready() -> None:
    print(READY, flush=True)


async def serve_haasd(path: Path, limits: Limits) -> None:
    service = BenchService([bench_grant(time.time())])
    server = TokenServer(service, [], limits=limits)  # no rules: this uid is admin
    listener = await open_listener(SocketConfig(path, 0o600), environ={})
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, tg.cancel_scope)
            await tg.start(server.serve, listener)
            _ready()
    finally:
        await listener.aclose()


async def serve_floor(path: Path, answer: bytes) -> None:
    """The floor: read, and for each request head in what came, send ``answer``."""

    async def connection(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            pending = b""
            try:
                while True:
                    pending += await stream.receive()
                    heads = pending.count(HEAD_END)
                    if heads:
                        pending = pending[pending.rindex(HEAD_END) + len(HEAD_END) :]
                        await stream.send(answer * heads)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return  # the load generator left, maybe with a request in flight

    listener = await anyio.create_unix_listener(path)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(_stop_on_signal, tg.cancel_scope)
        tg.start_soon(listener.serve, connection)
        _ready()


def serve(args: argparse.Namespace) -> None:
    """The ``--serve`` entry point: one server until SIGTERM."""
    path = Path(args.socket)
    options: dict[str, Any] = {"use_uvloop": use_uvloop(args)}
    if args.serve == "haasd":
        # the daemon's logging: JSON, redacted, info level (audit lines on), into the void
        with open(os.devnull, "w", encoding="utf-8") as sink:
            configure_logging("info", "json", stream=sink)
            limits = Limits(
                audit_window=args.audit_window,
                max_connections_per_uid=args.max_per_uid,
                max_connections=max(Limits().max_connections, args.max_per_uid),
            )
            anyio.run(serve_haasd, path, limits, backend_options=options)
    else:
        answer = Path(args.answer).read_bytes()
        anyio.run(serve_floor, path, answer, backend_options=options)


# --- the orchestra -------------------------------------------------------------------------


def use_uvloop(args: argparse.Namespace) -> bool:
    return not args.no_uvloop and importlib.util.find_spec("uvloop") is not None


@dataclass
class Server:
    """A server process (haasd or the floor) on its socket."""

    name: str
    process: subprocess.Popen[bytes]
    socket: Path

    @classmethod
    def start(cls, name: str, path: Path, args: Sequence[str]) -> Server:
        command = [sys.executable, str(Path(__file__).resolve()), "--serve", name]
        command += ["--socket", str(path), *args]
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        server = cls(name, process, path)
        try:
            server._wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_ready(self) -> None:
        out = self.process.stdout
        assert out is not None
        with selectors.DefaultSelector() as sel:
            sel.register(out, selectors.EVENT_READ)
            if not sel.select(START_TIMEOUT):
                raise SystemExit(f"FAIL: the {self.name} server did not start")
        if out.readline().decode().strip() != READY:
            raise SystemExit(f"FAIL: the {self.name} server failed to start (see above)")

    @property
    def pid(self) -> int:
        return self.process.pid

    def memory(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in bytes."""
        found: dict[str, int] = {}
        with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
            for line in status:
                name, _, rest = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    found[name] = int(rest.split()[0]) * 1024
        return found["VmRSS"], found["VmHWM"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def build_loadgen(directory: Path) -> Path:
    """Compile loadgen.c into ``directory``; exit 2 when there is no gcc."""
    gcc = shutil.which("gcc")
    if gcc is None:
        print(
            "gcc not found: this benchmark builds its C load generator at run time"
            " (install gcc, e.g. apt-get install gcc)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    binary = directory / "loadgen"
    command = [gcc, "-O2", "-Wall", "-Wextra", "-o", str(binary), str(LOADGEN_SOURCE)]
    built = subprocess.run(command, capture_output=True, text=True, check=False)
    if built.returncode != 0:
        raise SystemExit(f"FAIL: building the load generator:\n{built.stderr}")
    return binary


def capture_answer(path: Path) -> bytes:
    """haasd's whole answer to :data:`REQUEST`, read over the socket; a 200 or exit."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5.0)
        sock.connect(str(path))
        sock.sendall(REQUEST)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise SystemExit(f"FAIL: haasd closed the connection after {data!r}")
            data += chunk
            head, found, _ = data.partition(HEAD_END)
            if not found:
                continue
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(data) >= len(head) + len(HEAD_END) + length:
                break
    if not data.startswith(b"HTTP/1.1 200 "):
        raise SystemExit(f"FAIL: haasd did not answer 200: {data!r}")
    return data


@dataclass(frozen=True)
class Sample:
    """One load-generator run."""

    requests: int
    window: float
    rps: float
    p50_us: float
    p99_us: float
    loadgen_cpu: float  # share of one core over the window
    server_cpu: float  # share of one core over the window
    others_cpu: float  # the rest of the machine's busy time, in shares of one core


def run_load(loadgen: Path, server: Server, conns: int, seconds: float) -> Sample:
    command = [str(loadgen), str(server.socket), str(conns), str(WARMUP), str(seconds)]
    command += [TARGET, str(server.pid)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + WARMUP + 60, check=False
    )
    if done.returncode != 0:
        why = done.stderr.strip() or f"the load generator exited with {done.returncode}"
        raise SystemExit(f"FAIL: load on {server.name} at {conns} conns: {why}")
    fields = dict(pair.split("=", 1) for pair in done.stdout.split())
    window = float(fields["seconds"])
    loadgen_cpu = float(fields["loadgen_cpu_s"]) / window
    server_cpu = float(fields["server_cpu_s"]) / window
    return Sample(
        requests=int(fields["requests"]),
        window=window,
        rps=float(fields["rps"]),
        p50_us=float(fields["p50_us"]),
        p99_us=float(fields["p99_us"]),
        loadgen_cpu=loadgen_cpu,
        server_cpu=server_cpu,
        others_cpu=max(0.0, float(fields["machine_busy_s"]) / window - server_cpu - loadgen_cpu),
    )


@dataclass(frozen=True)
class Summary:
    """Medians over the rounds of one server at one connection count."""

    samples: tuple[Sample, ...]

    @property
    def rps(self) -> float:
        return statistics.median(s.rps for s in self.samples)

    @property
    def p50_ms(self) -> float:
        return statistics.median(s.p50_us for s in self.samples) / 1e3

    @property
    def p99_ms(self) -> float:
        return statistics.median(s.p99_us for s in self.samples) / 1e3

    @property
    def server_cpu(self) -> float:
        return statistics.median(s.server_cpu for s in self.samples)

    @property
    def loadgen_cpu(self) -> float:
        return statistics.median(s.loadgen_cpu for s in self.samples)

    @property
    def others_cpu(self) -> float:
        return statistics.median(s.others_cpu for s in self.samples)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def event_loop(args: argparse.Namespace) -> str:
    if use_uvloop(args):
        return f"uvloop {importlib.metadata.version('uvloop')}"
    return "asyncio" + (" (uvloop not installed)" if not args.no_uvloop else "")


def header(args: argparse.Namespace, conns: Sequence[int], out: TextIO) -> None:
    command = (
        f".venv/bin/python bench/socket_server.py --seconds {args.seconds:g}"
        f" --connections {','.join(map(str, conns))} --rounds {args.rounds}"
        + (f" --audit-window {args.audit_window:g}" if args.audit_window != 1.0 else "")
        + (" --no-uvloop" if args.no_uvloop else "")
    )
    one, five, fifteen = os.getloadavg()
    print("haasd socket-server benchmark: GET /v1/tokens, haasd against the floor", file=out)
    print(f"reproduce: {command}", file=out)
    print(
        f"machine:   {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable),"
        f" {cpu_model()}, {platform.system()} {platform.release()} {platform.machine()}",
        file=out,
    )
    print(
        f"           Python {platform.python_version()}, event loop {event_loop(args)},"
        f" anyio {importlib.metadata.version('anyio')},"
        f" httptools {importlib.metadata.version('httptools')}",
        file=out,
    )
    print(
        f"           load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min"
        " before the run; other work skews every figure)",
        file=out,
    )


def describe(args: argparse.Namespace, answer: bytes, seconds: float, out: TextIO) -> None:
    head = answer.partition(HEAD_END)[0].decode("latin-1").split("\r\n")
    window = (
        "every handout on its own line"
        if args.audit_window == 0
        else f"repeats of a token on a connection within {args.audit_window:g} s share a line"
    )
    lines = [
        f"request:   GET {TARGET} (keep-alive, one in flight per connection)",
        "haasd:     TokenServer on open_listener's socket, own process; default Limits"
        f" (but {args.max_per_uid} connections per uid,",
        "           so a run's closing connections never count against the next);"
        " no [[access]] rules (this uid is admin)",
        f"           audit logging on: configure_logging('info', 'json') into /dev/null; {window}",
        "service:   a TokenService over a dict holding one fresh Grant — not the real"
        " Refresher, which needs a",
        "           store and the network; the fast path asks only grant() and mark_served()",
        "floor:     bare anyio Unix-socket server, same event loop, own process; answers each"
        " request head with",
        f"           haasd's answer captured once: {len(answer)} bytes, {' | '.join(head)}",
        f"load:      C epoll client (loadgen.c, built now with gcc -O2), own process;"
        f" {WARMUP:g} s warm-up then {seconds:g} s",
        f"           measured per run; {args.rounds} rounds, haasd and floor alternating;"
        " figures are medians of the rounds",
    ]
    print("\n".join(lines), file=out)


def report(
    conns: Sequence[int],
    results: dict[tuple[str, int], list[Sample]],
    out: TextIO,
) -> dict[int, tuple[Summary, Summary]]:
    summaries: dict[int, tuple[Summary, Summary]] = {}
    print(
        f"\n{'conns':>5}  {'server':<11} {'req/s':>8}  {'each round':<24}"
        f" {'p50':>9} {'p99':>9}  {'server CPU':>10}  {'loadgen CPU':>11}  {'others':>6}",
        file=out,
    )
    for n in conns:
        haasd = Summary(tuple(results["haasd", n]))
        floor = Summary(tuple(results["floor", n]))
        summaries[n] = (haasd, floor)
        for name, s in (("haasd", haasd), ("floor", floor)):
            rounds = " ".join(f"{x.rps:,.0f}" for x in s.samples)
            print(
                f"{n:>5}  {name:<11} {s.rps:>8,.0f}  {rounds:<24}"
                f" {s.p50_ms:>6.3f} ms {s.p99_ms:>6.3f} ms  {s.server_cpu:>10.0%}"
                f"  {s.loadgen_cpu:>11.0%}  {s.others_cpu:>6.0%}",
                file=out,
            )
        paired = " ".join(
            f"{h.rps / f.rps:.2f}x" for h, f in zip(haasd.samples, floor.samples, strict=True)
        )
        print(
            f"{'':>5}  {'haasd/floor':<11} {haasd.rps / floor.rps:>7.2f}x  {paired:<24}"
            f" {haasd.p50_ms / floor.p50_ms:>7.2f}x {haasd.p99_ms / floor.p99_ms:>8.2f}x",
            file=out,
        )
    print(
        "(haasd/floor: the ratio of the medians; each round: the ratio within the round,"
        " whose two runs were back to back.\n CPU: shares of one core over the measured"
        " window, medians of the rounds; the servers are single-threaded.\n others: the rest"
        " of the machine's busy time meanwhile: other processes, unattributed kernel work)",
        file=out,
    )
    return summaries


def targets(summaries: dict[int, tuple[Summary, Summary]], out: TextIO) -> None:
    print("\ntargets (audit logging on):", file=out)
    rows: list[tuple[str, str, str]] = []
    if 16 in summaries:
        haasd, floor = summaries[16]
        ratio = haasd.rps / floor.rps
        rows.append(
            (
                f"16 conns: throughput >= {TARGET_RATIO_16}x floor",
                f"{ratio:.2f}x",
                verdict(ratio >= TARGET_RATIO_16),
            )
        )
        rows.append(
            (
                f"16 conns: p99 < {TARGET_P99_16_MS:g} ms",
                f"{haasd.p99_ms:.3f} ms",
                verdict(haasd.p99_ms < TARGET_P99_16_MS),
            )
        )
    else:
        rows.append(("16 conns: throughput and p99", "not measured", "-"))
    if 1 in summaries:
        haasd = summaries[1][0]
        rows.append(
            (
                f"1 conn:   p99 < {TARGET_P99_1_MS:g} ms",
                f"{haasd.p99_ms:.3f} ms",
                verdict(haasd.p99_ms < TARGET_P99_1_MS),
            )
        )
    else:
        rows.append(("1 conn: p99", "not measured", "-"))
    for label, value, mark in rows:
        print(f"  {label:<38} {value:>10}  {mark}", file=out)


def bench(args: argparse.Namespace, conns: Sequence[int], out: TextIO) -> None:
    header(args, conns, out)
    started = time.perf_counter()
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="haasd-bench-") as tmp:
        directory = Path(tmp)
        loadgen = build_loadgen(directory)
        try:
            common = ["--no-uvloop"] if args.no_uvloop else []
            haasd = Server.start(
                "haasd",
                directory / "haasd.sock",
                [
                    *common,
                    "--audit-window",
                    repr(args.audit_window),
                    "--max-per-uid",
                    str(args.max_per_uid),
                ],
            )
            servers.append(haasd)
            answer = capture_answer(haasd.socket)
            (directory / "answer").write_bytes(answer)
            floor = Server.start(
                "floor",
                directory / "floor.sock",
                [*common, "--answer", str(directory / "answer")],
            )
            servers.append(floor)
            if capture_answer(floor.socket) != answer:
                raise SystemExit("FAIL: the floor does not answer haasd's bytes")
            rss_start = haasd.memory()[0]
            describe(args, answer, args.seconds, out)

            results: dict[tuple[str, int], list[Sample]] = {}
            for r in range(args.rounds):
                for n in conns:
                    pair = (haasd, floor) if r % 2 == 0 else (floor, haasd)
                    for server in pair:
                        sample = run_load(loadgen, server, n, args.seconds)
                        results.setdefault((server.name, n), []).append(sample)
            rss_end, hwm = haasd.memory()
        finally:
            for server in servers:
                server.stop()

    summaries = report(conns, results, out)
    targets(summaries, out)
    busiest = max(s.loadgen_cpu for samples in results.values() for s in samples)
    print(
        f"\nload generator: at most {busiest:.0%} of one core in any run"
        + (
            " — near a full core: it may be what limits these figures"
            if busiest > LOADGEN_BUSY
            else " (not the bottleneck)"
        ),
        file=out,
    )
    crowded = max(s.others_cpu for samples in results.values() for s in samples)
    if crowded > OTHERS_BUSY:
        print(
            f"WARNING: other work took up to {crowded:.0%} of a core during a run;"
            " the figures are lower than on a quiet machine",
            file=out,
        )
    print(
        f"haasd server RSS: {mb(rss_start)} after start, {mb(rss_end)} after the runs"
        f" (peak {mb(hwm)})",
        file=out,
    )
    print(f"total: {time.perf_counter() - started:.1f} s", file=out)


def parse_connections(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("connection counts must be at least 1")
    return values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="measured seconds per run (after warm-up)"
    )
    parser.add_argument(
        "--connections", type=parse_connections, default=[1, 16, 64], help="e.g. 1,16,64"
    )
    parser.add_argument("--rounds", type=int, default=3, help="runs per server and count")
    parser.add_argument(
        "--audit-window",
        type=float,
        default=Limits().audit_window,
        help="haasd's Limits.audit_window (0: an audit line per token handed out)",
    )
    parser.add_argument("--no-uvloop", action="store_true", help="plain asyncio event loop")
    # the server processes
    parser.add_argument("--serve", choices=("haasd", "floor"), help=argparse.SUPPRESS)
    parser.add_argument("--socket", help=argparse.SUPPRESS)
    parser.add_argument("--answer", help=argparse.SUPPRESS)
    parser.add_argument("--max-per-uid", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args)
        return
    if args.seconds <= 0 or args.rounds < 1 or args.audit_window < 0:
        parser.error("--seconds and --audit-window must be positive, --rounds at least 1")
    conns: list[int] = args.connections
    args.max_per_uid = max(Limits().max_connections_per_uid, 2 * max(conns))
    bench(args, conns, sys.stdout)


if __name__ == "__main__":
    main()
