"""The simulator as a plain RFC 6749 server: RFC 7009 revocation, answers without
``human_id`` or ``scope``, a ``login_hint`` it ignores — over real loopback HTTP."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest

from haasd.clock import ManualClock
from haasd.simulator import Simulator

CLIENT_ID = "sim-client"
CLIENT_SECRET = "sim-client-secret"


@asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[tuple[Simulator, httpx.AsyncClient]]:
    sim = Simulator(ManualClock(), client_id=CLIENT_ID, client_secret=CLIENT_SECRET, **options)
    with anyio.fail_after(10):
        async with (
            sim.running() as base_url,
            httpx.AsyncClient(base_url=base_url, trust_env=False) as client,
        ):
            yield sim, client


def basic(client_id: str = CLIENT_ID, secret: str = CLIENT_SECRET) -> dict[str, str]:
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return {"Authorization": "Basic " + base64.b64encode(pair).decode()}


async def revoke(client: httpx.AsyncClient, token: str, hint: str | None = None) -> httpx.Response:
    """RFC 7009 §2.1 as most clients send it: a form body, Basic client credentials."""
    form = {"token": token} | ({"token_type_hint": hint} if hint else {})
    return await client.post("/revoke", data=form, headers=basic())


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    form = {"grant_type": "refresh_token", "refresh_token": token}
    return await client.post("/token", data=form, headers=basic())


async def test_revoking_a_refresh_token_ends_its_whole_grant() -> None:
    async with serving(rotate_refresh_tokens=True) as (sim, client):
        tokens = await sim.consent("usr_ann")
        other = await sim.consent("usr_ann")
        answer = await revoke(client, tokens["refresh_token"], "refresh_token")
        assert answer.status_code == 200
        assert sim.validate_access_token(tokens["access_token"]) is None
        assert sim.validate_access_token(other["access_token"]) == "usr_ann"  # another grant
        refused = await refresh(client, tokens["refresh_token"])
        assert (refused.status_code, refused.json()["error"]) == (400, "invalid_grant")
        assert (await refresh(client, other["refresh_token"])).status_code == 200
    assert (sim.stats.revocations, sim.stats.families_revoked) == (1, 1)


async def test_revoking_an_access_token_ends_only_that_token() -> None:
    async with serving() as (sim, client):
        tokens = await sim.consent("usr_ann")
        assert (await revoke(client, tokens["access_token"])).status_code == 200
        assert sim.validate_access_token(tokens["access_token"]) is None
        assert sim.has_active_grant("usr_ann")
        assert (await refresh(client, tokens["refresh_token"])).status_code == 200


async def test_an_unknown_or_already_revoked_token_is_answered_200() -> None:
    async with serving() as (sim, client):
        tokens = await sim.consent("usr_ann")
        answers = [
            await revoke(client, "haas_rt_never_issued"),
            await revoke(client, tokens["refresh_token"]),
            await revoke(client, tokens["refresh_token"]),  # RFC 7009 §2.2
        ]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert sim.stats.families_revoked == 1


async def test_revocation_needs_client_authentication_and_a_token() -> None:
    async with serving() as (sim, client):
        tokens = await sim.consent("usr_ann")
        wrong = await client.post(
            "/revoke", data={"token": tokens["refresh_token"]}, headers=basic(secret="nope")
        )
        assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_client")
        in_body = await client.post(
            "/revoke",
            data={"token": tokens["refresh_token"], "client_secret": "nope", "client_id": "x"},
        )
        assert in_body.status_code == 401
        empty = await client.post("/revoke", data={"token_type_hint": "x"}, headers=basic())
        assert (empty.status_code, empty.json()["error"]) == (400, "invalid_request")
        assert (await client.get("/revoke")).status_code == 405
        assert sim.has_active_grant("usr_ann")  # none of them revoked anything


async def test_body_credentials_and_json_are_accepted_as_at_token() -> None:
    async with serving() as (sim, client):
        tokens = await sim.consent("usr_ann")
        body = {"token": tokens["refresh_token"], "client_id": CLIENT_ID}
        answer = await client.post("/revoke", json=body | {"client_secret": CLIENT_SECRET})
        assert answer.status_code == 200
        assert not sim.has_active_grant("usr_ann")


async def test_the_revocation_url_is_the_servers_own() -> None:
    async with serving() as (sim, _):
        assert f"{sim.base_url}/revoke" == sim.revocation_url
    with pytest.raises(RuntimeError):
        _ = sim.revocation_url


async def test_a_plain_rfc_6749_server_names_neither_human_nor_scope() -> None:
    async with serving(name_humans=False, include_scope=False) as (sim, client):
        tokens = await sim.consent("usr_ann", "status:read")
        refreshed = (await refresh(client, tokens["refresh_token"])).json()
        assert sim.validate_access_token(tokens["access_token"]) == "usr_ann"
    for answer in (tokens, refreshed):
        assert "human_id" not in answer
        assert "scope" not in answer
        assert {"access_token", "token_type", "expires_in"} <= set(answer)
    assert "refresh_token" in tokens


async def test_the_default_answer_still_names_human_and_scope() -> None:
    async with serving() as (sim, _):
        tokens = await sim.consent("usr_ann", "status:read")
    assert (tokens["human_id"], tokens["scope"]) == ("usr_ann", "status:read")


async def test_a_server_may_ignore_login_hint() -> None:
    async with serving(honour_login_hint=False) as (sim, _):
        sim.queue_human("usr_bob")
        tokens = await sim.consent("usr_ann")
        assert tokens["human_id"] == "usr_bob"
        assert not sim.has_active_grant("usr_ann")
