"""The token server's routes over a real Unix socket, with an in-memory TokenService
(the helpers are in tests/support.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import replace

import anyio
import anyio.abc
import httpx
import pytest
from support import MARIA, NOW, FakeService, RawClient, get, isort_order, make_grant, rule, serving

import haasd.server
import haasd.server.answers
import haasd.server.metrics
import haasd.server.routes
import haasd.server.server
import haasd.server.stream
from haasd.errors import (
    HaasdError,
    InvalidGrantError,
    NeedsReconsentError,
    TokenUnavailableError,
    TransientAuthError,
    UnknownHumanError,
)
from haasd.grants import State
from haasd.secret import Secret
from haasd.server import Limits

# --- health and tokens ---------------------------------------------------------------------


async def test_health_answers_any_peer_with_a_rule_with_no_store_and_a_length() -> None:
    service = FakeService()
    service.reasons.append("store not writable")
    async with serving(service, [rule(humans=("usr_nobody_*",))]) as s:
        reply = await get(s.path, "/v1/health")
    assert reply.status == 200
    body = reply.json()
    assert (body["status"], body["reasons"]) == ("degraded", ["store not writable"])
    assert body["grants"] == 0 and body["rate_blocked_for"] is None  # and the figures
    assert reply.headers["cache-control"] == "no-store"
    assert str(len(reply.body)) == reply.headers["content-length"]


async def test_token_is_served_from_memory_without_asking_the_engine() -> None:
    async with serving() as s:
        reply = await get(s.path, f"/v1/tokens/{MARIA}")
    assert reply.status == 200
    assert reply.json() == {
        "human_id": MARIA,
        "access_token": "fake-access-maria-1",
        "token_type": "Bearer",
        "expires_at": "2027-01-15T09:00:00Z",
        "expires_in": 3600,
        "scope": "tasks:dispatch status:read",
        "environment": "test",
    }
    assert reply.headers["cache-control"] == "no-store"
    assert s.service.ensured == []
    assert s.service.served == [(MARIA, NOW)]


async def test_expires_in_counts_down_while_the_token_stays_the_same() -> None:
    async with serving() as s, RawClient.connect(s.path) as client:
        first = (await client.request("GET", f"/v1/tokens/{MARIA}")).json()
        await s.service.clock.advance(600)
        second = (await client.request("GET", f"/v1/tokens/{MARIA}")).json()
    assert (first["expires_in"], second["expires_in"]) == (3600, 3000)
    assert first["access_token"] == second["access_token"]


async def test_a_token_short_of_min_ttl_is_refreshed_first() -> None:
    service = FakeService([make_grant(ttl=100)])
    service.outcome[MARIA] = make_grant(token="fake-access-maria-2", ttl=3600)
    async with serving(service) as s:
        reply = await get(s.path, f"/v1/tokens/{MARIA}?min_ttl=300")
    assert reply.status == 200
    assert reply.json()["access_token"] == "fake-access-maria-2"
    assert service.ensured == [(MARIA, 300.0)]


async def test_an_expired_token_is_never_served() -> None:
    service = FakeService([make_grant(ttl=-5)])
    async with serving(service) as s:
        reply = await get(s.path, f"/v1/tokens/{MARIA}")
    assert (reply.status, reply.error_type) == (503, "token_unavailable")
    assert reply.json()["error"]["retry_after"] == 42
    assert reply.headers["retry-after"] == "42"
    assert service.ensured == [(MARIA, 0.0)]


async def test_min_ttl_beyond_what_the_engine_can_give_is_503() -> None:
    service = FakeService([make_grant(ttl=100)])
    service.outcome[MARIA] = make_grant(token="fake-access-maria-2", ttl=200)
    async with serving(service) as s:
        reply = await get(s.path, f"/v1/tokens/{MARIA}?min_ttl=3000")
    assert (reply.status, reply.error_type) == (503, "token_unavailable")


@pytest.mark.parametrize(
    ("error", "status", "error_type"),
    [
        (UnknownHumanError(MARIA), 404, "unknown_human"),
        (NeedsReconsentError(MARIA, "invalid_grant"), 409, "needs_reconsent"),
        (TransientAuthError("timeout", "no answer"), 503, "token_unavailable"),
    ],
)
async def test_engine_errors_on_the_slow_path_map_to_statuses(
    error: HaasdError, status: int, error_type: str
) -> None:
    service = FakeService([make_grant(ttl=10)])
    service.outcome[MARIA] = error
    async with serving(service) as s:
        reply = await get(s.path, f"/v1/tokens/{MARIA}?min_ttl=60")
    assert (status, error_type) == (reply.status, reply.error_type)


async def test_unknown_human_is_404() -> None:
    async with serving() as s:
        reply = await get(s.path, "/v1/tokens/usr_nobody")
    assert (reply.status, reply.error_type) == (404, "unknown_human")
    assert {"code", "type", "message"} == set(reply.json()["error"])


async def test_a_dead_grant_is_409_at_once_but_a_live_token_of_it_is_still_served() -> None:
    dead = make_grant(ttl=0, state=State.NEEDS_RECONSENT, last_error="invalid_grant")
    ending = make_grant("usr_ending_1", state=State.NEEDS_RECONSENT, ttl=900)
    service = FakeService([dead, ending])
    async with serving(service) as s:
        refused = await get(s.path, f"/v1/tokens/{MARIA}")
        served = await get(s.path, "/v1/tokens/usr_ending_1")
    assert (refused.status, refused.error_type) == (409, "needs_reconsent")
    assert "invalid_grant" in refused.json()["error"]["message"]
    assert served.status == 200
    assert service.ensured == []


async def test_scope_must_be_held_by_the_grant() -> None:
    async with serving() as s:
        held = await get(s.path, f"/v1/tokens/{MARIA}?scope=tasks:dispatch+status:read")
        missing = await get(s.path, f"/v1/tokens/{MARIA}?scope=tasks:dispatch%20profile:read")
    assert held.status == 200
    assert (missing.status, missing.error_type) == (403, "insufficient_scope")
    assert "profile:read" in missing.json()["error"]["message"]


@pytest.mark.parametrize(
    "target",
    [
        "/v1/tokens/maria",
        "/v1/tokens/usr_MARIA",
        "/v1/tokens/usr_maria%2F42",
        "/v1/tokens/usr_",
        f"/v1/tokens/usr_{'x' * 65}",
        f"/v1/tokens/{MARIA}?min_ttl=-1",
        f"/v1/tokens/{MARIA}?min_ttl=abc",
        f"/v1/tokens/{MARIA}?min_ttl=1.5",
        f"/v1/tokens/{MARIA}?min_ttl=",
        f"/v1/tokens/{MARIA}?min_ttl=86401",
        f"/v1/tokens/{MARIA}?min_ttl=99999999999999999999",
        f"/v1/tokens/{MARIA}?min_ttl=%D9%A1",
        f"/v1/tokens/{MARIA}?min_ttl=1&min_ttl=2",
        f"/v1/tokens/{MARIA}?minttl=60",
        f"/v1/tokens/{MARIA}?scope=",
        f"/v1/tokens/{MARIA}?&&",
        f"/v1/tokens/{MARIA}?%FF=1",
    ],
)
async def test_invalid_requests_are_400(target: str) -> None:
    async with serving() as s:
        reply = await get(s.path, target)
    assert (reply.status, reply.error_type) == (400, "invalid_request")


async def test_human_id_pattern_is_configurable() -> None:
    service = FakeService([make_grant("person-7")])
    async with serving(service, human_id_pattern=re.compile(r"person-\d+")) as s:
        person = await get(s.path, "/v1/tokens/person-7")
        usr = await get(s.path, f"/v1/tokens/{MARIA}")
    assert (person.status, usr.status) == (200, 400)


# --- access rules ---------------------------------------------------------------------------


async def test_a_peer_without_a_rule_is_forbidden_and_audited() -> None:
    from structlog.testing import capture_logs

    async with serving(rules=[rule(uid=4242)]) as s:
        with capture_logs() as logs:
            reply = await get(s.path, f"/v1/tokens/{MARIA}")
    assert (reply.status, reply.error_type) == (403, "forbidden")
    denied = [e for e in logs if e["event"] == "access.denied"]
    assert len(denied) == 1
    assert (os.geteuid(), "connect") == (denied[0]["peer_uid"], denied[0]["route"])
    assert s.service.served == []


async def test_rules_grant_only_the_humans_their_globs_match() -> None:
    service = FakeService([make_grant(), make_grant("usr_team_a", token="fake-access-team-a")])
    async with serving(service, [rule(humans=("usr_team_*",))]) as s:
        team = await get(s.path, "/v1/tokens/usr_team_a")
        maria = await get(s.path, f"/v1/tokens/{MARIA}")
        status = await get(s.path, f"/v1/humans/{MARIA}")
    assert team.status == 200
    assert (maria.status, maria.error_type) == (403, "forbidden")
    assert status.status == 403


async def test_a_rule_with_scopes_serves_no_token_that_can_do_more() -> None:
    """Least privilege: a status:read peer never gets a token that can dispatch tasks."""
    service = FakeService([make_grant(), make_grant("usr_reader_1", scope=("status:read",))])
    async with serving(service, [rule(scopes=("status:read",))]) as s:
        reader = await get(s.path, "/v1/tokens/usr_reader_1")
        wider = await get(s.path, f"/v1/tokens/{MARIA}")
        beyond = await get(s.path, "/v1/tokens/usr_reader_1?scope=tasks:dispatch")
        missing = await get(s.path, "/v1/tokens/usr_reader_1?scope=status:read")
    assert reader.status == 200 and reader.json()["scope"] == "status:read"
    assert (wider.status, wider.error_type) == (403, "insufficient_scope")
    assert wider.json()["error"]["scopes"] == ["tasks:dispatch"]
    assert "consent for fewer scopes" in wider.json()["error"]["message"]
    assert "access_token" not in wider.json()
    assert (beyond.status, beyond.error_type) == (403, "forbidden")
    assert missing.status == 200


async def test_a_rule_with_scopes_needs_a_grant_holding_what_is_asked() -> None:
    service = FakeService([make_grant("usr_reader_1", scope=("status:read",))])
    async with serving(service, [rule(scopes=("tasks:dispatch", "status:read"))]) as s:
        plain = await get(s.path, "/v1/tokens/usr_reader_1")
        asked = await get(s.path, "/v1/tokens/usr_reader_1?scope=tasks:dispatch")
    assert plain.status == 200
    assert (asked.status, asked.error_type) == (403, "insufficient_scope")


async def test_new_rules_apply_to_open_connections() -> None:
    async with serving() as s, RawClient.connect(s.path) as client:
        before = await client.request("GET", f"/v1/tokens/{MARIA}")
        s.server.update_rules([rule(humans=("usr_team_*",))])
        after = await client.request("GET", f"/v1/tokens/{MARIA}")
    assert (before.status, after.status) == (200, 403)


# --- humans ------------------------------------------------------------------------------------


async def test_status_shows_everything_but_a_token() -> None:
    async with serving() as s:
        reply = await get(s.path, f"/v1/humans/{MARIA}")
        missing = await get(s.path, "/v1/humans/usr_nobody")
    assert reply.status == 200
    status = reply.json()
    assert (
        status["human_id"],
        status["state"],
        status["scope"],
    ) == (MARIA, "active", "tasks:dispatch status:read")
    assert status["access_expires_at"] == "2027-01-15T09:00:00Z"
    assert b"fake-access" not in reply.body and b"fake-refresh" not in reply.body
    assert missing.status == 404


async def test_humans_lists_every_grant_for_an_admin_only() -> None:
    service = FakeService([make_grant("usr_b"), make_grant("usr_a")])
    async with serving(service) as s:
        admin = await get(s.path, "/v1/humans")
        s.server.update_rules([rule()])
        plain = await get(s.path, "/v1/humans")
    assert [h["human_id"] for h in admin.json()["humans"]] == ["usr_a", "usr_b"]
    assert (plain.status, plain.error_type) == (403, "forbidden")


async def test_refresh_now_answers_the_new_status() -> None:
    service = FakeService([make_grant()])
    service.outcome[MARIA] = make_grant(token="fake-access-maria-2", ttl=3000)
    async with serving(service) as s:
        reply = await get(s.path, f"/v1/humans/{MARIA}/refresh", "POST")
    assert reply.status == 200
    assert reply.json()["access_expires_at"] == "2027-01-15T08:50:00Z"
    assert service.refreshed == [MARIA]


@pytest.mark.parametrize(
    ("error", "status", "error_type"),
    [
        (
            TransientAuthError("server_error", "HaaS answered 503", status=503),
            502,
            "refresh_failed",
        ),
        (InvalidGrantError("invalid_grant", "refresh token revoked"), 502, "refresh_failed"),
        (NeedsReconsentError(MARIA, "refresh_token_expired"), 409, "needs_reconsent"),
        (UnknownHumanError(MARIA), 404, "unknown_human"),
        (TokenUnavailableError(MARIA, "rate limited", 7.0), 503, "token_unavailable"),
    ],
)
async def test_refresh_now_failures(error: HaasdError, status: int, error_type: str) -> None:
    service = FakeService([make_grant(last_error=None)])
    service.outcome[MARIA] = error
    async with serving(service) as s:
        reply = await get(s.path, f"/v1/humans/{MARIA}/refresh", "POST")
    assert (status, error_type) == (reply.status, reply.error_type)
    if status == 502:
        assert str(error) == reply.json()["error"]["last_error"]
        revoked = isinstance(error, InvalidGrantError)
        assert ("must consent again" in reply.json()["error"]["message"]) is revoked
        assert ("tokens are unchanged" in reply.json()["error"]["message"]) is not revoked


async def test_refresh_and_delete_need_an_admin() -> None:
    async with serving(rules=[rule()]) as s:
        refresh = await get(s.path, f"/v1/humans/{MARIA}/refresh", "POST")
        delete = await get(s.path, f"/v1/humans/{MARIA}", "DELETE")
        metrics = await get(s.path, "/metrics")
    assert [refresh.status, delete.status, metrics.status] == [403, 403, 403]
    assert s.service.refreshed == []
    assert s.service.grant(MARIA) is not None


async def test_delete_erases_the_grant() -> None:
    async with serving() as s:
        first = await get(s.path, f"/v1/humans/{MARIA}", "DELETE")
        second = await get(s.path, f"/v1/humans/{MARIA}", "DELETE")
        token = await get(s.path, f"/v1/tokens/{MARIA}")
    assert (first.status, first.body) == (204, b"")
    assert "content-length" not in first.headers
    assert (second.status, second.error_type) == (404, "unknown_human")
    assert token.status == 404


@pytest.mark.parametrize(
    ("method", "target", "allow"),
    [
        ("POST", f"/v1/tokens/{MARIA}", "GET"),
        ("PUT", f"/v1/humans/{MARIA}", "GET, DELETE"),
        ("GET", f"/v1/humans/{MARIA}/refresh", "POST"),
        ("DELETE", "/v1/health", "GET"),
        ("POST", "/v1/events", "GET"),
        ("POST", "/v1/humans", "GET"),
        ("POST", "/metrics", "GET"),
    ],
)
async def test_wrong_methods_are_405_with_allow(method: str, target: str, allow: str) -> None:
    async with serving() as s:
        reply = await get(s.path, target, method)
    assert (405, "method_not_allowed", allow) == (
        reply.status,
        reply.error_type,
        reply.headers["allow"],
    )


async def test_unknown_routes_are_404_not_found() -> None:
    async with serving() as s:
        reply = await get(s.path, "/v2/tokens")
    assert (reply.status, reply.error_type) == (404, "not_found")


# --- HTTP/1.1 ---------------------------------------------------------------------------------


async def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    async with serving() as s, RawClient.connect(s.path) as client:
        statuses = [(await client.request("GET", t)).status for t in ["/v1/health"] * 3]
        statuses.append((await client.request("GET", f"/v1/tokens/{MARIA}")).status)
        assert s.server.connections == 1
    assert statuses == [200, 200, 200, 200]


async def test_pipelined_requests_are_answered_in_order() -> None:
    request = b"GET /v1/health HTTP/1.1\r\nHost: h\r\n\r\nGET /nope HTTP/1.1\r\nHost: h\r\n\r\n"
    async with serving() as s, RawClient.connect(s.path) as client:
        await client.send(request)
        data = b""
        with anyio.fail_after(5):
            while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(b"}"):
                data += await client.stream.receive()
    assert data.index(b"200 OK") < data.index(b"404 Not Found")


async def test_connection_close_is_honoured() -> None:
    async with serving() as s, RawClient.connect(s.path) as client:
        reply = await client.request("GET", "/v1/health", [("Connection", "close")])
        assert reply.headers["connection"] == "close"
        assert await client.closed()


async def test_http_1_0_closes_after_the_answer() -> None:
    async with serving() as s, RawClient.connect(s.path) as client:
        await client.send(b"GET /v1/health HTTP/1.0\r\n\r\n")
        reply = await client.reply()
        assert (reply.status, reply.headers["connection"]) == (200, "close")
        assert await client.closed()


async def test_httpx_over_the_socket() -> None:
    async with serving() as s:
        transport = httpx.AsyncHTTPTransport(uds=s.path)
        async with httpx.AsyncClient(transport=transport, base_url="http://haasd") as client:
            token = await client.get(f"/v1/tokens/{MARIA}", params={"min_ttl": 60})
            health = await client.get("/v1/health")
    assert token.status_code == 200
    assert token.json()["access_token"] == "fake-access-maria-1"
    assert health.json()["status"] == "ok"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_over_the_socket() -> None:
    async with serving() as s:
        result = await anyio.run_process(
            ["curl", "-sS", "--unix-socket", s.path, f"http://haasd/v1/tokens/{MARIA}?min_ttl=5"]
        )
    assert json.loads(result.stdout)["access_token"] == "fake-access-maria-1"


async def test_the_server_stops_cleanly_and_lets_a_request_in_flight_finish() -> None:
    service = FakeService([make_grant(ttl=10)])
    service.outcome[MARIA] = make_grant(token="fake-access-maria-2")
    service.gate = anyio.Event()
    async with (
        serving(service) as s,
        RawClient.connect(s.path) as busy,
        RawClient.connect(s.path) as idle,
    ):
        await busy.send(f"GET /v1/tokens/{MARIA}?min_ttl=60 HTTP/1.1\r\n\r\n".encode())
        await anyio.wait_all_tasks_blocked()
        s.stop.cancel()  # stop serving while the refresh is awaited
        await anyio.wait_all_tasks_blocked()
        assert await idle.closed()
        service.gate.set()
        reply = await busy.reply()
    assert reply.status == 200
    assert reply.headers["connection"] == "close"
    assert reply.json()["access_token"] == "fake-access-maria-2"


async def test_a_stop_does_not_wait_past_the_grace_for_a_stuck_answer() -> None:
    service = FakeService([make_grant(ttl=10)])
    service.gate = anyio.Event()  # never set: the refresh never ends
    async with (
        serving(service, limits=Limits(shutdown_grace=0.2)) as s,
        RawClient.connect(s.path) as stuck,
    ):
        await stuck.send(f"GET /v1/tokens/{MARIA}?min_ttl=60 HTTP/1.1\r\n\r\n".encode())
        await anyio.wait_all_tasks_blocked()
        started = anyio.current_time()
        s.stop.cancel()
        assert await stuck.closed()
        assert anyio.current_time() - started < 2


async def test_a_server_serves_once() -> None:
    async with serving() as s, await anyio.create_unix_listener(s.path + "2") as another:
        with pytest.raises(RuntimeError, match="serves once"):
            await s.server.serve(another)


def test_public_surface_is_complete_and_sorted() -> None:
    exported = haasd.server.__all__
    assert sorted(exported, key=isort_order) == list(exported)
    assert all(hasattr(haasd.server, name) for name in exported)
    for module in (
        haasd.server.access,
        haasd.server.answers,
        haasd.server.http,
        haasd.server.listener,
        haasd.server.metrics,
        haasd.server.routes,
        haasd.server.server,
        haasd.server.stream,
    ):
        assert sorted(module.__all__, key=isort_order) == list(module.__all__)
        assert all(hasattr(module, name) for name in module.__all__)


def test_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="max_head"):
        Limits(max_head=0)
    with pytest.raises(ValueError, match="idle_timeout"):
        Limits(idle_timeout=float("inf"))
    assert Limits(audit_window=0).audit_window == 0


def test_grants_are_replaced_not_mutated() -> None:
    grant = make_grant()
    assert replace(grant, access_token=Secret("x")).access_token != grant.access_token
