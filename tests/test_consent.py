"""Consent onboarding and re-consent against the simulator, over loopback, on the manual clock."""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import httpx
import pytest
from harness import DAY, HOUR, Harness, running, simulator
from structlog.testing import capture_logs
from support import isort_order

import haasd.consent
import haasd.consent._flow
import haasd.consent._listen
import haasd.consent._oauth
import haasd.errors
from haasd.clock import Activity, ManualClock
from haasd.config import STAR_SCOPE_ADVICE, HaasConfig, SecretSource
from haasd.consent import ConsentFlow, ConsentResult, PendingConsent
from haasd.consent._listen import Page, listen_on_loopback
from haasd.consent._oauth import (
    check_callback,
    code_challenge,
    parse_callback,
    redirect_matches,
    resolve_scopes,
    state_id,
    with_port,
)
from haasd.crypto import Key
from haasd.errors import (
    ConsentDeniedError,
    ConsentForbiddenError,
    ConsentLimitError,
    ConsentRequestError,
    ExchangeFailedError,
    ExchangeUnavailableError,
    HaasdError,
    InvalidStateError,
    ListenTimeoutError,
    ScopeError,
)
from haasd.events import Event
from haasd.grants import Policy, State
from haasd.secret import Secret
from haasd.simulator import Simulator

REDIRECT = "https://app.example/callback"
LOOPBACK = "http://127.0.0.1:9/callback"  # port 9 is never bound: the tests listen on 0
CONFIGURED = ("tasks:dispatch", "status:read")
TTL = 900.0


def haas_config(sim: Simulator, redirect_uri: str = REDIRECT) -> HaasConfig:
    return HaasConfig(
        environment="test",
        client_id=sim.client_id,
        client_secret=SecretSource("haas.client_secret", "client_secret", "HAASD_CLIENT_SECRET"),
        authorize_url=sim.authorize_url,
        token_url=sim.token_url,
        redirect_uri=redirect_uri,
        scopes=CONFIGURED,
        plan="pro",
        requests_per_minute=300,
        token_request_format="json",
    )


def make_flow(h: Harness, redirect_uri: str = REDIRECT, **options: Any) -> ConsentFlow:
    activity = Activity()  # the clock waits for the flow's disk work before moving on
    h.clock.add_settle_hook(activity.wait_idle)
    return ConsentFlow(
        h.store,
        h.refresher.auth,
        h.refresher,
        h.clock,
        h.events,
        haas_config(h.sim, redirect_uri),
        rng=random.Random(7),
        activity=activity,
        **options,
    )


@asynccontextmanager
async def consenting(
    tmp_path: Path,
    *,
    run: bool = True,
    redirect_uri: str = REDIRECT,
    flow_options: dict[str, Any] | None = None,
    **running_options: Any,
) -> AsyncIterator[tuple[Harness, ConsentFlow]]:
    """An engine on the simulator and a consent flow, its expiry loop running."""
    async with running(tmp_path, **running_options) as h:
        flow = make_flow(h, redirect_uri, **(flow_options or {}))
        async with anyio.create_task_group() as tg:
            if run:
                await tg.start(flow.run)
            yield h, flow
            tg.cancel_scope.cancel()


def consent_events(h: Harness) -> list[Event]:
    out: list[Event] = []
    while (event := h.feed.get_nowait()) is not None:
        if event.type.startswith("consent."):
            out.append(event)
    return out


def query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def rewrite(url: str, **changes: str | None) -> str:
    """``url`` with query parameters replaced (None: removed)."""
    parts = urlsplit(url)
    params = {**query(url), **changes}
    kept = {k: v for k, v in params.items() if v is not None}
    return urlunsplit(parts._replace(query=urlencode(kept)))


async def approve(h: Harness, pending: PendingConsent) -> str:
    """The human's browser approves; the URL it is redirected to."""
    location = await h.sim.visit(pending.authorization_url)
    assert location is not None
    return location


# --- approve, deny, abandon ---------------------------------------------------------------


async def test_an_approved_consent_becomes_an_active_grant(tmp_path: Path) -> None:
    async with consenting(tmp_path) as (h, flow):
        h.sim.queue_human("usr_maria_42")
        pending = await flow.start()

        params = query(pending.authorization_url)
        assert pending.authorization_url.startswith(h.sim.authorize_url + "?")
        assert {
            "client_id": h.sim.client_id,
            "redirect_uri": REDIRECT,
            "response_type": "code",
            "scope": "tasks:dispatch status:read",
            "state": pending.state,
            "code_challenge_method": "S256",
        }.items() <= params.items()
        assert len(params["code_challenge"]) == 43
        assert "login_hint" not in params
        assert len(base64.urlsafe_b64decode(pending.state + "=")) == 32  # 256 bits
        assert pending.expires_at == h.clock.time() + TTL
        assert pending.state not in repr(pending)

        result = await flow.finish_url(await approve(h, pending))

        now = h.clock.time()
        assert result.human_id == "usr_maria_42"
        assert result.scope == CONFIGURED
        assert (result.replaced, result.different_human) == (False, False)
        grant = h.refresher.grant("usr_maria_42")
        assert grant == result.grant
        assert grant == await h.store.get_grant("usr_maria_42")
        assert grant.state is State.ACTIVE
        assert grant.refresh_expires_at == now + 30 * DAY
        assert h.sim.validate_access_token(grant.access_token.reveal()) == "usr_maria_42"
        assert await h.store.list_pending() == []
        events = consent_events(h)
        assert [(e.type, e.human_id) for e in events] == [
            ("consent.started", None),
            ("consent.granted", "usr_maria_42"),
        ]
        assert {e.details["consent_id"] for e in events} == {pending.consent_id}
        assert events[1].details["replaced"] is False


async def test_a_denied_consent_is_used_up_and_announced(tmp_path: Path) -> None:
    async with consenting(tmp_path) as (h, flow):
        h.sim.add_human("usr_no_1", "deny")
        pending = await flow.start(human_id="usr_no_1")
        location = await approve(h, pending)
        assert query(location)["error"] == "access_denied"

        with pytest.raises(ConsentDeniedError) as denied:
            await flow.finish_url(location)
        assert denied.value.error_type == "access_denied"
        assert [(e.type, e.human_id) for e in consent_events(h)] == [
            ("consent.started", "usr_no_1"),
            ("consent.denied", "usr_no_1"),
        ]
        assert await h.store.list_pending() == []
        assert h.refresher.grant("usr_no_1") is None
        with pytest.raises(InvalidStateError):
            await flow.finish_url(location)
        assert h.sim.requests_log == []  # nothing was ever exchanged


async def test_a_closed_tab_expires_on_time_and_leaves_nothing(tmp_path: Path) -> None:
    async with consenting(tmp_path) as (h, flow):
        h.sim.add_human("usr_gone_1", "ignore")
        pending = await flow.start(human_id="usr_gone_1")
        assert await h.sim.visit(pending.authorization_url) is None  # the human closed it
        consent_events(h)

        await h.clock.advance(TTL - 1)
        assert consent_events(h) == []
        assert len(await h.store.list_pending()) == 1
        await h.clock.advance(2)
        events = consent_events(h)
        assert [(e.type, e.human_id) for e in events] == [("consent.abandoned", "usr_gone_1")]
        assert events[0].details["consent_id"] == pending.consent_id
        assert await h.store.list_pending() == []


async def test_a_callback_after_expiry_is_refused_without_an_exchange(tmp_path: Path) -> None:
    async with consenting(tmp_path, run=False) as (h, flow):
        pending = await flow.start()
        location = await approve(h, pending)
        await h.clock.advance(TTL)

        with pytest.raises(InvalidStateError) as refused:
            await flow.finish_url(location)
        assert refused.value.reason == "expired"
        assert [e.type for e in consent_events(h)] == ["consent.started", "consent.abandoned"]
        assert h.sim.requests_log == []


async def test_expired_consents_are_pruned_when_the_flow_starts(tmp_path: Path) -> None:
    async with consenting(tmp_path, run=False) as (h, flow):
        await flow.start()
        await h.clock.advance(TTL + 1)
        consent_events(h)
        async with anyio.create_task_group() as tg:
            await tg.start(flow.run)
            assert [e.type for e in consent_events(h)] == ["consent.abandoned"]
            tg.cancel_scope.cancel()
        assert await h.store.list_pending() == []


# --- single use -------------------------------------------------------------------------


async def test_a_replayed_callback_is_refused_without_a_request(tmp_path: Path) -> None:
    async with consenting(tmp_path) as (h, flow):
        location = await approve(h, await flow.start())
        await flow.finish_url(location)
        with pytest.raises(InvalidStateError) as replayed:
            await flow.finish_url(location)
        assert replayed.value.reason == "unknown"
        assert len(h.sim.requests_log) == 1


async def test_a_replayed_code_is_refused_by_the_server_and_revokes_its_grant(
    tmp_path: Path,
) -> None:
    async with consenting(tmp_path) as (h, flow):
        h.sim.queue_human("usr_a_1")
        first = await flow.start()
        first_location = await approve(h, first)
        await flow.finish_url(first_location)
        assert h.sim.has_active_grant("usr_a_1")
        second = await flow.start()

        # a callback carrying the first consent's (spent) code with the second's state
        code = query(first_location)["code"]
        with pytest.raises(ExchangeFailedError) as failed:
            await flow.finish(second.state, code=code)
        assert failed.value.error_type == "invalid_grant"
        assert not h.sim.has_active_grant("usr_a_1")  # RFC 6749 §4.1.2: the server revokes
        assert h.sim.stats.code_replays == 1
        assert await h.store.list_pending() == []  # the second consent is used up
        assert [e.type for e in consent_events(h)][-1] == "consent.failed"


async def test_two_concurrent_callbacks_exchange_the_code_once(tmp_path: Path) -> None:
    async with consenting(tmp_path) as (h, flow):
        location = await approve(h, await flow.start())
        outcomes: list[ConsentResult | BaseException] = []

        async def finish() -> None:
            try:
                outcomes.append(await flow.finish_url(location))
            except InvalidStateError as exc:
                outcomes.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(finish)
            tg.start_soon(finish)
        assert sorted(type(o).__name__ for o in outcomes) == ["ConsentResult", "InvalidStateError"]
        assert len(h.sim.requests_log) == 1


# --- redirect URI and PKCE ----------------------------------------------------------------


async def test_a_callback_for_another_redirect_uri_is_refused_and_consumes_nothing(
    tmp_path: Path,
) -> None:
    async with consenting(tmp_path) as (h, flow):
        location = await approve(h, await flow.start())
        elsewhere = urlunsplit(urlsplit(location)._replace(netloc="evil.example"))
        with pytest.raises(ConsentRequestError, match="not a redirect"):
            await flow.finish_url(elsewhere)
        assert h.sim.requests_log == []
        assert (await flow.finish_url(location)).human_id.startswith("usr_")


async def test_a_server_that_does_not_know_our_redirect_uri_shows_an_error_page(
    tmp_path: Path,
) -> None:
    options = {"redirect_uris": ["https://registered.example/callback"]}
    async with consenting(tmp_path, sim_options=options) as (h, flow):
        pending = await flow.start()
        with pytest.raises(httpx.HTTPStatusError) as page:
            await h.sim.visit(pending.authorization_url)
        assert page.value.response.status_code == 400


async def test_a_code_bound_to_another_pkce_challenge_is_refused(tmp_path: Path) -> None:
    async with consenting(tmp_path) as (h, flow):
        pending = await flow.start()
        # an attacker's authorization request, with their challenge, and our state
        forged = rewrite(pending.authorization_url, code_challenge="A" * 43)
        location = await h.sim.visit(forged)
        assert location is not None
        with pytest.raises(ExchangeFailedError) as failed:
            await flow.finish_url(location)
        assert failed.value.error_type == "invalid_grant"
        assert "code_verifier does not match" in str(failed.value)
        assert h.refresher.grant(query(location).get("human_id", "")) is None
        assert list(h.refresher.grants()) == []


def test_the_s256_challenge_is_rfc_7636_s() -> None:
    verifier = Secret("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")  # RFC 7636 Appendix B
    assert code_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


async def test_neither_state_nor_verifier_reaches_the_disk_in_the_clear(tmp_path: Path) -> None:
    async with consenting(tmp_path) as (h, flow):
        pending = await flow.start()
        state_id = hashlib.sha256(pending.state.encode()).hexdigest()  # the documented key
        taken = await h.store.take_pending(state_id)
        assert taken is not None
        record, verifier = taken
        assert len(verifier) == 43  # 32 random octets, base64url, unpadded
        assert query(pending.authorization_url)["code_challenge"] == code_challenge(verifier)
        await h.store.restore_pending(record, verifier)

        files = [p for p in tmp_path.iterdir() if p.name.startswith("haasd.db")]
        data = b"".join(p.read_bytes() for p in files)
        assert state_id.encode() in data  # the row is there ...
        assert verifier.reveal().encode() not in data  # ... but not the secrets
        assert pending.state.encode() not in data
        assert (await flow.finish_url(await approve(h, pending))).human_id.startswith("usr_")


# --- scopes ---------------------------------------------------------------------------


async def test_a_consent_may_narrow_the_configured_scopes(tmp_path: Path) -> None:
    async with consenting(tmp_path) as (h, flow):
        pending = await flow.start(["status:read"])
        assert query(pending.authorization_url)["scope"] == "status:read"
        result = await flow.finish_url(await approve(h, pending))
        assert result.scope == ("status:read",)
        assert result.grant.scope == ("status:read",)


@pytest.mark.parametrize(
    ("scopes", "error_type", "message"),
    [
        (["tasks:dispatch", "profile:read"], "scope_not_allowed", "never widen"),
        (["tasks:write"], "invalid_scope", "unknown scope tasks:write"),
        (["*"], "invalid_scope", STAR_SCOPE_ADVICE),
        ([], "invalid_scope", "at least one"),
    ],
)
async def test_scopes_that_may_not_be_asked_for_are_refused(
    tmp_path: Path, scopes: list[str], error_type: str, message: str
) -> None:
    async with consenting(tmp_path) as (h, flow):
        with pytest.raises(ScopeError) as refused:
            await flow.start(scopes)
        assert refused.value.error_type == error_type
        assert message in str(refused.value)
        assert await h.store.list_pending() == []
        assert consent_events(h) == []


def test_default_scopes_are_the_grant_s_within_the_configured() -> None:
    assert resolve_scopes(None, CONFIGURED) == CONFIGURED
    assert resolve_scopes(None, CONFIGURED, ("status:read",)) == ("status:read",)
    assert resolve_scopes(None, CONFIGURED, ("profile:read", "status:read")) == ("status:read",)
    assert resolve_scopes(None, CONFIGURED, ("profile:read",)) == CONFIGURED
    assert resolve_scopes("status:read,status:read", CONFIGURED) == ("status:read",)


async def test_a_malformed_human_id_is_refused(tmp_path: Path) -> None:
    async with consenting(tmp_path) as (_, flow):
        with pytest.raises(ConsentRequestError, match="not a human id"):
            await flow.start(human_id="Maria <script>")


# --- re-consent -----------------------------------------------------------------------


async def test_re_consent_of_a_flagged_human_replaces_the_grant(tmp_path: Path) -> None:
    # an app that stopped asking for tokens: nobody refreshes ahead for weeks (faster, too)
    async with consenting(tmp_path, policy=Policy(refresh_idle=HOUR)) as (h, flow):
        await h.consent("usr_maria_42", "status:read")
        await h.clock.advance(24 * DAY)
        old = h.refresher.grant("usr_maria_42")
        assert old is not None
        assert old.state is State.RECONSENT_DUE
        consent_events(h)

        pending = await flow.start(human_id="usr_maria_42")
        assert pending.reconsent
        assert pending.scope == ("status:read",)  # the grant's, not the configured
        assert query(pending.authorization_url)["login_hint"] == "usr_maria_42"
        result = await flow.finish_url(await approve(h, pending))

        now = h.clock.time()
        assert (result.human_id, result.replaced, result.different_human) == (
            "usr_maria_42",
            True,
            False,
        )
        new = h.refresher.grant("usr_maria_42")
        assert new == result.grant == await h.store.get_grant("usr_maria_42")
        assert new.state is State.ACTIVE
        assert new.consented_at == now
        assert new.refresh_expires_at == now + 30 * DAY
        assert new.refresh_token != old.refresh_token
        assert [(e.type, e.human_id) for e in consent_events(h)] == [
            ("consent.started", "usr_maria_42"),
            ("consent.granted", "usr_maria_42"),
        ]

        await h.clock.advance(7 * DAY)  # past the old limit, far from the new warning
        assert h.refresher.grant("usr_maria_42").state is State.ACTIVE  # type: ignore[union-attr]


async def test_another_human_approving_a_re_consent_gets_a_new_grant(tmp_path: Path) -> None:
    async with consenting(tmp_path) as (h, flow):
        await h.consent("usr_maria_42")  # whether flagged or not: the same path
        old = h.refresher.grant("usr_maria_42")
        assert old is not None

        pending = await flow.start(human_id="usr_maria_42")
        # someone else is signed in at the server, which does not honour the hint
        h.sim.queue_human("usr_bob_7")
        location = await h.sim.visit(rewrite(pending.authorization_url, login_hint=None))
        assert location is not None
        result = await flow.finish_url(location)

        assert result.human_id == "usr_bob_7"
        assert result.different_human
        assert result.expected_human_id == "usr_maria_42"
        assert not result.replaced
        assert h.refresher.grant("usr_maria_42") == old  # untouched
        assert await h.store.get_grant("usr_maria_42") == old
        granted = consent_events(h)[-1]
        assert (granted.type, granted.human_id) == ("consent.granted", "usr_bob_7")
        assert granted.details["expected_human_id"] == "usr_maria_42"


async def test_a_refresh_in_flight_does_not_undo_a_re_consent(tmp_path: Path) -> None:
    short = {"refresh_token_lifetime": 3 * DAY}
    policy = Policy(refresh_token_lifetime=3 * DAY, reconsent_warning=DAY, refresh_idle=9 * DAY)
    async with consenting(tmp_path, policy=policy, sim_options=short) as (h, flow):
        await h.consent("usr_maria_42")
        await h.clock.advance(2.2 * DAY)
        location = await approve(h, await flow.start(human_id="usr_maria_42"))
        h.sim.latency(1.0)  # the old grant's refresh is slow to answer ...
        refreshes = h.sim.stats.token_requests["refresh_token"]
        async with anyio.create_task_group() as tg:
            tg.start_soon(h.refresher.refresh_now, "usr_maria_42")
            # the simulator has no event for "a request arrived": poll its counter
            while h.sim.stats.token_requests["refresh_token"] == refreshes:  # noqa: ASYNC110
                await anyio.sleep(0.01)
            h.sim.latency(0)  # ... and the re-consent lands meanwhile
            result = await flow.finish_url(location)
        assert await h.store.get_grant("usr_maria_42") == h.refresher.grant("usr_maria_42")
        assert h.refresher.grant("usr_maria_42").refresh_token == result.grant.refresh_token  # type: ignore[union-attr]
        assert h.refresher.grant("usr_maria_42").state is State.ACTIVE  # type: ignore[union-attr]


# --- restarts, failures, limits -----------------------------------------------------------


async def test_a_restart_between_start_and_callback_loses_nothing(tmp_path: Path) -> None:
    key = Key.generate()
    sim = simulator(ManualClock())
    async with sim.running():
        async with running(tmp_path, sim=sim, key=key) as h:
            pending = await make_flow(h).start()
            location = await approve(h, pending)
        async with running(tmp_path, sim=sim, key=key) as h:
            assert len(await h.store.list_pending()) == 1
            result = await make_flow(h).finish_url(location)
            assert h.refresher.grant(result.human_id) is not None
            assert await h.store.list_pending() == []


async def test_a_transient_exchange_failure_keeps_the_consent_usable(tmp_path: Path) -> None:
    async with consenting(tmp_path) as (h, flow):
        location = await approve(h, await flow.start())
        h.sim.fail_next(1, status=503)
        with pytest.raises(ExchangeUnavailableError) as failed:
            await flow.finish_url(location)
        assert failed.value.error_type == "temporarily_unavailable"
        assert len(await h.store.list_pending()) == 1

        result = await flow.finish_url(location)
        assert h.refresher.grant(result.human_id) is not None
        assert [e.type for e in consent_events(h)] == ["consent.started", "consent.granted"]


async def test_a_cancelled_exchange_keeps_the_consent(tmp_path: Path) -> None:
    async with consenting(tmp_path) as (h, flow):
        location = await approve(h, await flow.start())
        h.sim.latency(0.2)
        with anyio.move_on_after(0.05):
            await flow.finish_url(location)
        assert len(await h.store.list_pending()) == 1
        h.sim.clear_faults()


async def test_the_pending_table_is_bounded(tmp_path: Path) -> None:
    async with consenting(tmp_path, run=False, flow_options={"max_pending": 2}) as (h, flow):
        await flow.start()
        await h.clock.advance(60)
        await flow.start()
        with pytest.raises(ConsentLimitError) as full:
            await flow.start()
        assert full.value.retry_after == TTL - 60
        consent_events(h)

        await h.clock.advance(TTL - 59)  # the first has expired: it makes room
        await flow.start()
        assert [e.type for e in consent_events(h)] == ["consent.abandoned", "consent.started"]
        assert len(await h.store.list_pending()) == 2


# --- the loopback listener ---------------------------------------------------------------


async def listen_in_process(
    flow: ConsentFlow,
    *,
    host: str | None = None,
    port: int | None = None,
    seconds: float,
    ready: Callable[[str], Awaitable[object]] | None = None,
) -> ConsentResult:
    """The shared loopback listener, with the flow finishing in this process.

    ``haasd consent listen`` has the daemon finish instead (haasd.client.listen_for_consent,
    tests/test_consent_api.py); the listening, the pages and the port are the same.
    """
    async with listen_on_loopback(flow.redirect_uri, port, host=host) as listener:
        if ready is not None:
            await ready(listener.redirect_uri)
        return await listener.catch(flow.finish_url, page_for, seconds=seconds)


def page_for(exc: HaasdError) -> Page:
    """The in-process flow's errors as pages (400 and 503 leave the listener waiting)."""
    if isinstance(exc, InvalidStateError | ConsentRequestError):
        return 400, "Not this consent", str(exc)
    if isinstance(exc, ExchangeUnavailableError):
        return 503, "Try again", str(exc)
    return 403 if isinstance(exc, ConsentDeniedError) else 502, "Consent not given", str(exc)


async def test_the_loopback_listener_finishes_the_consent_and_closes(tmp_path: Path) -> None:
    async with consenting(tmp_path, redirect_uri=LOOPBACK) as (h, flow):
        started: list[PendingConsent] = []
        ready = anyio.Event()
        results: list[ConsentResult] = []

        async def show_url(redirect_uri: str) -> None:
            started.append(await flow.start(redirect_uri=redirect_uri))
            ready.set()

        async def listen() -> None:
            results.append(await listen_in_process(flow, port=0, seconds=10, ready=show_url))

        async with anyio.create_task_group() as tg:
            tg.start_soon(listen)
            await ready.wait()
            pending = started[0]
            port = urlsplit(pending.redirect_uri).port
            assert port not in (None, 9)
            assert pending.redirect_uri == with_port(LOOPBACK, port or 0)
            location = await approve(h, pending)
            assert location.startswith(f"http://127.0.0.1:{port}/callback?")
            async with httpx.AsyncClient(trust_env=False) as browser:
                stray = await browser.get(f"http://127.0.0.1:{port}/favicon.ico")
                stale = await browser.get(rewrite(location, state="not-a-state"))
                answer = await browser.get(location)
        assert (stray.status_code, stale.status_code) == (404, 400)
        assert answer.status_code == 200
        assert "You can close this tab" in answer.text
        assert answer.headers["cache-control"] == "no-store"
        assert results[0].human_id in answer.text
        assert h.refresher.grant(results[0].human_id) is not None
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(trust_env=False) as browser:
                await browser.get(location)


async def test_the_listener_reports_a_refusal_after_showing_it(tmp_path: Path) -> None:
    async with consenting(tmp_path, redirect_uri=LOOPBACK) as (h, flow):
        h.sim.add_human("usr_no_2", "deny")
        urls: list[str] = []
        ready = anyio.Event()
        errors: list[ConsentDeniedError] = []

        async def show_url(redirect_uri: str) -> None:
            urls.append(
                (await flow.start(human_id="usr_no_2", redirect_uri=redirect_uri)).authorization_url
            )
            ready.set()

        async def listen() -> None:
            with pytest.raises(ConsentDeniedError) as denied:
                await listen_in_process(flow, port=0, seconds=10, ready=show_url)
            errors.append(denied.value)

        async with anyio.create_task_group() as tg:
            tg.start_soon(listen)
            await ready.wait()
            location = await h.sim.visit(urls[0])
            assert location is not None
            async with httpx.AsyncClient(trust_env=False) as browser:
                page = await browser.get(location)
        assert page.status_code == 403
        assert "declined" in page.text
        assert errors[0].error_type == "access_denied"


async def test_the_listener_gives_up_after_its_timeout(tmp_path: Path) -> None:
    async with consenting(tmp_path, redirect_uri=LOOPBACK) as (_, flow):
        seen: list[str] = []

        async def ready(redirect_uri: str) -> None:
            seen.append(redirect_uri)

        with pytest.raises(ListenTimeoutError):
            await listen_in_process(flow, port=0, seconds=0.05, ready=ready)
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(trust_env=False) as browser:
                await browser.get(seen[0])


async def test_the_listener_needs_a_loopback_redirect_and_address(tmp_path: Path) -> None:
    async with consenting(tmp_path) as (_, flow):
        with pytest.raises(ConsentRequestError, match="loopback"):
            await listen_in_process(flow, port=0, seconds=1)
    (tmp_path / "2").mkdir()
    async with consenting(tmp_path / "2", redirect_uri=LOOPBACK) as (_, flow):
        with pytest.raises(ValueError, match="loopback"):
            await listen_in_process(flow, host="0.0.0.0", port=0, seconds=1)  # noqa: S104


async def test_only_a_loopback_redirect_uri_may_change_and_only_its_port(tmp_path: Path) -> None:
    async with consenting(tmp_path) as (_, flow):
        with pytest.raises(ConsentRequestError, match="loopback"):
            await flow.start(redirect_uri="https://app.example:8443/callback")
    (tmp_path / "2").mkdir()
    async with consenting(tmp_path / "2", redirect_uri=LOOPBACK) as (_, flow):
        assert (await flow.start(redirect_uri="http://127.0.0.1:4242/callback")).redirect_uri == (
            "http://127.0.0.1:4242/callback"
        )
        with pytest.raises(ConsentRequestError, match="more than its port"):
            await flow.start(redirect_uri="http://127.0.0.1:4242/elsewhere")


# --- the pure parts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("https://app.example/callback?code=c", "no state"),
        ("https://app.example/callback?state=s", "either a code or an error"),
        ("https://app.example/callback?state=s&code=c&error=access_denied", "either"),
        ("https://app.example/callback?state=s&state=t&code=c", "more than once"),
    ],
)
def test_malformed_callbacks_are_refused(url: str, match: str) -> None:
    with pytest.raises(ConsentRequestError, match=match):
        parse_callback(url)


def test_a_callback_carries_state_and_code_or_error() -> None:
    ok = parse_callback("https://app.example/callback?code=c&state=s&iss=x")
    assert (ok.state, ok.code, ok.error) == ("s", "c", None)
    no = parse_callback("https://a.example/cb?error=access_denied&error_description=no&state=s")
    assert (no.code, no.error, no.error_description) == (None, "access_denied", "no")


@pytest.mark.parametrize(
    ("url", "redirect_uri", "matches"),
    [
        ("https://app.example/callback?state=s", "https://app.example/callback", True),
        ("https://app.example:443/callback?x", "https://app.example/callback", True),
        ("http://app.example/callback?x", "https://app.example/callback", False),
        ("https://app.example/callback/x?x", "https://app.example/callback", False),
        ("https://app.example:444/callback", "https://app.example/callback", False),
        ("https://app.example/cb?tenant=a&state=s", "https://app.example/cb?tenant=a", True),
        ("https://app.example/cb?tenant=b&state=s", "https://app.example/cb?tenant=a", False),
        ("https://app.example:x/cb", "https://app.example/cb", False),
    ],
)
def test_a_callback_must_be_a_redirect_to_the_redirect_uri(
    url: str, redirect_uri: str, matches: bool
) -> None:
    assert redirect_matches(url, redirect_uri) is matches


def test_public_names_are_sorted_and_exist() -> None:
    modules = (haasd.consent, haasd.consent._flow, haasd.consent._oauth, haasd.consent._listen)
    for module in (*modules, haasd.errors):
        assert sorted(module.__all__, key=isort_order) == list(module.__all__)
        for name in module.__all__:
            assert hasattr(module, name)


def test_a_state_never_starts_with_a_dash() -> None:
    from haasd.consent._oauth import new_state

    states = [new_state() for _ in range(2000)]  # about 1 in 64 random ones would
    assert not any(s.startswith("-") for s in states)
    assert len(set(states)) == 2000
    assert all(len(s) >= 43 for s in states), "256 random bits"


# --- the policy in force, and who may finish --------------------------------------------------


def zz_only(human_id: str) -> bool:
    """The rules of an admin for ``usr_zz_*`` only."""
    return human_id.startswith("usr_zz_")


async def test_a_consent_finished_after_the_policy_changed_builds_its_grant_with_the_new(
    tmp_path: Path,
) -> None:
    async with consenting(tmp_path) as (h, flow):
        before = await flow.finish_url(await approve(h, await flow.start()))
        assert before.grant.refresh_expires_at == h.clock.time() + 30 * DAY
        pending = await flow.start()  # started under the old policy

        h.refresher.policy = Policy(refresh_token_lifetime=3 * DAY, reconsent_warning=DAY)
        result = await flow.finish_url(await approve(h, pending))

        assert result.grant.refresh_expires_at == h.clock.time() + 3 * DAY
        stored = await h.store.get_grant(result.human_id)
        assert stored.refresh_expires_at == h.clock.time() + 3 * DAY


async def test_an_approval_by_a_human_outside_the_finishers_rules_stores_nothing(
    tmp_path: Path,
) -> None:
    async with consenting(tmp_path) as (h, flow):
        await h.consent("usr_maria_42")
        old = h.refresher.grant("usr_maria_42")
        pending = await flow.start()
        h.sim.queue_human("usr_maria_42")  # the browser signs in as someone else's human
        location = await approve(h, pending)
        consent_events(h)
        exchanges = len(h.sim.requests_log)

        with capture_logs() as logs, pytest.raises(ConsentForbiddenError) as refused:
            await flow.finish_url(location, may_hold=zz_only)

        assert refused.value.exchanged
        assert "outside your rules; nothing was stored" in str(refused.value)
        assert "usr_maria_42" not in str(refused.value)
        assert len(h.sim.requests_log) == exchanges + 1, "the code was exchanged"
        assert h.refresher.grant("usr_maria_42") == old
        assert await h.store.get_grant("usr_maria_42") == old
        assert await h.store.list_pending() == []
        events = consent_events(h)
        assert [(e.type, e.human_id, e.details["error"]) for e in events] == [
            ("consent.failed", None, "human_not_allowed")
        ]
        (warning,) = [e for e in logs if e["log_level"] == "warning"]
        assert warning["human_id"] == "usr_maria_42"
        assert "configure haas.revocation_url" in warning["revocation"]
        assert "could not be revoked: configure haas.revocation_url" in str(refused.value)
        assert refused.value.revoked is False
        assert set(warning) == {
            "event",
            "log_level",
            "human_id",
            "consent_id",
            "expected_human_id",
            "revocation",
        }


async def test_an_approval_by_a_human_inside_the_finishers_rules_is_granted(
    tmp_path: Path,
) -> None:
    async with consenting(tmp_path) as (h, flow):
        h.sim.queue_human("usr_zz_1")
        result = await flow.finish_url(await approve(h, await flow.start()), may_hold=zz_only)
        assert result.human_id == "usr_zz_1"
        assert h.refresher.grant("usr_zz_1") == result.grant


async def test_a_consent_naming_a_human_outside_the_rules_is_left_unused(tmp_path: Path) -> None:
    async with consenting(tmp_path) as (h, flow):
        h.sim.add_human("usr_no_1", "deny")
        approved = await approve(h, await flow.start(human_id="usr_maria_42"))
        denied = await approve(h, await flow.start(human_id="usr_no_1"))
        consent_events(h)

        for location in (approved, denied):
            with pytest.raises(ConsentForbiddenError) as refused:
                await flow.finish_url(location, may_hold=zz_only)
            assert not refused.value.exchanged
        back = query(denied)
        with pytest.raises(ConsentForbiddenError):
            await flow.finish(back["state"], error=back["error"], may_hold=zz_only)

        assert h.sim.requests_log == []
        assert consent_events(h) == []
        assert len(await h.store.list_pending()) == 2
        assert (await flow.finish_url(approved)).human_id == "usr_maria_42"  # for its admin


# --- what a callback may carry --------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"state": "\ud800", "code": "x"}, "state holds a character that is not printable"),
        ({"state": "s\x1b[31m", "code": "x"}, "state holds a character that is not printable"),
        ({"state": "s" * 513, "code": "x"}, "state is too long"),
        ({"state": "s", "code": "cödé"}, "code must be ASCII"),
        ({"state": "s", "code": "c\n"}, "code holds"),
        ({"state": "s", "code": "c" * 4097}, "code is too long"),
        ({"state": "s", "error": "access_denied\x00"}, "error holds"),
        ({"state": "s", "error": "e", "error_description": "\u202e"}, "error_description holds"),
        ({"state": "s", "error": "e", "error_description": "d" * 1025}, "too long"),
        ({"state": "s", "code": ""}, "code must be a non-empty string"),
        ({"state": "", "code": "c"}, "state must be a non-empty string"),
        ({"state": "s", "code": "c", "error_description": "d"}, "goes with error"),
    ],
)
def test_callback_fields_must_be_printable_bounded_text(fields: dict[str, str], match: str) -> None:
    state, code, error = fields["state"], fields.get("code"), fields.get("error")
    with pytest.raises(ConsentRequestError, match=match):
        check_callback(state, code, error, fields.get("error_description"))


def test_a_described_refusal_may_be_any_printable_text() -> None:
    callback = check_callback("s", None, "access_denied", "Ablehnung: nö")
    assert callback.error_description == "Ablehnung: nö"


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("https://app.example/callback?state=s%00&code=c", "the callback URL's state holds"),
        ("https://app.example/callback?state=s&code=%C3%A9", "the callback URL's code must be"),
        ("https://app.example/callback?state=\ud800&code=c", "the callback URL's state holds"),
        ("https://app.example/callback?state=s&error=e&error_description=%1B", "description"),
    ],
)
def test_a_callback_urls_fields_are_checked_once_decoded(url: str, match: str) -> None:
    with pytest.raises(ConsentRequestError, match=match):
        parse_callback(url)


async def test_an_unencodable_state_is_refused_before_anything_is_looked_up(
    tmp_path: Path,
) -> None:
    async with consenting(tmp_path) as (h, flow):
        pending = await flow.start()
        for finish in (
            flow.finish("\ud800", code="x"),
            flow.finish_url(f"{REDIRECT}?state=%ED%A0%80\ud800&code=x"),
        ):
            with pytest.raises(ConsentRequestError, match="state"):
                await finish
        assert [r.state_id for r in await h.store.list_pending()] == [state_id(pending.state)]
