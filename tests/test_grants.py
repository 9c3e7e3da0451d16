"""The pure grant policy: the whole table, the clock, due times and backoff."""

from __future__ import annotations

import random

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
    Answer,
    Policy,
    Serve,
    State,
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
        for answer in Answer:
            if (state, answer) in TRANSITIONS:
                assert transition(state, answer) is TRANSITIONS[(state, answer)]
            else:
                assert state is State.NEEDS_RECONSENT  # a dead grant takes only re-consent
                with pytest.raises(ValueError, match="cannot take"):
                    transition(state, answer)
    assert transition(State.ACTIVE, Answer.REFUSED) is State.NEEDS_RECONSENT
    assert transition(State.NEEDS_RECONSENT, Answer.RECONSENTED) is State.ACTIVE
    assert transition(State.RECONSENT_DUE, Answer.TRANSIENT) is State.RECONSENT_DUE


def test_a_month_of_clock() -> None:
    limit = 30 * DAY
    assert state_at(State.ACTIVE, limit, 0, POLICY) is State.ACTIVE
    assert state_at(State.ACTIVE, limit, 23 * DAY - 1, POLICY) is State.ACTIVE
    assert state_at(State.ACTIVE, limit, 23 * DAY, POLICY) is State.RECONSENT_DUE
    assert state_at(State.RECONSENT_DUE, limit, 30 * DAY, POLICY) is State.NEEDS_RECONSENT
    # a refused grant stays refused whatever the clock says
    assert state_at(State.NEEDS_RECONSENT, limit, 0, POLICY) is State.NEEDS_RECONSENT


def test_serving_decisions() -> None:
    assert serve_decision(State.ACTIVE, 3600, 0, 0) is Serve.SERVE
    assert serve_decision(State.ACTIVE, 3600, 0, 3600) is Serve.REFRESH_FIRST
    assert serve_decision(State.ACTIVE, 3600, 3600, 0) is Serve.REFRESH_FIRST
    # past the 30-day limit the access token is served until it ends
    assert serve_decision(State.NEEDS_RECONSENT, 3600, 100, 0) is Serve.SERVE
    assert serve_decision(State.NEEDS_RECONSENT, 3600, 3600, 0) is Serve.NEEDS_RECONSENT


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
        (InvalidGrantError("invalid_grant", "gone"), Answer.REFUSED),
        (ClientAuthError("invalid_client", "bad"), Answer.CLIENT_FAULT),
        (RequestRejectedError("invalid_request", "bad"), Answer.CLIENT_FAULT),
        (TransientAuthError("timeout", "slow"), Answer.TRANSIENT),
        (RateLimitedError("rate_limit_exceeded", "429", retry_after=3), Answer.TRANSIENT),
        (TokenResponseError("html"), Answer.TRANSIENT),
    ],
)
def test_classify(error: HaasdError, answer: Answer) -> None:
    assert classify(error) is answer
