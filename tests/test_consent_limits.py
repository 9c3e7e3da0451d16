"""Limited admins stay inside their humans: the whole daemon against the simulator, root as
the admin of everyone and a second, real uid (65534, a forked child) as the admin of
``usr_zz_*`` only — told apart by the kernel's peer credentials, as in production."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from support import MARIA
from support_daemon import Running, daemon_running, query, without

from haasd.config import AccessRule
from haasd.grants import Grant

NOBODY = 65534
ZZ = "usr_zz_1"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to fork a child that drops to uid 65534"
)


def admin(uid: int, *humans: str) -> AccessRule:
    return AccessRule(uid=uid, gid=None, humans=humans, scopes=None, admin=True)


@pytest.fixture
async def api(workdir: Path) -> AsyncIterator[Running]:
    """The daemon, root an admin of everyone, uid 65534 an admin of ``usr_zz_*``."""
    async with daemon_running(workdir) as running:
        running.daemon.server.update_rules([admin(0, "*"), admin(NOBODY, "usr_zz_*")])
        os.chmod(workdir, 0o711)  # noqa: S103 - traversable, not listable
        os.chown(running.socket, -1, NOBODY)  # mode 0660: the group may connect
        yield running


def _ask(path: str, request: bytes, write_fd: int) -> None:  # pragma: no cover - child
    """In a forked child: drop to uid/gid 65534, send ``request``, pass the answer back."""
    code = 1
    try:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(20)
            sock.connect(path)
            sock.sendall(request)
            while chunk := sock.recv(65536):
                os.write(write_fd, chunk)
        code = 0
    except BaseException as exc:  # noqa: BLE001 - a forked child reports all and exits
        os.write(write_fd, f"error {exc!r}".encode())
    finally:
        os._exit(code)


async def as_nobody(api: Running, target: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """``POST target`` with a JSON ``body`` from uid 65534: (status, JSON answer)."""
    content = json.dumps(body).encode()
    request = (
        f"POST {target} HTTP/1.1\r\nHost: haasd\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(content)}\r\n\r\n"
    ).encode() + content
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_fd)
        _ask(api.socket, request, write_fd)
    os.close(write_fd)
    answer = b""
    try:
        with anyio.fail_after(30):
            while True:
                await anyio.wait_readable(read_fd)
                chunk = os.read(read_fd, 65536)
                if not chunk:  # EOF: the child has exited
                    break
                answer += chunk
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)  # noqa: ASYNC222 - the child has exited: its pipe end closed
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), answer[:200]
    return int(head.split()[1]), json.loads(payload) if payload else {}


def held(g: Grant) -> tuple[object, ...]:
    """A stored grant's substance: who, what, until when, and its tokens."""
    tokens = (g.access_token.reveal(), g.refresh_token.reveal())
    return (g.human_id, g.scope, g.consented_at, g.refresh_expires_at, g.state, *tokens)


async def snapshot(api: Running) -> tuple[Any, ...]:
    """What the daemon holds: every status, the stored grants, the pending consents."""
    humans = (await api.http.get("/v1/humans")).json()["humans"]
    grants = {held(g) for g in await api.daemon.store.list_grants()}
    return humans, grants, len(await api.daemon.store.list_pending())


async def test_a_consent_without_a_human_needs_an_admin_of_everyone(api: Running) -> None:
    before = await snapshot(api)
    status, refused = await as_nobody(api, "/v1/consents", {})
    assert (status, refused["error"]["type"]) == (403, "forbidden")
    assert "covering every human" in refused["error"]["message"]
    status, other = await as_nobody(api, "/v1/consents", {"human_id": MARIA})
    assert (status, other["error"]["type"]) == (403, "forbidden")
    assert await snapshot(api) == before, "nothing was started"

    status, started = await as_nobody(api, "/v1/consents", {"human_id": ZZ})
    assert (status, started["human_id"]) == (201, ZZ)
    assert (await api.start()).status_code == 201  # root covers everyone


async def test_a_limited_admin_cannot_replace_another_humans_grant(api: Running) -> None:
    # the finding: start for one's own human, have the browser approve as someone else's
    _, started = await as_nobody(api, "/v1/consents", {"human_id": ZZ})
    api.sim.queue_human(MARIA)  # signed in at the server, which ignores the hint
    location = await api.approve(without(started["authorization_url"], "login_hint"))
    exchanges = len(api.sim.requests_log)
    maria_token = (await api.http.get(f"/v1/tokens/{MARIA}")).json()["access_token"]
    humans, grants, _ = await snapshot(api)

    status, refused = await as_nobody(api, "/v1/consents/callback", {"callback_url": location})

    assert status == 403
    error = refused["error"]
    assert (error["type"], error["exchanged"]) == ("forbidden", True)
    assert "outside your rules; nothing was stored" in error["message"]
    assert "revocation" in error["message"]
    assert MARIA not in json.dumps(refused), "the answer names no human outside the rules"
    assert len(api.sim.requests_log) == exchanges + 1, "the code was spent at the server"
    assert await snapshot(api) == (humans, grants, 0)
    assert maria_token == (await api.http.get(f"/v1/tokens/{MARIA}")).json()["access_token"]


async def test_a_consent_of_root_finished_by_a_limited_admin_keeps_to_its_humans(
    api: Running,
) -> None:
    anyone = (await api.start()).json()  # root may: no human named
    api.sim.queue_human(MARIA)
    outside = await api.approve(anyone["authorization_url"])
    for_maria = (await api.start(human_id=MARIA)).json()
    named = await api.approve(for_maria["authorization_url"])
    before = await snapshot(api)

    status, refused = await as_nobody(api, "/v1/consents/callback", {"callback_url": outside})
    assert (status, refused["error"]["exchanged"]) == (403, True)
    back = query(named)
    status, unused = await as_nobody(
        api, "/v1/consents/callback", {"state": back["state"], "code": back["code"]}
    )
    assert (status, unused["error"]["type"], unused["error"]["exchanged"]) == (
        403,
        "forbidden",
        False,
    )
    humans, grants, pending = before
    assert await snapshot(api) == (humans, grants, pending - 1), "only the spent one is gone"

    finished = await api.callback(callback_url=named)  # its admin may still finish it
    assert (finished.status_code, finished.json()["human_id"]) == (201, MARIA)

    api.sim.queue_human("usr_zz_2")
    mine = await api.approve((await api.start()).json()["authorization_url"])
    status, granted = await as_nobody(api, "/v1/consents/callback", {"callback_url": mine})
    assert (status, granted["human_id"], granted["replaced"]) == (201, "usr_zz_2", False)
