"""Consents over the socket API and from a terminal: the whole daemon in-process against the
simulator (as in test_daemon), the CLI as subprocesses against it."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
import httpx
import pytest
from support import isort_order, serving
from support_daemon import (
    MARIA,
    Running,
    cli_env,
    daemon_running,
    error_of,
    haasd_cli,
    query,
    without,
)

import haasd.client
import haasd.client._listen
import haasd.server.consents
from haasd.client import (
    AsyncHaasdClient,
    ConsentDenied,
    HaasdClient,
    HaasdClientError,
    InvalidConsentState,
)
from haasd.client._model import EventParser
from haasd.config import STAR_SCOPE_ADVICE, AccessRule

CONSENT = "/v1/consents"
#: the warning comes 5 minutes after a consent: a re-consent is due within a test's reach
EARLY_WARNING = "[refresh]\nreconsent_warning = 2591700\n"


@pytest.fixture
async def api(workdir: Path) -> AsyncIterator[Running]:
    async with daemon_running(workdir) as running:
        yield running


# --- the socket API -------------------------------------------------------------------------


async def test_a_consent_approved_through_the_api_serves_tokens(api: Running) -> None:
    settings = await api.http.get("/v1/consents")
    assert settings.json() == {
        "redirect_uri": "http://127.0.0.1:8765/callback",
        "loopback": True,
        "pending_ttl": 900.0,
        "max_pending": 1000,
    }
    api.sim.queue_human("usr_ana_1")
    started = await api.start()
    assert started.status_code == 201
    body = started.json()
    assert body["scope"] == "tasks:dispatch status:read"
    assert body["reconsent"] is False
    assert "human_id" not in body
    assert body["expires_at"].endswith("Z")
    assert query(body["authorization_url"])["state"] == body["state"]
    assert body["redirect_uri"] == "http://127.0.0.1:8765/callback"

    finished = await api.callback(callback_url=await api.approve(body["authorization_url"]))

    assert finished.status_code == 201
    granted = finished.json()
    assert granted["human_id"] == "usr_ana_1"
    assert granted["state"] == "active"
    assert granted["scope"] == "tasks:dispatch status:read"
    assert granted["reconsent_days_left"] == 30
    assert (granted["replaced"], granted["different_human"]) == (False, False)
    assert granted["consent_id"] == body["consent_id"]
    assert "expected_human_id" not in granted
    assert "access_token" not in finished.text
    token = await api.http.get("/v1/tokens/usr_ana_1")
    assert token.status_code == 200
    assert api.sim.validate_access_token(token.json()["access_token"]) == "usr_ana_1"
    humans = {row["human_id"] for row in (await api.http.get("/v1/humans")).json()["humans"]}
    assert humans == {MARIA, "usr_ana_1"}


async def test_a_callback_may_bring_state_and_code_instead_of_the_url(api: Running) -> None:
    body = (await api.start(scopes=["status:read"])).json()
    back = query(await api.approve(body["authorization_url"]))
    finished = await api.callback(state=back["state"], code=back["code"])
    assert finished.status_code == 201
    assert finished.json()["scope"] == "status:read"


async def test_a_denied_consent_is_403_and_used_up(api: Running) -> None:
    api.sim.add_human("usr_no_1", "deny")
    exchanges = len(api.sim.requests_log)  # the seeded grant's
    body = (await api.start(human_id="usr_no_1")).json()
    assert body["human_id"] == "usr_no_1"
    location = await api.approve(body["authorization_url"])

    denied = await api.callback(callback_url=location)
    assert denied.status_code == 403
    error = error_of(denied)
    assert (error["type"], error["error"]) == ("consent_denied", "access_denied")
    again = await api.callback(callback_url=location)
    assert (again.status_code, error_of(again)["type"]) == (400, "invalid_state")
    assert len(api.sim.requests_log) == exchanges, "nothing was ever exchanged"


async def test_a_replayed_or_unknown_state_is_400_without_an_exchange(api: Running) -> None:
    body = (await api.start()).json()
    location = await api.approve(body["authorization_url"])
    assert (await api.callback(callback_url=location)).status_code == 201
    exchanges = len(api.sim.requests_log)

    replayed = await api.callback(callback_url=location)
    unknown = await api.callback(state="never-issued", code="whatever")
    for answer in (replayed, unknown):
        assert answer.status_code == 400
        assert error_of(answer)["type"] == "invalid_state"
        assert error_of(answer)["reason"] == "unknown"
    assert len(api.sim.requests_log) == exchanges


@pytest.mark.parametrize(
    ("body", "error_type", "message"),
    [
        ({"scopes": ["profile:read"]}, "scope_not_allowed", "never widen"),
        ({"scopes": ["status:read", "tasks:dispatch", "tasks:read"]}, "scope_not_allowed", ""),
        ({"scopes": ["*"]}, "invalid_scope", STAR_SCOPE_ADVICE),
        ({"scopes": "*"}, "invalid_scope", STAR_SCOPE_ADVICE),
        ({"scopes": ["status:write"]}, "invalid_scope", "unknown scope"),
        ({"scopes": []}, "invalid_scope", "at least one"),
        ({"scopes": [1]}, "invalid_request", "scopes must be"),
        ({"human_id": "Maria <script>"}, "invalid_request", "not a human id"),
        ({"human": MARIA}, "invalid_request", "unknown field human"),
        ({"redirect_uri": "http://127.0.0.1:9/elsewhere"}, "invalid_request", "more than its port"),
    ],
)
async def test_what_may_not_be_asked_for_is_400(
    api: Running, body: dict[str, Any], error_type: str, message: str
) -> None:
    answer = await api.start(**body)
    assert answer.status_code == 400
    error = error_of(answer)
    assert error["type"] == error_type
    assert message in error["message"]
    assert await api.daemon.store.list_pending() == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b"[" * 5000 + b"]" * 5000, "not JSON"),
        (b'{"callback_url": "http://127.0.0.1:8765/cb?state=s&code=c", "state": "s"}', "not both"),
        (b'{"state": "s"}', "either code or error"),
        (b'{"state": "s", "code": "c", "error": "access_denied"}', "either code or error"),
        (b'{"state": "s", "code": "c", "error_description": "x"}', "goes with error"),
        (b'{"callback_url": "https://evil.example/callback?state=s&code=c"}', ""),
        (b'{"callback_url": "http://127.0.0.1:8765/callback?code=c"}', "no state"),
        (b'{"state": ""}', "non-empty string"),
    ],
)
async def test_a_malformed_callback_is_400(api: Running, content: bytes, message: str) -> None:
    answer = await api.http.post("/v1/consents/callback", content=content)
    assert answer.status_code == 400
    assert error_of(answer)["type"] in {"invalid_request", "invalid_state"}
    assert message in error_of(answer)["message"]


_CB = "/v1/consents/callback"
_URL = "http://127.0.0.1:8765/callback"


@pytest.mark.parametrize(
    ("target", "content", "message"),
    [
        (_CB, b'{"state": "\\ud800", "code": "x"}', "state holds a character that is not"),
        (_CB, b'{"state": "s", "code": "\\u001b[31mx"}', "code holds"),
        (_CB, b'{"state": "s", "code": "' + b"c" * 5000 + b'"}', "code is too long"),
        (_CB, b'{"state": "s", "code": "c\\u00e9"}', "code must be ASCII"),
        (_CB, b'{"state": "s", "error": "e", "error_description": "\\u001b]0;x\\u0007"}', "error_"),
        (_CB, b'{"state": "s", "error": "access_denied\\u0000"}', "error holds"),
        (_CB, '{"state": "s", "code": "x"}'.encode("utf-16"), "not UTF-8"),
        (_CB, b'{"state": "\xff", "code": "x"}', "not UTF-8"),
        (_CB, b'{"state": "a", "state": "b", "code": "x"}', "field state is given more than once"),
        (_CB, b'{"state": NaN, "code": "x"}', "state must be a non-empty string"),
        (_CB, b'{"state": ' + b"1" * 5000 + b', "code": "x"}', "not JSON"),
        (_CB, b'{"callback_url": "' + _URL.encode() + b'?state=%00&code=c"}', "URL's state holds"),
        (_CB, b'{"callback_url": "' + _URL.encode() + b'?state=\\udc80&code=c"}', "callback_url"),
        (CONSENT, b'{"human_id": "usr_\\ud800"}', "human_id holds"),
        (
            CONSENT,
            b'{"redirect_uri": "http://127.0.0.1:9/caf\\u00e9"}',
            "redirect_uri must be ASCII",
        ),
        (CONSENT, b'{"scopes": ["status:read\\u0000"]}', "scopes[0] holds"),
        (CONSENT, b'{"scopes": "status:read\\u2028"}', "scopes holds"),
        (CONSENT, b'{"scopes": [[["status:read"]]]}', "scopes must be a list"),
        (CONSENT, b'{"scopes": ' + b"[" * 30000 + b"]" * 30000 + b"}", "nested too deeply"),
        (CONSENT, b'{"\\u001b[2J": 1}', "unknown field '\\x1b[2J'"),
    ],
)
async def test_undecodable_or_unprintable_input_is_400_naming_the_field(
    api: Running, target: str, content: bytes, message: str
) -> None:
    pending = await api.daemon.store.list_pending()
    answer = await api.http.post(target, content=content)
    assert answer.status_code == 400, answer.text
    error = error_of(answer)
    assert error["type"] == "invalid_request"
    assert message in error["message"]
    assert error["message"].isprintable()
    assert await api.daemon.store.list_pending() == pending
    assert (await api.http.get("/v1/health")).status_code == 200, "the daemon carries on"


async def test_a_callback_url_for_another_redirect_consumes_nothing(api: Running) -> None:
    body = (await api.start()).json()
    location = await api.approve(body["authorization_url"])
    elsewhere = location.replace("127.0.0.1:8765", "127.0.0.1:8766")
    refused = await api.callback(callback_url=elsewhere)
    assert (refused.status_code, error_of(refused)["type"]) == (400, "invalid_request")
    assert (await api.callback(callback_url=location)).status_code == 201


async def test_a_transient_exchange_failure_is_503_and_the_same_callback_then_works(
    api: Running,
) -> None:
    location = await api.approve((await api.start()).json()["authorization_url"])
    api.sim.fail_next(1, status=503)

    failed = await api.callback(callback_url=location)
    assert failed.status_code == 503
    error = error_of(failed)
    assert error["type"] == "exchange_unavailable"
    assert error["server_error"] == "temporarily_unavailable"
    assert error["retry_after"] >= 1
    assert failed.headers["retry-after"] == str(error["retry_after"])
    assert len(await api.daemon.store.list_pending()) == 1

    retried = await api.callback(callback_url=location)
    assert retried.status_code == 201
    assert await api.daemon.store.list_pending() == []


async def test_a_code_the_server_refuses_is_502_with_its_error(api: Running) -> None:
    location = await api.approve((await api.start()).json()["authorization_url"])
    api.sim.fail_next(1, status=400, body={"error": "invalid_grant", "error_description": "no"})
    refused = await api.callback(callback_url=location)
    assert refused.status_code == 502
    error = error_of(refused)
    assert (error["type"], error["server_error"], error["server_status"]) == (
        "exchange_failed",
        "invalid_grant",
        400,
    )
    again = await api.callback(callback_url=location)
    assert error_of(again)["type"] == "invalid_state"


async def test_the_pending_table_full_is_503_with_retry_after(workdir: Path) -> None:
    async with daemon_running(workdir, "[consent]\nmax_pending = 1\n") as api:
        assert (await api.start()).status_code == 201
        full = await api.start()
        assert full.status_code == 503
        error = error_of(full)
        assert (error["type"], error["limit"], error["retry_after"]) == ("consent_limit", 1, 900)
        assert full.headers["retry-after"] == "900"


async def test_only_admins_may_take_consents(api: Running) -> None:
    location = await api.approve((await api.start()).json()["authorization_url"])
    api.non_admin()
    answers = [
        await api.http.get("/v1/consents"),
        await api.start(),
        await api.start(scopes=["*"]),  # refused for who asks, before what is asked
        await api.http.post("/v1/consents", content=b"not json"),
        await api.callback(callback_url=location),
    ]
    assert [(a.status_code, error_of(a)["type"]) for a in answers] == [(403, "forbidden")] * 5
    assert len(await api.daemon.store.list_pending()) == 1, "the consent was not touched"
    assert (await api.http.get(f"/v1/humans/{MARIA}")).status_code == 200, "still a reader"


async def test_an_admin_for_some_humans_may_ask_only_those(api: Running) -> None:
    rule = AccessRule(uid=os.geteuid(), gid=None, humans=("usr_a*",), scopes=None, admin=True)
    api.daemon.server.update_rules([rule])
    assert (await api.start(human_id="usr_ana_1")).status_code == 201
    other = await api.start(human_id=MARIA)
    assert (other.status_code, error_of(other)["type"]) == (403, "forbidden")


async def test_wrong_methods_and_routes(api: Running) -> None:
    put = await api.http.put("/v1/consents")
    assert (put.status_code, put.headers["allow"]) == (405, "GET, POST")
    get = await api.http.get("/v1/consents/callback")
    assert (get.status_code, get.headers["allow"]) == (405, "POST")
    assert (await api.http.get("/v1/consents/elsewhere")).status_code == 404


async def test_a_server_without_a_consent_flow_answers_404() -> None:
    async with serving() as served:
        transport = httpx.AsyncHTTPTransport(uds=served.path)
        async with httpx.AsyncClient(transport=transport, base_url="http://haasd") as http:
            answer = await http.post("/v1/consents", json={})
    assert (answer.status_code, error_of(answer)["type"]) == (404, "not_found")


# --- re-consent ---------------------------------------------------------------------------


async def next_event(lines: AsyncIterator[str], parser: EventParser, kind: str) -> dict[str, Any]:
    with anyio.fail_after(10):
        async for line in lines:
            event = parser.feed(line)
            if event is not None and event["type"] == kind:
                return event
    raise AssertionError(f"the stream ended before a {kind} event")


async def test_a_flagged_human_re_consents_through_the_api(workdir: Path) -> None:
    async with (
        daemon_running(workdir, EARLY_WARNING) as api,
        api.http.stream("GET", "/v1/events") as stream,
    ):
        lines, parser = stream.aiter_lines(), EventParser()
        old = (await api.http.get(f"/v1/humans/{MARIA}")).json()
        await api.clock.advance(600)

        due = await next_event(lines, parser, "grant.reconsent_due")
        assert due["human_id"] == MARIA
        assert due["refresh_expires_at"] == old["refresh_expires_at"]
        assert due["days_left"] == 29
        (row,) = (await api.http.get("/v1/humans")).json()["humans"]
        assert row["state"] == "reconsent_due"
        assert row["human_id"] == MARIA
        assert row["refresh_expires_at"] == old["refresh_expires_at"]
        assert row["reconsent_days_left"] == 29

        body = (await api.start(human_id=MARIA)).json()
        assert (body["human_id"], body["reconsent"]) == (MARIA, True)
        assert query(body["authorization_url"])["login_hint"] == MARIA
        started = await next_event(lines, parser, "consent.started")
        assert (started["human_id"], started["consent_id"]) == (MARIA, body["consent_id"])

        finished = await api.callback(callback_url=await api.approve(body["authorization_url"]))
        assert finished.status_code == 201
        granted = finished.json()
        assert (granted["human_id"], granted["replaced"], granted["state"]) == (
            MARIA,
            True,
            "active",
        )
        assert granted["refresh_expires_at"] > old["refresh_expires_at"]
        event = await next_event(lines, parser, "consent.granted")
        assert (event["human_id"], event["replaced"]) == (MARIA, True)


async def test_another_human_approving_a_re_consent_is_said_so(api: Running) -> None:
    before = (await api.http.get(f"/v1/humans/{MARIA}")).json()
    body = (await api.start(human_id=MARIA)).json()
    api.sim.queue_human("usr_bob_7")  # signed in at the server, which ignores the hint
    location = await api.approve(without(body["authorization_url"], "login_hint"))
    granted = (await api.callback(callback_url=location)).json()
    assert granted["human_id"] == "usr_bob_7"
    assert (granted["different_human"], granted["expected_human_id"]) == (True, MARIA)
    assert granted["replaced"] is False
    assert (await api.http.get(f"/v1/humans/{MARIA}")).json() == before


async def test_consent_events_go_to_admins_only(api: Running) -> None:
    async with api.http.stream("GET", "/v1/events") as admin_stream:
        await api.start()
        event = await next_event(admin_stream.aiter_lines(), EventParser(), "consent.started")
        assert event["human_id"] is None
    api.non_admin()
    async with api.http.stream("GET", "/v1/events") as stream:
        await api.daemon.consent.start()  # no human yet: for admins only
        await api.daemon.consent.start(human_id=MARIA)  # this reader's human, still admin's
        await api.clock.advance(901)  # both expire: consent.abandoned, also admins' only
        await api.daemon.refresher.refresh_now(MARIA)  # this reader sees token events
        lines, parser = stream.aiter_lines(), EventParser()
        with anyio.fail_after(10):
            async for line in lines:
                seen = parser.feed(line)
                if seen is not None:
                    assert seen["type"] == "token.refreshed", seen
                    break


# --- the client -------------------------------------------------------------------------------


async def test_the_clients_start_and_finish_consents(api: Running) -> None:
    async with AsyncHaasdClient(api.socket) as client:
        settings = await client.consent_settings()
        assert settings.loopback
        started = await client.start_consent("status:read", MARIA)
        assert (started.human_id, started.scope, started.reconsent) == (
            MARIA,
            ("status:read",),
            True,
        )
        assert started.state not in repr(started)
        location = await api.approve(started.authorization_url)
        finished = await client.finish_consent(callback_url=location)
        assert (finished.human_id, finished.scope, finished.replaced) == (
            MARIA,
            ("status:read",),
            True,
        )
        with pytest.raises(InvalidConsentState):
            await client.finish_consent(callback_url=location)
        with pytest.raises(HaasdClientError) as star:
            await client.start_consent(["*"])
        assert star.value.error_type == "invalid_scope"
        with pytest.raises(ValueError, match="either code or error"):
            await client.finish_consent(state="s")

    api.sim.add_human("usr_no_2", "deny")

    def in_a_thread() -> None:
        with HaasdClient(api.socket) as client:
            started = client.start_consent(human_id="usr_no_2")
            assert not started.reconsent
            back = query(anyio.from_thread.run(api.approve, started.authorization_url))
            with pytest.raises(ConsentDenied) as denied:
                client.finish_consent(state=back["state"], error=back["error"])
            assert denied.value.details["error"] == "access_denied"

    await anyio.to_thread.run_sync(in_a_thread)


# --- from a terminal ------------------------------------------------------------------------


async def test_consent_start_and_finish_from_a_terminal(api: Running) -> None:
    api.sim.queue_human("usr_cli_1")
    socket = ("--socket", api.socket)
    code, out, err = await haasd_cli("consent", "start", "--scope", "status:read", *socket)
    assert (code, err) == (0, "")
    url, expiry = out.splitlines()
    assert url.startswith(api.sim.authorize_url + "?")
    assert expiry.startswith("expires at ") and "(in 1" in expiry
    location = await api.approve(url)

    code, out, err = await haasd_cli("consent", "finish", "--callback-url", location, *socket)
    assert (code, err) == (0, "")
    assert out.startswith("granted: usr_cli_1 (status:read); consent until ")

    code, out, err = await haasd_cli("consent", "finish", "--callback-url", location, *socket)
    assert (code, out, err.count("\n")) == (3, "", 1)
    assert err.startswith("haasd: the consent's state is unknown or was already used")

    code, out, err = await haasd_cli("consent", "start", "--human", MARIA, *socket)
    back = query(await api.approve(out.splitlines()[0]))
    # --code=C: a code may start with "-", which argparse would take for an option
    state_code = ("--state", back["state"], f"--code={back['code']}")
    code, out, err = await haasd_cli("consent", "finish", *state_code, *socket)
    assert code == 0, err
    first, second = out.splitlines()
    assert first.startswith(f"granted: {MARIA} (status:read tasks:dispatch)")  # the grant's
    assert second == f"  replaced the earlier grant of {MARIA}"


async def test_consent_commands_fail_with_one_line_and_a_distinct_code(api: Running) -> None:
    api.sim.add_human("usr_no_3", "deny")
    socket = ("--socket", api.socket)
    _, out, _ = await haasd_cli("consent", "start", "--human", "usr_no_3", *socket)
    location = await api.approve(out.splitlines()[0])
    results = {
        "denied": await haasd_cli("consent", "finish", "--callback-url", location, *socket),
        "star": await haasd_cli("consent", "start", "--scope", "*", *socket),
        "unreachable": await haasd_cli("consent", "start", "--socket", api.socket + ".gone"),
        "usage": await haasd_cli("consent", "finish", "--state", "s", *socket),
    }
    api.non_admin()
    results["forbidden"] = await haasd_cli("consent", "start", *socket)
    codes = {name: code for name, (code, _, _) in results.items()}
    assert codes == {"denied": 4, "star": 1, "unreachable": 5, "usage": 2, "forbidden": 7}
    for name, (_, out, err) in results.items():
        assert out == "", name
        assert err.count("\n") == 1 and "Traceback" not in err, name
    assert STAR_SCOPE_ADVICE in results["star"][2]
    assert "declined" in results["denied"][2]


async def read_line(stream: anyio.abc.ByteReceiveStream, buffer: bytearray) -> str:
    with anyio.fail_after(30):
        while b"\n" not in buffer:
            buffer += await stream.receive()
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


async def test_consent_listen_catches_the_loopback_redirect_end_to_end(api: Running) -> None:
    api.sim.queue_human("usr_loop_1")
    argv = [sys.executable, "-m", "haasd", "consent", "listen", "--port", "0"]
    argv += ["--socket", api.socket]
    async with await anyio.open_process(argv, env=cli_env()) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        buffer = bytearray()
        url = await read_line(proc.stdout, buffer)
        assert url.startswith(api.sim.authorize_url + "?"), url
        assert (await read_line(proc.stdout, buffer)).startswith("expires at ")
        waiting = await read_line(proc.stdout, buffer)
        redirect_uri = query(url)["redirect_uri"]
        assert waiting == f"waiting for the redirect to {redirect_uri}"
        port = urlsplit(redirect_uri).port
        assert port not in (None, 8765)

        location = await api.approve(url)
        assert location.startswith(f"http://127.0.0.1:{port}/callback?")
        async with httpx.AsyncClient(trust_env=False) as browser:
            stray = await browser.get(f"http://127.0.0.1:{port}/favicon.ico")
            page = await browser.get(location)  # as the browser follows the redirect
        assert stray.status_code == 404
        assert page.status_code == 200
        assert "usr_loop_1" in page.text and "You can close this tab" in page.text

        with anyio.fail_after(30):
            code = await proc.wait()
        rest = bytes(buffer)
        async for chunk in proc.stdout:
            rest += chunk
        err = b"".join([chunk async for chunk in proc.stderr]).decode()
    assert code == 0, err
    assert rest.decode().startswith("granted: usr_loop_1 (tasks:dispatch status:read)")
    assert api.daemon.refresher.grant("usr_loop_1") is not None
    with pytest.raises(httpx.ConnectError):  # the port is closed
        async with httpx.AsyncClient(trust_env=False) as browser:
            await browser.get(location)


async def test_consent_listen_gives_up_in_time(api: Running) -> None:
    code, out, err = await haasd_cli(
        "consent", "listen", "--port", "0", "--timeout", "0", "--socket", api.socket
    )
    assert code == 9
    assert out.splitlines()[0].startswith(api.sim.authorize_url)
    assert err.startswith("haasd: no redirect reached http://127.0.0.1:")


async def test_listen_needs_a_loopback_redirect_uri(workdir: Path) -> None:
    async with daemon_running(workdir, redirect_uri="https://app.example/callback") as api:
        assert (await api.http.get("/v1/consents")).json()["loopback"] is False
        code, out, err = await haasd_cli("consent", "listen", "--socket", api.socket)
    assert (code, out) == (1, "")
    assert err.startswith("haasd: the redirect URI https://app.example/callback is not a loopback")


def test_the_new_modules_name_what_they_export() -> None:
    for module in (haasd.client._listen, haasd.server.consents):
        assert sorted(module.__all__, key=isort_order) == list(module.__all__)
        assert all(hasattr(module, name) for name in module.__all__)
    assert haasd.client.listen_for_consent is haasd.client._listen.listen_for_consent
    with pytest.raises(AttributeError):
        _ = haasd.client.no_such_name
