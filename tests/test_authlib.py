"""haasd end to end against an independent authorization server: Authlib, stock settings.

The whole daemon runs in this process on the system clock (the server uses real time:
its access tokens live 20 s), serving a real Unix socket; the server runs over loopback
HTTP (tests/authlib_server.py). The test plays the human's browser. What the server saw
— how haasd authenticated, which refresh token it presented, what it revoked — comes from
the server's own records; whether a served token is good comes from its RFC 7662
introspection.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest
from authlib_server import AuthlibServer, Client, TokenRecord
from support_daemon import write_key

from haasd.app import Daemon, run
from haasd.client._model import EventParser
from haasd.config import load_config

ADA = "usr_ada_1"
BOB = "usr_bob_2"
CLIENT_ID = "haasd-e2e"
#: characters Basic credentials must form-urlencode (RFC 6749 §2.3.1)
CLIENT_SECRET = "e2e-secret:with/odd%41chars+"
REDIRECT_URI = "http://127.0.0.1:8765/callback"
SCOPE = "tasks:dispatch status:read"
#: a rotation the server answered this long before a token was served may not have reached
#: haasd's memory yet (the answer in flight, the store's fsync): such a token is served
#: already revoked by the rotation, and that is no fault
SWAP_LAG = 1.0


def a_client(method: str = "client_secret_basic") -> Client:
    return Client(
        CLIENT_ID,
        CLIENT_SECRET,
        redirect_uris=(REDIRECT_URI,),
        scope=SCOPE,
        token_endpoint_auth_method=method,
    )


def basic(client_id: str, client_secret: str) -> str:
    """RFC 6749 §2.3.1: each form-urlencoded, then HTTP Basic."""
    pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


def write_config(
    directory: Path,
    server: AuthlibServer,
    *,
    auth_method: str = "client_secret_basic",
    request_format: str = "form",
    haas: str = "",
    extra: str = "",
) -> Path:
    write_key(directory)
    config = directory / "haasd.toml"
    config.write_text(
        f"""
[haas]
environment = "test"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
authorize_url = "{server.authorize_url}"
token_url = "{server.token_url}"
revocation_url = "{server.revocation_url}"
redirect_uri = "{REDIRECT_URI}"
token_request_format = "{request_format}"
token_endpoint_auth_method = "{auth_method}"
plan = "pro"
{haas}
[store]
path = "haasd.db"
key_file = "store.key"
[socket]
path = "haasd.sock"
{extra}
"""
    )
    return config


@dataclass
class Running:
    daemon: Daemon
    server: AuthlibServer
    http: httpx.AsyncClient

    async def start(self, **body: Any) -> httpx.Response:
        return await self.http.post("/v1/consents", json=body)

    async def onboard(self, human_id: str | None = ADA, **body: Any) -> httpx.Response:
        """A consent through the socket API, approved at the server by ``human_id`` (or
        ADA when the consent names no one): the callback's answer."""
        if human_id is not None:
            body["human_id"] = human_id
        started = await self.start(**body)
        assert started.status_code == 201, started.text
        url = started.json()["authorization_url"]
        callback = await self.server.approve(url, human_id or ADA)
        return await self.http.post("/v1/consents/callback", json={"callback_url": callback})

    async def token(self, human_id: str = ADA) -> httpx.Response:
        return await self.http.get(f"/v1/tokens/{human_id}")


@asynccontextmanager
async def haasd_against(
    directory: Path, server: AuthlibServer, **config: str
) -> AsyncIterator[Running]:
    """The whole daemon on the system clock, configured for ``server``, which runs."""
    with server.running():
        path = write_config(directory, server, **config)
        settings = load_config(path, {})
        async with anyio.create_task_group() as tg:
            daemon: Daemon = await tg.start(
                lambda task_status: run(
                    settings, environ={}, signals=False, task_status=task_status
                )
            )
            transport = httpx.AsyncHTTPTransport(uds=str(daemon.socket_path))
            async with httpx.AsyncClient(transport=transport, base_url="http://haasd") as http:
                yield Running(daemon, server, http)
            tg.cancel_scope.cancel()


def stock_server(**options: Any) -> AuthlibServer:
    return AuthlibServer(users=(ADA, BOB), clients=(a_client(),), **options)


def error_of(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def exchanges(server: AuthlibServer) -> list[TokenRecord]:
    return [r for r in server.requests() if r.grant_type == "authorization_code"]


async def next_event(lines: AsyncIterator[str], parser: EventParser, kind: str) -> dict[str, Any]:
    async for line in lines:
        event = parser.feed(line)
        if event is not None and event["type"] == kind:
            return event
    raise AssertionError(f"the stream ended before a {kind} event")


# --- client authentication and the request body ----------------------------------------------


async def test_basic_credentials_are_taken_for_the_code_and_every_refresh(short_dir: Path) -> None:
    async with haasd_against(short_dir, stock_server()) as run_:
        finished = await run_.onboard()
        assert finished.status_code == 201, finished.text
        refreshed = await run_.http.post(f"/v1/humans/{ADA}/refresh")
        assert refreshed.status_code == 200, refreshed.text
        seen = [
            (r.grant_type, r.credentials, r.content_type, r.status) for r in run_.server.requests()
        ]
        form = "application/x-www-form-urlencoded"
        assert seen == [
            ("authorization_code", "basic", form, 200),
            ("refresh_token", "basic", form, 200),
        ]


async def test_credentials_in_the_body_are_refused_and_haasd_names_the_key(short_dir: Path) -> None:
    async with haasd_against(short_dir, stock_server(), auth_method="client_secret_post") as run_:
        finished = await run_.onboard()
        (exchange,) = exchanges(run_.server)
        assert exchange.credentials == "body"
        assert (exchange.status, exchange.error) == (401, "invalid_client")
        assert len(run_.server.codes) == 1, "the server refused the code unspent"
        assert finished.status_code == 502, finished.text
        error = error_of(finished)
        assert (error["server_error"], error["exchanged"]) == ("invalid_client", False)
        assert "token_endpoint_auth_method" in error["message"]
        assert "client_secret_basic" in error["message"]
        assert (await run_.token()).status_code == 404


async def test_a_json_body_is_refused_and_haasd_suggests_the_form(short_dir: Path) -> None:
    async with haasd_against(short_dir, stock_server(), request_format="json") as run_:
        finished = await run_.onboard()
        (request,) = run_.server.requests()
        assert request.content_type == "application/json"
        assert (request.status, request.error) == (400, "unsupported_grant_type")
        assert finished.status_code == 502, finished.text
        error = error_of(finished)
        assert error["server_error"] == "unsupported_grant_type"
        assert 'token_request_format = "form"' in error["message"]


# --- plain RFC 6749 answers --------------------------------------------------------------------


async def test_an_answer_without_human_id_belongs_to_the_human_the_consent_named(
    short_dir: Path,
) -> None:
    async with haasd_against(short_dir, stock_server()) as run_:
        started = await run_.start(human_id=ADA)
        url = started.json()["authorization_url"]
        assert f"login_hint={ADA}" in url
        finished = await run_.http.post(
            "/v1/consents/callback", json={"callback_url": await run_.server.approve(url, ADA)}
        )
        assert finished.status_code == 201, finished.text
        assert (finished.json()["human_id"], finished.json()["scope"]) == (ADA, SCOPE)
        (exchange,) = exchanges(run_.server)
        assert "human_id" not in exchange.body and exchange.body["scope"] == SCOPE
        served = await run_.token()
        assert served.status_code == 200
        info = await run_.server.introspect(served.json()["access_token"])
        assert (info["active"], info["sub"]) == (True, ADA)


async def test_a_consent_naming_no_one_is_refused_its_tokens_revoked_and_the_next_warned(
    short_dir: Path,
) -> None:
    async with haasd_against(short_dir, stock_server()) as run_:
        finished = await run_.onboard(human_id=None)
        assert 400 <= finished.status_code < 600 and finished.status_code != 201
        message = error_of(finished)["message"]
        assert "human id" in message and "revoked" in message
        (exchange,) = exchanges(run_.server)
        assert exchange.status == 200  # the code is spent: a retry could not work
        (revocation,) = await run_.server.revocations_seen(1)
        assert revocation.token == exchange.body["refresh_token"]
        assert (revocation.credentials, revocation.status) == ("basic", 200)
        for issued in ("access_token", "refresh_token"):
            assert (await run_.server.introspect(exchange.body[issued]))["active"] is False
        assert (await run_.http.get("/v1/humans")).json()["humans"] == []
        # now haasd knows this server names no one: the next such consent is warned
        unnamed = (await run_.start()).json()
        assert "human id" in unnamed["warning"]
        assert "warning" not in (await run_.start(human_id=ADA)).json()


async def test_an_answer_without_scope_means_the_scope_requested(short_dir: Path) -> None:
    async with haasd_against(short_dir, stock_server(omit_scope=True)) as run_:
        finished = await run_.onboard(scopes=["status:read"])
        assert finished.status_code == 201, finished.text
        assert finished.json()["scope"] == "status:read"
        refreshed = await run_.http.post(f"/v1/humans/{ADA}/refresh")
        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.json()["scope"] == "status:read"
        answers = [r.body for r in run_.server.requests()]
        assert len(answers) == 2 and all("scope" not in a for a in answers)
        served = (await run_.token()).json()
        assert served["scope"] == "status:read"
        info = await run_.server.introspect(served["access_token"])
        assert (info["active"], info["scope"]) == (True, "status:read")


async def test_an_answer_without_expires_in_lives_the_configured_default(short_dir: Path) -> None:
    server = stock_server(access_lifetime=0)  # tokens that do not expire: no expires_in
    async with haasd_against(short_dir, server, haas='default_token_lifetime = "10m"') as run_:
        assert (await run_.onboard()).status_code == 201
        (exchange,) = exchanges(run_.server)
        assert "expires_in" not in exchange.body
        served = (await run_.token()).json()
        assert 590 <= served["expires_in"] <= 600
        assert (await run_.server.introspect(served["access_token"]))["active"] is True


# --- rotation, reuse, revocation ---------------------------------------------------------------


async def test_a_server_that_does_not_rotate_keeps_the_refresh_token(short_dir: Path) -> None:
    """Authlib's default refresh grant: answers carry no refresh token (RFC 6749 §6), so
    haasd presents the one it has, again."""
    quick = "[refresh]\non_demand_cooldown = 0.001\n"  # refreshes one after another
    async with haasd_against(short_dir, stock_server(rotate=False), extra=quick) as run_:
        assert (await run_.onboard()).status_code == 201
        issued = exchanges(run_.server)[0].body["refresh_token"]
        for _ in range(2):
            refreshed = await run_.http.post(f"/v1/humans/{ADA}/refresh")
            assert refreshed.status_code == 200, refreshed.text
        refreshes = run_.server.refreshes()
        assert [(r.refresh_token, r.status, "refresh_token" in r.body) for r in refreshes] == [
            (issued, 200, False)
        ] * 2
        served = (await run_.token()).json()["access_token"]
        assert served == refreshes[-1].body["access_token"]
        assert (await run_.server.introspect(served))["active"] is True


async def test_a_replayed_refresh_token_is_refused_and_the_human_must_reconsent(
    short_dir: Path,
) -> None:
    """Someone replays a refresh token haasd already rotated away: the server refuses it
    and revokes the grant (reuse detection); haasd's next refresh learns so once."""
    quick = "[refresh]\non_demand_cooldown = 0.001\n"  # refreshes one after another
    async with haasd_against(short_dir, stock_server(), extra=quick) as run_:
        assert (await run_.onboard()).status_code == 201
        first = exchanges(run_.server)[0].body["refresh_token"]
        assert (await run_.http.post(f"/v1/humans/{ADA}/refresh")).status_code == 200
        async with httpx.AsyncClient() as thief:
            replay = await thief.post(
                run_.server.token_url,
                data={"grant_type": "refresh_token", "refresh_token": first},
                headers={"Authorization": basic(CLIENT_ID, CLIENT_SECRET)},
            )
        assert (replay.status_code, replay.json()["error"]) == (400, "invalid_grant")
        served = (await run_.token()).json()["access_token"]
        assert (await run_.server.introspect(served))["active"] is False  # the grant is gone

        again = await run_.http.post(f"/v1/humans/{ADA}/refresh")
        assert (again.status_code, error_of(again)["type"]) == (502, "refresh_failed")
        assert "invalid_grant" in error_of(again)["last_error"]
        status = (await run_.http.get(f"/v1/humans/{ADA}")).json()
        assert status["state"] == "needs_reconsent"
        token = await run_.token()
        assert (token.status_code, error_of(token)["type"]) == (409, "needs_reconsent")
        refreshes = run_.server.refreshes()
        rotated = refreshes[0].body["refresh_token"]
        # haasd's refresh, the replay, haasd's refresh with the token it was given
        assert [(r.refresh_token, r.status) for r in refreshes] == [
            (first, 200),
            (first, 400),
            (rotated, 400),
        ]


async def test_deleting_a_human_revokes_its_grant_at_the_server(short_dir: Path) -> None:
    async with haasd_against(short_dir, stock_server()) as run_:
        assert (await run_.onboard()).status_code == 201
        assert (await run_.http.post(f"/v1/humans/{ADA}/refresh")).status_code == 200
        held = run_.server.refreshes()[-1].body
        served = (await run_.token()).json()["access_token"]
        assert served == held["access_token"]

        assert (await run_.http.delete(f"/v1/humans/{ADA}")).status_code == 204
        (revocation,) = await run_.server.revocations_seen(1)
        assert revocation.token == held["refresh_token"]
        assert (revocation.credentials, revocation.status) == ("basic", 200)
        for issued in (served, held["refresh_token"]):
            assert (await run_.server.introspect(issued))["active"] is False
        assert (await run_.token()).status_code == 404


# --- the "done when": rotations on real time ----------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_rotations_on_real_time_then_a_revocation_at_the_server(short_dir: Path) -> None:
    """Onboarding through the socket API, then at least 3 rotations of 20 s tokens while an
    app asks for a token four times a second: every token served is active at the
    server, no refresh token is presented twice; after the server revokes the grant, one
    refresh learns so, the app gets 409 needs_reconsent, and haasd asks no more."""
    server = stock_server()
    async with haasd_against(short_dir, server) as run_:
        finished = await run_.onboard()
        assert finished.status_code == 201, finished.text
        assert finished.json()["human_id"] == ADA

        served: set[str] = set()
        with anyio.fail_after(120):
            while len(served) < 4:  # the consent's token and those of 3 rotations
                asked_at = time.time()
                reply = await run_.token()
                assert reply.status_code == 200, reply.text
                token = reply.json()["access_token"]
                served.add(token)
                await assert_live(server, token, asked_at)
                await anyio.sleep(0.25)  # the app's pace
        refreshes = server.refreshes()
        assert all(
            (r.status, r.credentials, r.content_type)
            == (200, "basic", "application/x-www-form-urlencoded")
            for r in refreshes
        )
        assert len(refreshes) >= 3
        presented = [r.refresh_token for r in refreshes]
        assert len(set(presented)) == len(presented), "a refresh token was presented twice"

        async with run_.http.stream("GET", "/v1/events", timeout=None) as stream:
            lines, parser = stream.aiter_lines(), EventParser()
            assert server.revoke_user(ADA) >= 1
            before = len(server.refreshes())
            with anyio.fail_after(40):  # the next scheduled refresh is at most 15 s away
                event = await next_event(lines, parser, "grant.needs_reconsent")
            assert event["human_id"] == ADA
        after = server.refreshes()[before:]
        assert [(r.status, r.error) for r in after] == [(400, "invalid_grant")]
        for _ in range(8):  # an app keeps asking, a little longer than a backoff would wait
            reply = await run_.http.get(f"/v1/tokens/{ADA}", params={"min_ttl": "10"})
            assert (reply.status_code, error_of(reply)["type"]) == (409, "needs_reconsent")
            await anyio.sleep(0.5)
        assert len(server.refreshes()) == before + 1, "a refresh after the revocation"


async def assert_live(server: AuthlibServer, token: str, asked_at: float) -> None:
    """``token``, served to a request made at ``asked_at``, is active at the server — or was
    rotated away by a refresh answered so shortly before that haasd could not know yet."""
    info = await server.introspect(token)
    if info["active"]:
        assert info["sub"] == ADA
        return
    superseded = server.superseded_at(token)
    assert superseded is not None, "haasd served a token the server does not hold active"
    assert superseded > asked_at - SWAP_LAG, (
        f"haasd served a token rotated away {asked_at - superseded:.2f}s before it was asked"
    )
