"""The SQLite store's disk fills up right when a rotation is to be
written: the server has already spent the old refresh token, so the answer's tokens are
the grant's only future. They are held in memory and served, the write is retried,
health says ``degraded`` naming the store and why, and once the store takes them they
are on disk and health is ok again.

A real engine (tests/harness.py) on a real tmpfs of 2 MB, against the simulator over
loopback with rotation and strict reuse detection (no grace): an answer lost on the way
to the disk would show as a grant the server revokes at the next refresh.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from disk_campaign import HUMANS, campaign
from harness import HOUR, running, simulator
from structlog.testing import capture_logs
from support import eventually
from support_daemon import MARIA, daemon_running
from support_storage import checkpoint_truncate, fill, intent_of, tmpfs

from haasd.clock import ManualClock
from haasd.crypto import Key
from haasd.grants import State
from haasd.simulator import Simulator

DB = "haasd.db"
#: the short campaign: rounds, and the seed that repeats them
ROUNDS = 20
SEED = 20261203


@pytest.fixture
def disk() -> Iterator[Path]:
    with tmpfs("2m") as path:
        yield path


def strict_simulator() -> Simulator:
    return simulator(ManualClock(start=time.time()), rotate_refresh_tokens=True, reuse_grace=0.0)


class Fault:
    """Fills the disk at the checkpoint "answered" of the refresh of one human: the
    server has rotated, and haasd is about to write the answer. (A file system turning
    read-only under a store open for writing cannot be staged: the kernel refuses to
    remount it while a file is open for writing. A store read-only at start is
    tests/test_store_readonly.py's.)"""

    def __init__(self, disk: Path) -> None:
        self.disk = disk
        self.armed: str | None = None
        self.struck = 0

    def __call__(self, point: str, human_id: str) -> None:
        if point == "answered" and human_id == self.armed:
            self.armed = None
            self.struck += 1
            fill(self.disk / "filler")

    def end(self) -> None:
        (self.disk / "filler").unlink()


async def test_a_rotation_the_full_disk_refuses_is_held_served_and_written_once_it_can(
    disk: Path,
) -> None:
    sim = strict_simulator()
    fault = Fault(disk)
    says = "database or disk is full"
    async with sim.running(), running(disk, sim=sim, checkpoint=fault) as h:
        before = await h.consent("usr_a")
        await h.consent("usr_b")
        checkpoint_truncate(disk / DB)
        fault.armed = "usr_a"
        with capture_logs() as logs:
            after = await h.refresher.refresh_now("usr_a")
        assert fault.struck == 1
        assert after.refresh_token != before.refresh_token, "the server rotated"
        assert intent_of(disk / DB, "usr_a") is not None, "the store still has the spent token"
        # nothing silently dropped: an error names the human and the store's refusal
        held = [e for e in logs if e["log_level"] == "error"]
        assert [e["human_id"] for e in held] == ["usr_a"]
        assert says in held[0]["error"] and str(disk / DB) in held[0]["error"]
        # degraded, naming the store, the reason and the human held
        health = h.refresher.health()
        assert health.status == "degraded"
        (reason,) = health.reasons
        assert reason.startswith(f"store not writable: store {disk / DB}: ")
        assert says in reason and "usr_a" in reason
        # the new tokens are served (the old access token is not), and they are good
        served = await h.refresher.ensure_fresh("usr_a")
        assert served.access_token == after.access_token != before.access_token
        assert sim.validate_access_token(served.access_token.reveal()) == "usr_a"
        assert (await h.refresher.ensure_fresh("usr_b")).state is State.ACTIVE
        await anyio.sleep(1.0)  # retries meet the refusal again: still held
        assert not h.refresher.health().ok
        assert intent_of(disk / DB, "usr_a") is not None

        fault.end()
        await eventually(lambda: h.refresher.health().ok, 10.0)  # the retried write lands
        assert intent_of(disk / DB, "usr_a") is None
        stored = await h.store.get_grant("usr_a")
        assert stored.refresh_token == after.refresh_token
        assert stored.access_token == after.access_token
        # the schedule goes on from the new token: no reuse, nothing revoked
        await h.clock.advance(2 * HOUR)
        assert sim.stats.reuse_events == 0
        assert sim.has_active_grant("usr_a") and sim.has_active_grant("usr_b")
        assert sim.stats.refreshes["usr_a"] >= 3
        final = await h.refresher.ensure_fresh("usr_a")
        assert sim.validate_access_token(final.access_token.reveal()) == "usr_a"
        assert h.refresher.health().ok


async def test_a_held_rotation_holds_back_the_next_one_and_a_restart_meanwhile_says_so(
    disk: Path,
) -> None:
    """While an answer is held, the grant is not refreshed again (its intent could not be
    written either); a shutdown before the disk returns logs what was lost, and the store
    then reports the grant as an interrupted rotation — never as if nothing happened."""
    sim = strict_simulator()
    fault = Fault(disk)
    key = Key.generate()
    async with sim.running():
        with capture_logs() as logs:
            async with running(disk, sim=sim, checkpoint=fault, key=key) as h:
                await h.consent("usr_a")
                checkpoint_truncate(disk / DB)
                fault.armed = "usr_a"
                await h.refresher.refresh_now("usr_a")
                await h.clock.advance(50 * 60)  # past its next due time
                assert sim.stats.refreshes["usr_a"] == 1, "a held grant is not refreshed again"
                served = await h.refresher.ensure_fresh("usr_a")
                assert sim.validate_access_token(served.access_token.reveal()) == "usr_a"
        errors = [(e["event"], e["human_id"]) for e in logs if e["log_level"] == "error"]
        assert len(errors) == 2 and {human for _, human in errors} == {"usr_a"}
        assert "never written" in errors[1][0]
        fault.end()
        async with running(disk, sim=sim, key=key) as h:
            await h.clock.advance(31)  # an open intent is retried promptly at start
            grant = h.refresher.grant("usr_a")
            assert grant is not None
            assert grant.state is State.NEEDS_RECONSENT
            assert grant.last_error is not None and "rotation was interrupted" in grant.last_error


async def test_the_daemon_on_a_full_disk_serves_what_it_holds_and_recovers(disk: Path) -> None:
    """The whole daemon, its socket on the same full disk: a refresh that cannot write its
    intent spends nothing; a consent that expires meanwhile cannot be deleted; neither
    stops the daemon. Tokens in hand are served, health says why it is degraded, and
    everything resumes once there is space."""
    options = {"rotate_refresh_tokens": True, "reuse_grace": 0.0}
    async with daemon_running(disk, sim_options=options) as d:
        first = (await d.http.get(f"/v1/tokens/{MARIA}")).json()["access_token"]
        assert (await d.start()).status_code == 201  # pending 15 minutes, then pruned
        checkpoint_truncate(disk / DB)
        fill(disk / "filler")
        await d.clock.advance(50 * 60)  # due at 45 minutes; the consent expired at 15
        assert d.sim.stats.refreshes[MARIA] == 0, "nothing spent without an intent on disk"
        health = (await d.http.get("/v1/health")).json()
        assert health["status"] == "degraded"
        assert any(
            r.startswith(f"store not writable: store {disk / DB}: begin refresh failed")
            and "full" in r
            for r in health["reasons"]
        ), health["reasons"]
        assert (await d.http.get(f"/v1/tokens/{MARIA}")).json()["access_token"] == first
        assert "haasd_store_writable 0.0" in (await d.http.get("/metrics")).text

        (disk / "filler").unlink()
        await d.clock.advance(5 * 60)  # the postponed refresh goes, the consent is pruned
        served = (await d.http.get(f"/v1/tokens/{MARIA}")).json()["access_token"]
        assert served != first and d.sim.validate_access_token(served) == MARIA
        assert (await d.http.get("/v1/health")).json()["status"] == "ok"
        assert "haasd_store_writable 1.0" in (await d.http.get("/metrics")).text
        assert await d.daemon.store.list_pending() == []
        assert d.sim.stats.reuse_events == 0


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_rounds_of_a_full_disk_lose_nothing(disk: Path) -> None:
    """The campaign (tests/disk_campaign.py), short; the long one is bench/disk_full.py."""
    tally = await campaign(disk, ROUNDS, SEED)
    assert tally.problems == []
    assert tally.rounds["at an answer"] > 0 and tally.rounds["before the refreshes"] > 0
    assert tally.held == tally.rounds["at an answer"], "every answer met by a full disk was held"
    assert tally.refreshes >= ROUNDS * len(HUMANS)
