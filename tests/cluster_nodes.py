"""Real ``haasd run`` processes on one PostgreSQL store, for the fault campaign and the
cluster benchmark: each with a config directory and socket of its own, one store key
copied to all, the simulator as their token endpoint.

:class:`Node` starts, kills (SIGKILL), pauses (SIGSTOP), resumes and stops one process
and asks its socket for tokens; :class:`Leases` reads from the database who holds which
grant's lease (the owner names the holder's pid), as the campaign must know what a
killed or paused instance was in the middle of.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import anyio
import httpx
import psycopg
from support_daemon import cli_env, write_config

from haasd.crypto import Key, Sealer
from haasd.grants import Policy, new_grant
from haasd.pgstore import PgStore
from haasd.simulator import Simulator
from haasd.tokens import parse_token_response

#: how long a started process may take to answer on its socket
START_TIMEOUT = 30.0


def node_config(
    directory: Path, key: Path, token_url: str, url: str, *, lease: float, rpm: int
) -> Path:
    """A ``haasd run`` config in ``directory`` on the store ``url``, holding a copy of
    ``key``; ``lease``: ``[cluster] lease``; ``rpm``: the plan's requests per minute."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(key, directory / "store.key")
    extra = f'[cluster]\nlease = "{lease:g}s"\n'
    config = write_config(directory, token_url, extra=extra)
    text = config.read_text().replace('path = "haasd.db"', f'url = "{url}"')
    text = text.replace('plan = "pro"\n', f'plan = "pro"\nrequests_per_minute = {rpm}\n')
    text = text.replace('level = "info"', 'level = "warning"')
    config.write_text(text)
    return config


async def seed(url: str, key: Path, sim: Simulator, humans: Sequence[str]) -> None:
    """Each human consents at the simulator; the grants go into the store as
    ``haasd import`` would put them."""
    sealer = Sealer(Key.from_text(key.read_text()))
    store = await PgStore.open(url, sealer)
    async with store:
        grants = []
        for human_id in humans:
            answer = parse_token_response(await sim.consent(human_id))
            grants.append(new_grant(answer, "test", sim.clock.time(), Policy(), random.Random(1)))
        await store.put_grants(grants)


class Node:
    """One ``haasd run`` process on ``config`` (started again after each kill)."""

    def __init__(self, name: str, config: Path) -> None:
        self.name = name
        self.config = config
        self.socket = config.parent / "haasd.sock"
        self.log = config.parent / "haasd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.serving = False
        #: processes that ended without being told to (their exit codes)
        self.crashes: list[int] = []
        #: starts that ended with haasd's "cannot start" (exit 1, a line saying why) and
        #: were started again, as systemd's Restart=on-failure does: that line each
        self.failed_starts: list[str] = []
        self._client: httpx.AsyncClient | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        argv = [sys.executable, "-m", "haasd", "run", "--config", str(self.config)]
        log: IO[bytes]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=cli_env()
            )
        self.serving = self.paused = False

    async def until_serving(self, within: float = START_TIMEOUT) -> None:
        """Wait until the socket answers ``/v1/health``; a process that dies meanwhile
        or takes longer is an error naming its log's tail."""
        with anyio.move_on_after(within):
            while self.alive or self._start_again():
                try:
                    reply = await self.get("/v1/health", limit=1.0)
                except (httpx.HTTPError, OSError):
                    reply = None
                if reply is not None and reply.status_code == 200:
                    self.serving = True
                    return
                await anyio.sleep(0.05)
        code = None if self.process is None else self.process.poll()
        raise AssertionError(f"{self.name} did not start serving (exit {code}):\n{self.tail()}")

    def _start_again(self) -> bool:
        """A start that failed as haasd says it does — exit 1 with a line naming why (the
        database went away while it started) — is started again, up to 5 times."""
        if self.process is None or self.process.poll() != 1 or len(self.failed_starts) >= 5:
            return False
        said = self.tail(1)
        if not said.startswith("haasd: "):
            return False  # a traceback: a crash, which until_serving reports
        self.failed_starts.append(said)
        self.start()
        return True

    def check(self) -> None:
        """Note a process that ended by itself (a crash the campaign fails on); one that
        had not started serving yet may have failed its start (see until_serving)."""
        if self.process is not None and not self.paused and (self.serving or self.alive):
            code = self.process.poll()
            if code is not None and code != -signal.SIGKILL:
                self.crashes.append(code)
                self.process = None

    async def kill(self) -> None:
        """SIGKILL, as a crash would; wait until it is gone."""
        assert self.process is not None
        self.process.kill()
        self.serving = self.paused = False
        await anyio.to_thread.run_sync(self.process.wait)
        await self._drop_client()

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.paused = False

    async def stop(self) -> int | None:
        """SIGTERM and wait: its exit code (None if it was not running)."""
        process = self.process
        if process is None or process.poll() is not None:
            return None
        if self.paused:
            self.resume()
        process.terminate()
        try:
            code = await anyio.to_thread.run_sync(process.wait, 20.0)
        except subprocess.TimeoutExpired:
            process.kill()
            code = await anyio.to_thread.run_sync(process.wait)
        await self._drop_client()
        return code

    async def get(self, path: str, *, limit: float = 5.0) -> httpx.Response:
        """``GET path`` on the socket (keep-alive), given ``limit`` seconds."""
        return await self._request("GET", path, None, limit)

    async def post(self, path: str, body: dict[str, Any], *, limit: float = 5.0) -> httpx.Response:
        """``POST path`` with a JSON ``body`` on the socket, given ``limit`` seconds."""
        return await self._request("POST", path, body, limit)

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None, limit: float
    ) -> httpx.Response:
        try:
            return await self._http().request(method, path, json=body, timeout=limit)
        except RuntimeError as exc:  # a kill closed the client while this one used it
            raise httpx.TransportError(f"{self.name} was killed meanwhile") from exc

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            transport = httpx.AsyncHTTPTransport(uds=str(self.socket))
            self._client = httpx.AsyncClient(transport=transport, base_url="http://haasd")
        return self._client

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


class Leases:
    """Who holds which grant's lease, read from the database (a fresh connection each
    time: the campaign restarts the server under it)."""

    def __init__(self, url: str) -> None:
        self._url = url

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with await psycopg.AsyncConnection.connect(self._url, autocommit=True) as conn:
            return await (await conn.execute(sql, params)).fetchall()

    async def held(self) -> dict[int, set[str]]:
        """Live leases by the holder's pid (the owner is ``host/pid/random``)."""
        rows = await self.query("SELECT owner, human_id FROM haasd_leases WHERE expires_at > now()")
        by_pid: dict[int, set[str]] = {}
        for owner, human_id in rows:
            by_pid.setdefault(int(str(owner).rsplit("/", 2)[1]), set()).add(str(human_id))
        return by_pid

    async def holder(self, pids: Sequence[int], within: float) -> int | None:
        """One of ``pids`` holding a lease now, looking for up to ``within`` seconds."""
        with anyio.move_on_after(within):
            while True:
                try:
                    held = await self.held()
                except psycopg.Error:
                    held = {}
                found = [pid for pid in pids if held.get(pid)]
                if found:
                    return found[0]
                await anyio.sleep(0.01)
        return None
