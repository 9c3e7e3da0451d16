"""The token server's event stream, metrics, audit trail and peer-credential checks."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import anyio
import pytest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from structlog.testing import capture_logs
from support import (
    MARIA,
    NOW,
    FakeService,
    RawClient,
    admin_rule,
    eventually,
    get,
    make_grant,
    open_stream,
    read_events,
    rule,
    serving,
)

from haasd.crypto import fingerprint
from haasd.events import Event
from haasd.grants import State
from haasd.server import Limits

NOBODY = 65534
CLIENTS = 4242  # a supplementary group of the child, not its primary one

# --- events -----------------------------------------------------------------------------------


async def test_events_reach_a_peer_only_for_humans_it_may_see() -> None:
    limits = Limits(heartbeat=0.05)
    async with serving(rules=[rule(humans=("usr_team_*",))], limits=limits) as s:
        bus = s.service.events
        async with RawClient.connect(s.path) as client:
            head = await open_stream(client)
            bus.publish(Event("token.refreshed", MARIA, NOW, {"expires_in": 3600}))
            bus.publish(Event("token.refreshed", "usr_team_a", NOW, {"expires_in": 3600}))
            bus.publish(Event("grant.needs_reconsent", "usr_team_b", NOW, {"reason": "x"}))
            events = await read_events(client, 2)
            rest = b""
            with anyio.fail_after(5):  # the next bytes of a quiet stream: a heartbeat
                while b"\n\n" not in rest:
                    rest += await client.stream.receive()
    assert b"200 OK" in head and b"text/event-stream" in head and b"no-store" in head
    assert events == [
        ("token.refreshed", {"type": "token.refreshed", "human_id": "usr_team_a",
                             "at": "2027-01-15T08:00:00Z", "expires_in": 3600}),
        ("grant.needs_reconsent", {"type": "grant.needs_reconsent", "human_id": "usr_team_b",
                                   "at": "2027-01-15T08:00:00Z", "reason": "x"}),
    ]  # fmt: skip
    assert b": heartbeat\n\n" in rest


async def test_a_slow_reader_is_told_what_it_lost() -> None:
    async with serving(limits=Limits(events_queue=2)) as s, RawClient.connect(s.path) as client:
        await open_stream(client)
        for n in range(5):  # published faster than the stream task can write them
            s.service.events.publish(Event("token.refreshed", MARIA, NOW + n))
        events = await read_events(client, 3)
    assert [name for name, _ in events] == ["lost", "token.refreshed", "token.refreshed"]
    assert events[0][1]["count"] == 3
    assert [e["at"] for _, e in events[1:]] == ["2027-01-15T08:00:03Z", "2027-01-15T08:00:04Z"]


async def test_a_stream_is_closed_when_its_reader_goes() -> None:
    async with serving(limits=Limits(heartbeat=0.02)) as s:
        async with RawClient.connect(s.path) as client:
            await open_stream(client)
            assert s.service.events.subscriber_count == 1
        await eventually(lambda: s.service.events.subscriber_count == 0)


async def test_events_need_a_rule() -> None:
    async with serving(rules=[rule(uid=4242)]) as s:
        reply = await get(s.path, "/v1/events")
    assert (reply.status, reply.error_type) == (403, "forbidden")


# --- metrics ----------------------------------------------------------------------------------


class _Budget(Collector):
    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("haasd_rate_budget_remaining", "Requests left", value=17)


async def test_metrics_are_prometheus_text_with_the_servers_figures() -> None:
    service = FakeService(
        [
            make_grant(ttl=1200),
            make_grant("usr_b", ttl=3000, refresh_in=3 * 86400),
            make_grant("usr_c", ttl=-10, state=State.NEEDS_RECONSENT),
        ]
    )
    async with serving(service) as s:
        s.server.register_collector(_Budget())
        for target in [f"/v1/tokens/{MARIA}", f"/v1/tokens/{MARIA}", "/v1/tokens/usr_x"]:
            await get(s.path, target)
        reply = await get(s.path, "/metrics")
    assert reply.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.body.decode())
        for sample in family.samples
    }
    assert samples[("haasd_tokens_served_total", (("outcome", "served"),))] == 2
    assert samples[("haasd_tokens_served_total", (("outcome", "unknown_human"),))] == 1
    assert samples[("haasd_tokens_served_total", (("outcome", "forbidden"),))] == 0
    assert samples[("haasd_grants", (("state", "active"),))] == 1
    assert samples[("haasd_grants", (("state", "reconsent_due"),))] == 1
    assert samples[("haasd_grants", (("state", "needs_reconsent"),))] == 1
    assert samples[("haasd_earliest_access_expiry_seconds", ())] == 1200
    assert samples[("haasd_earliest_refresh_limit_seconds", ())] == 3 * 86400
    assert samples[("haasd_rate_budget_remaining", ())] == 17
    assert samples[("haasd_connections", ())] == 1


async def test_each_server_has_its_own_registry() -> None:
    async with serving() as one, serving() as two:
        await get(one.path, f"/v1/tokens/{MARIA}")
        assert one.server.registry is not two.server.registry
        text = (await get(two.path, "/metrics")).body.decode()
    assert 'haasd_tokens_served_total{outcome="served"} 0.0' in text


# --- audit ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("debug_logs")
async def test_every_token_handed_out_is_audited_by_fingerprint_never_by_value() -> None:
    service = FakeService([make_grant(), make_grant("usr_b", token="fake-access-b")])
    with capture_logs() as logs:
        async with serving(service) as s, RawClient.connect(s.path) as client:
            for target in [MARIA, MARIA, MARIA, "usr_b"]:
                assert (await client.request("GET", f"/v1/tokens/{target}")).status == 200
    served = [e for e in logs if e["event"] == "token.served"]
    assert {
        h: sum(int(e["count"]) for e in served if e["human_id"] == h) for h in (MARIA, "usr_b")
    } == {MARIA: 3, "usr_b": 1}
    first = served[0]
    assert (MARIA, "tasks:dispatch status:read", os.geteuid(), os.getpid()) == (
        first["human_id"],
        first["scope"],
        first["peer_uid"],
        first["peer_pid"],
    )
    assert fingerprint("fake-access-maria-1") == first["fingerprint"]
    assert "fake-access" not in repr(logs)


@pytest.mark.usefixtures("debug_logs")
async def test_with_no_audit_window_every_handout_has_its_own_line() -> None:
    with capture_logs() as logs:
        async with serving(limits=Limits(audit_window=0)) as s, RawClient.connect(s.path) as c:
            for _ in range(3):
                await c.request("GET", f"/v1/tokens/{MARIA}")
            served = [e for e in logs if e["event"] == "token.served"]
            assert [e["count"] for e in served] == [1, 1, 1]


# --- peer credentials -------------------------------------------------------------------------


def _ask_as_nobody(  # pragma: no cover - child
    path: str, target: str, write_fd: int, groups: tuple[int, ...] = ()
) -> None:
    """In a forked child: drop to uid/gid 65534 (+ ``groups``), ask, report the status."""
    code = 1
    try:
        os.setgroups(list(groups))
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(path)
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        os.write(write_fd, data.split(b" ", 2)[1])
        code = 0
    except BaseException as exc:  # noqa: BLE001 - a forked child reports all and exits
        os.write(write_fd, f"error {exc!r}".encode())
    finally:
        os._exit(code)


async def status_as_nobody(path: str, target: str, groups: tuple[int, ...] = ()) -> str:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_fd)
        _ask_as_nobody(path, target, write_fd, groups)
    os.close(write_fd)
    try:
        with anyio.fail_after(10):
            await anyio.wait_readable(read_fd)
            answer = os.read(read_fd, 1024).decode()
            while os.read(read_fd, 1024):  # EOF: the child has exited
                await anyio.wait_readable(read_fd)
    finally:
        os.close(read_fd)
        _reap(pid)
    return answer


def _reap(pid: int) -> None:
    os.waitpid(pid, 0)  # the child is gone already (its end of the pipe closed)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to fork a child that drops to 65534")
async def test_a_second_uid_is_told_apart_by_its_credentials() -> None:
    rules = [admin_rule(uid=0)]
    async with serving(rules=rules) as s:
        os.chmod(os.path.dirname(s.path), 0o711)  # noqa: S103 - traversable, not listable
        os.chown(s.path, -1, NOBODY)  # mode 0660: the group may connect
        without_rule = await status_as_nobody(s.path, f"/v1/tokens/{MARIA}")
        s.server.update_rules([*rules, rule(uid=NOBODY, humans=("usr_maria_*",))])
        with_rule = await status_as_nobody(s.path, f"/v1/tokens/{MARIA}")
        not_admin = await status_as_nobody(s.path, "/v1/humans")
        s.server.update_rules([*rules, rule(uid=None, gid=NOBODY)])
        by_group = await status_as_nobody(s.path, f"/v1/tokens/{MARIA}")
        # a member of a clients group (a supplementary group, as systemd's SocketGroup=
        # setups give) matches a gid rule too: SO_PEERGROUPS, not just the primary gid
        s.server.update_rules([*rules, rule(uid=None, gid=CLIENTS)])
        outsider = await status_as_nobody(s.path, f"/v1/tokens/{MARIA}")
        member = await status_as_nobody(s.path, f"/v1/tokens/{MARIA}", groups=(CLIENTS,))
    assert (without_rule, with_rule, not_admin, by_group) == ("403", "200", "403", "200")
    assert (outsider, member) == ("403", "200")
