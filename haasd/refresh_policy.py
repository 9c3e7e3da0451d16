"""When and whether the engine refreshes a grant: pure decisions over plain values. No I/O.

:mod:`haasd.grants` says what a grant *is* (its states, what an answer does to it); this
module says what the engine *does* about it, given the figures it reads elsewhere — the
time a human was last served, whether the token endpoint rejects haasd's client, what the
rate budget allows:

* :func:`is_idle`, :func:`wants_refresh` and :func:`deadline`: whether a grant is dormant,
  whether the schedule refreshes it now, and the one instant its heap entry is placed at;
* :func:`admission`: whether a refresh a caller asked for may start now — or is refused at
  once, since it could not finish in time (:class:`Admit`);
* :func:`retry_after`, :func:`lifetime_of`, :func:`capacity` and :func:`at_risk`: the
  figures the engine answers and warns with.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol

from haasd.demand import impossible_min_ttl
from haasd.grants import Grant, Policy, State

__all__ = [
    "DOCUMENTED_LIFETIME",
    "STARTUP_SPREAD",
    "Admission",
    "Admit",
    "Timed",
    "admission",
    "at_risk",
    "budget_admission",
    "capacity",
    "deadline",
    "is_idle",
    "lifetime_of",
    "retry_after",
    "typical_lifetime",
    "wants_refresh",
]


class Timed(Protocol):
    """What the schedule reads of a grant: its state and times, never its tokens. A
    :class:`Grant` is one; so is a row loaded at start whose tokens are still sealed
    (:class:`haasd.grantpack.Sealed`)."""

    @property
    def human_id(self) -> str: ...
    @property
    def state(self) -> State: ...
    @property
    def access_expires_at(self) -> float: ...
    @property
    def refresh_expires_at(self) -> float: ...
    @property
    def consented_at(self) -> float: ...
    @property
    def last_refresh_at(self) -> float | None: ...
    @property
    def next_refresh_at(self) -> float | None: ...
    @property
    def last_served_at(self) -> float | None: ...


#: overdue grants at start-up are spread over up to this many seconds
STARTUP_SPREAD: Final = 30.0
#: the access-token lifetime the HaaS docs state (seconds), until an answer tells
DOCUMENTED_LIFETIME: Final = 3600.0
#: how long a caller refused while haasd's client is rejected is told to wait (seconds)
CLIENT_FAULT_RETRY: Final = 60.0


def is_idle(grant: Timed, last_served: float | None, now: float, policy: Policy) -> bool:
    """Dormant: not served (nor consented) for longer than ``refresh_idle``.
    ``last_served``: the latest served time known, None to go by the grant's record."""
    if last_served is None:
        last_served = grant.last_served_at
    since = grant.consented_at if last_served is None else last_served
    return now - since > policy.refresh_idle


def wants_refresh(grant: Grant, now: float, *, client_fault: str | None, idle: bool) -> bool:
    """Does the schedule refresh this grant now? Not a dead grant, nor while the token
    endpoint rejects haasd's client (``client_fault``), nor a dormant one, nor before its
    next refresh is due."""
    return (
        grant.state is not State.NEEDS_RECONSENT
        and client_fault is None
        and not idle
        and (grant.next_refresh_at is None or grant.next_refresh_at <= now)
    )


def deadline(
    grant: Timed,
    now: float,
    policy: Policy,
    *,
    client_fault: str | None,
    idle: bool,
    startup: random.Random | None = None,
) -> float | None:
    """The next instant something may happen to the grant, or None for none (a dead one).

    The refresh-token limit, the re-consent warning before it (an active grant), and — if
    it is refreshed ahead at all (no ``client_fault``, not ``idle``) — its next refresh.
    ``startup``: at start, an overdue refresh is spread (randomly, by this generator)
    over up to :data:`STARTUP_SPREAD` seconds, at most a quarter of the token's time left.
    """
    if grant.state is State.NEEDS_RECONSENT:
        return None
    when = grant.refresh_expires_at
    if grant.state is State.ACTIVE:
        when = min(when, grant.refresh_expires_at - policy.reconsent_warning)
    if client_fault is None and not idle:
        due = grant.next_refresh_at if grant.next_refresh_at is not None else now
        if startup is not None and due <= now:
            spread = min(STARTUP_SPREAD, max(0.0, grant.access_expires_at - now) / 4)
            due = now + startup.uniform(0, spread)
        when = min(when, due)
    return when


class Admit(StrEnum):
    """Whether a refresh a caller asked for (on demand, or an admin) may start now."""

    #: the schedule would refresh it now anyway: asking costs nothing
    START = "start"
    #: it may start if the caller's on-demand share allows (:mod:`haasd.demand`)
    ASK_DEMAND = "ask_demand"
    #: refused: the token endpoint rejects haasd's client
    CLIENT_FAULT = "client_fault"
    #: refused: the server's tokens are too short for the ``min_ttl`` asked for
    IMPOSSIBLE = "impossible"
    #: refused: the grant's refresh is failing, and its next try is not yet
    BACKING_OFF = "backing_off"
    #: refused: the server asked haasd to wait longer than the caller would
    RATE_BLOCKED = "rate_blocked"
    #: refused: the rate budget is spent for longer than the caller would wait
    BUDGET_SPENT = "budget_spent"


@dataclass(frozen=True, slots=True)
class Admission:
    """An :class:`Admit` with what a refused caller is told: why, and when to ask again."""

    admit: Admit
    message: str = ""
    retry_after: float = 0.0

    @property
    def refused(self) -> bool:
        return self.admit not in (Admit.START, Admit.ASK_DEMAND)


def admission(
    grant: Grant,
    now: float,
    policy: Policy,
    *,
    min_ttl: float,
    wait: float,
    client_fault: str | None,
    lifetime: float | None,
    budget_ready_in: float,
    rate_blocked: bool,
    idle: bool,
) -> Admission:
    """May a refresh of ``grant`` for a caller who waits at most ``wait`` start now?

    ``lifetime``: the access-token lifetime the server grants (:func:`lifetime_of`);
    ``budget_ready_in``: seconds until the rate budget allows a request; ``rate_blocked``:
    that wait is the server's (Retry-After, its rate limit); ``idle``: :func:`is_idle`.
    """
    if client_fault is not None:
        return Admission(Admit.CLIENT_FAULT, client_fault, CLIENT_FAULT_RETRY)
    if lifetime is not None and impossible_min_ttl(min_ttl, lifetime, policy.serve_margin):
        most = max(0, int(lifetime - policy.serve_margin) - 1)
        message = (
            f"the server grants tokens of {lifetime:.0f}s, so no token can have "
            f"{min_ttl:.0f}s left; ask for a min_ttl of at most {most}"
        )
        return Admission(Admit.IMPOSSIBLE, message, policy.on_demand_cooldown)
    retry_at = grant.next_refresh_at or 0.0
    if grant.consecutive_failures > 0 and retry_at > now:
        message = grant.last_error or "refresh failing"
        return Admission(Admit.BACKING_OFF, message, retry_at - now)
    held_back = budget_admission(budget_ready_in, wait, rate_blocked=rate_blocked)
    if held_back.refused:
        return held_back
    due = grant.next_refresh_at
    if due is not None and due <= now and not idle:
        return Admission(Admit.START)
    return Admission(Admit.ASK_DEMAND)


def budget_admission(ready_in: float, wait: float, *, rate_blocked: bool) -> Admission:
    """No refresh is started that the rate budget would hold back beyond ``wait``:
    ``ready_in`` seconds until it allows a request, ``rate_blocked`` if the server's."""
    if ready_in <= wait:
        return Admission(Admit.ASK_DEMAND)
    if rate_blocked:
        message = "HaaS asked haasd to wait (Retry-After or its rate limit)"
        return Admission(Admit.RATE_BLOCKED, message, ready_in)
    message = "the plan's rate budget is spent for the moment"
    return Admission(Admit.BUDGET_SPENT, message, ready_in)


def retry_after(grant: Grant, now: float, policy: Policy) -> float:
    """When a caller the grant could not serve may ask again: its next try, or a backoff."""
    if grant.next_refresh_at is not None and grant.next_refresh_at > now:
        return grant.next_refresh_at - now
    return policy.backoff_base


def lifetime_of(grant: Timed, last_lifetime: float | None) -> float | None:
    """The access-token lifetime the server last granted this grant, else
    ``last_lifetime`` (the last it granted any grant), else None (not known yet)."""
    issued = grant.last_refresh_at
    if issued is not None and grant.access_expires_at > issued:
        return grant.access_expires_at - issued
    return last_lifetime


def capacity(requests_per_minute: int, refresh_fraction: float, lifetime: float) -> int:
    """Grants a budget of ``requests_per_minute`` keeps fresh, each refreshed after
    ``refresh_fraction`` of a token that lives ``lifetime`` seconds."""
    per_grant_per_hour = 3600.0 / (refresh_fraction * lifetime)
    return int(requests_per_minute * 60 / per_grant_per_hour)


def typical_lifetime(lifetimes: Iterable[float | None]) -> float:
    """The access-token lifetime to plan with: the median of those known (None: not
    known), else :data:`DOCUMENTED_LIFETIME`."""
    known = [lifetime for lifetime in lifetimes if lifetime is not None]
    return statistics.median_low(known) if known else DOCUMENTED_LIFETIME


def at_risk(expiries: Iterable[float], now: float, per_request: float, in_flight: int) -> int:
    """Waiting grants whose token ends before the budget reaches them.

    ``expiries``: the waiting grants' access-token expiries, earliest first (served in
    that order); ``per_request``: seconds the budget takes per request; ``in_flight``:
    refreshes under way, which spend the budget first.
    """
    return sum(
        1
        for position, expiry in enumerate(expiries, start=in_flight + 1)
        if expiry <= now + position * per_request
    )
