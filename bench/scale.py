"""Scale: one ``haasd run`` process holding N grants — time to serving, and its memory.

    .venv/bin/python bench/scale.py [--grants 100000] [--pg URL | --no-pg]

For each backend in turn — SQLite, then PostgreSQL — it seeds a store of ``--grants``
fresh grants (all written in one transaction by the store's own ``put_grants``), starts
a real ``python -m haasd run`` on it (the HaaS token URL is an unused loopback port: no
grant is due, so nothing is refreshed; what is measured is loading and serving) and
measures:

* time from the process's start until the socket answers a token request 200, and until
  ``READY=1`` (systemd's notify socket) and the ``haasd ready`` log line arrive;
* RSS (``VmRSS``) and its peak (``VmHWM``) from ``/proc/PID/status`` once every grant
  is loaded (``READY=1``; the socket serves before that);
* the same after every human's token was asked for once (one keep-alive connection).

PostgreSQL: ``--pg URL`` names a throwaway database that holds no grants yet (the bench
adds its grants and leaves them); without it the bench starts a throwaway cluster of its
own as the tests do (``tests/pg_cluster.py``: the server binaries, run as the
``postgres`` user when root, ``fsync=off``), or skips PostgreSQL and says why.
``--no-pg`` skips it.

The daemon runs as deployed: ``rich`` and ``trio``, which this virtualenv holds only for
the test tools (import-linter, the client tests) and which structlog and httpcore import
whenever they are present, are made unimportable in the daemon's process (about 7 MB of
RSS and 0.1 s of start between them); ``--with-test-packages`` leaves them importable.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import anyio

from haasd.crypto import Key, Sealer
from haasd.grants import Grant, State
from haasd.grantstore import GrantStore
from haasd.secret import Secret
from haasd.store import Store

TARGET_START: Final = 2.0  # seconds from process start to serving
TARGET_RSS: Final = 150e6  # bytes
HOUR: Final = 3600.0
DAY: Final = 86400.0
#: the discard port: nothing listens, so a request would fail at once
TOKEN_URL: Final = "http://127.0.0.1:9/token"
SCOPES: Final = (("tasks:dispatch", "status:read"), ("tasks:read",), ("calendar:write",))
START_TIMEOUT: Final = 120.0
#: token requests sent at once on the keep-alive connection
PIPELINE: Final = 32
#: installed here for the test tools only, never a dependency of haasd (see the module)
TEST_ONLY: Final = ("rich", "trio")
#: ``python -m haasd run --config CONFIG`` with the modules named in argv[1] unimportable
LAUNCH: Final = """import runpy, sys
sys.modules.update(dict.fromkeys(filter(None, sys.argv[1].split(","))))
sys.argv = ["haasd", "run", "--config", sys.argv[2]]
runpy.run_module("haasd", run_name="__main__", alter_sys=True)
"""


def human(i: int) -> str:
    return f"usr_scale_{i:07d}"


def make_grant(i: int, now: float, rng: random.Random) -> Grant:
    """Human ``i``: consented 1 to 20 days ago (no state change due), a one-hour token issued
    in the last 10 minutes (servable; its refresh 35 to 50 minutes away), served today."""
    consented = now - rng.uniform(DAY, 20 * DAY)
    issued = now - rng.uniform(0.0, 600.0)
    token = base64.urlsafe_b64encode(rng.randbytes(64)).decode().rstrip("=")
    return Grant(
        human_id=human(i),
        environment="test",
        scope=SCOPES[i % len(SCOPES)],
        access_token=Secret("haas_at_" + token[:43]),
        access_expires_at=issued + HOUR,
        refresh_token=Secret("haas_rt_" + token[43:]),
        refresh_expires_at=consented + 30 * DAY,
        consented_at=consented,
        last_refresh_at=issued,
        state=State.ACTIVE,
        next_refresh_at=issued + HOUR * rng.uniform(0.7, 0.8),
        last_served_at=now - rng.uniform(0.0, DAY / 2),
    )


async def seed(store: GrantStore, n: int) -> float:
    """Put ``n`` grants in one transaction; the seconds it took."""
    rng, now = random.Random(1), time.time()
    grants = [make_grant(i, now, rng) for i in range(n)]
    began = time.perf_counter()
    await store.put_grants(grants, what="seed the benchmark's grants")
    return time.perf_counter() - began


async def seed_sqlite(path: Path, sealer: Sealer, n: int) -> float:
    async with await Store.open(path, sealer) as store:
        return await seed(store, n)


async def seed_pg(url: str, sealer: Sealer, n: int) -> float:
    from haasd.pgstore import PgStore

    async with await PgStore.open(url, sealer, statement_timeout=600.0) as store:
        existing = len(await store.list_grants(warn=False))
        if existing:
            raise SystemExit(f"the database given with --pg holds {existing} grants already; "
                             "give an empty throwaway database")  # fmt: skip
        return await seed(store, n)


def write_config(directory: Path, store_line: str) -> Path:
    key = directory / "store.key"
    if not key.exists():
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(Key.generate().to_text())
    config = directory / "haasd.toml"
    config.write_text(f"""[haas]
environment = "test"
client_id = "bench"
client_secret = "bench-secret"
token_url = "{TOKEN_URL}"
redirect_uri = "http://127.0.0.1:8765/callback"
plan = "pro"
[store]
{store_line}
key_file = "store.key"
[socket]
path = "haasd.sock"
[log]
level = "info"
format = "json"
""")  # fmt: skip
    return config


# --- one daemon ----------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid``, in bytes."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(rest.split()[0]) * 1024
    return found


_REQUEST: Final = b"GET /v1/tokens/%s HTTP/1.1\r\nHost: haasd\r\n\r\n"


class Client:
    """One keep-alive HTTP/1.1 connection to haasd's socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.buffer = b""

    def token(self, human_id: str) -> int:
        """The status of ``GET /v1/tokens/HUMAN``."""
        return self.tokens([human_id])[0]

    def tokens(self, humans: list[str]) -> list[int]:
        """The statuses of ``GET /v1/tokens/HUMAN`` for each, the requests pipelined."""
        self.sock.sendall(b"".join(_REQUEST % h.encode() for h in humans))
        return [self._answer() for _ in humans]

    def _answer(self) -> int:
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(line.split(b":")[1]) for line in lines
                      if line.lower().startswith(b"content-length:"))  # fmt: skip
        while len(self.buffer) < length:
            self._read()
        self.buffer = self.buffer[length:]
        return int(lines[0].split()[1])

    def _read(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("haasd closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


@dataclass
class Run:
    """What one daemon's start and serving came to (seconds from the process's start)."""

    serving: float = 0.0
    ready: float | None = None
    ready_log: float | None = None
    rss_start: dict[str, int] = field(default_factory=dict)
    rss_served: dict[str, int] = field(default_factory=dict)
    serve_seconds: float = 0.0
    answered: dict[int, int] = field(default_factory=dict)
    exit_code: int | None = None
    log_errors: list[str] = field(default_factory=list)


class Watch:
    """The notify socket's READY=1 and the log's ``haasd ready``, timed as they arrive."""

    def __init__(self, directory: Path, began: float) -> None:
        self.began = began
        self.notify_path = directory / "notify"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(0.2)
        self.ready: float | None = None
        self.ready_log: float | None = None
        self.errors: list[str] = []
        self.stop = threading.Event()

    def watch_notify(self) -> None:
        while self.ready is None and not self.stop.is_set():
            with suppress(TimeoutError):
                if b"READY=1" in self.notify.recv(4096):
                    self.ready = time.perf_counter() - self.began

    def watch_log(self, stream: Iterator[str]) -> None:
        for line in stream:
            with suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == "haasd ready" and self.ready_log is None:
                    self.ready_log = time.perf_counter() - self.began
                if event.get("level") in ("warning", "error", "critical"):
                    self.errors.append(str(event.get("event")))


def wait_ready(watch: Watch, proc: subprocess.Popen[str]) -> None:
    """Poll until ``READY=1`` came: every grant is loaded."""
    deadline = time.perf_counter() + START_TIMEOUT
    while watch.ready is None and time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"haasd exited with {proc.returncode} before READY=1")
        time.sleep(0.01)


def wait_serving(sock: Path, proc: subprocess.Popen[str], first: str) -> None:
    """Poll until the socket answers ``first``'s token 200."""
    deadline = time.perf_counter() + START_TIMEOUT
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"haasd exited with {proc.returncode} before serving")
        try:
            client = Client(sock)
        except OSError:
            time.sleep(0.002)
            continue
        try:
            status = client.token(first)
        finally:
            client.close()
        if status == 200:
            return
        raise SystemExit(f"haasd answered {status} for {first}'s token")
    raise SystemExit(f"haasd did not serve within {START_TIMEOUT:g}s")


def serve_all(sock: Path, n: int) -> tuple[float, dict[int, int]]:
    """Every human's token once, in order, on one connection (``PIPELINE`` requests at a
    time): seconds and statuses."""
    answered: dict[int, int] = {}
    client = Client(sock)
    began = time.perf_counter()
    try:
        for start in range(0, n, PIPELINE):
            batch = [human(i) for i in range(start, min(n, start + PIPELINE))]
            for status in client.tokens(batch):
                answered[status] = answered.get(status, 0) + 1
    finally:
        client.close()
    return time.perf_counter() - began, answered


def run_daemon(directory: Path, config: Path, n: int, hidden: tuple[str, ...]) -> Run:
    argv = [sys.executable, "-c", LAUNCH, ",".join(hidden), str(config)]
    result = Run()
    began = time.perf_counter()
    watch = Watch(directory, began)
    env = {**os.environ, "NOTIFY_SOCKET": str(watch.notify_path)}
    proc = subprocess.Popen(argv, cwd=directory, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    threads = [
        threading.Thread(target=watch.watch_notify, daemon=True),
        threading.Thread(target=watch.watch_log, args=(proc.stderr,), daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        wait_serving(directory / "haasd.sock", proc, human(n - 1))
        result.serving = time.perf_counter() - began
        wait_ready(watch, proc)  # the socket serves while the grants load: RSS once loaded
        result.rss_start = proc_status(proc.pid)
        result.serve_seconds, result.answered = serve_all(directory / "haasd.sock", n)
        result.rss_served = proc_status(proc.pid)
        proc.send_signal(signal.SIGTERM)
        result.exit_code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        watch.stop.set()
        for thread in threads:
            thread.join(timeout=5)
        watch.notify.close()
    result.ready, result.ready_log, result.log_errors = watch.ready, watch.ready_log, watch.errors
    return result


# --- backends ------------------------------------------------------------------------------


def bench_sqlite(base: Path, n: int, hidden: tuple[str, ...]) -> tuple[float, Run, str]:
    directory = base / "sqlite"
    directory.mkdir()
    config = write_config(directory, 'path = "haasd.db"')
    seeding = anyio.run(seed_sqlite, directory / "haasd.db", _key(directory), n)
    size = (directory / "haasd.db").stat().st_size
    run = run_daemon(directory, config, n, hidden)
    return seeding, run, f"store file {size / 1e6:.1f} MB"


def bench_pg(base: Path, n: int, url: str, hidden: tuple[str, ...]) -> tuple[float, Run, str]:
    directory = base / "pg"
    directory.mkdir()
    config = write_config(directory, f'url = "{url}"')
    seeding = anyio.run(seed_pg, url, _key(directory), n)
    return seeding, run_daemon(directory, config, n, hidden), "haasd run"


def _key(directory: Path) -> Sealer:
    return Sealer(Key.from_text((directory / "store.key").read_text()))


@contextmanager
def own_cluster() -> Iterator[str | None]:
    """A throwaway cluster's database URL (tests/pg_cluster.py), or None if none can run
    (printed why)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from pg_cluster import PgCluster, PgUnavailable

    try:
        cluster = PgCluster.create()
    except PgUnavailable as exc:
        print(f"PostgreSQL skipped: {exc}")
        yield None
        return
    try:
        cluster.start()
        yield cluster.new_database().url
    finally:
        cluster.destroy()


# --- output --------------------------------------------------------------------------------


def mb(n: float) -> str:
    return f"{n / 1e6:.0f} MB"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(name: str, n: int, seeding: float, run: Run, note: str) -> bool:
    start_ok = run.serving <= TARGET_START
    peak = max(run.rss_start.get("VmHWM", 0), run.rss_served.get("VmHWM", 0))
    rss_ok = max(run.rss_served.get("VmRSS", 0), peak) <= TARGET_RSS
    served_ok = run.answered == {200: n} and run.exit_code == 0
    rows = [
        ("seeding (one transaction)", f"{seeding:.1f} s", note),
        ("start → token answered 200", f"{run.serving:.2f} s",
         f"target ≤ {TARGET_START:g} s  {verdict(start_ok)}"),
        ("start → READY=1", _secs(run.ready), ""),
        ("start → 'haasd ready' logged", _secs(run.ready_log), ""),
        ("RSS once READY=1", mb(run.rss_start.get("VmRSS", 0)),
         f"peak {mb(run.rss_start.get('VmHWM', 0))}"),
        ("RSS after every token once", mb(run.rss_served.get("VmRSS", 0)),
         f"peak {mb(peak)}; target ≤ {mb(TARGET_RSS)}  {verdict(rss_ok)}"),
        ("every token once", f"{run.serve_seconds:.1f} s",
         f"{n / run.serve_seconds:,.0f} req/s; answers {run.answered}"),
        ("exit after SIGTERM", str(run.exit_code), verdict(served_ok)),
    ]  # fmt: skip
    print(f"\n{name}, {n:,} grants")
    for label, value, comment in rows:
        print(f"  {label:<30} {value:>10}   {comment}")
    if run.log_errors:
        print(f"  warnings/errors logged: {sorted(set(run.log_errors))}")
    return start_ok and rss_ok and served_ok


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--grants", type=int, default=100_000, help="grants in each store")
    parser.add_argument("--pg", metavar="URL", help="an empty throwaway PostgreSQL database")
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    parser.add_argument("--dir", default=None, help="where the temporary files go")
    parser.add_argument("--with-test-packages", action="store_true",
                        help=f"leave {', '.join(TEST_ONLY)} importable in the daemon")  # fmt: skip
    args = parser.parse_args(argv)
    if args.grants < 1:
        parser.error("--grants must be at least 1")
    hidden = () if args.with_test_packages else TEST_ONLY
    print(f"machine: {os.cpu_count()} CPUs, {platform.system()} {platform.machine()},"
          f" Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}")  # fmt: skip
    print("daemon: " + (f"as deployed ({', '.join(hidden)} unimportable)" if hidden
                        else "with this virtualenv's test packages importable"))  # fmt: skip
    ok = True
    with tempfile.TemporaryDirectory(prefix="hdscale", dir=args.dir) as tmp:
        base = Path(tmp)
        ok &= report("SQLite", args.grants, *bench_sqlite(base, args.grants, hidden))
        if args.pg:
            ok &= report("PostgreSQL", args.grants, *bench_pg(base, args.grants, args.pg, hidden))
        elif not args.no_pg:
            with own_cluster() as url:
                if url is not None:
                    ok &= report("PostgreSQL (a throwaway cluster, fsync off)", args.grants,
                                 *bench_pg(base, args.grants, url, hidden))  # fmt: skip
    sys.exit(0 if ok else 1)


def _secs(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


if __name__ == "__main__":
    main()
