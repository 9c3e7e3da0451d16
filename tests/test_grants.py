"""The pure grant policy: the whole table, the clock, due times and backoff."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from haasd.errors import (
    ClientAuthError,
    HaasdError,
    InvalidGrantError,
    RateLimitedError,
    RequestRejectedError,
    TokenResponseError,
    TransientAuthError,
)
from haasd.grants import (
    TRANSITIONS,
    Grant,
    Outcome,
    Policy,
    RefreshIntent,
    Serve,
    State,
    after_clock,
    after_failure,
    after_refresh,
    classify,
    failure_retry_at,
    refresh_due_at,
    refresh_limit,
    serve_decision,
    state_at,
    transition,
)
from haasd.secret import Secret
from haasd.tokens import TokenResponse

DAY = 86400.0
POLICY = Policy()


def test_every_pair_in_the_table_and_only_those() -> None:
    for state in State:
        for answer in Outcome:
            if (state, answer) in TRANSITIONS:
                assert transition(state, answer) is TRANSITIONS[(state, answer)]
            else:
                assert state is State.NEEDS_RECONSENT  # a dead grant takes only re-consent
                with pytest.raises(ValueError, match="cannot take"):
                    transition(state, answer)
    assert transition(State.ACTIVE, Outcome.REFUSED) is State.NEEDS_RECONSENT
    assert transition(State.NEEDS_RECONSENT, Outcome.RECONSENTED) is State.ACTIVE
    assert transition(State.RECONSENT_DUE, Outcome.TRANSIENT) is State.RECONSENT_DUE


def test_a_month_of_clock() -> None:
    limit = 30 * DAY
    assert state_at(State.ACTIVE, limit, 0, POLICY) is State.ACTIVE
    assert state_at(State.ACTIVE, limit, 23 * DAY - 1, POLICY) is State.ACTIVE
    assert state_at(State.ACTIVE, limit, 23 * DAY, POLICY) is State.RECONSENT_DUE
    assert state_at(State.RECONSENT_DUE, limit, 30 * DAY, POLICY) is State.NEEDS_RECONSENT
    # a refused grant stays refused whatever the clock says
    assert state_at(State.NEEDS_RECONSENT, limit, 0, POLICY) is State.NEEDS_RECONSENT


def test_serving_decisions() -> None:
    assert serve_decision(State.ACTIVE, 3600, 0, 0, 0) is Serve.SERVE
    assert serve_decision(State.ACTIVE, 3600, 0, 3600, 0) is Serve.REFRESH_FIRST
    assert serve_decision(State.ACTIVE, 3600, 3600, 0, 0) is Serve.REFRESH_FIRST
    # past the 30-day limit the access token is served until it ends
    assert serve_decision(State.NEEDS_RECONSENT, 3600, 100, 0, 0) is Serve.SERVE
    assert serve_decision(State.NEEDS_RECONSENT, 3600, 3600, 0, 0) is Serve.NEEDS_RECONSENT


def test_refresh_limit_is_absolute_unless_the_server_says() -> None:
    assert refresh_limit(1000.0, None, POLICY) == 1000.0 + 30 * DAY
    answer = TokenResponse(Secret("a"), 3600, Secret("r"), ("tasks:read",), "usr_a", 7200)
    assert refresh_limit(1000.0, answer, POLICY) == 8200.0


def test_due_time_is_three_quarters_with_bounded_jitter() -> None:
    rng = random.Random(7)
    dues = [refresh_due_at(0.0, 3600, POLICY, rng) for _ in range(2000)]
    assert min(dues) >= 0.70 * 3600 and max(dues) <= 0.80 * 3600
    assert max(dues) - min(dues) > 0.08 * 3600, "jitter spreads refreshes out"
    # the lifetime comes from expires_in, never assumed to be an hour
    assert 0.70 * 600 <= refresh_due_at(0.0, 600, POLICY, rng) <= 0.80 * 600
    # a fraction near 1 is still done before the token ends
    late = Policy(refresh_fraction=0.999)
    assert refresh_due_at(0.0, 3600, late, rng) <= 3600 - 30


def test_backoff_is_jittered_exponential_and_capped() -> None:
    rng = random.Random(1)
    far = 1e9
    first = [failure_retry_at(0, 1, far, None, POLICY, rng) for _ in range(500)]
    assert min(first) >= 1 and max(first) <= 10
    tenth = [failure_retry_at(0, 10, far, None, POLICY, rng) for _ in range(500)]
    assert max(tenth) <= 300 and max(tenth) > 200


def test_backoff_never_lets_the_token_expire_without_a_try() -> None:
    rng = random.Random(3)
    for _ in range(200):
        at = failure_retry_at(0, 10, 100.0, None, POLICY, rng)
        assert at <= 100.0 - POLICY.expiry_margin


def test_retry_after_is_honoured_exactly_and_capped() -> None:
    rng = random.Random(3)
    assert failure_retry_at(0, 1, 1e9, 32, POLICY, rng) >= 32
    # even when the token would expire first: no request inside the server's window
    assert failure_retry_at(0, 1, 40.0, 32, POLICY, rng) >= 32
    assert failure_retry_at(0, 1, 1e9, 10 * DAY, POLICY, rng) <= POLICY.retry_after_cap + 300


@pytest.mark.parametrize(
    ("error", "answer"),
    [
        (InvalidGrantError("invalid_grant", "gone"), Outcome.REFUSED),
        (ClientAuthError("invalid_client", "bad"), Outcome.CLIENT_FAULT),
        (RequestRejectedError("invalid_request", "bad"), Outcome.CLIENT_FAULT),
        (TransientAuthError("timeout", "slow"), Outcome.TRANSIENT),
        (RateLimitedError("rate_limit_exceeded", "429", retry_after=3), Outcome.TRANSIENT),
        (TokenResponseError("html"), Outcome.TRANSIENT),
    ],
)
def test_classify(error: HaasdError, answer: Outcome) -> None:
    assert classify(error) is answer


def _grant(**changes: object) -> Grant:
    base = Grant(
        human_id="usr_a",
        environment="test",
        scope=("tasks:read",),
        access_token=Secret("haas_at_old"),
        access_expires_at=3600.0,
        refresh_token=Secret("haas_rt_old"),
        refresh_expires_at=30 * DAY,
        consented_at=0.0,
        intent=RefreshIntent("attempt", "fp", 2700.0),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_after_refresh_keeps_the_old_refresh_token_when_none_is_sent() -> None:
    answer = TokenResponse(Secret("haas_at_new"), 600, None, ("tasks:read",), "usr_a")
    new = after_refresh(_grant(consecutive_failures=2), answer, 2700.0, POLICY, random.Random(1))
    assert new.access_token == Secret("haas_at_new")
    assert new.refresh_token == Secret("haas_rt_old")
    assert new.access_expires_at == 3300.0
    assert new.refresh_expires_at == 30 * DAY, "a refresh does not extend the limit"
    assert (new.consecutive_failures, new.intent, new.last_error) == (0, None, None)
    assert 2700 + 0.70 * 600 <= (new.next_refresh_at or 0) <= 2700 + 0.80 * 600


def test_after_refresh_takes_the_servers_word_on_the_limit_and_flags_near_it() -> None:
    answer = TokenResponse(Secret("a"), 3600, Secret("r"), ("tasks:read",), "usr_a", 3 * 86400)
    new = after_refresh(_grant(), answer, 1000.0, POLICY, random.Random(1))
    assert new.refresh_expires_at == 1000.0 + 3 * DAY
    assert new.state is State.RECONSENT_DUE


def test_after_failure_per_answer() -> None:
    rng = random.Random(2)
    refused, g, lost = after_failure(
        _grant(), InvalidGrantError("invalid_grant", "x"), 100.0, POLICY, rng, interrupted=False
    )
    assert (refused, g.state, g.access_expires_at, g.intent, lost) == (
        Outcome.REFUSED,
        State.NEEDS_RECONSENT,
        100.0,
        None,
        False,
    )
    _, g, _ = after_failure(
        _grant(), InvalidGrantError("invalid_grant", "x"), 100.0, POLICY, rng, interrupted=True
    )
    assert g.last_error is not None and "rotation was interrupted" in g.last_error
    fault, g, _ = after_failure(
        _grant(), ClientAuthError("invalid_client", "x"), 100.0, POLICY, rng, interrupted=False
    )
    assert (fault, g.state, g.consecutive_failures) == (Outcome.CLIENT_FAULT, State.ACTIVE, 0)
    timeout = TransientAuthError("timeout", "no answer", sent=True)
    transient, g, lost = after_failure(_grant(), timeout, 100.0, POLICY, rng, interrupted=False)
    assert (transient, g.consecutive_failures, lost) == (Outcome.TRANSIENT, 1, True)
    assert g.intent is not None, "the answer may be lost: the intent stays open"
    refused_503 = TransientAuthError("temporarily_unavailable", "busy", sent=False)
    _, g, lost = after_failure(_grant(), refused_503, 100.0, POLICY, rng, interrupted=False)
    assert (g.intent, lost) == (None, False)


def test_after_clock_moves_only_on_change() -> None:
    assert after_clock(_grant(), 0.0, POLICY) is None
    flagged = after_clock(_grant(), 24 * DAY, POLICY)
    assert flagged is not None and flagged.state is State.RECONSENT_DUE
    dead = after_clock(_grant(), 30 * DAY, POLICY)
    assert dead is not None and dead.state is State.NEEDS_RECONSENT and dead.last_error
