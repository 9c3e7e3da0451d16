"""Rounds of a full disk under a refreshing haasd: nothing is lost that could be kept.

One engine (tests/harness.py) on a 2 MB tmpfs of its own, against the simulator with
rotation and strict reuse detection (no grace), holding a few grants. Each round, drawn
from a seeded generator, the disk fills either right when one human's refresh answer is
about to be written (the server has rotated), or before the round's refreshes begin
(no intent can be written); then the clock passes the refresh points, every human's
token is asked for, the disk is emptied and the held answers must land. Promises
checked every round: a token served is live at the server; no refresh token is ever
presented twice (reuse detection would revoke the grant); once the disk has space,
health is ok and the store holds exactly the tokens in memory. Used by
tests/test_disk_full.py (a short run) and bench/disk_full.py.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from harness import Harness, running, simulator
from support import eventually
from support_storage import checkpoint_truncate, fill

from haasd.clock import ManualClock
from haasd.crypto import Key
from haasd.errors import HaasdError

HUMANS: Final = tuple(f"usr_d{n}" for n in range(6))
#: how long a round moves the clock: past every grant's refresh point (45 min ± jitter)
ROUND: Final = 50 * 60.0
#: real seconds the held answers have to land once the disk has space
LANDING: Final = 15.0


@dataclass
class DiskTally:
    rounds: Counter[str] = field(default_factory=Counter)
    #: rounds in which an answer the server had rotated was held in memory
    held: int = 0
    refreshes: int = 0
    served: int = 0
    refused_meanwhile: int = 0
    problems: list[str] = field(default_factory=list)


class Filler:
    """Fills the disk at the checkpoint "answered" of one human's refresh, once armed."""

    def __init__(self, disk: Path) -> None:
        self.disk = disk
        self.armed: str | None = None

    def __call__(self, point: str, human_id: str) -> None:
        if point == "answered" and human_id == self.armed:
            self.armed = None
            fill(self.disk / "filler")


async def serve_all(h: Harness, tally: DiskTally, when: str) -> None:
    for human in HUMANS:
        try:
            grant = await h.refresher.ensure_fresh(human, wait=5.0)
        except HaasdError:
            tally.refused_meanwhile += 1  # nothing served: allowed while the disk is full
            continue
        tally.served += 1
        if h.sim.validate_access_token(grant.access_token.reveal()) != human:
            tally.problems.append(f"{when}: a dead or foreign token served for {human}")


def held(h: Harness) -> bool:
    return any("held in memory" in reason for reason in h.refresher.health().reasons)


def due_within(at: float | None, h: Harness) -> bool:
    return at is not None and at <= h.clock.time() + ROUND - 60.0


async def one_round(
    h: Harness, n: int, rng: random.Random, filler: Filler, tally: DiskTally
) -> None:
    disk = filler.disk
    checkpoint_truncate(disk / "haasd.db")  # the next write needs new space
    mode = rng.choice(("at an answer", "before the refreshes"))
    tally.rounds[mode] += 1
    if mode == "at an answer":  # one whose refresh comes in this round
        due = [g.human_id for g in h.refresher.grants() if due_within(g.next_refresh_at, h)]
        filler.armed = rng.choice(sorted(due))
    else:
        fill(disk / "filler")
    await h.clock.advance(ROUND)
    tally.held += held(h)
    await serve_all(h, tally, f"round {n} ({mode}), disk full")
    if filler.armed is not None:
        tally.problems.append(f"round {n}: {filler.armed} was not refreshed in the round")
    filler.armed = None
    (disk / "filler").unlink(missing_ok=True)
    with contextlib.suppress(AssertionError):  # the held answers land by themselves
        await eventually(lambda: not held(h), LANDING)
    await h.clock.advance(10 * 60.0)  # the postponed refreshes go
    if h.refresher.health().reasons:
        tally.problems.append(f"round {n}: still degraded: {h.refresher.health().reasons}")
    await serve_all(h, tally, f"round {n} ({mode}), after")
    for human in HUMANS:
        memory = h.refresher.grant(human)
        stored = await h.store.get_grant(human)
        if memory is None or stored.refresh_token != memory.refresh_token:
            tally.problems.append(f"round {n}: the store and memory differ for {human}")


async def campaign(disk: Path, rounds: int, seed: int) -> DiskTally:
    """``rounds`` rounds on the tmpfs mounted at ``disk``, reproducible by ``seed``."""
    rng = random.Random(seed)
    sim = simulator(ManualClock(start=time.time()), rotate_refresh_tokens=True, reuse_grace=0.0)
    filler = Filler(disk)
    tally = DiskTally()
    async with sim.running(), running(disk, sim=sim, checkpoint=filler, key=Key.generate()) as h:
        for human in HUMANS:
            await h.consent(human)
        for n in range(rounds):
            await one_round(h, n, rng, filler, tally)
    tally.refreshes = sum(sim.stats.refreshes.values())
    if sim.stats.reuse_events or sim.stats.spent_presented:
        tally.problems.append(f"a spent refresh token was presented: {sim.stats.reuse_events}")
    lost = [human for human in HUMANS if not sim.has_active_grant(human)]
    if lost:
        tally.problems.append(f"grants lost at the server: {lost}")
    return tally
