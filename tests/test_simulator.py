"""The HaaS simulator, over real HTTP on loopback, as haasd (and its tests) will meet it."""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, get_args
from urllib.parse import parse_qs, urlencode, urlsplit

import anyio
import httpx
import pytest

import haasd.simulator
from haasd.clock import ManualClock
from haasd.simulator import (
    MalformedKind,
    Simulator,
    SimulatorError,
    SpentTokenRecord,
    TokenRequestRecord,
)

CLIENT_ID = "sim-client"
CLIENT_SECRET = "sim-client-secret"
REDIRECT = "https://app.example/callback"
START = 1_800_000_000.0  # ManualClock's default start, a whole minute
DAY = 86400.0
TLS = ssl.create_default_context()  # made once: each new one costs tens of milliseconds
SEED_KEYS = ["access_token", "token_type", "expires_in", "refresh_token", "scope", "human_id"]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def serving(
    clock: ManualClock | None = None, **options: Any
) -> AsyncIterator[tuple[Simulator, httpx.AsyncClient]]:
    options.setdefault("redirect_uris", [REDIRECT])
    sim = Simulator(
        clock or ManualClock(start=START),
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        **options,
    )
    with anyio.fail_after(10):
        async with (
            sim.running() as base_url,
            httpx.AsyncClient(base_url=base_url, trust_env=False, verify=TLS) as client,
        ):
            yield sim, client


def authorization_url(sim: Simulator, **overrides: str | None) -> str:
    params: dict[str, str | None] = {
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "scope": "tasks:dispatch status:read",
        "state": "csrf-123",
    }
    params.update(overrides)
    return f"{sim.authorize_url}?{urlencode({k: v for k, v in params.items() if v is not None})}"


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def get_code(sim: Simulator, **overrides: str | None) -> str:
    location = await sim.visit(authorization_url(sim, **overrides))
    assert location is not None
    return query_of(location)["code"]


def pkce() -> tuple[str, str]:
    verifier = "v" * 20 + "-._~" + "0123456789" * 2
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


async def exchange(client: httpx.AsyncClient, code: str, **overrides: str | None) -> httpx.Response:
    body: dict[str, str | None] = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    body.update(overrides)
    return await client.post("/token", json={k: v for k, v in body.items() if v is not None})


async def refresh(client: httpx.AsyncClient, token: str, **overrides: str) -> httpx.Response:
    body = {
        "grant_type": "refresh_token",
        "refresh_token": token,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        **overrides,
    }
    return await client.post("/token", json=body)


def oauth_error_of(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error", "error_description"}
    error: str = body["error"]
    return error


# -- /authorize ----------------------------------------------------------------------------


async def test_approving_human_redirects_to_callback_with_code_and_state() -> None:
    async with serving() as (sim, _):
        sim.add_human("usr_maria_42")
        location = await sim.visit(authorization_url(sim, login_hint="usr_maria_42"))
    assert location is not None
    assert location.startswith(REDIRECT + "?")
    answer = query_of(location)
    assert answer.keys() == {"code", "state"}
    assert answer["state"] == "csrf-123"


async def test_redirect_keeps_the_callbacks_own_query() -> None:
    async with serving(redirect_uris=None) as (sim, _):
        location = await sim.visit(authorization_url(sim, redirect_uri=REDIRECT + "?tenant=7"))
    assert location is not None
    assert {"tenant", "code", "state"} == query_of(location).keys()


async def test_denying_human_redirects_with_access_denied_and_state() -> None:
    async with serving() as (sim, _):
        sim.add_human("usr_bob", "deny")
        location = await sim.visit(authorization_url(sim, login_hint="usr_bob"))
    assert location is not None
    answer = query_of(location)
    assert answer["error"] == "access_denied"
    assert answer["state"] == "csrf-123"
    assert "code" not in answer


async def test_ignoring_human_leaves_the_page_open_and_never_redirects() -> None:
    async with serving() as (sim, client):
        sim.add_human("usr_idle", "ignore")
        assert await sim.visit(authorization_url(sim, login_hint="usr_idle")) is None
        page = await client.get(authorization_url(sim, login_hint="usr_idle"))
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "location" not in page.headers


async def test_star_scope_makes_even_an_approving_human_close_the_page() -> None:
    async with serving() as (sim, _):
        sim.queue_human("usr_keen", "approve")
        assert await sim.visit(authorization_url(sim, scope="*")) is None
        # the queued human was the one who closed it
        location = await sim.visit(authorization_url(sim))
        assert location is not None
        code = query_of(location)["code"]
        assert sim.stats.authorize_requests == 2
        async with httpx.AsyncClient(base_url=sim.base_url, verify=TLS) as client:
            assert (await exchange(client, code)).json()["human_id"] == "usr_sim_1"


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"scope": "status:read tasks:delete"}, "invalid_scope"),
        ({"scope": None}, "invalid_scope"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"code_challenge": "x" * 43, "code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": "too-short", "code_challenge_method": "S256"}, "invalid_request"),
        ({"code_challenge_method": "S256"}, "invalid_request"),
    ],
)
async def test_bad_authorization_request_redirects_with_error(
    overrides: dict[str, str | None], error: str
) -> None:
    async with serving() as (sim, _):
        location = await sim.visit(authorization_url(sim, **overrides))
    assert location is not None
    assert location.startswith(REDIRECT)
    assert error == query_of(location)["error"]
    assert query_of(location)["state"] == "csrf-123"


@pytest.mark.parametrize(
    "overrides",
    [
        {"client_id": "someone-else"},
        {"client_id": None},
        {"redirect_uri": "https://evil.example/steal"},
        {"redirect_uri": None},
    ],
)
async def test_unknown_client_or_unregistered_redirect_gets_an_error_page_not_a_redirect(
    overrides: dict[str, str | None],
) -> None:
    async with serving() as (sim, client):
        page = await client.get(authorization_url(sim, **overrides))
        with pytest.raises(httpx.HTTPStatusError):
            await sim.visit(authorization_url(sim, **overrides))
    assert page.status_code == 400
    assert "location" not in page.headers


async def test_any_absolute_redirect_is_accepted_when_none_are_registered() -> None:
    async with serving(redirect_uris=None) as (sim, client):
        assert await sim.visit(authorization_url(sim, redirect_uri="http://127.0.0.1:9/cb"))
        pages = [
            await client.get(authorization_url(sim, redirect_uri=uri))
            for uri in (
                "/relative/callback",
                "https://app.example/\r\nX-Evil: 1",
                "https://café.example/",
            )
        ]
    assert [page.status_code for page in pages] == [400, 400, 400]


async def test_human_is_chosen_by_login_hint_then_queue_then_a_new_approving_human() -> None:
    async with serving() as (sim, client):
        sim.add_human("usr_ann", "deny")
        sim.queue_human("usr_ann", "approve")  # changes her mind for one visit
        sim.queue_human("usr_cid")
        first = await get_code(sim)
        second = await get_code(sim)
        third = await get_code(sim)
        hinted = await get_code(sim, login_hint="usr_dee")
        denied = await sim.visit(authorization_url(sim, login_hint="usr_ann"))
        humans = [(await exchange(client, c)).json()["human_id"] for c in (first, second, third)]
        hinted_human = (await exchange(client, hinted)).json()["human_id"]
    assert humans == ["usr_ann", "usr_cid", "usr_sim_1"]
    assert hinted_human == "usr_dee"
    assert denied is not None
    assert query_of(denied)["error"] == "access_denied"


async def test_set_decision_changes_a_known_humans_answer() -> None:
    async with serving() as (sim, _):
        sim.add_human("usr_eve")
        sim.set_decision("usr_eve", "deny")
        location = await sim.visit(authorization_url(sim, login_hint="usr_eve"))
        with pytest.raises(KeyError):
            sim.set_decision("usr_nobody", "approve")
        with pytest.raises(ValueError, match="decision"):
            sim.add_human("usr_eve", "maybe")  # type: ignore[arg-type]
    assert location is not None
    assert query_of(location)["error"] == "access_denied"


# -- authorization_code grant ------------------------------------------------------------


async def test_code_exchange_answers_exactly_the_seeds_body() -> None:
    async with serving() as (sim, client):
        response = await exchange(client, await get_code(sim, login_hint="usr_maria_42"))
    assert response.status_code == 200
    body = response.json()
    assert list(body) == SEED_KEYS
    assert body["access_token"].startswith("haas_at_")
    assert body["refresh_token"].startswith("haas_rt_")
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "tasks:dispatch status:read"
    assert body["human_id"] == "usr_maria_42"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-type"] == "application/json"


async def test_expires_in_and_refresh_token_expires_in_are_configurable() -> None:
    async with serving(expires_in=120, send_refresh_token_expires_in=True) as (sim, client):
        body = (await exchange(client, await get_code(sim))).json()
    assert body["expires_in"] == 120
    assert body["refresh_token_expires_in"] == 30 * 86400


async def test_code_is_single_use_and_a_replay_revokes_what_it_issued() -> None:
    async with serving() as (sim, client):
        code = await get_code(sim, login_hint="usr_ann")
        tokens = (await exchange(client, code)).json()
        assert sim.validate_access_token(tokens["access_token"]) == "usr_ann"
        replay = await exchange(client, code)
        after = await refresh(client, tokens["refresh_token"])
        assert sim.validate_access_token(tokens["access_token"]) is None
        assert not sim.has_active_grant("usr_ann")
    assert replay.status_code == 400
    assert oauth_error_of(replay) == "invalid_grant"
    assert oauth_error_of(after) == "invalid_grant"
    assert sim.stats.code_replays == 1
    assert sim.stats.codes_exchanged == 1
    assert sim.stats.families_revoked == 1


async def test_code_expires_after_ten_minutes_on_the_clock() -> None:
    clock = ManualClock(start=START)
    async with serving(clock) as (sim, client):
        fresh = await get_code(sim)
        stale = await get_code(sim)
        await clock.advance(599)
        assert (await exchange(client, fresh)).status_code == 200
        await clock.advance(2)
        assert oauth_error_of(await exchange(client, stale)) == "invalid_grant"


@pytest.mark.parametrize(
    ("redirect_uri", "error"),
    [("https://app.example/other", "invalid_grant"), (None, "invalid_request")],
)
async def test_code_exchange_checks_the_redirect_uri(redirect_uri: str | None, error: str) -> None:
    async with serving(redirect_uris=None) as (sim, client):
        response = await exchange(client, await get_code(sim), redirect_uri=redirect_uri)
    assert response.status_code == 400
    assert error == oauth_error_of(response)


@pytest.mark.parametrize(
    ("challenged", "verifier", "status"),
    [
        (True, "right", 200),
        (True, "w" * 43, 400),
        (True, None, 400),
        (False, "right", 400),  # no downgrade: a verifier without a challenge (RFC 9700)
        (False, None, 200),
    ],
    ids=["right", "wrong", "missing", "unchallenged-verifier", "no-pkce"],
)
async def test_pkce_s256_verifier_is_checked(
    challenged: bool, verifier: str | None, status: int
) -> None:
    right, challenge = pkce()
    pkce_params = {"code_challenge": challenge, "code_challenge_method": "S256"}
    async with serving() as (sim, client):
        code = await get_code(sim, **(pkce_params if challenged else {}))
        sent = right if verifier == "right" else verifier
        response = await exchange(client, code, code_verifier=sent)
    assert status == response.status_code
    if status == 400:
        assert oauth_error_of(response) == "invalid_grant"


async def test_form_encoded_body_is_accepted_as_well_as_json() -> None:
    async with serving() as (sim, client):
        code = await get_code(sim)
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        }
        response = await client.post("/token", data=form)
    assert response.status_code == 200
    assert list(response.json()) == SEED_KEYS


async def test_http_basic_client_authentication_is_accepted() -> None:
    async with serving() as (sim, client):
        tokens = await sim.consent("usr_ann")
        body = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
        basic = await client.post("/token", json=body, auth=(CLIENT_ID, CLIENT_SECRET))
        both = await client.post(
            "/token", json=body | {"client_secret": CLIENT_SECRET}, auth=(CLIENT_ID, CLIENT_SECRET)
        )
    assert basic.status_code == 200
    assert oauth_error_of(both) == "invalid_request"


@pytest.mark.parametrize(
    "credentials",
    [
        {"client_id": CLIENT_ID, "client_secret": "wrong"},
        {"client_id": "someone-else", "client_secret": CLIENT_SECRET},
        {"client_id": CLIENT_ID},
        {},
    ],
)
async def test_bad_client_credentials_are_invalid_client_with_401(
    credentials: dict[str, str],
) -> None:
    async with serving() as (_, client):
        response = await client.post(
            "/token", json={"grant_type": "refresh_token", "refresh_token": "x", **credentials}
        )
    assert response.status_code == 401
    assert oauth_error_of(response) == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic")


@pytest.mark.parametrize(
    ("content", "content_type", "error"),
    [
        (b'{"grant_type": "refresh_token",', "application/json", "invalid_request"),
        (b'["grant_type"]', "application/json", "invalid_request"),
        (b'{"grant_type": "refresh_token", "expires": 5}', "application/json", "invalid_request"),
        (b"grant_type=refresh_token", "text/plain", "invalid_request"),
        (b"grant_type=a&grant_type=b", "application/x-www-form-urlencoded", "invalid_request"),
        (b"\xff\xfe", "application/x-www-form-urlencoded", "invalid_request"),
        (
            b'{"client_id": "sim-client", "client_secret": "sim-client-secret"}',
            "",
            "invalid_request",
        ),
        (
            b'{"grant_type": "password", "client_id": "sim-client",'
            b' "client_secret": "sim-client-secret"}',
            "application/json",
            "unsupported_grant_type",
        ),
    ],
    ids=[
        "bad-json",
        "json-array",
        "non-string",
        "content-type",
        "repeated",
        "not-utf8",
        "no-grant-type",
        "password",
    ],
)
async def test_unreadable_or_unsupported_token_requests_get_rfc6749_errors(
    content: bytes, content_type: str, error: str
) -> None:
    async with serving() as (_, client):
        headers = {"Content-Type": content_type} if content_type else {}
        response = await client.post("/token", content=content, headers=headers)
    assert response.status_code == 400
    assert error == oauth_error_of(response)


@pytest.mark.parametrize(
    ("grant", "error"),
    [
        (
            {"grant_type": "authorization_code", "code": "nope", "redirect_uri": REDIRECT},
            "invalid_grant",
        ),
        ({"grant_type": "authorization_code", "redirect_uri": REDIRECT}, "invalid_request"),
        ({"grant_type": "refresh_token", "refresh_token": "haas_rt_nope"}, "invalid_grant"),
        ({"grant_type": "refresh_token"}, "invalid_request"),
    ],
    ids=["unknown-code", "no-code", "unknown-refresh-token", "no-refresh-token"],
)
async def test_unknown_or_missing_code_and_refresh_token(grant: dict[str, str], error: str) -> None:
    async with serving() as (_, client):
        credentials = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
        response = await client.post("/token", json=grant | credentials)
    assert response.status_code == 400
    assert oauth_error_of(response) == error


async def test_other_paths_and_methods() -> None:
    async with serving() as (_, client):
        assert (await client.get("/token")).status_code == 405
        assert (await client.post("/authorize")).status_code == 405
        assert (await client.get("/v1/humans")).status_code == 404
        assert (await client.get("/health")).json() == {"status": "ok"}


# -- refresh_token grant -----------------------------------------------------------------


async def test_refresh_without_rotation_omits_refresh_token_and_keeps_the_old_one_valid() -> None:
    async with serving() as (sim, client):
        tokens = await sim.consent("usr_ann")
        first = await refresh(client, tokens["refresh_token"])
        second = await refresh(client, tokens["refresh_token"])
    assert 200 == first.status_code == second.status_code
    assert "refresh_token" not in first.json()
    assert [k for k in SEED_KEYS if k != "refresh_token"] == list(first.json())
    assert first.json()["access_token"] != tokens["access_token"]
    assert sim.stats.refreshes["usr_ann"] == 2


async def test_refresh_without_rotation_can_echo_the_refresh_token() -> None:
    async with serving(omit_refresh_token_when_not_rotating=False) as (sim, client):
        tokens = await sim.consent("usr_ann")
        body = (await refresh(client, tokens["refresh_token"])).json()
    assert tokens["refresh_token"] == body["refresh_token"]


async def test_refresh_may_narrow_the_scope_but_not_widen_it() -> None:
    async with serving() as (sim, client):
        tokens = await sim.consent("usr_ann", "status:read tasks:read")
        narrow = await refresh(client, tokens["refresh_token"], scope="status:read")
        wide = await refresh(client, tokens["refresh_token"], scope="status:read profile:read")
    assert narrow.json()["scope"] == "status:read"
    assert oauth_error_of(wide) == "invalid_scope"


async def test_rotation_spends_the_old_refresh_token_and_reuse_revokes_the_family() -> None:
    async with serving(rotate_refresh_tokens=True) as (sim, client):
        tokens = await sim.consent("usr_ann")
        rotated = (await refresh(client, tokens["refresh_token"])).json()
        assert rotated["refresh_token"] != tokens["refresh_token"]
        assert list(rotated) == SEED_KEYS
        reuse = await refresh(client, tokens["refresh_token"])
        after = await refresh(client, rotated["refresh_token"])
        assert sim.validate_access_token(rotated["access_token"]) is None
        assert not sim.has_active_grant("usr_ann")
    assert oauth_error_of(reuse) == "invalid_grant"
    assert oauth_error_of(after) == "invalid_grant"
    assert sim.stats.reuse_events == 1
    assert sim.stats.families_revoked == 1


async def test_without_reuse_detection_only_the_spent_token_is_refused() -> None:
    async with serving(rotate_refresh_tokens=True, reuse_detection=False) as (sim, client):
        tokens = await sim.consent("usr_ann")
        rotated = (await refresh(client, tokens["refresh_token"])).json()
        reuse = await refresh(client, tokens["refresh_token"])
        after = await refresh(client, rotated["refresh_token"])
    assert oauth_error_of(reuse) == "invalid_grant"
    assert after.status_code == 200
    assert sim.stats.reuse_events == 1
    assert sim.stats.families_revoked == 0


async def test_grace_window_accepts_the_old_token_once_with_the_same_answer() -> None:
    clock = ManualClock(start=START)
    async with serving(clock, rotate_refresh_tokens=True, reuse_grace=30) as (sim, client):
        tokens = await sim.consent("usr_ann")
        rotated = (await refresh(client, tokens["refresh_token"])).json()
        await clock.advance(10)
        replay = (await refresh(client, tokens["refresh_token"])).json()
        again = await refresh(client, tokens["refresh_token"])
    assert rotated["access_token"] == replay["access_token"]
    assert rotated["refresh_token"] == replay["refresh_token"]
    assert replay["expires_in"] == 3590  # the same access token, ten seconds older
    assert oauth_error_of(again) == "invalid_grant"
    assert sim.stats.grace_replays == 1
    assert sim.stats.refreshes["usr_ann"] == 1
    assert sim.stats.reuse_events == 1


async def test_every_spent_token_presented_again_is_logged_with_its_rotation() -> None:
    clock = ManualClock(start=START)
    async with serving(clock, rotate_refresh_tokens=True, reuse_grace=30) as (sim, client):
        tokens = await sim.consent("usr_ann")
        await clock.advance(5)
        assert (await refresh(client, tokens["refresh_token"])).status_code == 200
        await clock.advance(10)
        assert (await refresh(client, tokens["refresh_token"])).status_code == 200
        await clock.advance(1)
        assert oauth_error_of(await refresh(client, tokens["refresh_token"])) == "invalid_grant"
    assert sim.stats.spent_presented == [
        SpentTokenRecord(START + 15, "usr_ann", START + 5, replayed=True),
        SpentTokenRecord(START + 16, "usr_ann", START + 5, replayed=False),
    ]
    assert (sim.stats.grace_replays, sim.stats.reuse_events) == (1, 1)


@pytest.mark.parametrize("why", ["grace-over", "successor-used"])
async def test_grace_window_ends_in_time_and_once_the_new_token_is_used(why: str) -> None:
    clock = ManualClock(start=START)
    async with serving(clock, rotate_refresh_tokens=True, reuse_grace=30) as (sim, client):
        tokens = await sim.consent("usr_ann")
        rotated = (await refresh(client, tokens["refresh_token"])).json()
        if why == "grace-over":
            await clock.advance(30)
        else:
            assert (await refresh(client, rotated["refresh_token"])).status_code == 200
        late = await refresh(client, tokens["refresh_token"])
    assert oauth_error_of(late) == "invalid_grant"
    assert sim.stats.grace_replays == 0
    assert sim.stats.families_revoked == 1


async def test_refresh_token_dies_thirty_days_after_consent_even_when_rotated() -> None:
    clock = ManualClock(start=START)
    async with serving(clock, rotate_refresh_tokens=True) as (sim, client):
        tokens = await sim.consent("usr_ann")
        await clock.advance(29 * DAY)
        rotated = (await refresh(client, tokens["refresh_token"])).json()
        await clock.advance(DAY - 1)
        last = (await refresh(client, rotated["refresh_token"])).json()
        await clock.advance(2)  # 30 days + 1 s after consent
        expired = await refresh(client, last["refresh_token"])
    assert oauth_error_of(expired) == "invalid_grant"
    assert "expired" in expired.json()["error_description"]


async def test_full_consent_refresh_and_thirty_day_expiry_cycle_on_the_manual_clock() -> None:
    clock = ManualClock(start=START)
    options: dict[str, Any] = {"rotate_refresh_tokens": True, "send_refresh_token_expires_in": True}
    async with serving(clock, **options) as (sim, client):
        tokens = await sim.consent("usr_maria_42", "tasks:dispatch status:read")
        refresh_token = tokens["refresh_token"]
        lifetimes = [tokens["refresh_token_expires_in"]]
        for _ in range(29):
            await clock.advance(DAY)
            assert sim.validate_access_token(tokens["access_token"]) is None  # an hour, long gone
            tokens = (await refresh(client, refresh_token)).json()
            assert sim.validate_access_token(tokens["access_token"]) == "usr_maria_42"
            refresh_token = tokens["refresh_token"]
            lifetimes.append(tokens["refresh_token_expires_in"])
        assert sim.has_active_grant("usr_maria_42")
        await clock.advance(DAY + 1)
        expired = await refresh(client, refresh_token)
        assert not sim.has_active_grant("usr_maria_42")
        again = await sim.consent("usr_maria_42", "tasks:dispatch status:read")
        assert sim.has_active_grant("usr_maria_42")
    assert [int(30 * DAY - d * DAY) for d in range(30)] == lifetimes
    assert oauth_error_of(expired) == "invalid_grant"
    assert sim.stats.refreshes["usr_maria_42"] == 29
    assert sim.stats.codes_exchanged == 2
    assert again["refresh_token_expires_in"] == 30 * 86400


async def test_revoke_withdraws_every_grant_of_the_human() -> None:
    async with serving() as (sim, client):
        first = await sim.consent("usr_ann")
        second = await sim.consent("usr_ann")
        other = await sim.consent("usr_bob")
        assert sim.revoke("usr_ann") == 2
        responses = [await refresh(client, t["refresh_token"]) for t in (first, second, other)]
        assert sim.validate_access_token(first["access_token"]) is None
        assert sim.validate_access_token(other["access_token"]) == "usr_bob"
    assert [r.status_code for r in responses] == [400, 400, 200]


async def test_revoke_also_voids_codes_not_yet_exchanged() -> None:
    async with serving() as (sim, client):
        code = await get_code(sim, login_hint="usr_ann")
        sim.revoke("usr_ann")
        assert oauth_error_of(await exchange(client, code)) == "invalid_grant"
    assert sim.stats.code_replays == 0


async def test_consent_helper_reports_humans_who_do_not_approve() -> None:
    async with serving() as (sim, _):
        sim.add_human("usr_no", "deny")
        sim.add_human("usr_gone", "ignore")
        with pytest.raises(SimulatorError, match="access_denied"):
            await sim.consent("usr_no")
        with pytest.raises(SimulatorError, match="closed"):
            await sim.consent("usr_gone")


# -- rate limits ---------------------------------------------------------------------------


async def test_rate_limit_answers_the_seeds_429_and_resets_with_the_window() -> None:
    clock = ManualClock(start=START)
    async with serving(clock, requests_per_minute=3) as (sim, client):
        tokens = await sim.consent("usr_ann")  # request 1 of 3
        await clock.advance(20)
        ok = [await refresh(client, tokens["refresh_token"]) for _ in range(2)]
        limited = await refresh(client, tokens["refresh_token"])
        page = await client.get(authorization_url(sim))  # a browser, not counted
        await clock.advance(40)
        after = await refresh(client, tokens["refresh_token"])
    assert [r.headers["x-ratelimit-remaining"] for r in ok] == ["1", "0"]
    assert all(r.headers["x-ratelimit-limit"] == "3" for r in ok)
    assert str(int(START) + 60) == ok[0].headers["x-ratelimit-reset"]
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "40"
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert limited.json() == {
        "error": {
            "code": 429,
            "type": "rate_limit_exceeded",
            "message": "Slow down. Even machines benefit from patience.",
            "retry_after": 40,
            "suggestion": "Consider batching requests or upgrading your plan.",
        }
    }
    assert page.headers["x-ratelimit-remaining"] == "0"
    assert after.status_code == 200
    assert after.headers["x-ratelimit-remaining"] == "2"
    assert str(int(START) + 120) == after.headers["x-ratelimit-reset"]
    assert sim.stats.rate_limited == 1
    assert sim.max_requests_in_window(60) == 4  # what the client sent, the refused one too


@pytest.mark.parametrize(("plan", "limit"), [("free", 60), ("pro", 300), ("enterprise", 1000)])
async def test_plans_set_the_seeds_limits(plan: str, limit: int) -> None:
    async with serving(plan=plan) as (sim, client):
        response = await client.post("/token", json={})
    assert str(limit) == response.headers["x-ratelimit-limit"]
    assert limit == sim.requests_per_minute


def test_bad_options_are_refused() -> None:
    clock = ManualClock()
    with pytest.raises(ValueError, match="plan"):
        Simulator(clock, client_id="c", client_secret="s", plan="gold")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="requests_per_minute"):
        Simulator(clock, client_id="c", client_secret="s", requests_per_minute=0)
    with pytest.raises(ValueError, match="empty"):
        Simulator(clock, client_id="c", client_secret="")
    with pytest.raises(TypeError):
        Simulator(clock, client_id="c", client_secret="s", redirect_uris=REDIRECT)
    with pytest.raises(RuntimeError, match="not running"):
        _ = Simulator(clock, client_id="c", client_secret="s").token_url


# -- fault injection ---------------------------------------------------------------------


async def test_fail_next_answers_without_touching_state_or_rate_budget() -> None:
    async with serving(rotate_refresh_tokens=True) as (sim, client):
        tokens = await sim.consent("usr_ann")
        sim.fail_next(2)
        failed = [await refresh(client, tokens["refresh_token"]) for _ in range(2)]
        ok = await refresh(client, tokens["refresh_token"])  # the token was never spent
    assert [r.status_code for r in failed] == [503, 503]
    assert oauth_error_of(failed[0]) == "temporarily_unavailable"
    assert "x-ratelimit-limit" not in failed[0].headers
    assert ok.status_code == 200
    assert ok.headers["x-ratelimit-remaining"] == "298"
    assert sim.stats.injected == 2
    assert [r.status for r in sim.requests_log] == [200, 503, 503, 200]


async def test_fail_next_can_send_a_429_or_any_body_and_headers() -> None:
    date = "Wed, 21 Oct 2026 07:28:00 GMT"
    async with serving() as (sim, client):
        sim.fail_next(1, status=429, headers={"Retry-After": "7"})
        sim.fail_next(1, status=429, headers={"Retry-After": date})
        sim.fail_next(1, status=400, body={"error": "temporarily_unavailable"})
        sim.fail_next(1, status=502, body="<html>Bad gateway</html>", headers={"X-Proxy": "edge"})
        responses = [await client.post("/token", json={}) for _ in range(4)]
    seconds, dated, custom, gateway = responses
    assert seconds.status_code == 429
    assert seconds.headers["retry-after"] == "7"
    assert seconds.json()["error"]["retry_after"] == 7
    assert date == dated.headers["retry-after"]
    assert custom.json() == {"error": "temporarily_unavailable"}
    assert gateway.text == "<html>Bad gateway</html>"
    assert gateway.headers["x-proxy"] == "edge"
    assert sim.stats.rate_limited == 0
    assert sim.stats.injected == 4


async def test_flaky_sends_reproducible_random_5xx() -> None:
    async def statuses(seed: int) -> list[int]:
        async with serving() as (sim, client):
            sim.flaky(0.5, seed=seed)
            return [(await client.post("/token", json={})).status_code for _ in range(20)]

    first, second = await statuses(7), await statuses(7)
    assert first == second
    assert {401} < set(first) <= {401, 500, 502, 503, 504}  # 401: no client credentials
    async with serving() as (sim, client):
        sim.flaky(1.0)
        assert (await client.post("/token", json={})).status_code >= 500
        sim.flaky(0)
        assert (await client.post("/token", json={})).status_code == 401
        with pytest.raises(ValueError, match="probability"):
            sim.flaky(1.5)


async def test_latency_delays_the_answer_in_real_time() -> None:
    async with serving() as (sim, client):
        sim.latency(0.2)
        started = time.perf_counter()
        await client.post("/token", json={})
        slow = time.perf_counter() - started
        sim.latency(0)
        started = time.perf_counter()
        await client.post("/token", json={})
        fast = time.perf_counter() - started
    assert slow >= 0.2
    assert fast < 0.2


async def test_drop_before_processing_loses_the_request_but_not_the_token() -> None:
    async with serving(rotate_refresh_tokens=True) as (sim, client):
        tokens = await sim.consent("usr_ann")
        sim.drop_next(1)
        with pytest.raises(httpx.RemoteProtocolError):
            await refresh(client, tokens["refresh_token"])
        retry = await refresh(client, tokens["refresh_token"])
    assert retry.status_code == 200
    assert sim.stats.dropped == 1
    assert sim.stats.refreshes["usr_ann"] == 1
    assert TokenRequestRecord(START, "refresh_token", "usr_ann", None) == sim.requests_log[1]


@pytest.mark.parametrize(("grace", "retry_status"), [(0.0, 400), (30.0, 200)])
async def test_drop_after_processing_loses_the_answer_of_a_rotation(
    grace: float, retry_status: int
) -> None:
    async with serving(rotate_refresh_tokens=True, reuse_grace=grace) as (sim, client):
        tokens = await sim.consent("usr_ann")
        sim.drop_next(1, after_processing=True)
        with pytest.raises(httpx.RemoteProtocolError):
            await refresh(client, tokens["refresh_token"])
        retry = await refresh(client, tokens["refresh_token"])
        if retry_status == 200:
            assert (await refresh(client, retry.json()["refresh_token"])).status_code == 200
    assert retry_status == retry.status_code
    assert sim.stats.refreshes["usr_ann"] - (retry_status == 200) == 1


@pytest.mark.parametrize("kind", get_args(MalformedKind))  # every kind the type names
async def test_malformed_answers_have_the_promised_shape(kind: MalformedKind) -> None:
    async with serving(rotate_refresh_tokens=True) as (sim, client):
        tokens = await sim.consent("usr_ann")
        sim.malformed_next(1, kind)
        response = await refresh(client, tokens["refresh_token"])
        retry = await refresh(client, tokens["refresh_token"])  # nothing was processed
    assert retry.status_code == 200
    if kind == "redirect":
        assert response.status_code == 302
        assert response.headers["location"].startswith("https://")
        return
    assert response.status_code == 200
    if kind == "html":
        assert response.headers["content-type"].startswith("text/html")
        return
    if kind in ("empty", "truncated_json"):
        with pytest.raises(json.JSONDecodeError):
            response.json()
        return
    body = response.json()
    match kind:
        case "missing_access_token":
            assert "access_token" not in body
        case "bad_expires_in":
            assert not isinstance(body["expires_in"], int)
        case "wrong_token_type":
            assert body["token_type"] != "Bearer"
        case "oversized":
            assert len(response.content) > 4 * 1024 * 1024
    assert sim.validate_access_token(body.get("access_token", "")) is None  # never issued


async def test_malformed_after_processing_mangles_the_real_answer() -> None:
    async with serving(rotate_refresh_tokens=True) as (sim, client):
        tokens = await sim.consent("usr_ann")
        sim.malformed_next(1, "bad_expires_in", after_processing=True)
        response = await refresh(client, tokens["refresh_token"])
        body = response.json()
        assert body["expires_in"] == "one hour"
        assert sim.validate_access_token(body["access_token"]) == "usr_ann"
        assert response.headers["x-ratelimit-remaining"] != "299"
        reuse = await refresh(client, tokens["refresh_token"])
    assert oauth_error_of(reuse) == "invalid_grant"
    with pytest.raises(ValueError, match="kind"):
        sim.malformed_next(1, "gibberish")  # type: ignore[arg-type]


async def test_scripted_faults_apply_in_the_order_they_were_queued() -> None:
    async with serving() as (sim, client):
        sim.fail_next(1, status=500)
        sim.drop_next(1)
        sim.malformed_next(1, "html")
        assert sim.pending_faults == 3
        first = await client.post("/token", json={})
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("/token", json={})
        third = await client.post("/token", json={})
        fourth = await client.post("/token", json={})
        sim.fail_next(5)
        sim.latency(1)
        sim.flaky(1)
        sim.clear_faults()
        fifth = await client.post("/token", json={})
    assert [r.status_code for r in (first, third, fourth, fifth)] == [500, 200, 401, 401]
    assert [r.status for r in sim.requests_log] == [500, None, 200, 401, 401]


# -- the wire, counters, surface -----------------------------------------------------------


async def test_connections_are_kept_alive_and_garbage_gets_400() -> None:
    async with serving() as (sim, _):
        port = int(sim.base_url.rsplit(":", 1)[1])
        request = b"GET /health HTTP/1.1\r\nHost: sim\r\n\r\n"
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(request * 2)  # pipelined on one connection
            received = b""
            while received.count(b"HTTP/1.1 200") < 2:
                received += await stream.receive()
            await stream.send(request)
            received = await stream.receive()
            assert received.startswith(b"HTTP/1.1 200")
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(b"NONSENSE\r\n\r\n")
            assert (await stream.receive()).startswith(b"HTTP/1.1 400")


async def test_counters_and_log_tell_what_happened() -> None:
    clock = ManualClock(start=START)
    async with serving(clock, rotate_refresh_tokens=True) as (sim, client):
        ann = await sim.consent("usr_ann")
        bob = await sim.consent("usr_bob")
        await clock.advance(30)
        ann = (await refresh(client, ann["refresh_token"])).json()
        await clock.advance(45)
        await refresh(client, ann["refresh_token"])
        await refresh(client, bob["refresh_token"])
        await client.post("/token", json={})
    stats = sim.stats
    assert 8 == stats.requests == stats.authorize_requests + sum(stats.token_requests.values())
    assert stats.token_requests == {"authorization_code": 2, "refresh_token": 3, "": 1}
    assert stats.refreshes == {"usr_ann": 2, "usr_bob": 1}
    assert stats.codes_exchanged == 2
    assert 0 == stats.rate_limited == stats.reuse_events
    assert stats.statuses == {302: 2, 200: 5, 401: 1}
    times = [START, START, START + 30, START + 75, START + 75, START + 75]
    humans = ["usr_ann", "usr_bob", "usr_ann", "usr_ann", "usr_bob", None]
    assert [r.time for r in sim.requests_log] == times
    assert [r.human_id for r in sim.requests_log] == humans
    assert sim.max_requests_in_window(60) == 4  # the span from START+30 to START+75
    assert sim.max_requests_in_window(1) == 3


async def test_activity_is_busy_while_a_request_is_answered() -> None:
    async with serving() as (sim, client):
        sim.latency(0.1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.post, "/token")
            with anyio.fail_after(5):
                while sim.activity.count == 0:  # noqa: ASYNC110 - until the request arrives
                    await anyio.sleep(0.001)
            assert sim.activity.count == 1
        assert sim.activity.count == 0


async def test_activity_as_settle_hook_keeps_the_manual_clock_still_during_an_answer() -> None:
    clock = ManualClock(start=START)
    async with serving(clock) as (sim, client):
        clock.add_settle_hook(sim.activity.wait_idle)
        tokens = await sim.consent("usr_ann")
        sim.latency(0.3)  # longer than anyio's wait_all_tasks_blocked naps (0.1 s)
        async with anyio.create_task_group() as tg:
            tg.start_soon(refresh, client, tokens["refresh_token"])
            with anyio.fail_after(5):
                while sim.activity.count == 0:  # noqa: ASYNC110 - until the request arrives
                    await anyio.sleep(0.001)
            await clock.advance(3600)
    assert [record.time for record in sim.requests_log] == [START, START]


async def test_secrets_and_tokens_stay_out_of_reprs() -> None:
    async with serving() as (sim, _):
        tokens = await sim.consent("usr_ann")
        shown = repr(sim) + repr(sim.stats) + repr(sim.requests_log)
    assert CLIENT_SECRET not in shown
    assert tokens["access_token"] not in shown
    assert tokens["refresh_token"] not in shown


def test_public_surface_is_sorted_and_complete() -> None:
    assert sorted(haasd.simulator.__all__) == haasd.simulator.__all__
    for name in haasd.simulator.__all__:
        assert hasattr(haasd.simulator, name)


async def test_a_grace_window_without_a_replay_limit_honours_every_presentation_in_it() -> None:
    clock = ManualClock(start=START)
    options = {"rotate_refresh_tokens": True, "reuse_grace": 30, "grace_replays": None}
    async with serving(clock, **options) as (sim, client):
        tokens = await sim.consent("usr_ann")
        rotated = (await refresh(client, tokens["refresh_token"])).json()
        for _ in range(3):  # three holders that lost the answer, one after the other
            await clock.advance(5)
            replay = (await refresh(client, tokens["refresh_token"])).json()
            assert replay["refresh_token"] == rotated["refresh_token"]
        await clock.advance(20)  # the window is over
        late = await refresh(client, tokens["refresh_token"])
    assert oauth_error_of(late) == "invalid_grant"
    assert (sim.stats.grace_replays, sim.stats.reuse_events) == (3, 1)


async def test_an_access_tokens_end_is_known_to_the_server_that_issued_it() -> None:
    clock = ManualClock(start=START)
    async with serving(clock, expires_in=600) as (sim, _client):
        tokens = await sim.consent("usr_ann")
        assert sim.access_token_expires_at(tokens["access_token"]) == START + 600
        assert sim.access_token_expires_at("haas_at_never_issued") is None
        await clock.advance(600)  # ended now; it was valid a moment ago, and not after
        assert sim.validate_access_token(tokens["access_token"]) is None
        assert sim.validate_access_token(tokens["access_token"], at=START + 599) == "usr_ann"
        assert sim.validate_access_token(tokens["access_token"], at=START + 600) is None
