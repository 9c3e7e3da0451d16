"""When and whether the engine refreshes: the pure decisions, as tables of rows."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from factories import T0, make_grant

from haasd.grants import Grant, Policy, State
from haasd.refresh_policy import (
    DOCUMENTED_LIFETIME,
    STARTUP_SPREAD,
    Admit,
    admission,
    at_risk,
    budget_admission,
    capacity,
    deadline,
    is_idle,
    lifetime_of,
    retry_after,
    typical_lifetime,
    wants_refresh,
)

POLICY = Policy()
DAY = 86400.0
FAULT = "the server rejects haasd's client (invalid_client)"
GRANT = make_grant(next_refresh_at=T0 + 2700)  # consented at T0, token ends at T0 + 3600


# --- dormant grants ----------------------------------------------------------------------

#: (last served known, the grant's own record, now) -> idle?
IDLE: list[tuple[float | None, float | None, float, bool]] = [
    (None, None, T0 + DAY, False),  # consented a day ago, to the second: not yet
    (None, None, T0 + DAY + 1, True),  # never served since the consent
    (None, T0 + 10, T0 + DAY + 1, False),  # the stored served time counts
    (T0 + 20, T0 + 10, T0 + DAY + 15, False),  # the latest known wins over the record
    (T0 + 20, None, T0 + DAY + 21, True),
]


@pytest.mark.parametrize(("served", "recorded", "now", "idle"), IDLE)
def test_idle(served: float | None, recorded: float | None, now: float, idle: bool) -> None:
    grant = replace(GRANT, last_served_at=recorded)
    assert is_idle(grant, served, now, POLICY) is idle


# --- refreshing ahead ------------------------------------------------------------------

#: (state, client fault, idle, next refresh, now) -> refreshed by the schedule now?
WANTS: list[tuple[State, str | None, bool, float | None, float, bool]] = [
    (State.ACTIVE, None, False, T0 + 2700, T0 + 2700, True),
    (State.ACTIVE, None, False, None, T0, True),  # no due time: at once
    (State.RECONSENT_DUE, None, False, T0 + 2700, T0 + 2800, True),
    (State.ACTIVE, None, False, T0 + 2700, T0 + 2699, False),  # not yet due
    (State.NEEDS_RECONSENT, None, False, T0 + 2700, T0 + 2700, False),  # dead
    (State.ACTIVE, FAULT, False, T0 + 2700, T0 + 2700, False),  # haasd's client rejected
    (State.ACTIVE, None, True, T0 + 2700, T0 + 2700, False),  # dormant
]


@pytest.mark.parametrize(("state", "fault", "idle", "due", "now", "wanted"), WANTS)
def test_wants_refresh(
    state: State, fault: str | None, idle: bool, due: float | None, now: float, wanted: bool
) -> None:
    grant = replace(GRANT, state=state, next_refresh_at=due)
    assert wants_refresh(grant, now, client_fault=fault, idle=idle) is wanted


LIMIT = T0 + 30 * DAY
WARNING = LIMIT - POLICY.reconsent_warning

#: (state, client fault, idle, next refresh) -> the grant's one deadline at T0
DEADLINES: list[tuple[State, str | None, bool, float | None, float | None]] = [
    (State.ACTIVE, None, False, T0 + 2700, T0 + 2700),  # the refresh comes first
    (State.ACTIVE, None, False, None, T0),  # no due time: now
    (State.ACTIVE, None, False, WARNING + 5, WARNING),  # the warning before a late refresh
    (State.RECONSENT_DUE, None, False, LIMIT + 5, LIMIT),  # warned already: the limit
    (State.ACTIVE, FAULT, False, T0 + 2700, WARNING),  # not refreshed: only the clock
    (State.ACTIVE, None, True, T0 + 2700, WARNING),  # dormant: only the clock
    (State.RECONSENT_DUE, None, True, T0 + 2700, LIMIT),
    (State.NEEDS_RECONSENT, None, False, T0 + 2700, None),  # nothing happens any more
]


@pytest.mark.parametrize(("state", "fault", "idle", "due", "when"), DEADLINES)
def test_deadline(
    state: State, fault: str | None, idle: bool, due: float | None, when: float | None
) -> None:
    grant = replace(GRANT, state=state, next_refresh_at=due)
    assert deadline(grant, T0, POLICY, client_fault=fault, idle=idle) == when


@pytest.mark.parametrize(
    ("access_left", "due_in", "spread"),
    [
        (3600.0, 0.0, STARTUP_SPREAD),  # overdue: spread over the whole window
        (3600.0, -50.0, STARTUP_SPREAD),
        (40.0, 0.0, 10.0),  # never more than a quarter of the token's time left
        (-5.0, 0.0, 0.0),  # expired already: at once
        (3600.0, 100.0, None),  # not overdue: not moved
    ],
)
def test_overdue_grants_are_spread_at_start_up(
    access_left: float, due_in: float, spread: float | None
) -> None:
    grant = replace(GRANT, access_expires_at=T0 + access_left, next_refresh_at=T0 + due_in)
    rng = random.Random(7)
    when = deadline(grant, T0, POLICY, client_fault=None, idle=False, startup=rng)
    if spread is None:
        assert when == T0 + due_in
    else:
        assert when == T0 + random.Random(7).uniform(0, spread)
        assert T0 <= when <= T0 + spread


# --- a refresh asked for -----------------------------------------------------------------

#: keyword changes to the figures -> (admit, retry after); base: due later, budget free
BASE = {
    "min_ttl": 0.0,
    "wait": 5.0,
    "client_fault": None,
    "lifetime": 3600.0,
    "budget_ready_in": 0.0,
    "rate_blocked": False,
    "idle": False,
}
ADMISSIONS: list[tuple[dict[str, object], dict[str, object], Admit, float]] = [
    ({}, {}, Admit.ASK_DEMAND, 0.0),  # not due: the on-demand share decides
    ({}, {"next_refresh_at": T0}, Admit.START, 0.0),  # due anyway: free
    ({"idle": True}, {"next_refresh_at": T0}, Admit.ASK_DEMAND, 0.0),  # dormant: asked
    ({"client_fault": FAULT}, {}, Admit.CLIENT_FAULT, 60.0),
    ({"min_ttl": 3598.0}, {}, Admit.IMPOSSIBLE, POLICY.on_demand_cooldown),
    ({"min_ttl": 3597.0}, {}, Admit.ASK_DEMAND, 0.0),  # 3597 + 2 < 3600
    ({"min_ttl": 1e6, "lifetime": None}, {}, Admit.ASK_DEMAND, 0.0),  # not known yet
    ({}, {"consecutive_failures": 2, "next_refresh_at": T0 + 40}, Admit.BACKING_OFF, 40.0),
    ({}, {"consecutive_failures": 2, "next_refresh_at": T0}, Admit.START, 0.0),  # retry now
    ({"budget_ready_in": 9.0}, {}, Admit.BUDGET_SPENT, 9.0),
    ({"budget_ready_in": 9.0, "rate_blocked": True}, {}, Admit.RATE_BLOCKED, 9.0),
    ({"budget_ready_in": 5.0}, {}, Admit.ASK_DEMAND, 0.0),  # ready within the wait
    # the order: haasd's own fault first, then the impossible, the backoff, the budget
    ({"client_fault": FAULT, "min_ttl": 1e6}, {}, Admit.CLIENT_FAULT, 60.0),
    ({"min_ttl": 1e6, "budget_ready_in": 9.0}, {}, Admit.IMPOSSIBLE, 300.0),
    (
        {"budget_ready_in": 99.0},
        {"consecutive_failures": 1, "next_refresh_at": T0 + 7},
        Admit.BACKING_OFF,
        7.0,
    ),
]


@pytest.mark.parametrize(("figures", "grant_changes", "admit", "retry"), ADMISSIONS)
def test_admission(
    figures: dict[str, object], grant_changes: dict[str, object], admit: Admit, retry: float
) -> None:
    grant: Grant = replace(GRANT, **grant_changes)  # type: ignore[arg-type]
    decided = admission(grant, T0, POLICY, **{**BASE, **figures})  # type: ignore[arg-type]
    assert (decided.admit, decided.retry_after) == (admit, retry)
    assert decided.refused is (admit not in (Admit.START, Admit.ASK_DEMAND))
    assert bool(decided.message) is decided.refused


@pytest.mark.parametrize(
    ("ready_in", "wait", "blocked", "admit"),
    [
        (0.0, 0.0, False, Admit.ASK_DEMAND),
        (5.0, 5.0, True, Admit.ASK_DEMAND),
        (5.1, 5.0, False, Admit.BUDGET_SPENT),
        (5.1, 5.0, True, Admit.RATE_BLOCKED),
    ],
)
def test_budget_admission(ready_in: float, wait: float, blocked: bool, admit: Admit) -> None:
    assert budget_admission(ready_in, wait, rate_blocked=blocked).admit is admit


# --- figures -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("next_refresh", "retry"),
    [(T0 + 30, 30.0), (T0, POLICY.backoff_base), (None, POLICY.backoff_base)],
)
def test_retry_after(next_refresh: float | None, retry: float) -> None:
    assert retry_after(replace(GRANT, next_refresh_at=next_refresh), T0, POLICY) == retry


@pytest.mark.parametrize(
    ("last_refresh", "expires", "known", "lifetime"),
    [
        (T0, T0 + 600, None, 600.0),  # the grant's own token says
        (T0, T0 + 600, 3600.0, 600.0),
        (None, T0 + 600, 3600.0, 3600.0),  # never refreshed: the last any grant got
        (T0, T0, 1800.0, 1800.0),  # refused (expiry cut to the refusal): not a lifetime
        (None, T0 + 600, None, None),  # nothing known yet
    ],
)
def test_lifetime_of(
    last_refresh: float | None, expires: float, known: float | None, lifetime: float | None
) -> None:
    grant = replace(GRANT, last_refresh_at=last_refresh, access_expires_at=expires)
    assert lifetime_of(grant, known) == lifetime


@pytest.mark.parametrize(
    ("per_minute", "fraction", "lifetime", "grants"),
    [
        (1, 0.75, 3600.0, 45),  # 60 an hour, each grant refreshed 1/0.75 times an hour
        (60, 0.75, 3600.0, 2700),
        (60, 0.75, 600.0, 450),  # shorter tokens: more refreshes each, fewer grants
        (60, 0.5, 3600.0, 1800),
    ],
)
def test_capacity(per_minute: int, fraction: float, lifetime: float, grants: int) -> None:
    assert capacity(per_minute, fraction, lifetime) == grants


@pytest.mark.parametrize(
    ("lifetimes", "typical"),
    [([], DOCUMENTED_LIFETIME), ([None], DOCUMENTED_LIFETIME), ([600.0, None], 600.0),
     ([600.0, 3600.0, 3600.0], 3600.0), ([600.0, 3600.0], 600.0)],
)  # fmt: skip
def test_typical_lifetime(lifetimes: list[float | None], typical: float) -> None:
    assert typical_lifetime(lifetimes) == typical


@pytest.mark.parametrize(
    ("expiries", "in_flight", "risky"),
    [
        ([], 0, 0),
        ([T0 + 100, T0 + 200], 0, 0),  # 6 s a request: both reached in time
        ([T0 + 5, T0 + 200], 0, 1),  # the first ends before its turn (T0 + 6)
        ([T0 + 11, T0 + 12], 0, 1),  # the second's turn is T0 + 12
        ([T0 + 11, T0 + 100], 1, 1),  # one in flight goes first: T0 + 12 for the first
    ],
)
def test_at_risk(expiries: list[float], in_flight: int, risky: int) -> None:
    assert at_risk(expiries, T0, per_request=6.0, in_flight=in_flight) == risky
