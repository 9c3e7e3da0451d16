"""The whole daemon: `haasd run` with the simulator behind it, in-process and as a process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from harness import simulator
from support_daemon import seed_grant, write_config

from haasd.app import Daemon, run
from haasd.clock import ManualClock
from haasd.config import load_config
from haasd.simulator import Simulator


@pytest.fixture
async def daemon(short_dir: Path) -> AsyncIterator[tuple[Daemon, Simulator, httpx.AsyncClient]]:
    clock = ManualClock(start=time.time())
    sim = simulator(clock)
    async with sim.running():
        config_path = write_config(short_dir, sim.token_url)
        await seed_grant(short_dir, sim, "usr_maria_42")
        config = load_config(config_path, {})
        async with anyio.create_task_group() as tg:
            d: Daemon = await tg.start(
                lambda task_status: run(
                    config, clock=clock, environ={}, signals=False, task_status=task_status
                )
            )
            transport = httpx.AsyncHTTPTransport(uds=str(d.socket_path))
            async with httpx.AsyncClient(transport=transport, base_url="http://haasd") as client:
                yield d, sim, client
            tg.cancel_scope.cancel()


async def test_serves_refreshes_and_administers_over_the_socket(
    daemon: tuple[Daemon, Simulator, httpx.AsyncClient],
) -> None:
    d, sim, client = daemon
    health = await client.get("/v1/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"

    first = await client.get("/v1/tokens/usr_maria_42")
    assert first.status_code == 200
    assert first.headers["cache-control"] == "no-store"
    token = first.json()
    assert token["token_type"] == "Bearer"
    assert sim.validate_access_token(token["access_token"]) == "usr_maria_42"

    clock = d.clock
    assert isinstance(clock, ManualClock)
    await clock.advance(3600)  # the engine refreshed ahead of expiry
    second = (await client.get("/v1/tokens/usr_maria_42")).json()
    assert second["access_token"] != token["access_token"]
    assert second["expires_in"] > 600

    refreshed = await client.post("/v1/humans/usr_maria_42/refresh")
    assert refreshed.status_code == 200
    stored = await d.store.get_grant("usr_maria_42")
    assert refreshed.json()["state"] == "active"
    third = (await client.get("/v1/tokens/usr_maria_42")).json()
    assert third["access_token"] == stored.access_token.reveal(), "served what is on disk"

    metrics = (await client.get("/metrics")).text
    assert 'haasd_refreshes_total{outcome="ok"}' in metrics
    assert "haasd_refresh_latency_seconds_bucket" in metrics
    assert "haasd_rate_budget_remaining" in metrics
    assert third["access_token"] not in metrics

    gone = await client.delete("/v1/humans/usr_maria_42")
    assert gone.status_code == 204
    assert (await client.get("/v1/tokens/usr_maria_42")).status_code == 404
    assert await d.store.list_grants() == []


def haasd(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "haasd", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


async def wait_for_socket(path: Path, proc: subprocess.Popen[str]) -> None:
    with anyio.fail_after(30):
        while not path.exists():
            assert proc.poll() is None, proc.communicate()[1]
            await anyio.sleep(0.05)


async def test_haasd_run_as_a_process_reloads_and_stops_cleanly(short_dir: Path) -> None:
    sim = simulator(ManualClock(start=time.time()))
    async with sim.running():
        config = write_config(short_dir, sim.token_url)
        await seed_grant(short_dir, sim, "usr_maria_42")
        proc = haasd("run", "--config", str(config), cwd=short_dir)
        try:
            await wait_for_socket(short_dir / "haasd.sock", proc)
            curl = await anyio.run_process(
                [
                    "curl",
                    "-s",
                    "--unix-socket",
                    str(short_dir / "haasd.sock"),
                    "http://haasd/v1/tokens/usr_maria_42",
                ],
                check=False,
            )
            token = json.loads(curl.stdout)
            assert sim.validate_access_token(token["access_token"]) == "usr_maria_42"

            # a second haasd on the same store is refused with a clear message
            second = haasd("run", "--config", str(config), cwd=short_dir)
            _, err = second.communicate(timeout=30)
            assert second.returncode == 1
            assert "another haasd" in err and "Traceback" not in err

            # an invalid new config is refused on SIGHUP; the daemon carries on
            config.write_text(config.read_text() + "\n[refresh]\nrefresh_fraction = 7\n")
            proc.send_signal(signal.SIGHUP)
            await anyio.sleep(0.5)  # a real process: time to read the config and refuse it
            assert proc.poll() is None
            again = await anyio.run_process(
                [
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--unix-socket",
                    str(short_dir / "haasd.sock"),
                    "http://haasd/v1/health",
                ],
                check=False,
            )
            assert again.stdout == b"200"
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err
        lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        events = [line["event"] for line in lines]
        assert "haasd ready" in events
        assert "reload refused: the new configuration is invalid" in events
        assert "haasd stopped" in events
        assert not (short_dir / "haasd.sock").exists(), "the socket is removed on exit"
        assert token["access_token"] not in err


async def test_a_corrupt_store_is_refused_and_left_untouched(short_dir: Path) -> None:
    config = write_config(short_dir, "http://127.0.0.1:9/token")
    store = short_dir / "haasd.db"
    store.write_bytes(b"this is not a database" * 100)
    before = store.read_bytes()
    proc = haasd("run", "--config", str(config), cwd=short_dir)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "Traceback" not in err
    assert "haasd.db" in err
    assert store.read_bytes() == before


async def test_systemd_notify_ready_watchdog_and_stopping(short_dir: Path) -> None:
    sim = simulator(ManualClock(start=time.time()))
    async with sim.running():
        config = write_config(short_dir, sim.token_url)
        await seed_grant(short_dir, sim, "usr_maria_42")
        notify = short_dir / "notify"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
            listener.bind(str(notify))
            listener.settimeout(20)
            proc = haasd(
                "run",
                "--config",
                str(config),
                cwd=short_dir,
                env={"NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": "400000"},
            )
            try:
                messages: list[str] = []
                while not any("READY=1" in m for m in messages):
                    data: bytes = await anyio.to_thread.run_sync(listener.recv, 4096)
                    messages.append(data.decode())
                ready = next(m for m in messages if "READY=1" in m)
                # ready means the socket listens and the store is open with its grants
                assert (short_dir / "haasd.sock").exists()
                assert "STATUS=1 grants, ok" in ready
                pings = 0
                while pings < 2:  # WATCHDOG=1 every 0.2 s, from the event loop
                    data = await anyio.to_thread.run_sync(listener.recv, 4096)
                    pings += "WATCHDOG=1" in data.decode()
                proc.send_signal(signal.SIGTERM)
                stopping = False
                with anyio.fail_after(15):
                    while not stopping:
                        data = await anyio.to_thread.run_sync(listener.recv, 4096)
                        stopping = "STOPPING=1" in data.decode()
                proc.communicate(timeout=15)
            finally:
                if proc.poll() is None:
                    proc.kill()
        assert proc.returncode == 0


async def test_a_sigterm_right_after_ready_stops_cleanly(short_dir: Path) -> None:
    """The signal handlers are in place before READY=1: a supervisor that stops haasd the
    moment it is ready gets a clean exit 0, not death by the default SIGTERM action."""
    sim = simulator(ManualClock(start=time.time()))
    async with sim.running():
        config = write_config(short_dir, sim.token_url)
        notify = short_dir / "notify"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
            listener.bind(str(notify))
            listener.settimeout(20)
            for _ in range(3):
                proc = haasd(
                    "run",
                    "--config",
                    str(config),
                    cwd=short_dir,
                    env={"NOTIFY_SOCKET": str(notify)},
                )
                try:
                    ready = False
                    while not ready:
                        data: bytes = await anyio.to_thread.run_sync(listener.recv, 4096)
                        ready = "READY=1" in data.decode()
                    proc.send_signal(signal.SIGTERM)
                    _, err = proc.communicate(timeout=15)
                finally:
                    if proc.poll() is None:
                        proc.kill()
                assert proc.returncode == 0, err


async def test_an_unreachable_database_is_retried_then_named_in_one_line(
    short_dir: Path,
) -> None:
    config = write_config(short_dir, "http://127.0.0.1:9/token")
    password = "pw-never-shown-2c9e"
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    text = config.read_text().replace(
        'path = "haasd.db"',
        f'url = "postgresql://haasd@127.0.0.1:{port}/haasd"\nconnect_timeout = "2s"',
    )
    config.write_text(text)
    started = time.monotonic()
    proc = haasd(
        "run", "--config", str(config), cwd=short_dir, env={"HAASD_STORE_PASSWORD": password}
    )
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert time.monotonic() - started >= 2.0, "retried for store.connect_timeout first"
    last = err.strip().splitlines()[-1]
    assert f"127.0.0.1:{port}/haasd" in last and "retried for 2s" in last, err
    assert "Traceback" not in err and password not in err
