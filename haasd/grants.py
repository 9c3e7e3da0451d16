"""The grant's life: pure policy over plain values and a clock reading. No I/O.

========================  ======================================  ==========  ============
state                     meaning                                 served?     refreshed?
========================  ======================================  ==========  ============
active                    refresh token comfortably valid         yes         yes
reconsent_due             refresh-token limit within the warning  yes         yes
needs_reconsent (limit)   refresh-token limit passed              until the   no
                                                                  access
                                                                  token ends
needs_reconsent (refused) the server refused the grant            no          no
========================  ======================================  ==========  ============

A server refusal cuts the access token's expiry to the moment of refusal, so "served?"
is always just "state allows it and the access token has time left" (:func:`servable`).

Inputs that move a grant: a refresh answer (:data:`TRANSITIONS` keyed by
:class:`Outcome`), the clock passing a limit (:func:`state_at`), and a completed
re-consent (back to active).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final

from haasd.errors import (
    ClientAuthError,
    HaasdError,
    InvalidGrantError,
    RequestRejectedError,
    TokenResponseError,
    TransientAuthError,
)
from haasd.secret import Secret
from haasd.timefmt import rfc3339
from haasd.tokens import TokenResponse

__all__ = [
    "INTERRUPTED",
    "LIMIT_REACHED",
    "TRANSITIONS",
    "Grant",
    "Outcome",
    "Policy",
    "RefreshIntent",
    "Serve",
    "State",
    "after_clock",
    "after_failure",
    "after_refresh",
    "classify",
    "failure_retry_at",
    "new_grant",
    "refresh_due_at",
    "refresh_limit",
    "serve_decision",
    "state_at",
    "status_of",
    "transition",
]


LIMIT_REACHED: Final = "the refresh token reached its limit; re-consent needed"
INTERRUPTED: Final = (
    "a refresh-token rotation was interrupted (the answer never reached haasd) and the "
    "server refused the retry; the human must re-consent"
)


class State(StrEnum):
    ACTIVE = "active"
    RECONSENT_DUE = "reconsent_due"
    NEEDS_RECONSENT = "needs_reconsent"


@dataclass(frozen=True, slots=True)
class RefreshIntent:
    """A refresh in flight: written before the refresh token is spent, cleared after."""

    attempt_id: str
    #: :func:`haasd.crypto.fingerprint` of the refresh token being spent
    fingerprint: str
    started_at: float


@dataclass(frozen=True, slots=True)
class Grant:
    """One human's consent as stored. Times are wall-clock epoch seconds (UTC)."""

    human_id: str
    environment: str
    scope: tuple[str, ...]
    access_token: Secret
    access_expires_at: float
    refresh_token: Secret
    #: absolute: consent time + lifetime, or the server's ``refresh_token_expires_in``
    refresh_expires_at: float
    consented_at: float
    last_refresh_at: float | None = None
    state: State = State.ACTIVE
    last_error: str | None = None
    consecutive_failures: int = 0
    next_refresh_at: float | None = None
    last_served_at: float | None = None
    intent: RefreshIntent | None = None

    def __post_init__(self) -> None:
        if not self.human_id:
            raise ValueError("a grant needs a human_id")
        if " ".join(self.scope).split() != list(self.scope):
            raise ValueError("each scope must be a non-empty word without whitespace")


class Outcome(StrEnum):
    """What a refresh attempt came to, for the state machine."""

    OK = "ok"
    TRANSIENT = "transient"  # try again later; tokens unchanged
    REFUSED = "refused"  # invalid_grant: the grant is gone
    CLIENT_FAULT = "client_fault"  # our credentials or request are wrong: daemon-wide
    RECONSENTED = "reconsented"  # the human consented again


#: (state before, answer) -> state after, before the clock is applied. Absent pairs
#: cannot happen: a grant in needs_reconsent is never refreshed.
TRANSITIONS: Final[dict[tuple[State, Outcome], State]] = {
    (State.ACTIVE, Outcome.OK): State.ACTIVE,
    (State.ACTIVE, Outcome.TRANSIENT): State.ACTIVE,
    (State.ACTIVE, Outcome.CLIENT_FAULT): State.ACTIVE,
    (State.ACTIVE, Outcome.REFUSED): State.NEEDS_RECONSENT,
    (State.ACTIVE, Outcome.RECONSENTED): State.ACTIVE,
    (State.RECONSENT_DUE, Outcome.OK): State.RECONSENT_DUE,
    (State.RECONSENT_DUE, Outcome.TRANSIENT): State.RECONSENT_DUE,
    (State.RECONSENT_DUE, Outcome.CLIENT_FAULT): State.RECONSENT_DUE,
    (State.RECONSENT_DUE, Outcome.REFUSED): State.NEEDS_RECONSENT,
    (State.RECONSENT_DUE, Outcome.RECONSENTED): State.ACTIVE,
    (State.NEEDS_RECONSENT, Outcome.RECONSENTED): State.ACTIVE,
}


@dataclass(frozen=True, slots=True)
class Policy:
    """The numbers behind refresh timing. Their defaults are declared here only: the
    configuration's ``[refresh]`` keys (:class:`haasd.config.RefreshConfig`) take theirs
    from this class."""

    refresh_fraction: float = 0.75
    refresh_token_lifetime: float = 30 * 86400.0
    reconsent_warning: float = 7 * 86400.0
    refresh_idle: float = 86400.0
    jitter_fraction: float = 0.05
    backoff_base: float = 10.0
    backoff_cap: float = 300.0
    #: a server's Retry-After beyond this is treated as this (and logged)
    retry_after_cap: float = 3600.0
    #: the last try before an access token ends is this long before its expiry
    expiry_margin: float = 30.0
    #: a token with less than this left is not served: it counts as expired
    serve_margin: float = 2.0
    #: at most one on-demand refresh per grant this often (:mod:`haasd.demand`)
    on_demand_cooldown: float = 300.0
    #: the part of the rate budget refreshes asked for on demand may use
    on_demand_share: float = 0.25


def transition(state: State, answer: Outcome) -> State:
    """The state after ``answer``; ValueError for a pair the table rules out."""
    try:
        return TRANSITIONS[(state, answer)]
    except KeyError:
        raise ValueError(f"a grant in {state} cannot take answer {answer}") from None


def state_at(state: State, refresh_expires_at: float, now: float, policy: Policy) -> State:
    """Apply the clock: the refresh-token limit passing, or coming within the warning."""
    if state is State.NEEDS_RECONSENT:
        return state
    if now >= refresh_expires_at:
        return State.NEEDS_RECONSENT
    if now >= refresh_expires_at - policy.reconsent_warning:
        return State.RECONSENT_DUE
    return State.ACTIVE


class Serve(StrEnum):
    """What to do with a request for a token that must have ``min_ttl`` seconds left."""

    SERVE = "serve"
    REFRESH_FIRST = "refresh_first"
    NEEDS_RECONSENT = "needs_reconsent"


def serve_decision(
    state: State, access_expires_at: float, now: float, min_ttl: float, margin: float
) -> Serve:
    """Every state serves a token that still has the time asked for plus ``margin`` (a
    refusal cut its expiry to the moment of refusal); otherwise refresh, unless the grant
    is dead. A token with ``margin`` or less left counts as expired."""
    if access_expires_at - now > min_ttl + margin:
        return Serve.SERVE
    if state is State.NEEDS_RECONSENT:
        return Serve.NEEDS_RECONSENT
    return Serve.REFRESH_FIRST


def refresh_limit(consented_at: float, answer: TokenResponse | None, policy: Policy) -> float:
    """The refresh token's absolute limit: the server's word if it gave one, else the policy.

    ``consented_at`` is when the human consented; a rotated refresh token does not extend
    the limit unless the server sends ``refresh_token_expires_in`` (then measured from the
    answer, which the caller passes as ``consented_at`` for that case).
    """
    if answer is not None and answer.refresh_token_expires_in is not None:
        return consented_at + answer.refresh_token_expires_in
    return consented_at + policy.refresh_token_lifetime


def refresh_due_at(
    issued_at: float, expires_in: float, policy: Policy, rng: random.Random
) -> float:
    """When to refresh a token issued at ``issued_at`` that lives ``expires_in`` seconds.

    ``refresh_fraction`` of the lifetime, ± ``jitter_fraction`` of it, so that a restart
    or a bulk onboarding does not refresh in lockstep; never after the last safe moment.
    """
    jitter = rng.uniform(-policy.jitter_fraction, policy.jitter_fraction) * expires_in
    due = issued_at + policy.refresh_fraction * expires_in + jitter
    latest = issued_at + expires_in - min(policy.expiry_margin, expires_in / 10)
    return min(max(due, issued_at), latest)


def failure_retry_at(
    now: float,
    failures: int,
    access_expires_at: float,
    retry_after: float | None,
    policy: Policy,
    rng: random.Random,
) -> float:
    """When to try again after ``failures`` transient failures in a row.

    Exponential backoff with full jitter (from ``backoff_base``, capped at ``backoff_cap``),
    pulled in so the token never expires without a try — but never inside a window the
    server asked for with Retry-After (capped at ``retry_after_cap``).
    """
    ceiling = min(policy.backoff_cap, policy.backoff_base * 2 ** max(0, failures - 1))
    delay = max(1.0, rng.uniform(0, ceiling))
    at = now + delay
    last_chance = access_expires_at - policy.expiry_margin
    if now + 1.0 < last_chance < at:
        at = last_chance
    if retry_after is not None:
        at = max(at, now + min(retry_after, policy.retry_after_cap))
    return at


def classify(error: HaasdError) -> Outcome:
    """Map an error from a refresh attempt to the answer it stands for."""
    match error:
        case InvalidGrantError():
            return Outcome.REFUSED
        case ClientAuthError() | RequestRejectedError():
            return Outcome.CLIENT_FAULT
        case _:  # TransientAuthError, a malformed answer (TokenResponseError), ...
            return Outcome.TRANSIENT


def new_grant(
    answer: TokenResponse, environment: str, now: float, policy: Policy, rng: random.Random
) -> Grant:
    """The grant a fresh consent (a code exchange, or an imported answer) creates."""
    if answer.refresh_token is None:
        raise ValueError("a new grant needs a refresh token")
    limit = refresh_limit(now, answer, policy)
    return Grant(
        human_id=answer.human_id,
        environment=environment,
        scope=answer.scope,
        access_token=answer.access_token,
        access_expires_at=now + answer.expires_in,
        refresh_token=answer.refresh_token,
        refresh_expires_at=limit,
        consented_at=now,
        last_refresh_at=now,
        state=state_at(State.ACTIVE, limit, now, policy),
        next_refresh_at=refresh_due_at(now, answer.expires_in, policy, rng),
    )


def status_of(grant: Grant, now: float, policy: Policy) -> dict[str, object]:
    """What may be shown about a grant: never a token. Times are RFC 3339 UTC."""
    state = state_at(grant.state, grant.refresh_expires_at, now, policy)
    return {
        "human_id": grant.human_id,
        "state": state.value,
        "scope": " ".join(grant.scope),
        "access_expires_at": rfc3339(grant.access_expires_at),
        "refresh_expires_at": rfc3339(grant.refresh_expires_at),
        "last_refresh_at": None
        if grant.last_refresh_at is None
        else rfc3339(grant.last_refresh_at),
        "last_error": grant.last_error,
        "reconsent_days_left": max(0, int((grant.refresh_expires_at - now) // 86400)),
    }


# --- what an answer does to a grant ----------------------------------------------------------


def after_clock(grant: Grant, now: float, policy: Policy) -> Grant | None:
    """The grant with the state the clock gives it now, or None if that is unchanged."""
    state = state_at(grant.state, grant.refresh_expires_at, now, policy)
    if state is grant.state:
        return None
    if state is State.NEEDS_RECONSENT:
        return replace(grant, state=state, last_error=LIMIT_REACHED)
    return replace(grant, state=state)


def after_refresh(
    grant: Grant, answer: TokenResponse, now: float, policy: Policy, rng: random.Random
) -> Grant:
    """The grant after a successful refresh answered at ``now``: an answer without a
    refresh token keeps the old one (RFC 6749 §6), the refresh token's limit moves only
    when the server states one, and a token dead on arrival (``expires_in`` 0) is
    refreshed again at once, then with a failure's backoff (never all the budget)."""
    limit = grant.refresh_expires_at
    if answer.refresh_token_expires_in is not None:
        limit = now + answer.refresh_token_expires_in
    dead = grant.consecutive_failures + 1 if answer.expires_in <= 0 else 0
    retry = failure_retry_at(now, dead - 1, now, None, policy, rng) if dead > 1 else None
    return replace(
        grant,
        scope=answer.scope,
        access_token=answer.access_token,
        access_expires_at=now + answer.expires_in,
        refresh_token=answer.refresh_token or grant.refresh_token,
        refresh_expires_at=limit,
        last_refresh_at=now,
        state=state_at(transition(grant.state, Outcome.OK), limit, now, policy),
        last_error="expires_in 0: the server's token was already expired" if dead else None,
        consecutive_failures=dead,
        next_refresh_at=retry or refresh_due_at(now, answer.expires_in, policy, rng),
        intent=None,
    )


def after_failure(
    grant: Grant,
    error: HaasdError,
    now: float,
    policy: Policy,
    rng: random.Random,
    *,
    interrupted: bool,
) -> tuple[Outcome, Grant, bool]:
    """What a failed refresh means: (the answer, the grant after it, whether the server may
    have acted on the request and the answer was lost — then the intent stays open).

    ``interrupted``: an earlier answer for this grant may have been lost, so a refusal
    now most likely means the rotation was interrupted.
    """
    answer = classify(error)
    if answer is Outcome.REFUSED:
        # the server says the grant is gone: its access token is not served any more
        reason = INTERRUPTED if interrupted else f"the server refused the grant: {error}"
        refused = replace(
            grant,
            state=transition(grant.state, answer),
            access_expires_at=min(grant.access_expires_at, now),
            last_error=reason,
            next_refresh_at=None,
            intent=None,
        )
        return answer, refused, False
    if answer is Outcome.CLIENT_FAULT:  # not the human's fault: the grant is untouched
        return answer, replace(grant, intent=None), False
    failures = grant.consecutive_failures + 1
    retry_after = error.retry_after if isinstance(error, TransientAuthError) else None
    # a broken 200 that still carried a new refresh token: the server rotated to it
    issued = error.issued_refresh_token if isinstance(error, TransientAuthError) else None
    # a malformed 200 came from a server that may have rotated the token
    lost = issued is None and (
        isinstance(error, TokenResponseError)
        or (isinstance(error, TransientAuthError) and error.sent)
    )
    failed = replace(
        grant,
        refresh_token=issued or grant.refresh_token,
        consecutive_failures=failures,
        last_error=f"{getattr(error, 'error_type', 'error')}: {error}",
        next_refresh_at=failure_retry_at(
            now, failures, grant.access_expires_at, retry_after, policy, rng
        ),
        intent=grant.intent if lost else None,
    )
    return answer, failed, lost
