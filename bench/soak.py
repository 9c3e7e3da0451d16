"""Soak: a real ``haasd run`` on each backend for a long while; does anything grow?

    .venv/bin/python bench/soak.py [--minutes 30] [--backends sqlite,postgresql]
                                   [--grants 500] [--lifetime 120] [--rate 50]

For each backend — SQLite, and PostgreSQL on a throwaway cluster of its own
(``tests/pg_cluster.py``, ``fsync=off``) — it seeds ``--grants`` grants whose tokens the
simulator (loopback, rotation and reuse detection on, a 30 s grace window) issues for
``--lifetime`` seconds of real time, their first refreshes spread over one cycle, starts
``python -m haasd run`` on the store, and keeps a steady load on its socket: ``--clients``
keep-alive connections asking ``--rate`` token requests per second in all, each for a
random human, every token served checked at the simulator (live, and this human's).
Every ``--interval`` seconds (10) it samples the daemon's RSS (``VmRSS``), its open file
descriptors (``/proc/PID/fd``), its threads, and its database connections (PostgreSQL:
``pg_stat_activity`` rows on its database; SQLite: descriptors open on the store's
files), beside the requests answered, the refreshes made and anything wrong.

The backends run side by side in this one process (two simulators, two daemons, two
loads), so a 30-minute soak of both takes 30 minutes. It writes ``soak-BACKEND.csv`` per
backend and ``soak.png`` (RSS, descriptors, database connections over time, one line
per backend) into ``--out`` (default ``docs/``), and prints for each series its level
and its slope per hour by least squares over the samples after the warm-up (the first
tenth of the run, at least a minute), and its drift: the median of the last third of
those samples minus the median of the first third. A series is *flat* when its drift is within
2 % of its level (RSS) or within one (descriptors, connections, threads).
Exits 1 if a series is not flat, a request failed, or a dead token was served.
``--from-csv`` judges and draws again from the CSVs in ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from cluster_nodes import Leases, Node, node_config  # noqa: E402
from harness import CLIENT_ID, CLIENT_SECRET  # noqa: E402
from pg_cluster import PgCluster, PgUnavailable  # noqa: E402
from support import RawClient  # noqa: E402
from support_daemon import write_config, write_key  # noqa: E402

from haasd.clock import SystemClock  # noqa: E402
from haasd.crypto import Key, Sealer  # noqa: E402
from haasd.grants import Grant, Policy, new_grant  # noqa: E402
from haasd.grantstore import GrantStore  # noqa: E402
from haasd.logs import configure_logging  # noqa: E402
from haasd.simulator import Simulator  # noqa: E402
from haasd.store import Store  # noqa: E402
from haasd.tokens import parse_token_response  # noqa: E402

RPM: Final = 1_000_000
BACKENDS: Final = ("sqlite", "postgresql")
COLUMNS: Final = (
    "seconds", "rss_mb", "fds", "db_connections", "threads",
    "requests", "refreshes", "failed", "dead_served",
)  # fmt: skip
#: the series judged flat, and the drift per hour allowed: a share of the level, or a count
FLAT: Final = {"rss_mb": ("share", 0.02), "fds": ("count", 1.0),
               "db_connections": ("count", 1.0), "threads": ("count", 1.0)}  # fmt: skip


@dataclass
class Load:
    """What the clients saw."""

    requests: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    dead: int = 0

    def fail(self, why: str) -> None:
        self.failed[why] = self.failed.get(why, 0) + 1


@dataclass
class Soak:
    """One backend's daemon, its simulator, its load and its samples."""

    backend: str
    node: Node
    sim: Simulator
    humans: list[str]
    store_files: Path
    pg_db: str | None
    pg_admin_url: str | None
    load: Load = field(default_factory=Load)
    rows: list[dict[str, float]] = field(default_factory=list)

    async def db_connections(self) -> int:
        if self.pg_db is not None and self.pg_admin_url is not None:
            rows = await Leases(self.pg_admin_url).query(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.pg_db,)
            )
            return int(rows[0][0])
        return len(open_files(self.node.pid, str(self.store_files)))

    async def sample(self, started: float) -> dict[str, float]:
        pid = self.node.pid
        status = proc_status(pid)
        row = {
            "seconds": round(time.monotonic() - started, 1),
            "rss_mb": round(int(status["VmRSS"].split()[0]) / 1024, 2),
            "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "db_connections": await self.db_connections(),
            "threads": int(status["Threads"]),
            "requests": self.load.requests,
            "refreshes": sum(self.sim.stats.refreshes.values()),
            "failed": sum(self.load.failed.values()),
            "dead_served": self.load.dead,
        }
        self.rows.append(row)
        return row


def proc_status(pid: int) -> dict[str, str]:
    """``/proc/PID/status`` as a dict."""
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":", 1) for line in text.splitlines())


def open_files(pid: int, prefix: str) -> list[str]:
    """What ``pid``'s descriptors point at that starts with ``prefix``."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(prefix):
            found.append(target)
    return found


async def seed(sim: Simulator, humans: list[str], store: GrantStore, lifetime: int) -> None:
    """Every human consents at the simulator; the grants go into the store as if issued
    up to 0.7 of a lifetime before the consent (never later: haasd must not think a token
    lives longer than the server made it), so the first refreshes spread over one cycle."""
    answers = {}
    limit = anyio.Semaphore(16)

    async def consent(human_id: str) -> None:
        async with limit:
            consented = time.time()  # just before the server issued the tokens
            answers[human_id] = (consented, parse_token_response(await sim.consent(human_id)))

    async with anyio.create_task_group() as tg:
        for human_id in humans:
            tg.start_soon(consent, human_id)
    rng = random.Random(1)
    grants: list[Grant] = []
    for human_id in humans:
        consented, answer = answers[human_id]
        issued = consented - rng.uniform(0.0, 0.7 * lifetime)
        grants.append(new_grant(answer, "test", issued, Policy(), rng))
    await store.put_grants(grants)


def make_sim(lifetime: int) -> Simulator:
    return Simulator(
        SystemClock(), client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
        rotate_refresh_tokens=True, reuse_detection=True, reuse_grace=30,
        expires_in=lifetime, requests_per_minute=RPM,
    )  # fmt: skip


async def prepare(
    backend: str, base: Path, sim: Simulator, args: argparse.Namespace, pg: PgCluster | None
) -> Soak:
    directory = base / backend
    directory.mkdir()
    key = write_key(directory)
    sealer = Sealer(Key.from_text(key.read_text()))
    humans = [f"usr_soak_{n:05d}" for n in range(args.grants)]
    if backend == "postgresql":
        assert pg is not None
        db = pg.new_database()
        config = node_config(directory / "node", key, sim.token_url, db.socket_url,
                             lease=15.0, rpm=RPM)  # fmt: skip
        from haasd.pgstore import PgStore

        async with await PgStore.open(db.socket_url, sealer) as store:
            await seed(sim, humans, store, args.lifetime)
        return Soak(backend, Node(backend, config), sim, humans, directory, db.name,
                    pg.socket_url_for("postgres"))  # fmt: skip
    config = write_config(directory, sim.token_url)
    text = config.read_text().replace(
        'plan = "pro"\n', f'plan = "pro"\nrequests_per_minute = {RPM}\n'
    )
    config.write_text(text.replace('level = "info"', 'level = "warning"'))
    async with await Store.open(directory / "haasd.db", sealer) as store:
        await seed(sim, humans, store, args.lifetime)
    return Soak(backend, Node(backend, config), sim, humans, directory / "haasd.db", None, None)


async def client(soak: Soak, rate: float, until: float, rng: random.Random) -> None:
    """One keep-alive connection at ``rate`` requests/s; each token checked at the
    simulator the moment it arrives (the serve margin leaves it 2 s at least)."""
    interval, next_at = 1.0 / rate, time.monotonic()
    async with RawClient.connect(str(soak.node.socket)) as conn:
        while (now := time.monotonic()) < until:
            if next_at > now:
                await anyio.sleep(next_at - now)
            next_at = max(next_at + interval, time.monotonic() - 1.0)
            human_id = rng.choice(soak.humans)
            reply = await conn.request("GET", f"/v1/tokens/{human_id}")
            soak.load.requests += 1
            if reply.status != 200:
                soak.load.fail(str(reply.status))
                continue
            token = reply.json()["access_token"]
            if soak.sim.validate_access_token(token) != human_id:
                soak.load.dead += 1


async def run_soak(soak: Soak, args: argparse.Namespace, out: Path) -> None:
    soak.node.start()
    await soak.node.until_serving(120)
    started = time.monotonic()
    until = started + args.minutes * 60
    rng = random.Random(7)
    print(f"{soak.backend}: serving (pid {soak.node.pid})", flush=True)
    try:
        async with anyio.create_task_group() as tg:
            for _ in range(args.clients):
                rate = args.rate / args.clients
                tg.start_soon(client, soak, rate, until, random.Random(rng.random()))
            while time.monotonic() < until:
                row = await soak.sample(started)
                write_csv(out / f"soak-{soak.backend}.csv", soak.rows)
                if len(soak.rows) % 6 == 1:
                    print(f"{soak.backend:>10} {row['seconds']:7.0f}s  rss {row['rss_mb']:.1f} MB"
                          f"  fds {row['fds']:.0f}  db {row['db_connections']:.0f}"
                          f"  requests {row['requests']:.0f}  refreshes {row['refreshes']:.0f}"
                          f"  failed {row['failed']:.0f}  dead {row['dead_served']:.0f}",
                          flush=True)  # fmt: skip
                await anyio.sleep(args.interval - (time.monotonic() - started) % args.interval)
            await soak.sample(started)
            write_csv(out / f"soak-{soak.backend}.csv", soak.rows)
    finally:
        with anyio.CancelScope(shield=True):
            code = await soak.node.stop()
            print(f"{soak.backend}: stopped, exit code {code}", flush=True)


def write_csv(path: Path, rows: list[dict[str, float]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict[str, float]]:
    with path.open(encoding="utf-8") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


# --- judging and drawing ----------------------------------------------------------------------


def slope_per_hour(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` over ``xs`` (seconds), per hour."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return (
        0.0
        if var == 0
        else 3600 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
    )


def judge(backend: str, rows: list[dict[str, float]]) -> list[str]:
    """Print each series' level, slope per hour and drift; the failures. The drift is the
    median of the last third of the samples after the warm-up minus that of the first
    third (a leak moves it, a passing spike does not): a series is flat when it is within
    the bound (a share of the level, or a count)."""
    if not rows:
        return [f"{backend}: no samples"]
    warmup = max(60.0, 0.1 * rows[-1]["seconds"])
    kept = [r for r in rows if r["seconds"] >= warmup] or rows
    xs = [r["seconds"] for r in kept]
    third = max(1, len(kept) // 3)
    failures = []
    print(f"\n{backend}: {len(rows)} samples over {rows[-1]['seconds'] / 60:.1f} min;"
          f" judged after the first {warmup:.0f} s ({len(kept)} samples)")  # fmt: skip
    for name, (kind, bound) in FLAT.items():
        ys = [r[name] for r in kept]
        slope = slope_per_hour(xs, ys)
        level = sum(ys) / len(ys)
        drift = statistics.median(ys[-third:]) - statistics.median(ys[:third])
        allowed = bound * level if kind == "share" else bound
        flat = abs(drift) <= allowed
        print(f"  {name:>15}: first {rows[0][name]:7.1f}  min {min(ys):7.1f}  max {max(ys):7.1f}"
              f"  last {rows[-1][name]:7.1f}  slope {slope:+8.2f}/h  drift {drift:+7.2f}"
              f" (flat within ±{allowed:.2f})  {'FLAT' if flat else 'DRIFTS'}")  # fmt: skip
        if not flat:
            failures.append(f"{backend}: {name} drifts {drift:+.2f} ({slope:+.2f}/h)")
    last = rows[-1]
    minutes = max(1e-9, last["seconds"] / 60)
    seconds = 60 * minutes
    print(f"  requests {last['requests']:.0f} ({last['requests'] / seconds:.1f}/s),"
          f" refreshes {last['refreshes']:.0f} ({last['refreshes'] / seconds:.2f}/s),"
          f" failed {last['failed']:.0f}, dead tokens served"
          f" {last['dead_served']:.0f}")  # fmt: skip
    if last["failed"] or last["dead_served"]:
        failures.append(f"{backend}: {last['failed']:.0f} failed, {last['dead_served']:.0f} dead")
    return failures


def plot(out: Path, title: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {
        b: read_csv(out / f"soak-{b}.csv") for b in BACKENDS if (out / f"soak-{b}.csv").exists()
    }
    if not series:
        return None
    panels = (("rss_mb", "RSS (MB)"), ("fds", "open file descriptors"),
              ("db_connections", "database connections"))  # fmt: skip
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 7), sharex=True)
    for ax, (name, label) in zip(axes, panels, strict=True):
        for backend, rows in series.items():
            ax.plot([r["seconds"] / 60 for r in rows], [r[name] for r in rows],
                    label=backend, linewidth=1.2)  # fmt: skip
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    axes[0].set_title(title, fontsize=9)
    axes[-1].set_xlabel("minutes")
    fig.tight_layout()
    path = out / "soak.png"
    fig.savefig(path, dpi=100)
    return path


# --- the run -----------------------------------------------------------------------------------


async def soak_all(
    args: argparse.Namespace, base: Path, out: Path, pg: PgCluster | None
) -> list[Soak]:
    soaks = []
    sims = {b: make_sim(args.lifetime) for b in args.backends}
    async with anyio.create_task_group() as running:
        for sim in sims.values():
            await running.start(serve_sim, sim)
        for backend, sim in sims.items():
            began = time.monotonic()
            soaks.append(await prepare(backend, base, sim, args, pg))
            print(f"{backend}: seeded {args.grants} grants in {time.monotonic() - began:.1f}s",
                  flush=True)  # fmt: skip
        async with anyio.create_task_group() as tg:
            for soak in soaks:
                tg.start_soon(run_soak, soak, args, out)
        running.cancel_scope.cancel()
    return soaks


async def serve_sim(sim: Simulator, *, task_status: Any) -> None:
    async with sim.running():
        task_status.started()
        await anyio.sleep_forever()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--grants", type=int, default=500)
    parser.add_argument("--lifetime", type=int, default=120, help="token lifetime, seconds")
    parser.add_argument("--rate", type=float, default=50.0, help="token requests/s in all")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs")
    parser.add_argument("--from-csv", action="store_true", help="judge and draw the CSVs")
    args = parser.parse_args()
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if any(b not in BACKENDS for b in args.backends):
        parser.error(f"--backends: from {', '.join(BACKENDS)}")
    title = (f"haasd run soak: {args.grants} grants, {args.lifetime} s tokens, {args.rate:g} token"
             f" requests/s, a sample every {args.interval:g} s")  # fmt: skip
    if args.from_csv:
        found = [b for b in args.backends if (args.out / f"soak-{b}.csv").exists()]
        failures = [f for b in found for f in judge(b, read_csv(args.out / f"soak-{b}.csv"))]
        print(f"\nplot: {plot(args.out, title)}")
        for failure in failures:
            print(f"FAIL {failure}")
        return 1 if failures else 0
    command = " ".join(["bench/soak.py", *sys.argv[1:]])
    print(f"reproduce: .venv/bin/python {command}\nmachine: {os.cpu_count()} CPUs,"
          f" Python {platform.python_version()}, load average"
          f" {' / '.join(f'{x:.2f}' for x in os.getloadavg())}\n{title}", flush=True)  # fmt: skip
    configure_logging("error", "console", stream=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    pg: PgCluster | None = None
    base = Path(tempfile.mkdtemp(prefix="hdsk", dir="/tmp"))
    try:
        if "postgresql" in args.backends:
            try:
                pg = PgCluster.create()
            except PgUnavailable as exc:
                print(f"PostgreSQL skipped: {exc}")
                args.backends.remove("postgresql")
            else:
                pg.start()
        soaks = anyio.run(soak_all, args, base, args.out, pg)
    finally:
        if pg is not None:
            pg.destroy()
        shutil.rmtree(base, ignore_errors=True)
    failures = [f for soak in soaks for f in judge(soak.backend, soak.rows)]
    print(f"\nplot: {plot(args.out, title)}")
    for failure in failures:
        print(f"FAIL {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
