"""The crash campaign's processes and files: the zygote that starts ``haasd`` commands
(tests/crash_launch.py), one ``haasd run`` daemon on a SQLite store, and what is checked
of the store's files after a kill — on a copy, so that haasd itself recovers the crash.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
from anyio.streams.buffered import BufferedByteReceiveStream
from support_daemon import cli_env, write_config

from haasd.crypto import Key, Sealer, fingerprint
from haasd.grants import State
from haasd.store import Store

LAUNCHER = Path(__file__).with_name("crash_launch.py")
#: how long a started daemon may take to answer on its socket
START_TIMEOUT = 30.0
#: a grant as the campaign compares it: its refresh token's fingerprint, state, error
Row = tuple[str, State, str | None]


class Zygote:
    """The launcher process (see tests/crash_launch.py): ``start`` forks a haasd command."""

    def __init__(self, log: Path) -> None:
        self._log = log
        self._process: anyio.abc.Process | None = None
        self._reader: BufferedByteReceiveStream | None = None
        self._lock = anyio.Lock()

    async def __aenter__(self) -> Zygote:
        with self._log.open("ab") as log:
            self._process = await anyio.open_process(
                [sys.executable, str(LAUNCHER)], stderr=log, env=cli_env()
            )
        assert self._process.stdout is not None
        self._reader = BufferedByteReceiveStream(self._process.stdout)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        process = self._process
        if process is not None:
            with anyio.CancelScope(shield=True):
                process.kill()
                await process.wait()
                await process.aclose()

    async def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._process is not None and self._process.stdin is not None
        assert self._reader is not None
        async with self._lock:
            await self._process.stdin.send(json.dumps(request).encode() + b"\n")
            line = await self._reader.receive_until(b"\n", 1 << 16)
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def start(
        self, argv: list[str], *, cwd: Path, log: Path, kill: dict[str, Any] | None = None
    ) -> int:
        """Fork ``haasd ARGV`` (set to die as ``kill`` says); its pid."""
        request = {"op": "start", "argv": argv, "cwd": str(cwd), "log": str(log),
                   "env": cli_env(), "kill": kill}  # fmt: skip
        pid: int = (await self.ask(request))["pid"]
        return pid

    async def reap(self, pid: int) -> int:
        """Wait for a child that has ended (see :func:`ended`); its exit code."""
        code: int = (await self.ask({"op": "reap", "pid": pid}))["code"]
        return code


def ended(pid: int) -> bool:
    """The process is gone or a zombie (ended, not yet reaped by the zygote)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def until_ended(pid: int, within: float) -> bool:
    """Wait up to ``within`` seconds for ``pid`` to end; whether it did."""
    with anyio.move_on_after(within):
        while not ended(pid):  # noqa: ASYNC110 - another process's end, seen in /proc
            await anyio.sleep(0.01)
        return True
    return False


async def run_command(
    zygote: Zygote, argv: list[str], *, cwd: Path, log: Path, kill: dict[str, Any] | None = None,
    kill_after: float | None = None, within: float = 60.0,
) -> int:  # fmt: skip
    """Run a ``haasd`` command to its end (SIGKILLed after ``kill_after`` seconds if given,
    or by itself as ``kill`` says); its exit code."""
    pid = await zygote.start(argv, cwd=cwd, log=log, kill=kill)
    if kill_after is not None and not await until_ended(pid, kill_after):
        os.kill(pid, signal.SIGKILL)
    if not await until_ended(pid, within):
        os.kill(pid, signal.SIGKILL)
        await until_ended(pid, 10.0)
        await zygote.reap(pid)
        raise AssertionError(f"haasd {' '.join(argv)} did not end in {within:g}s")
    return await zygote.reap(pid)


class Daemon:
    """``haasd run`` on ``config`` (one process at a time, started again after each kill)."""

    def __init__(self, zygote: Zygote, config: Path) -> None:
        self.zygote = zygote
        self.config = config
        self.directory = config.parent
        self.socket = self.directory / "haasd.sock"
        self.store = self.directory / "haasd.db"
        self.log = self.directory / "haasd.log"
        self.armed = self.directory / "armed"
        self.mark = self.directory / "mark"
        self.pid: int | None = None
        self._client: httpx.AsyncClient | None = None

    async def start(self, kill: dict[str, Any] | None = None) -> None:
        """Start it, set to die as ``kill`` says once :meth:`arm` is called."""
        self.armed.unlink(missing_ok=True)
        self.mark.unlink(missing_ok=True)
        if kill is not None:
            kill = {**kill, "armed": str(self.armed), "mark": str(self.mark)}
        argv = ["run", "--config", str(self.config)]
        self.pid = await self.zygote.start(argv, cwd=self.directory, log=self.log, kill=kill)

    def arm(self) -> None:
        self.armed.touch()

    def marked(self) -> dict[str, Any] | None:
        """Where the process killed itself, and when (None: it did not)."""
        try:
            note: dict[str, Any] = json.loads(self.mark.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return note

    async def until_serving(self, within: float = START_TIMEOUT) -> None:
        with anyio.move_on_after(within):
            while self.pid is not None and not ended(self.pid):
                try:
                    reply = await self.request("GET", "/v1/health", limit=1.0)
                except (httpx.HTTPError, OSError):
                    reply = None
                if reply is not None and reply.status_code == 200:
                    return
                await anyio.sleep(0.02)
        raise AssertionError(f"haasd run did not start serving:\n{self.tail()}")

    async def kill(self) -> int:
        """SIGKILL (if still running) and reap; its exit code."""
        assert self.pid is not None
        if not ended(self.pid):
            os.kill(self.pid, signal.SIGKILL)
        return await self.ended()

    async def ended(self) -> int:
        """Once it has ended: reap it; its exit code."""
        assert self.pid is not None
        await until_ended(self.pid, 30.0)
        code = await self.zygote.reap(self.pid)
        self.pid = None
        await self._drop_client()
        return code

    async def request(
        self, method: str, path: str, *, limit: float = 5.0, json: Any = None
    ) -> httpx.Response:
        if self._client is None:
            transport = httpx.AsyncHTTPTransport(uds=str(self.socket))
            self._client = httpx.AsyncClient(transport=transport, base_url="http://haasd")
        try:
            return await self._client.request(method, path, timeout=limit, json=json)
        except RuntimeError as exc:  # the kill's reaping closed the client under this one
            raise httpx.TransportError("haasd was killed meanwhile") from exc

    async def _drop_client(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def daemon_config(directory: Path, token_url: str, *, rpm: int, fraction: float) -> Path:
    """A ``haasd run`` config in ``directory``: SQLite store, its key, JSON log."""
    directory.mkdir(parents=True, exist_ok=True)
    extra = f'[refresh]\nrefresh_fraction = {fraction}\non_demand_cooldown = "1s"\n'
    config = write_config(directory, token_url, extra=extra)
    text = config.read_text()
    text = text.replace('plan = "pro"\n', f'plan = "pro"\nrequests_per_minute = {rpm}\n')
    config.write_text(text.replace('level = "info"', 'level = "warning"'))
    return config


def snapshot(store: Path, into: Path) -> Path:
    """Copy the store's files (main, -wal, -shm) as a crash left them, into ``into``."""
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    for suffix in ("", "-wal", "-shm"):
        source = store.with_name(store.name + suffix)
        if source.exists():
            shutil.copy(source, into / source.name)
    return into / store.name


def integrity(path: Path) -> list[str]:
    """``PRAGMA integrity_check`` of the database at ``path``: [] when it is sound."""
    with closing(sqlite3.connect(path)) as conn:
        rows = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
    return [] if rows == ["ok"] else rows


async def rows_of(path: Path, key: Key) -> tuple[dict[str, Row], frozenset[str]]:
    """The grants of the store at ``path`` opened with ``key`` (the store's own checks:
    key check, quick_check, schema), and the humans whose rows did not open."""
    async with await Store.open(path, Sealer(key)) as store:
        grants = await store.list_grants(warn=False)
        unreadable = store.unreadable
    rows = {g.human_id: (fingerprint(g.refresh_token), g.state, g.last_error) for g in grants}
    return rows, unreadable


async def intent_open(path: Path, key: Key, human_id: str) -> bool:
    """Does ``human_id``'s grant in the store at ``path`` hold an open refresh intent?"""
    async with await Store.open(path, Sealer(key)) as store:
        return (await store.get_grant(human_id, warn=False)).intent is not None


def new_key(path: Path) -> Key:
    """A new store key in ``path`` (mode 0600)."""
    key = Key.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.to_text())
    return key


def use_key(config: Path, key: Key) -> None:
    """Point the config at ``key``, as an operator does after a rekey."""
    target = config.parent / "store.key"
    target.unlink()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.to_text())
