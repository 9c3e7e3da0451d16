from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import anyio

from haasd.systemd import Notifier, watchdog_interval


def test_outside_systemd_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready("x") is False


def test_ready_status_and_stopping_reach_the_notify_socket() -> None:
    with tempfile.TemporaryDirectory(prefix="h") as d:
        path = Path(d) / "notify"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
            server.bind(str(path))
            notifier = Notifier({"NOTIFY_SOCKET": str(path)})
            assert notifier.ready("2 grants; next refresh in 40m")
            first = server.recv(4096).decode().split("\n")
            assert first[0] == "READY=1"
            assert "STATUS=2 grants; next refresh in 40m" in first
            assert f"MAINPID={os.getpid()}" in first
            assert notifier.stopping()
            assert server.recv(4096).decode().startswith("STOPPING=1")


async def test_watchdog_pings_at_the_interval() -> None:
    with tempfile.TemporaryDirectory(prefix="h") as d:
        path = Path(d) / "notify"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
            server.bind(str(path))
            server.setblocking(False)
            notifier = Notifier({"NOTIFY_SOCKET": str(path)})
            with anyio.move_on_after(0.25):
                await notifier.watchdog(0.1)
            pings = []
            while True:
                try:
                    pings.append(server.recv(64))
                except BlockingIOError:
                    break
            assert pings and set(pings) == {b"WATCHDOG=1"}
            assert 2 <= len(pings) <= 4


def test_watchdog_interval_is_half_and_for_this_process_only() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None
    me = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": me}) == 1.0
