"""The crash campaign (tests/crash_campaign.py), short: a real ``haasd run`` on a SQLite
store, SIGKILLed ≥ 50 times in all — at random moments, before a refresh's request is
sent, after it is sent, after its answer, inside the write of the rotated tokens, around
a consent's code exchange, inside ``haasd rekey`` and ``haasd restore`` — against the
simulator with rotation and reuse detection. The long campaign (≥ 1,000 kills) is
``bench/crash_faults.py``.

After every kill the store passes its integrity check and every grant alive at the
server is served with a live token. With a 30 s reuse grace window nothing is lost; with
strict reuse detection a grant is lost only to a kill inside the unavoidable window
(after the request went, before its answer was written), and haasd reports each one.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from crash_campaign import Campaign, Plan

REFRESH_POINTS = {"random", "before_send", "after_send", "after_answer", "mid_commit"}


def campaign_seed() -> int:
    """$HAASD_CAMPAIGN_SEED repeats a run; otherwise a new seed, printed."""
    chosen = os.environ.get("HAASD_CAMPAIGN_SEED")
    return int(chosen) if chosen else random.SystemRandom().randrange(1, 10**6)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("grace", "kills"), [(30.0, 28), (0.0, 24)], ids=["grace", "strict"])
async def test_haasd_killed_again_and_again_loses_nothing_it_could_keep(
    short_dir: Path, grace: float, kills: int
) -> None:
    plan = Plan(seed=campaign_seed(), grace=grace, kills=kills)
    print(f"campaign seed {plan.seed} (HAASD_CAMPAIGN_SEED={plan.seed} repeats it)")
    result = await Campaign(plan, short_dir).run()
    print(result.table())
    assert not result.problems(), "\n".join([*result.problems(), result.table()])
    assert len(result.kills) >= kills
    points = {kill.point for kill in result.kills if kill.reached}
    assert points >= REFRESH_POINTS, points
    assert any(point.startswith("consent_") for point in points), points
    assert result.refreshes >= 3 * plan.humans, "the grants were refreshed all along"
    assert result.served.ok > 50, result.served
    if grace:
        assert result.lost == []
