"""What a reload of the access rules does to open connections, on the whole daemon: a peer
the new rules no longer match loses its event stream and its idle connections at once,
and the events a stream carries follow the new rules from the next one on."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
from support import MARIA, RawClient, eventually, open_stream, read_events
from support_daemon import Running, daemon_running, write_config

from haasd.events import Event

UID = os.geteuid()


def rules(humans: str, *, uid: int = UID, admin: bool = False) -> str:
    return f"[[access]]\nuid = {uid}\nhumans = [{humans}]\nadmin = {str(admin).lower()}\n"


def reload(running: Running, directory: Path, extra: str) -> None:
    config = write_config(directory, running.sim.token_url, extra=extra)
    assert running.daemon.reload(config)


def publish(running: Running, kind: str, human_id: str | None) -> None:
    running.daemon.events.publish(Event(kind, human_id, running.clock.time(), {}))


async def test_a_reload_that_leaves_a_peer_without_rules_closes_its_streams(
    workdir: Path,
) -> None:
    async with (
        daemon_running(workdir, rules('"usr_*"')) as running,
        RawClient.connect(running.socket) as stream,
        RawClient.connect(running.socket) as idle,
    ):
        await open_stream(stream)
        assert (await idle.request("GET", "/v1/health")).status == 200
        publish(running, "token.refreshed", MARIA)
        assert [(kind, event["human_id"]) for kind, event in await read_events(stream, 1)] == [
            ("token.refreshed", MARIA)
        ]
        reload(running, workdir, rules('"usr_*"', uid=4242))
        with anyio.fail_after(2):  # at once, without waiting for an event or a heartbeat
            assert await stream.closed()
            assert await idle.closed()
        await eventually(lambda: running.daemon.server.connections == 0)
        async with RawClient.connect(running.socket) as late:
            assert (await late.reply()).status == 403


async def test_a_reload_that_keeps_a_rule_keeps_the_stream_and_narrows_it(
    workdir: Path,
) -> None:
    async with (
        daemon_running(workdir, rules('"usr_*"')) as running,
        RawClient.connect(running.socket) as stream,
    ):
        await open_stream(stream)
        reload(running, workdir, rules('"usr_zz_*"'))
        publish(running, "token.refreshed", MARIA)
        publish(running, "token.refreshed", "usr_zz_1")
        events = await read_events(stream, 1)
    assert [(k, e["human_id"]) for k, e in events] == [("token.refreshed", "usr_zz_1")]


async def test_consent_events_about_no_one_yet_go_only_to_admins_of_everyone(
    workdir: Path,
) -> None:
    limited = rules('"usr_zz_*"', admin=True)
    async with (
        daemon_running(workdir, limited) as running,
        RawClient.connect(running.socket) as stream,
    ):
        await open_stream(stream)
        publish(running, "consent.started", None)  # may end with anyone: not for usr_zz_*
        publish(running, "consent.granted", MARIA)  # not its human
        publish(running, "consent.granted", "usr_zz_1")
        publish(running, "token.refreshed", "usr_zz_1")
        seen = [(k, e["human_id"]) for k, e in await read_events(stream, 2)]
        reload(running, workdir, rules('"usr_*"', admin=True))
        publish(running, "consent.started", None)
        after = [(k, e["human_id"]) for k, e in await read_events(stream, 1)]
    assert seen == [("consent.granted", "usr_zz_1"), ("token.refreshed", "usr_zz_1")]
    assert after == [("consent.started", None)]
