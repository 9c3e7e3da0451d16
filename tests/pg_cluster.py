"""A throwaway PostgreSQL cluster for the tests: initdb'd once, started, stopped and killed.

The tests that need PostgreSQL never use a server the machine may already run: they start
their own from the server binaries (``initdb``, ``postgres``) in a temporary directory, so
that they can also stop it, kill it with SIGKILL (as a crash would) and start it again.

- The binaries are found through ``pg_config --bindir``, ``$PATH`` and the Debian layout
  ``/usr/lib/postgresql/<version>/bin`` (newest first).
- ``initdb`` and ``postgres`` refuse to run as root: as root, the cluster runs as the
  unprivileged ``postgres`` user, which owns the directory; as anyone else, as that user.
- It listens on a Unix socket in its directory and on 127.0.0.1 at a free port, with trust
  authentication, ``fsync=off`` (durability against a machine crash is not what these
  tests test; a SIGKILL of the server keeps every commit, as the OS still holds it).
- The postmaster runs in a process group of its own: :meth:`PgCluster.kill` SIGKILLs the
  whole group, the way the server dies with its machine, and :meth:`PgCluster.start`
  then runs PostgreSQL's crash recovery.

Where no binaries or no unprivileged user exist, :func:`unavailable` says why, and the
fixtures in ``conftest.py`` skip with that reason.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

#: The cluster's superuser (initdb ``-U``), whoever the OS user running it is.
SUPERUSER: Final = "postgres"
#: The OS user a root test run hands the cluster to (initdb refuses to run as root).
OS_USER: Final = "postgres"
START_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 30.0
#: how many free ports a first start tries (another process may take one meanwhile)
PORT_ATTEMPTS: Final = 3
#: Server settings for tests: fast, small, quiet. Not for production.
SETTINGS: Final = (
    "fsync=off",
    "full_page_writes=off",
    "shared_buffers=16MB",
    "max_connections=200",
    "listen_addresses=127.0.0.1",
    "log_min_messages=warning",
    "logging_collector=off",
)

_database_numbers = itertools.count(1)


class PortTaken(RuntimeError):
    """Another process listens on the port the cluster was to take."""


class PgUnavailable(Exception):
    """No way to run a PostgreSQL cluster here; the message says why (the skip reason)."""


def _bindir_of(pg_config: str) -> Path | None:
    try:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out) if out else None


def _version_key(path: Path) -> tuple[int, ...]:
    version = path.parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``, or None if there is none."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None and (bindir := _bindir_of(pg_config)) is not None:
        candidates.append(bindir)
    on_path = (shutil.which(name) for name in ("initdb", "postgres"))
    candidates.extend(Path(found).resolve().parent for found in on_path if found is not None)
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    candidates.extend(debian)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    return None


@dataclass(frozen=True)
class RunAs:
    """The OS user the server's processes run as (None fields: the current user)."""

    uid: int | None = None
    gid: int | None = None
    home: str | None = None


def run_as() -> RunAs:
    """The user to run initdb and postgres as: ourselves, or ``postgres`` when root."""
    if os.geteuid() != 0:
        return RunAs()
    try:
        entry = pwd.getpwnam(OS_USER)
    except KeyError:
        raise PgUnavailable(
            f"running as root and there is no unprivileged {OS_USER!r} user to run the "
            "PostgreSQL server as (initdb and postgres refuse root)"
        ) from None
    return RunAs(uid=entry.pw_uid, gid=entry.pw_gid, home=entry.pw_dir)


def unavailable() -> str | None:
    """Why a cluster cannot run here, or None when it can."""
    if find_bindir() is None:
        return (
            "no PostgreSQL server binaries (initdb, postgres) found via pg_config, $PATH "
            "or /usr/lib/postgresql/*/bin; install them (Debian: apt-get install "
            "postgresql; ./.ci/test does so when root)"
        )
    try:
        run_as()
    except PgUnavailable as error:
        return str(error)
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies aside); by ``/proc``,
    else by a signal 0 to the group, which counts zombies too."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            # after the command, which is in parentheses and may hold spaces: state, ppid, pgrp
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


@dataclass(frozen=True)
class PgDatabase:
    """One database of a :class:`PgCluster`: its name and how to reach it."""

    name: str
    url: str
    socket_url: str
    dsn: str


class PgCluster:
    """A PostgreSQL cluster of its own in ``base`` (data in ``base/data``, socket in
    ``base``), run as :func:`run_as`'s user. Create with :meth:`create`."""

    def __init__(self, base: Path, bindir: Path, user: RunAs) -> None:
        self.base = base
        self.bindir = bindir
        self.user = user
        self.data = base / "data"
        self.log = base / "server.log"
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._started = False
        #: settings beyond SETTINGS (``name=value``; a later one wins), from :meth:`create`
        self.settings: tuple[str, ...] = ()

    # --- creating -------------------------------------------------------------------

    @classmethod
    def create(cls, base: Path | None = None, *, settings: Sequence[str] = ()) -> PgCluster:
        """initdb a new cluster (not started): raises :class:`PgUnavailable` with the
        reason where none can run. ``settings``: ``name=value`` beyond (or over)
        :data:`SETTINGS`, such as a small ``max_connections``."""
        reason = unavailable()
        if reason is not None:
            raise PgUnavailable(reason)
        bindir = find_bindir()
        assert bindir is not None
        user = run_as()
        if base is None:
            base = Path(tempfile.mkdtemp(prefix="hdpg", dir="/tmp"))
        cluster = cls(base, bindir, user)
        cluster.settings = tuple(settings)
        cluster._prepare_directory()
        cluster._initdb()
        return cluster

    def _prepare_directory(self) -> None:
        # readable by all: the socket in it is for any local test user (auth is trust)
        self.base.chmod(0o755)
        if self.user.uid is not None and self.user.gid is not None:
            os.chown(self.base, self.user.uid, self.user.gid)

    def _env(self) -> dict[str, str]:
        env = {
            "PATH": f"{self.bindir}:/usr/bin:/bin",
            "LC_ALL": "C",
            "LANG": "C",
            "TZ": "UTC",
        }
        if self.user.home is not None:
            env["HOME"] = self.user.home
        return env

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            env=self._env(),
            cwd=self.base,
            user=self.user.uid,
            group=self.user.gid,
            extra_groups=[] if self.user.uid is not None else None,
            timeout=120,
            check=False,
        )

    def _initdb(self) -> None:
        done = self._run(
            str(self.bindir / "initdb"),
            "--pgdata",
            str(self.data),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
            "--no-instructions",
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stderr}")

    # --- addresses ------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The socket directory (libpq's ``host`` for a Unix socket)."""
        return str(self.base)

    def url_for(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL over TCP on 127.0.0.1."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def socket_url_for(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL over the Unix socket (host in the query, as libpq
        and asyncpg both read it)."""
        return f"postgresql://{SUPERUSER}@/{database}?host={self.host}&port={self.port}"

    def dsn_for(self, database: str = "postgres") -> str:
        """A libpq keyword string over the Unix socket."""
        return f"host={self.host} port={self.port} user={SUPERUSER} dbname={database}"

    @property
    def url(self) -> str:
        return self.url_for()

    @property
    def dsn(self) -> str:
        return self.dsn_for()

    # --- running --------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while running."""
        return self._process.pid if self.running and self._process is not None else None

    def start(self) -> None:
        """Start the server (after :meth:`kill`, with crash recovery) and wait until it
        accepts connections. No-op if it runs.

        The first start takes another free port if its port was taken meanwhile (a
        parallel test run may pick the same); later starts keep the port, so URLs
        handed out stay valid."""
        if self.running:
            return
        for _attempt in range(PORT_ATTEMPTS - 1):
            try:
                self._start_once()
            except PortTaken:
                if self._started:
                    raise
                self.port = free_port()
            else:
                return
        self._start_once()

    def _start_once(self) -> None:
        with self.log.open("ab") as log:
            offset = log.tell()
            self._process = self._spawn(log)
        try:
            self._wait_ready()
        except RuntimeError:
            if b"already in use" in self.log.read_bytes()[offset:]:
                raise PortTaken(self.port) from None
            raise
        self._started = True

    def _spawn(self, log: IO[bytes]) -> subprocess.Popen[bytes]:
        options = [f"-c{setting}" for setting in (*SETTINGS, *self.settings)]
        return subprocess.Popen(
            [
                str(self.bindir / "postgres"),
                "-D",
                str(self.data),
                "-k",
                self.host,
                "-p",
                str(self.port),
                *options,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=self._env(),
            cwd=self.base,
            user=self.user.uid,
            group=self.user.gid,
            extra_groups=[] if self.user.uid is not None else None,
            # a group of its own: kill() takes the postmaster and every backend at once
            start_new_session=True,
        )

    def _ready(self, pid: int) -> bool:
        """postmaster.pid's 8th line says "ready" once connections are accepted; its
        first is the postmaster's pid (a killed server's file stays behind, stale)."""
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return False
        return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ready(self._process.pid):
            if self._process.poll() is not None:
                raise RuntimeError(f"postgres exited at start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres not ready in {START_TIMEOUT}s:\n{self.log_tail()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """A fast shutdown (SIGINT: end sessions, checkpoint, exit). No-op if stopped."""
        process = self._process
        if process is None or process.poll() is not None:
            self._process = None
            return
        os.kill(process.pid, signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
        self._process = None

    def kill(self) -> None:
        """SIGKILL the postmaster and all its backends at once, as a crash would."""
        process = self._process
        if process is None:
            return
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        self._wait_group_gone(process.pid)
        self._process = None

    @staticmethod
    def _wait_group_gone(pgid: int) -> None:
        """Wait until every process of the killed group has died, so that a new
        postmaster finds no shared memory still attached. Backends orphaned by the
        postmaster's death may stay zombies where nobody reaps them (a container whose
        init does not): a zombie holds nothing, so it counts as gone."""
        deadline = time.monotonic() + STOP_TIMEOUT
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.01)

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Kill the server and remove its directory."""
        self.kill()
        shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # --- SQL without a driver ------------------------------------------------------------

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` with the cluster's own ``psql`` over the socket; its output,
        unaligned and without headers. Raises with psql's error on failure."""
        done = subprocess.run(
            [
                str(self.bindir / "psql"),
                "--no-psqlrc",
                "--quiet",
                "--tuples-only",
                "--no-align",
                "--set",
                "ON_ERROR_STOP=1",
                "--dbname",
                self.dsn_for(database),
                "--command",
                sql,
            ],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", "PGCONNECT_TIMEOUT": "10"},
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout.strip()

    def new_database(self) -> PgDatabase:
        """A fresh, empty database (a copy of template0), its name unique in the cluster."""
        name = f"t{os.getpid()}_{next(_database_numbers)}"
        self.psql(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.database(name)

    def database(self, name: str) -> PgDatabase:
        return PgDatabase(
            name=name,
            url=self.url_for(name),
            socket_url=self.socket_url_for(name),
            dsn=self.dsn_for(name),
        )

    def drop_database(self, name: str) -> None:
        """Drop ``name``, ending its sessions (FORCE)."""
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
