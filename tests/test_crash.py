"""A haasd killed mid-refresh loses no grant it could have kept (issue: rotation + crash).

The child process runs a real engine against the simulator (rotation and reuse detection
on) and dies at a chosen point; then a new engine starts on the same store.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import anyio
import pytest
from harness import running, simulator

from haasd.clock import ManualClock
from haasd.crypto import Key
from haasd.grants import State
from haasd.simulator import Simulator

CHILD = Path(__file__).with_name("crash_child.py")


async def kill_mid_refresh(tmp_path: Path, sim: Simulator, key: Key, point: str) -> None:
    result = await anyio.run_process(
        [sys.executable, str(CHILD), str(tmp_path / "haasd.db"), sim.token_url, "usr_a", point],
        env={**os.environ, "HAASD_STORE_KEY": key.to_text()},
        check=False,
    )
    assert result.returncode == 137, result.stderr.decode()


@pytest.mark.parametrize(("grace", "survives"), [(30.0, True), (0.0, False)])
async def test_crash_between_answer_and_write(tmp_path: Path, grace: float, survives: bool) -> None:
    key = Key.generate()
    sim = simulator(ManualClock(start=time.time()), rotate_refresh_tokens=True, reuse_grace=grace)
    async with sim.running():
        async with running(tmp_path, key=key, sim=sim) as h:
            before = await h.consent("usr_a")
        await kill_mid_refresh(tmp_path, sim, key, "answered")
        assert sim.stats.refreshes["usr_a"] == 1, "the server rotated; haasd never heard"
        async with running(tmp_path, key=key, sim=sim) as h:
            loaded = await h.store.get_grant("usr_a")
            assert loaded.intent is not None, "the open intent survived the crash"
            assert loaded.refresh_token == before.refresh_token
            await h.clock.advance(31)  # an open intent is retried promptly at start
            grant = h.refresher.grant("usr_a")
            assert grant is not None
            if survives:
                # inside the server's grace window the retry recovers the rotated tokens
                assert grant.state is State.ACTIVE
                assert sim.stats.grace_replays == 1
                served = await h.refresher.ensure_fresh("usr_a")
                assert sim.validate_access_token(served.access_token.reveal()) == "usr_a"
            else:
                assert grant.state is State.NEEDS_RECONSENT
                assert grant.last_error is not None
                assert "rotation was interrupted" in grant.last_error
            stored = await h.store.get_grant("usr_a")
            assert stored.intent is None


async def test_crash_between_write_and_first_serve(tmp_path: Path) -> None:
    key = Key.generate()
    sim = simulator(ManualClock(start=time.time()), rotate_refresh_tokens=True)
    async with sim.running():
        async with running(tmp_path, key=key, sim=sim) as h:
            before = await h.consent("usr_a")
        await kill_mid_refresh(tmp_path, sim, key, "written")
        async with running(tmp_path, key=key, sim=sim) as h:
            loaded = await h.store.get_grant("usr_a")
            assert loaded.intent is None
            assert loaded.refresh_token != before.refresh_token, "the rotated token is on disk"
            served = await h.refresher.ensure_fresh("usr_a")
            assert sim.validate_access_token(served.access_token.reveal()) == "usr_a"
            # and the next refresh presents the rotated token: no reuse, no revocation
            await h.refresher.refresh_now("usr_a")
            assert sim.stats.reuse_events == 0
            assert sim.has_active_grant("usr_a")
