"""Consents against a plain RFC 6749 server (no ``human_id``, no ``scope`` in its answers),
and what a failed finish leaves behind: no orphaned token, advice that matches what
happened. The simulator over loopback, a real store, the manual clock."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import anyio
import pytest
from harness import CLIENT_ID, CLIENT_SECRET, Harness, running
from structlog.testing import capture_logs

from haasd.authclient import AuthClient
from haasd.clock import Activity
from haasd.config import HaasConfig, SecretSource
from haasd.consent import ConsentFlow, PendingConsent
from haasd.consent._advice import UNNAMED_WARNING
from haasd.errors import (
    ConsentForbiddenError,
    ExchangeFailedError,
    ExchangeUnavailableError,
    InvalidStateError,
    StoreError,
)
from haasd.events import Event
from haasd.grants import Grant, Policy
from haasd.secret import Secret

REDIRECT = "https://app.example/callback"
CONFIGURED = ("tasks:dispatch", "status:read")
#: a plain RFC 6749 server: its answers name neither the human nor the scope
PLAIN: dict[str, Any] = {"name_humans": False, "include_scope": False}


@asynccontextmanager
async def consenting(
    tmp_path: Path,
    *,
    revocation: bool = True,
    revocation_path: str = "/revoke",
    keeper: Any = None,
    **sim_options: Any,
) -> AsyncIterator[tuple[Harness, ConsentFlow]]:
    """An engine on the simulator and a consent flow whose auth client revokes at the
    simulator's RFC 7009 endpoint (with ``revocation``; at ``revocation_path``)."""
    async with running(tmp_path, sim_options=sim_options) as h:
        activity = Activity()
        h.clock.add_settle_hook(activity.wait_idle)
        async with AuthClient(
            token_url=h.sim.token_url,
            client_id=CLIENT_ID,
            client_secret=Secret(CLIENT_SECRET),
            budget=h.budget,
            revocation_url=h.sim.base_url + revocation_path if revocation else None,
            activity=activity,
        ) as auth:
            haas = HaasConfig(
                environment="test",
                client_id=CLIENT_ID,
                client_secret=SecretSource("haas.client_secret", "s", "HAASD_CLIENT_SECRET"),
                authorize_url=h.sim.authorize_url,
                token_url=h.sim.token_url,
                redirect_uri=REDIRECT,
                scopes=CONFIGURED,
                plan="pro",
                requests_per_minute=300,
                token_request_format="json",
            )
            flow = ConsentFlow(
                h.store,
                auth,
                keeper or h.refresher,
                h.clock,
                h.events,
                haas,
                rng=random.Random(7),
                activity=activity,
            )
            async with anyio.create_task_group() as tg:
                await tg.start(flow.run)
                yield h, flow
                tg.cancel_scope.cancel()


def query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


async def approve(h: Harness, pending: PendingConsent) -> str:
    location = await h.sim.visit(pending.authorization_url)
    assert location is not None
    return location


def failures(h: Harness) -> list[Event]:
    out: list[Event] = []
    while (event := h.feed.get_nowait()) is not None:
        if event.type == "consent.failed":
            out.append(event)
    return out


# --- the human of a grant -------------------------------------------------------------------


async def test_a_consent_naming_a_human_is_stored_under_that_human_when_the_server_names_none(
    tmp_path: Path,
) -> None:
    async with consenting(tmp_path, **PLAIN) as (h, flow):
        pending = await flow.start(["status:read"], human_id="usr_ann_1")
        assert query(pending.authorization_url)["login_hint"] == "usr_ann_1"
        assert pending.warning is None

        result = await flow.finish_url(await approve(h, pending))

        assert (result.human_id, result.scope) == ("usr_ann_1", ("status:read",))
        stored = await h.store.get_grant("usr_ann_1")
        assert stored == h.refresher.grant("usr_ann_1") == result.grant
        assert h.sim.validate_access_token(stored.access_token.reveal()) == "usr_ann_1"


async def test_a_consent_without_a_human_is_refused_at_finish_and_its_tokens_revoked(
    tmp_path: Path,
) -> None:
    async with consenting(tmp_path, **PLAIN) as (h, flow):
        h.sim.queue_human("usr_q_1")
        location = await approve(h, await flow.start())

        with capture_logs() as logs, pytest.raises(ExchangeFailedError) as refused:
            await flow.finish_url(location)

        error = refused.value
        assert (error.error_type, error.exchanged, error.revoked) == ("unnamed_human", True, True)
        assert str(error).startswith(
            "this server does not name the human in its token answer; start the consent "
            "with a human id"
        )
        assert "the tokens HaaS issued were revoked" in str(error)
        assert await h.store.list_grants() == []
        assert await h.store.list_pending() == []
        assert not h.sim.has_active_grant("usr_q_1"), "the server refuses them now"
        assert h.sim.stats.revocations == 1
        (warning,) = [e for e in logs if e["log_level"] == "warning"]
        assert warning["revocation"] == "the tokens HaaS issued were revoked"
        assert "haas_" not in repr(logs), "no token in the log"
        (failed,) = failures(h)
        assert (failed.human_id, failed.details) == (
            None,
            {"consent_id": warning["consent_id"], "error": "unnamed_human", "revoked": True},
        )


async def test_without_a_revocation_endpoint_the_refusal_says_what_would_revoke(
    tmp_path: Path,
) -> None:
    async with consenting(tmp_path, revocation=False, **PLAIN) as (h, flow):
        h.sim.queue_human("usr_q_1")
        location = await approve(h, await flow.start())
        with pytest.raises(ExchangeFailedError) as refused:
            await flow.finish_url(location)
        assert (refused.value.exchanged, refused.value.revoked) == (True, False)
        assert "could not be revoked: configure haas.revocation_url" in str(refused.value)
        assert await h.store.list_grants() == []
        assert h.sim.has_active_grant("usr_q_1"), "orphaned at the server, as the error says"
        assert h.sim.stats.revocations == 0


async def test_a_failed_revocation_is_reported_as_such(tmp_path: Path) -> None:
    async with consenting(tmp_path, revocation_path="/not-revoke", **PLAIN) as (h, flow):
        h.sim.queue_human("usr_q_1")
        location = await approve(h, await flow.start())
        with pytest.raises(ExchangeFailedError) as refused:
            await flow.finish_url(location)
        assert (refused.value.exchanged, refused.value.revoked) == (True, False)
        assert "could not be revoked (the revocation request failed)" in str(refused.value)
        assert h.sim.has_active_grant("usr_q_1")


async def test_after_an_answer_without_a_human_start_warns_unless_a_human_is_named(
    tmp_path: Path,
) -> None:
    async with consenting(tmp_path, **PLAIN) as (h, flow):
        first = await flow.start()
        assert first.warning is None, "nothing is known of the server yet"
        with pytest.raises(ExchangeFailedError):
            await flow.finish_url(await approve(h, first))

        with capture_logs() as logs:
            warned = await flow.start()
        assert warned.warning == UNNAMED_WARNING
        assert any(e["event"] == UNNAMED_WARNING for e in logs)
        assert (await flow.start(human_id="usr_ann_1")).warning is None


async def test_a_server_that_names_the_human_clears_the_warning(tmp_path: Path) -> None:
    async with consenting(tmp_path) as (h, flow):
        result = await flow.finish_url(await approve(h, await flow.start()))
        assert h.refresher.grant(result.human_id) is not None
        assert (await flow.start()).warning is None


async def test_another_human_than_the_named_one_is_reported_and_keeps_their_own_grant(
    tmp_path: Path,
) -> None:
    """The server's word on who approved wins (its answer names the human); the consent's
    named human is untouched, and the answer says so."""
    async with consenting(tmp_path, honour_login_hint=False) as (h, flow):
        h.sim.queue_human("usr_bob_7")  # signed in at the server, which ignores the hint
        location = await approve(h, await flow.start(human_id="usr_ann_1"))
        result = await flow.finish_url(location)
        assert (result.human_id, result.different_human) == ("usr_bob_7", True)
        assert result.expected_human_id == "usr_ann_1"
        assert [g.human_id for g in await h.store.list_grants()] == ["usr_bob_7"]
        assert h.sim.has_active_grant("usr_bob_7")


async def test_a_human_outside_the_finishers_rules_is_refused_and_revoked(
    tmp_path: Path,
) -> None:
    async with consenting(tmp_path) as (h, flow):
        h.sim.queue_human("usr_maria_42")
        location = await approve(h, await flow.start())
        with pytest.raises(ConsentForbiddenError) as refused:
            await flow.finish_url(location, may_hold=lambda human: human.startswith("usr_zz_"))
        assert (refused.value.exchanged, refused.value.revoked) == (True, True)
        assert "the tokens HaaS issued were revoked" in str(refused.value)
        assert "usr_maria_42" not in str(refused.value)
        assert await h.store.list_grants() == []
        assert not h.sim.has_active_grant("usr_maria_42")


class FullDisk:
    """The engine as the flow sees it, over a store that cannot take another write."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def grant(self, human_id: str) -> Grant | None:
        return None

    async def add(self, grant: Grant) -> None:
        raise StoreError("database or disk is full")


async def test_a_grant_the_store_cannot_take_is_revoked(tmp_path: Path) -> None:
    async with consenting(tmp_path, keeper=FullDisk(Policy())) as (h, flow):
        h.sim.queue_human("usr_ann_1")
        location = await approve(h, await flow.start())
        with pytest.raises(StoreError) as failed:
            await flow.finish_url(location)
        assert str(failed.value) == (
            "the new grant could not be stored (database or disk is full); the tokens HaaS "
            "issued were revoked; start a new consent"
        )
        assert not h.sim.has_active_grant("usr_ann_1")
        assert [e.details["error"] for e in failures(h)] == ["store_error"]


# --- advice that matches what happened ------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "server_error"), [(503, "temporarily_unavailable"), (429, "rate_limit_exceeded")]
)
async def test_a_code_the_server_never_processed_may_be_finished_again(
    tmp_path: Path, status: int, server_error: str
) -> None:
    async with consenting(tmp_path) as (h, flow):
        location = await approve(h, await flow.start())
        h.sim.fail_next(1, status=status)
        with pytest.raises(ExchangeUnavailableError) as failed:
            await flow.finish_url(location)
        assert failed.value.error_type == server_error
        assert "the code was not spent: finish the same callback again before" in str(failed.value)
        assert len(await h.store.list_pending()) == 1
        await h.clock.advance(failed.value.retry_after or 0)  # a 429 holds the budget back
        result = await flow.finish_url(location)
        assert h.refresher.grant(result.human_id) == result.grant


async def test_a_lost_answer_uses_the_consent_up_and_says_start_anew(tmp_path: Path) -> None:
    async with consenting(tmp_path) as (h, flow):
        h.sim.queue_human("usr_ann_1")
        location = await approve(h, await flow.start())
        h.sim.drop_next(1, after_processing=True)  # the server spends the code: answer lost

        with pytest.raises(ExchangeFailedError) as failed:
            await flow.finish_url(location)

        error = failed.value
        assert (error.exchanged, error.revoked) == (True, None)
        assert "the code may have been spent; start a new consent" in str(error)
        assert "finish the same callback again" not in str(error)
        assert await h.store.list_pending() == []
        requests = len(h.sim.requests_log)
        with pytest.raises(InvalidStateError):  # a retry asks the server nothing
            await flow.finish_url(location)
        assert len(h.sim.requests_log) == requests


async def test_an_unusable_answer_is_revoked_and_says_the_code_was_spent(
    tmp_path: Path,
) -> None:
    async with consenting(tmp_path) as (h, flow):
        h.sim.queue_human("usr_ann_1")
        location = await approve(h, await flow.start())
        h.sim.malformed_next(1, "missing_access_token", after_processing=True)

        with pytest.raises(ExchangeFailedError) as failed:
            await flow.finish_url(location)

        error = failed.value
        assert (error.error_type, error.exchanged, error.revoked) == (
            "malformed_response",
            True,
            True,
        )
        assert str(error).endswith(
            "the code was spent at the server; the tokens HaaS issued were revoked; start a "
            "new consent"
        )
        assert not h.sim.has_active_grant("usr_ann_1")
        assert await h.store.list_pending() == []
