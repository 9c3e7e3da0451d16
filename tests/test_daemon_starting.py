"""The whole daemon serves while it loads its grants: a fresh token is answered from its
stored row at once, everything else once every grant is in memory (real SQLite file,
real Unix socket, the simulator over loopback HTTP)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from harness import simulator
from support import eventually
from support_daemon import seed_grant, write_config

from haasd.app import Daemon, run
from haasd.clock import ManualClock
from haasd.config import load_config
from haasd.store._reading import Loaded


async def test_a_token_is_served_before_every_grant_is_loaded(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    take = Loaded.take

    def held(self: Loaded, rows: Iterable[Sequence[Any]]) -> None:  # the store's thread
        assert release.wait(20), "the test never let the load go on"
        take(self, rows)

    monkeypatch.setattr(Loaded, "take", held)
    clock = ManualClock(start=time.time())
    sim = simulator(clock)
    async with sim.running():
        config_path = write_config(short_dir, sim.token_url)
        token = await seed_grant(short_dir, sim, "usr_maria_42")
        config = load_config(config_path, {})
        started: list[Daemon] = []
        transport = httpx.AsyncHTTPTransport(uds=str(config.socket.path))
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://haasd") as client,
            anyio.create_task_group() as tg,
        ):

            async def daemon() -> None:
                started.append(await tg.start(lambda task_status: run(
                    config, clock=clock, environ={}, signals=False, task_status=task_status
                )))  # fmt: skip

            tg.start_soon(daemon)
            await eventually(config.socket.path.exists, 20)
            served = await client.get("/v1/tokens/usr_maria_42")
            assert (served.status_code, started) == (200, []), "served while loading"
            assert served.json()["access_token"] == token
            assert sim.validate_access_token(token) == "usr_maria_42"

            statuses: list[httpx.Response] = []

            async def status() -> None:
                statuses.append(await client.get("/v1/humans/usr_maria_42"))

            tg.start_soon(status)
            await anyio.sleep(0.3)
            assert statuses == [], "a status waits for every grant"
            release.set()
            await eventually(lambda: bool(statuses and started), 20)
            assert statuses[0].json()["state"] == "active"
            assert (await client.get("/v1/tokens/usr_nobody_1")).status_code == 404
            tg.cancel_scope.cancel()
