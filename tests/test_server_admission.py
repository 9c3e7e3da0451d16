"""Admission by rule: peers no rule matches are refused at once and hold no slot, the last
slots are for admins, and an attack by many unruled uids costs admins and apps nothing.

Other uids are real: child processes drop to them, connect, report what they were
answered and hold their connections open until released. (They are started afresh, not
forked: a fork of a process running an event loop shares its epoll set, which confuses
the loop once the child outlives a few of its connections.)
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest
from support import MARIA, RawClient, admin_rule, eventually, get, rule, serving

from haasd.server import Limits

CLIENTS = 4242  # the children's gid; the socket's group, as systemd's SocketGroup= sets it
APP = 70100
ATTACKERS = range(70001, 70013)  # 12 uids no rule matches

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become other uids")


_CHILD = textwrap.dedent(
    """
    import os, socket, sys

    path, uid, gid, target, count = sys.argv[1:]
    os.setgroups([])
    os.setgid(int(gid))
    os.setuid(int(uid))

    def status(sock):
        data = b""
        try:
            while b"\\r\\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        parts = data.split(b" ", 2)
        return parts[1].decode() if len(parts) > 1 else "closed"

    held, statuses = [], []
    request = f"GET {target} HTTP/1.1\\r\\nHost: h\\r\\n\\r\\n".encode()
    for _ in range(int(count)):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(path)
        held.append(sock)
        try:
            sock.sendall(request)
        except OSError:
            pass  # refused and closed before the request went out
        statuses.append(status(sock))
    print(" ".join(statuses), flush=True)
    sys.stdin.read()  # hold every connection open until released
    """
)


class Peers:
    """Processes as other uids (they start as root and drop to the uid themselves), each
    holding its connections open until released; all released on exit."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._children: list[anyio.abc.Process] = []

    async def connect(self, uid: int, target: str, count: int) -> list[str]:
        """``count`` connections as ``uid``, each asking ``target``: the statuses."""
        argv = [sys.executable, "-c", _CHILD, self.path, str(uid), str(CLIENTS), target]
        child = await anyio.open_process([*argv, str(count)])
        self._children.append(child)
        assert child.stdout is not None
        line = b""
        with anyio.fail_after(15):
            while not line.endswith(b"\n"):
                line += await child.stdout.receive()
        return line.decode().split()

    async def release(self) -> None:
        for child in self._children:
            assert child.stdin is not None
            await child.stdin.aclose()
            with anyio.fail_after(10):
                await child.wait()
            await child.aclose()
        self._children.clear()


@asynccontextmanager
async def other_uids(path: str) -> AsyncIterator[Peers]:
    os.chmod(os.path.dirname(path), 0o711)  # noqa: S103 - traversable, not listable
    os.chown(path, -1, CLIENTS)  # mode 0660: the group may connect
    peers = Peers(path)
    try:
        yield peers
    finally:
        await peers.release()


async def test_a_peer_no_rule_matches_is_told_why_and_holds_no_slot() -> None:
    async with serving(rules=[rule(uid=4242)]) as s, RawClient.connect(s.path) as client:
        reply = await client.reply()  # answered before it asks anything
        assert await client.closed()
        assert s.server.connections == 0
    message = reply.json()["error"]["message"]
    assert (reply.status, reply.error_type, reply.headers["connection"]) == (
        403,
        "forbidden",
        "close",
    )
    assert f"uid {os.geteuid()}" in message
    assert "[[access]] rule" in message


async def test_the_last_slots_are_for_admins() -> None:
    limits = Limits(max_connections=4, admin_connections=1)
    async with serving(rules=[rule()], limits=limits) as s:
        async with (
            RawClient.connect(s.path) as a,
            RawClient.connect(s.path) as b,
            RawClient.connect(s.path) as c,
            RawClient.connect(s.path) as d,
        ):
            for client in (a, b, c):
                assert (await client.request("GET", "/v1/health")).status == 200
            reply = await d.reply()
            assert (reply.status, reply.error_type) == (503, "too_many_connections")
        await eventually(lambda: s.server.connections == 0)
        s.server.update_rules([admin_rule()])
        async with (
            RawClient.connect(s.path) as a,
            RawClient.connect(s.path) as b,
            RawClient.connect(s.path) as c,
            RawClient.connect(s.path) as d,
        ):
            for client in (a, b, c, d):  # an admin may use the reserve
                assert (await client.request("GET", "/v1/health")).status == 200


def test_the_admin_reserve_never_takes_more_than_half() -> None:
    assert Limits(max_connections=6, admin_connections=16).admin_reserve == 3
    assert Limits().admin_reserve == 16
    assert Limits(admin_connections=0).admin_reserve == 0
    with pytest.raises(ValueError, match="admin_connections"):
        Limits(admin_connections=-1)


@needs_root
async def test_unruled_uids_holding_connections_cost_admins_and_apps_nothing() -> None:
    limits = Limits(max_connections=8, max_connections_per_uid=8, admin_connections=2)
    rules = [admin_rule(uid=0), rule(uid=APP)]
    async with serving(rules=rules, limits=limits) as s, other_uids(s.path) as peers:
        answers: list[str] = []
        for uid in ATTACKERS:  # 96 connections held open, 12 times the server's size
            answers += await peers.connect(uid, "/v1/health", 8)
        assert s.server.connections == 0
        # refusals linger briefly for the client to read them; beyond 64 at once, a close
        # (how many of each depends on the machine's pace; never anything else)
        assert set(answers) <= {"403", "closed"} and "403" in answers
        assert await peers.connect(APP, f"/v1/tokens/{MARIA}", 6) == ["200"] * 6
        # the rest is for admins: a 503 (or a bare close while 64 refusals still linger)
        assert await peers.connect(APP, "/v1/health", 1) in (["503"], ["closed"])
        assert s.server.connections == 6
        async with RawClient.connect(s.path) as a, RawClient.connect(s.path) as b:
            for admin in (a, b):
                assert (await admin.request("GET", "/v1/health")).status == 200
        assert (await get(s.path, "/v1/humans")).status == 200
