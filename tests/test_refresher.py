"""The refresh engine against the simulator, on the manual clock."""

from __future__ import annotations

import email.utils
import io
import itertools
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from harness import DAY, HOUR, Harness, running, simulator
from structlog.testing import capture_logs

from haasd.clock import ManualClock
from haasd.crypto import Key, Sealer
from haasd.errors import NeedsReconsentError, TokenUnavailableError, UnknownHumanError
from haasd.grants import Policy, State
from haasd.logs import configure_logging
from haasd.simulator import MalformedKind, TokenRequestRecord
from haasd.store import Store

KEEP_BUSY = Policy(refresh_idle=60 * DAY)  # these tests are about refreshing, not idleness


def no_token_expired(h: Harness) -> None:
    now = h.clock.time()
    for grant in h.refresher.grants():
        if grant.state is not State.NEEDS_RECONSENT:
            assert grant.access_expires_at > now, f"{grant.human_id} expired unrefreshed"


async def test_a_grant_s_whole_31_days(tmp_path: Path) -> None:
    async with running(tmp_path, policy=KEEP_BUSY, invariant=no_token_expired) as h:
        await h.consent("usr_maria_42")
        first = h.refresher.grant("usr_maria_42")
        assert first is not None

        await h.clock.advance(22 * DAY)
        assert h.refresher.grant("usr_maria_42").state is State.ACTIVE  # type: ignore[union-attr]
        await h.clock.advance(1 * DAY + 60)
        assert h.refresher.grant("usr_maria_42").state is State.RECONSENT_DUE  # type: ignore[union-attr]
        refreshes_by_day_23 = h.sim.stats.refreshes["usr_maria_42"]
        # three-quarter-life refreshes of one-hour tokens: ~32 a day
        assert 23 * 30 < refreshes_by_day_23 < 23 * 34

        await h.clock.advance(7 * DAY)
        grant = h.refresher.grant("usr_maria_42")
        assert grant is not None
        assert grant.state is State.NEEDS_RECONSENT
        total = h.sim.stats.refreshes["usr_maria_42"]
        events = h.drain()
        assert events.count(("grant.reconsent_due", "usr_maria_42")) == 1
        assert events.count(("grant.needs_reconsent", "usr_maria_42")) == 1
        assert events.count(("token.refreshed", "usr_maria_42")) == total

        # past the limit: the last access token is served until it ends, then 409
        served = await h.refresher.ensure_fresh("usr_maria_42")
        assert served.access_expires_at > h.clock.time()
        await h.clock.advance(DAY)
        with pytest.raises(NeedsReconsentError):
            await h.refresher.ensure_fresh("usr_maria_42")
        assert h.sim.stats.refreshes["usr_maria_42"] == total, "no refresh after the limit"
        assert h.sim.stats.rate_limited == 0
        stored = await h.store.get_grant("usr_maria_42")
        assert stored.state is State.NEEDS_RECONSENT


async def test_lifetime_comes_from_the_answer(tmp_path: Path) -> None:
    async with running(tmp_path, policy=KEEP_BUSY, sim_options={"expires_in": 600}) as h:
        await h.consent("usr_short")
        await h.clock.advance(HOUR)
        # 600 s tokens refreshed at ~450 s: 7 or 8 in an hour, never an assumed 3600
        assert 7 <= h.sim.stats.refreshes["usr_short"] <= 9


async def test_many_concurrent_callers_share_one_refresh_under_rotation(tmp_path: Path) -> None:
    options = {"rotate_refresh_tokens": True, "reuse_detection": True}
    async with running(tmp_path, sim_options=options) as h:
        await h.consent("usr_busy")
        await h.clock.advance(HOUR - 30)  # whatever the schedule did, the token has < 60 s
        before = h.sim.stats.refreshes["usr_busy"]
        tokens: list[str] = []

        async def caller() -> None:
            grant = await h.refresher.ensure_fresh("usr_busy", min_ttl=3000)
            tokens.append(grant.access_token.reveal())

        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(caller)
        assert len(tokens) == 100
        assert len(set(tokens)) == 1, "every caller got the one refreshed token"
        assert h.sim.stats.refreshes["usr_busy"] == before + 1
        assert h.sim.stats.reuse_events == 0
        assert h.sim.has_active_grant("usr_busy")


async def test_invalid_grant_stops_everything_for_that_human(tmp_path: Path) -> None:
    async with running(tmp_path, policy=KEEP_BUSY) as h:
        await h.consent("usr_gone")
        await h.consent("usr_stays")
        h.sim.revoke("usr_gone")
        await h.clock.advance(HOUR)
        grant = h.refresher.grant("usr_gone")
        assert grant is not None and grant.state is State.NEEDS_RECONSENT
        assert grant.last_error is not None and "refused" in grant.last_error
        # the server said the grant is gone: its access token is not served any more
        with pytest.raises(NeedsReconsentError):
            await h.refresher.ensure_fresh("usr_gone")
        calls = h.sim.stats.token_requests["refresh_token"]
        gone_calls = sum(1 for r in h.sim.requests_log if r.human_id == "usr_gone")
        await h.clock.advance(DAY)
        assert sum(1 for r in h.sim.requests_log if r.human_id == "usr_gone") == gone_calls
        assert h.sim.stats.token_requests["refresh_token"] > calls, "others go on"
        assert h.drain().count(("grant.needs_reconsent", "usr_gone")) == 1


async def test_invalid_client_stops_refreshing_without_blaming_humans(tmp_path: Path) -> None:
    async with running(tmp_path, client_secret="not-the-right-secret") as h:
        # the consent itself goes through the simulator's own client, which is right
        await h.consent("usr_a")
        await h.consent("usr_b")
        await h.clock.advance(HOUR)
        sent = h.sim.stats.token_requests["refresh_token"]
        assert sent == 1, "one rejected request, then no more"
        health = h.refresher.health()
        assert health.status == "degraded"
        assert any("rejects haasd's client" in str(r) for r in health.reasons)
        for human in ("usr_a", "usr_b"):
            grant = h.refresher.grant(human)
            assert grant is not None and grant.state is State.ACTIVE
        await h.clock.advance(DAY)
        # one refresh is tried 15 min on, then 30 and 60 min apart, then hourly: never
        # more, and never one that blames a human
        tries = [r.time for r in refresh_requests(h)]
        gaps = [later - earlier for earlier, later in itertools.pairwise(tries)]
        assert 900 <= gaps[0] <= 1020 and 1800 <= gaps[1] <= 1860, gaps
        assert all(3600 <= gap <= 3660 for gap in gaps[2:]), gaps
        assert 20 <= len(gaps) <= 25, gaps
        assert all(r.status == 401 for r in refresh_requests(h))
        assert h.refresher.health().status == "degraded"
        assert {h.refresher.grant(human).state for human in ("usr_a", "usr_b")} == {  # type: ignore[union-attr]
            State.ACTIVE
        }


async def test_429_retry_after_is_honoured_exactly(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        await h.consent("usr_a")
        h.sim.fail_next(1, status=429, headers={"Retry-After": "32"})
        await h.clock.advance(HOUR)
        log = refresh_requests(h)
        assert log[0].status == 429
        assert log[1].time - log[0].time >= 32
        assert log[1].status == 200


async def test_retry_after_as_http_date(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        await h.consent("usr_a")
        not_before = h.clock.time() + 0.85 * HOUR  # after the first try (0.70-0.80 h)
        when = email.utils.formatdate(not_before, usegmt=True)
        h.sim.fail_next(1, status=503, headers={"Retry-After": when})
        await h.clock.advance(HOUR)
        log = refresh_requests(h)
        assert log[0].status == 503
        assert log[1].time >= not_before - 1  # HTTP-dates have whole seconds
        assert log[1].status == 200
        grant = h.refresher.grant("usr_a")
        assert grant is not None and grant.consecutive_failures == 0


async def test_a_flaky_server_never_lets_a_token_expire(tmp_path: Path) -> None:
    async with running(tmp_path, policy=KEEP_BUSY, invariant=no_token_expired) as h:
        for i in range(10):
            await h.consent(f"usr_{i}")
        h.sim.flaky(0.4, seed=7)
        await h.clock.advance(DAY)
        failures = sum(n for status, n in h.sim.stats.statuses.items() if status >= 500)
        assert failures > 50, "the server really was flaky"
        for i in range(10):
            grant = h.refresher.grant(f"usr_{i}")
            assert grant is not None and grant.state is State.ACTIVE
        assert h.refresher.stats.refreshes["ok"] == sum(h.sim.stats.refreshes.values())
        assert 0 < h.refresher.stats.refreshes["transient"] <= failures


async def advance_until(h: Harness, done: Callable[[], bool], step: float = 0.5) -> None:
    for _ in range(20_000):
        if done():
            return
        await h.clock.advance(step)
    raise AssertionError("condition never met")


def refresh_requests(h: Harness) -> list[TokenRequestRecord]:
    return [r for r in h.sim.requests_log if r.grant_type == "refresh_token"]


@pytest.mark.parametrize(
    ("kind", "attempts"),
    [
        # a malformed 200 may hide a rotation the server did: retried promptly, twice
        ("html", 3),
        ("truncated_json", 3),
        ("oversized", 3),
        # a redirect was never processed: plain backoff
        ("redirect", 1),
    ],
)
async def test_malformed_answers_leave_stored_tokens_untouched(
    tmp_path: Path, kind: MalformedKind, attempts: int
) -> None:
    async with running(tmp_path) as h:
        await h.consent("usr_a")
        before = await h.store.get_grant("usr_a")
        h.sim.malformed_next(attempts, kind=kind)
        await advance_until(h, lambda: len(refresh_requests(h)) == attempts)
        await h.clock.advance(0.2)
        after = await h.store.get_grant("usr_a")
        assert len(refresh_requests(h)) == attempts
        assert after.access_token == before.access_token
        assert after.refresh_token == before.refresh_token
        assert after.consecutive_failures == 1
        assert after.last_error is not None
        await h.clock.advance(600)
        grant = h.refresher.grant("usr_a")
        assert grant is not None and grant.access_token != before.access_token
        assert h.sim.validate_access_token(grant.access_token.reveal()) == "usr_a"


async def test_a_broken_answer_that_carries_a_rotation_keeps_it(tmp_path: Path) -> None:
    """No access token, but a new refresh token: the server rotated, so the new refresh
    token is written at once (not retried with the spent one) and the next refresh uses it."""
    options = {"rotate_refresh_tokens": True, "reuse_grace": 0.0}
    async with running(tmp_path, sim_options=options) as h:
        await h.consent("usr_a")
        before = await h.store.get_grant("usr_a")
        h.sim.malformed_next(1, kind="missing_access_token", after_processing=True)
        await advance_until(h, lambda: len(refresh_requests(h)) == 1)
        await h.clock.advance(0.2)
        after = await h.store.get_grant("usr_a")
        assert after.refresh_token != before.refresh_token  # the issued one, kept
        assert after.access_token == before.access_token  # still the old, valid one
        assert after.consecutive_failures == 1 and after.intent is None
        await h.clock.advance(600)
        grant = h.refresher.grant("usr_a")
        assert grant is not None and grant.state is State.ACTIVE
        assert grant.access_token != before.access_token
        assert h.sim.validate_access_token(grant.access_token.reveal()) == "usr_a"
        assert "grant.needs_reconsent" not in [t for t, _ in h.drain()]


@pytest.mark.parametrize(
    ("kind", "change"),
    [("bad_expires_in", "expires_in"), ("wrong_token_type", "token_type")],
)
async def test_a_bad_field_beside_a_rotation_is_refused_and_the_rotation_kept(
    tmp_path: Path, kind: MalformedKind, change: str
) -> None:
    options = {"rotate_refresh_tokens": True, "reuse_grace": 0.0}
    async with running(tmp_path, sim_options=options) as h:
        await h.consent("usr_a")
        before = await h.store.get_grant("usr_a")
        h.sim.malformed_next(1, kind=kind, after_processing=True)
        with capture_logs() as logs:
            await advance_until(h, lambda: len(refresh_requests(h)) == 1)
            await h.clock.advance(0.2)
        refused = [e for e in logs if e["event"] == "refresh answer: a field was refused"]
        assert len(refused) == 1 and change in refused[0]["problem"]
        after = await h.store.get_grant("usr_a")
        assert after.refresh_token != before.refresh_token
        assert h.sim.validate_access_token(after.access_token.reveal()) == "usr_a"
        assert after.consecutive_failures == 0 and after.last_error is None
        # one hour, as the policy's default lifetime says, when expires_in was bad
        assert after.access_expires_at - (after.last_refresh_at or 0) == 3600


async def test_lost_answer_is_retried_promptly_within_the_grace_window(tmp_path: Path) -> None:
    options = {"rotate_refresh_tokens": True, "reuse_grace": 30.0}
    async with running(tmp_path, sim_options=options) as h:
        await h.consent("usr_a")
        h.sim.drop_next(1, after_processing=True)
        with capture_logs() as logs:
            await h.clock.advance(HOUR)
        grant = h.refresher.grant("usr_a")
        assert grant is not None and grant.state is State.ACTIVE
        assert h.sim.stats.grace_replays == 1
        assert h.sim.has_active_grant("usr_a")
        # an operator sees why the server was asked twice (strict servers take it badly)
        lost = [e for e in logs if e["event"].startswith("refresh answer lost")]
        assert [(e["human_id"], e["attempt"]) for e in lost] == [("usr_a", 2)]


async def test_lost_answer_without_grace_needs_reconsent_and_says_why(tmp_path: Path) -> None:
    options = {"rotate_refresh_tokens": True, "reuse_grace": 0.0}
    async with running(tmp_path, sim_options=options) as h:
        await h.consent("usr_a")
        h.sim.drop_next(1, after_processing=True)
        await h.clock.advance(HOUR)
        grant = h.refresher.grant("usr_a")
        assert grant is not None and grant.state is State.NEEDS_RECONSENT
        assert grant.last_error is not None and "rotation was interrupted" in grant.last_error


async def test_idle_grants_are_refreshed_only_on_demand(tmp_path: Path) -> None:
    async with running(tmp_path, policy=Policy(refresh_idle=2 * HOUR)) as h:
        await h.consent("usr_dormant")
        await h.clock.advance(DAY)
        early = h.sim.stats.refreshes["usr_dormant"]
        assert early <= 3, "refreshed only while recently consented"
        await h.clock.advance(DAY)
        assert h.sim.stats.refreshes["usr_dormant"] == early
        grant = await h.refresher.ensure_fresh("usr_dormant", min_ttl=60)
        assert grant.access_expires_at - h.clock.time() > 60
        assert h.sim.stats.refreshes["usr_dormant"] == early + 1
        await h.clock.advance(HOUR)  # served again: refreshed ahead again
        assert h.sim.stats.refreshes["usr_dormant"] == early + 2


async def test_min_ttl_beyond_the_lifetime_is_unavailable(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        await h.consent("usr_a")
        with pytest.raises(TokenUnavailableError) as info:
            await h.refresher.ensure_fresh("usr_a", min_ttl=2 * HOUR)
        assert info.value.retry_after > 0
        with pytest.raises(UnknownHumanError):
            await h.refresher.ensure_fresh("usr_nobody")


async def test_refresh_now_writes_before_answering(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        await h.consent("usr_a")
        grant = await h.refresher.refresh_now("usr_a")
        stored = await h.store.get_grant("usr_a")
        assert stored.access_token == grant.access_token
        assert stored.refresh_token == grant.refresh_token
        assert stored.intent is None


async def test_restart_serves_valid_tokens_and_refreshes_overdue_ones(tmp_path: Path) -> None:
    key = Key.generate()
    sim = simulator(ManualClock())
    async with sim.running():
        async with running(tmp_path, key=key, policy=KEEP_BUSY, sim=sim) as h:
            await h.consent("usr_fresh")
            await h.consent("usr_overdue")
        # downtime: the overdue grant's refresh time passes while haasd is down
        async with await Store.open(tmp_path / "haasd.db", Sealer(key)) as store:
            overdue = await store.get_grant("usr_overdue")
            await store.update_status(
                "usr_overdue",
                state=overdue.state,
                last_error=None,
                consecutive_failures=0,
                next_refresh_at=overdue.consented_at - 10,
            )
        async with running(tmp_path, key=key, policy=KEEP_BUSY, sim=sim) as h:
            served = await h.refresher.ensure_fresh("usr_fresh")
            assert served.access_expires_at > h.clock.time()
            assert h.sim.stats.refreshes["usr_fresh"] == 0, "a valid token is served at once"
            await h.clock.advance(31)  # the start-up spread is at most 30 s
            assert h.sim.stats.refreshes["usr_overdue"] == 1
            assert h.sim.stats.refreshes["usr_fresh"] == 0


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_a_thousand_grants_for_a_day_on_the_pro_budget(tmp_path: Path) -> None:
    """32,000 refreshes over real loopback HTTP: the slowest test (a few minutes)."""
    async with running(tmp_path, policy=KEEP_BUSY, requests_per_minute=300) as h:
        for batch in range(5):  # the onboarding itself stays inside the plan
            for i in range(200):
                await h.consent(f"usr_{batch}_{i}")
            await h.clock.advance(60)
        for _ in range(24 * 12):
            await h.clock.advance(300)
            no_token_expired(h)
        refreshes = sum(h.sim.stats.refreshes.values())
        assert refreshes > 1000 * 24 / 0.8, "every grant was refreshed all day"
        assert h.sim.stats.rate_limited == 0
        assert h.sim.max_requests_in_window(60.0) <= 300
        assert h.refresher.stats.late == 0
        assert h.refresher.health().status == "ok"


async def test_no_token_reaches_disk_or_log_in_the_clear(tmp_path: Path) -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    seen: set[str] = set()

    def collect(h: Harness) -> None:
        for grant in h.refresher.grants():
            seen.add(grant.access_token.reveal())
            seen.add(grant.refresh_token.reveal())

    options = {"rotate_refresh_tokens": True, "reuse_grace": 30.0}
    async with running(tmp_path, policy=KEEP_BUSY, sim_options=options, invariant=collect) as h:
        for i in range(3):
            await h.consent(f"usr_{i}")
        h.sim.fail_next(2, status=503)
        h.sim.malformed_next(1, kind="html")
        h.sim.drop_next(1, after_processing=True)
        await h.clock.advance(6 * HOUR)
        await h.refresher.refresh_now("usr_0")
        h.sim.revoke("usr_2")
        await h.clock.advance(2 * HOUR)
        collect(h)
    assert len(seen) > 40, "many tokens were issued and rotated"
    files = [p for p in tmp_path.iterdir() if p.name.startswith("haasd.db")]
    assert {p.name for p in files} >= {"haasd.db"}
    log = stream.getvalue().encode()
    assert b"refresh failed; will retry" in log  # the log did record the failures
    for token in seen:
        assert token.encode() not in log
        for f in files:
            assert token.encode() not in f.read_bytes(), f.name


@pytest.mark.usefixtures("debug_logs")
async def test_beyond_the_budget_earliest_expiry_goes_first_and_risk_is_reported(
    tmp_path: Path,
) -> None:
    with capture_logs() as logs:
        # 2 requests a minute (1 with haasd's 10% headroom) for 20 grants due at once
        async with running(tmp_path, policy=KEEP_BUSY, requests_per_minute=2) as h:
            for i in range(20):
                await h.consent(f"usr_{i:02d}")
                await h.clock.advance(1)  # each expires a second after the one before
            await h.clock.advance(0.8 * HOUR)
            health = h.refresher.health()
            assert health.status == "degraded", health
            assert any("may expire before the rate budget" in str(r) for r in health.reasons)
            await h.clock.advance(HOUR)
            first_round = [r.human_id for r in refresh_requests(h)][:20]
            assert first_round == [f"usr_{i:02d}" for i in range(20)], "earliest expiry first"
            assert h.sim.stats.rate_limited == 0
            assert h.sim.max_requests_in_window(60.0) <= 20 + 1  # the consents, then 1/min
    warnings = [e for e in logs if e["event"] == "grants at risk: demand exceeds the rate budget"]
    assert len(warnings) == 1
    assert warnings[0]["at_risk"] > 0


@pytest.mark.usefixtures("debug_logs")
async def test_start_up_says_how_many_grants_the_plan_keeps_fresh(tmp_path: Path) -> None:
    key = Key.generate()
    sim = simulator(ManualClock())
    async with sim.running():
        async with running(tmp_path, key=key, sim=sim, policy=KEEP_BUSY) as h:
            for i in range(50):
                await h.consent(f"usr_{i}")
        with capture_logs() as logs:
            async with running(tmp_path, key=key, sim=sim, policy=KEEP_BUSY, requests_per_minute=1):
                pass
    loaded = next(e for e in logs if e["event"] == "grants loaded")
    # 1 request a minute keeps 45 grants fresh: 60 per hour / (1 / 0.75) refreshes each
    assert loaded["plan_capacity"] == 45
    warning = next(e for e in logs if e["event"] == "more grants than the plan can keep fresh")
    assert warning["refreshed_ahead"] == 50


async def test_an_unexpected_error_costs_one_grant_a_retry_never_the_engine(
    tmp_path: Path,
) -> None:
    """A defect met while handling one grant is caught for that grant: logged, backed
    off, health degraded; the engine and every other grant go on."""
    broken = {"usr_a"}

    def defect(point: str, human_id: str) -> None:
        if point == "answered" and human_id in broken:
            broken.discard(human_id)  # once
            raise RuntimeError("a defect")

    async with running(tmp_path, checkpoint=defect) as h:
        await h.consent("usr_a")
        await h.consent("usr_b")
        with capture_logs() as logs:
            await advance_until(h, lambda: not broken)
            await h.clock.advance(0.1)
        assert any(e["event"].startswith("unexpected error") for e in logs)
        health = h.refresher.health()
        assert health.status == "degraded"
        reasons = health.reasons
        assert any("internal error" in r and "usr_a" in r for r in reasons)
        b = h.refresher.grant("usr_b")
        assert b is not None and b.access_expires_at - h.clock.time() > 0.5 * HOUR
        await h.clock.advance(0.5 * HOUR)  # usr_a is retried and recovers
        a = h.refresher.grant("usr_a")
        assert a is not None and a.access_expires_at - h.clock.time() > 0.5 * HOUR
        assert h.sim.validate_access_token(a.access_token.reveal()) == "usr_a"
        assert h.refresher.health().status == "ok"
