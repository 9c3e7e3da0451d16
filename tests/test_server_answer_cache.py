"""The token answers the server keeps encoded: bounded, the most recently served kept,
and never a stale answer (over a real Unix socket where it shows)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from support import NOW, FakeService, RawClient, make_grant, serving

from haasd.secret import Secret
from haasd.server import Limits
from haasd.server.bodies import TokenBodies

HUMANS = [f"usr_cache_{i}" for i in range(5)]


def test_keeps_at_most_its_limit_dropping_the_least_recently_served() -> None:
    bodies = TokenBodies(2)
    a, b, c = (make_grant(h, token=f"tok-{h}") for h in HUMANS[:3])
    first_a = bodies.body(a)
    bodies.body(b)
    assert bodies.body(a) is first_a, "a kept answer that fits is used again"
    bodies.body(c)  # b was served least recently: dropped
    assert (len(bodies), HUMANS[0] in bodies, HUMANS[1] in bodies) == (2, True, False)
    assert bodies.body(b).prefix == TokenBodies(1).body(b).prefix, "encoded again, the same"


def test_a_kept_answer_is_never_used_for_a_new_token_or_expiry() -> None:
    bodies = TokenBodies(8)
    grant = make_grant(token="tok-old")
    old = bodies.body(grant)
    new_token = bodies.body(replace(grant, access_token=Secret("tok-new")))
    assert b"tok-new" in new_token.prefix and b"tok-old" not in new_token.prefix
    longer = replace(grant, access_expires_at=grant.access_expires_at + 60)
    assert bodies.body(longer) is not old
    bodies.forget(grant.human_id)
    assert grant.human_id not in bodies and len(bodies) == 0


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        TokenBodies(0)
    with pytest.raises(ValueError, match="cached_answers"):
        Limits(cached_answers=0)


async def test_every_human_gets_their_own_token_past_the_cache_bound() -> None:
    grants = [make_grant(h, token=f"access-of-{h}") for h in HUMANS]
    service = FakeService(grants)
    limits = Limits(cached_answers=2)
    async with serving(service, limits=limits) as s, RawClient.connect(s.path) as client:
        answers = [
            (await client.request("GET", f"/v1/tokens/{h}")).json()
            for _ in range(3)
            for h in HUMANS
        ]
        # a token replaced in memory is served at once, never the kept answer
        service.outcome[HUMANS[-1]] = replace(
            grants[-1], access_token=Secret("rotated"), access_expires_at=NOW + 1800
        )
        await service.ensure_fresh(HUMANS[-1], 0.0, wait=0.0, peer=None)
        rotated = (await client.request("GET", f"/v1/tokens/{HUMANS[-1]}")).json()
    assert [(a["human_id"], a["access_token"]) for a in answers] == [
        (h, f"access-of-{h}") for _ in range(3) for h in HUMANS
    ]
    assert {a["expires_in"] for a in answers} == {3600}
    assert (rotated["access_token"], rotated["expires_in"]) == ("rotated", 1800)
