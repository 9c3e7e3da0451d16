"""What the tests of the whole daemon share: a config for a simulator, a grant seeded in
the store as ``haasd import`` would, the daemon running in this process on a manual clock,
and ``python -m haasd`` as a subprocess."""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import httpx
from harness import CLIENT_ID, CLIENT_SECRET, simulator

from haasd.app import Daemon, run
from haasd.clock import ManualClock
from haasd.config import AccessRule, load_config
from haasd.crypto import Key, Sealer
from haasd.grants import Policy, new_grant
from haasd.simulator import Simulator
from haasd.store import Store
from haasd.tokens import parse_token_response

MARIA = "usr_maria_42"


def write_key(directory: Path) -> Path:
    """A new store key in ``directory`` (mode 0600 from its creation), unless one is there."""
    key = directory / "store.key"
    if not key.exists():
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(Key.generate().to_text())
    return key


def write_config(directory: Path, token_url: str, *, extra: str = "") -> Path:
    write_key(directory)
    config = directory / "haasd.toml"
    config.write_text(
        f"""
[haas]
environment = "test"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
token_url = "{token_url}"
authorize_url = "{token_url.rsplit("/", 1)[0]}/authorize"
redirect_uri = "http://127.0.0.1:8765/callback"
plan = "pro"
[store]
path = "haasd.db"
key_file = "store.key"
[socket]
path = "haasd.sock"
[log]
level = "info"
format = "json"
{extra}
"""
    )
    return config


async def seed_grant(directory: Path, sim: Simulator, human_id: str) -> str:
    """A human consents through the simulator; the grant is stored as `haasd import` does."""
    answer = parse_token_response(await sim.consent(human_id))
    key = Key.from_text((directory / "store.key").read_text())
    async with await Store.open(directory / "haasd.db", Sealer(key)) as store:
        grant = new_grant(answer, "test", sim.clock.time(), Policy(), random.Random(1))
        await store.put_grant(grant)
    return answer.access_token.reveal()


@asynccontextmanager
async def daemon_at(
    config_path: Path, clock: ManualClock
) -> AsyncIterator[tuple[Daemon, httpx.AsyncClient]]:
    """The whole daemon on ``config_path``, in this process, and a client of its socket."""
    config = load_config(config_path, {})
    async with anyio.create_task_group() as tg:
        daemon: Daemon = await tg.start(
            lambda task_status: run(
                config, clock=clock, environ={}, signals=False, task_status=task_status
            )
        )
        transport = httpx.AsyncHTTPTransport(uds=str(daemon.socket_path))
        async with httpx.AsyncClient(transport=transport, base_url="http://haasd") as client:
            yield daemon, client
        tg.cancel_scope.cancel()


@dataclass
class Running:
    daemon: Daemon
    sim: Simulator
    http: httpx.AsyncClient
    socket: str

    @property
    def clock(self) -> ManualClock:
        clock = self.daemon.clock
        assert isinstance(clock, ManualClock)
        return clock

    async def start(self, **body: Any) -> httpx.Response:
        return await self.http.post("/v1/consents", json=body)

    async def callback(self, **body: Any) -> httpx.Response:
        return await self.http.post("/v1/consents/callback", json=body)

    async def approve(self, url: str) -> str:
        """The human's browser approves; the URL it is sent back to."""
        location = await self.sim.visit(url)
        assert location is not None
        return location

    def non_admin(self) -> None:
        """From now on, this test's uid may see every human but administer none."""
        rule = AccessRule(uid=os.geteuid(), gid=None, humans=("usr_*",), scopes=None, admin=False)
        self.daemon.server.update_rules([rule])


@asynccontextmanager
async def daemon_running(
    directory: Path,
    extra: str = "",
    *,
    redirect_uri: str | None = None,
    sim_options: dict[str, Any] | None = None,
    revocation: bool = False,
    seed: bool = True,
) -> AsyncIterator[Running]:
    """The daemon on a simulator (with ``sim_options``), holding a grant of MARIA (with
    ``seed``); with ``revocation`` its config names the simulator's RFC 7009 endpoint."""
    clock = ManualClock(start=time.time())
    sim = simulator(clock, **(sim_options or {}))
    async with sim.running():
        config_path = write_config(directory, sim.token_url, extra=extra)
        text = config_path.read_text()
        if redirect_uri is not None:
            text = text.replace("http://127.0.0.1:8765/callback", redirect_uri)
        if revocation:
            text = text.replace(
                'plan = "pro"\n', f'plan = "pro"\nrevocation_url = "{sim.revocation_url}"\n'
            )
        config_path.write_text(text)
        if seed:
            await seed_grant(directory, sim, MARIA)
        async with daemon_at(config_path, clock) as (daemon, http):
            yield Running(daemon, sim, http, str(daemon.socket_path))


def query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def without(url: str, name: str) -> str:
    parts = urlsplit(url)
    kept = {k: v for k, v in query(url).items() if k != name}
    return urlunsplit(parts._replace(query=urlencode(kept)))


def error_of(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == response.status_code
    return error


def cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in {"HAASD_SOCKET", "HAASD_CONFIG"}}


async def haasd_cli(*args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``python -m haasd ARGS``; the loop keeps serving."""
    argv = [sys.executable, "-m", "haasd", *args]
    done = await anyio.run_process(argv, env=cli_env(), check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()
