"""Who may refresh on demand: the pure admission rules of :mod:`haasd.demand`."""

from __future__ import annotations

import random

import pytest

from haasd.demand import (
    WINDOW,
    OnDemand,
    Refusal,
    RefusalReason,
    impossible_min_ttl,
    on_demand_cap,
    peer_cap,
)


def admit(
    demand: OnDemand,
    human_id: str,
    peer: int,
    now: float,
    *,
    capacity: int = 54,  # the free plan: 13 on demand a minute, 6 for one peer
    share: float = 0.25,
    cooldown: float = 300.0,
) -> Refusal | None:
    return demand.admit(human_id, peer, now, capacity=capacity, share=share, cooldown=cooldown)


@pytest.mark.parametrize(
    ("min_ttl", "lifetime", "margin", "impossible"),
    [
        (86400, 3600.0, 2.0, True),
        (3598, 3600.0, 2.0, True),  # a fresh token has 3600 > 3598 + 2? no: equal
        (3597, 3600.0, 2.0, False),
        (0, 3600.0, 2.0, False),
        (86400, None, 2.0, False),  # the lifetime is not known yet: nothing ruled out
        (10, 5.0, 2.0, True),
    ],
)
def test_a_min_ttl_beyond_the_servers_lifetime_is_impossible(
    min_ttl: float, lifetime: float | None, margin: float, impossible: bool
) -> None:
    assert impossible_min_ttl(min_ttl, lifetime, margin) is impossible


@pytest.mark.parametrize(
    ("capacity", "share", "cap", "per_peer"),
    [(54, 0.25, 13, 6), (270, 0.25, 67, 33), (900, 0.1, 90, 45), (1, 0.25, 1, 1), (3, 0.5, 1, 1)],
)
def test_the_share_and_a_peers_part_of_it(
    capacity: int, share: float, cap: int, per_peer: int
) -> None:
    assert on_demand_cap(capacity, share) == cap
    assert peer_cap(cap) == per_peer


def test_one_on_demand_refresh_per_grant_per_cooldown() -> None:
    demand = OnDemand()
    assert admit(demand, "usr_a", 1000, 0.0) is None
    refusal = admit(demand, "usr_a", 1001, 100.0)  # whoever asks
    assert refusal is not None and refusal.reason is RefusalReason.COOLDOWN
    assert refusal.retry_after == pytest.approx(200.0)
    assert admit(demand, "usr_b", 1000, 100.0) is None  # another grant
    assert admit(demand, "usr_a", 1000, 300.0) is None


def test_one_peer_takes_at_most_half_the_share_and_the_rest_is_left_to_others() -> None:
    demand = OnDemand()
    hog = [admit(demand, f"usr_{i}", 1000, float(i)) for i in range(20)]
    assert hog[:6] == [None] * 6
    assert all(r is not None and r.reason is RefusalReason.PEER_SHARE for r in hog[6:])
    others = [admit(demand, f"usr_o{i}", 1001 + i % 2, 30.0 + i) for i in range(10)]
    assert others[:7] == [None] * 7  # what the hog left: 13 - 6
    assert all(r is not None and r.reason is RefusalReason.SHARE for r in others[7:])
    # the window moves on: the hog's first refreshes leave it after a minute
    again = admit(demand, "usr_x", 1000, WINDOW + 0.5)
    assert again is None


def test_refusals_are_tallied_per_peer_for_health_and_metrics() -> None:
    demand = OnDemand()
    admit(demand, "usr_a", 7, 0.0)
    for t in range(1, 6):
        admit(demand, "usr_a", 7, float(t))
    assert demand.refusals_of(7, 5.0) == 5
    assert demand.refused_peers(5.0) == [(7, RefusalReason.COOLDOWN, 5)]
    assert demand.refused[RefusalReason.COOLDOWN] == 5
    assert demand.refused_peers(5.0 + WINDOW) == []  # a quiet minute: health is ok again
    assert demand.refusals_of(7, 5.0 + WINDOW) == 0


def test_memory_stays_bounded_under_many_peers_and_grants() -> None:
    demand = OnDemand()
    rng = random.Random(7)
    for t in range(20_000):
        admit(demand, f"usr_{rng.randrange(50)}", rng.randrange(100_000), t * 0.01, capacity=1000)
    assert len(demand._peers) <= 256
    assert len(demand._refused) <= 256


def test_health_counts_the_last_minute_not_the_whole_run() -> None:
    """A refusal every 30 s for ten minutes is one run (20 refusals, for the log lines),
    but about two a minute (for health)."""
    demand = OnDemand()
    refusal = Refusal(RefusalReason.COOLDOWN, "cooling down", 1.0)
    for t in range(0, 600, 30):
        demand.refuse(7, float(t), refusal)
    assert demand.refusals_of(7, 600.0) == 20
    assert demand.refused_peers(600.0) == [(7, RefusalReason.COOLDOWN, 2)]
    for t in range(3000):  # a flood: 50 a second for a minute
        demand.refuse(8, 600.0 + t * 0.02, refusal)
    (flood, *_), now = demand.refused_peers(660.0), 660.0
    assert flood[0] == 8 and 2900 <= flood[2] <= 3000
    assert demand.refused_peers(now + WINDOW) == []
