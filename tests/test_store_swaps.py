"""Rows swapped between humans in the store file: the sealed tokens are bound to their
human, column, scope, state and expiries (associated data), so a ciphertext moved to
another human's row does not open there. Both humans are quarantined — 409
``needs_reconsent`` with the reason, never a token, never asked of the server — health
names them, and the other humans are served as before.

tests/test_store_quarantine.py covers one human's row edited in place, store by store;
here the swaps an administrator (or a restore script gone wrong) would make between two
humans' rows, against the whole daemon over its socket, the grants issued by the
simulator over loopback.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
from harness import HOUR, simulator
from support_daemon import daemon_at, seed_grant, write_config

from haasd.clock import ManualClock

ADA, BOB, CYD = "usr_ada", "usr_bob", "usr_cyd"


def swap_tokens(conn: sqlite3.Connection) -> None:
    """Bob's row gets Cyd's two sealed tokens, and Cyd's Bob's."""
    rows = {
        h: (at, rt)
        for h, at, rt in conn.execute("SELECT human_id, access_token, refresh_token FROM grants")
    }
    for human, other in ((BOB, CYD), (CYD, BOB)):
        conn.execute(
            "UPDATE grants SET access_token = ?, refresh_token = ? WHERE human_id = ?",
            (*rows[other], human),
        )


def swap_human_ids(conn: sqlite3.Connection) -> None:
    """The two rows whole, under each other's name (scope and expiries go with them)."""
    conn.execute("UPDATE grants SET human_id = 'usr_tmp' WHERE human_id = ?", (BOB,))
    conn.execute("UPDATE grants SET human_id = ? WHERE human_id = ?", (BOB, CYD))
    conn.execute("UPDATE grants SET human_id = ? WHERE human_id = 'usr_tmp'", (CYD,))


def swap_access_tokens_only(conn: sqlite3.Connection) -> None:
    """Only the access tokens: the column an app is served."""
    (b,) = conn.execute("SELECT access_token FROM grants WHERE human_id = ?", (BOB,)).fetchone()
    (c,) = conn.execute("SELECT access_token FROM grants WHERE human_id = ?", (CYD,)).fetchone()
    conn.execute("UPDATE grants SET access_token = ? WHERE human_id = ?", (c, BOB))
    conn.execute("UPDATE grants SET access_token = ? WHERE human_id = ?", (b, CYD))


SWAPS: dict[str, Callable[[sqlite3.Connection], None]] = {
    "both tokens": swap_tokens,
    "the human ids of the rows": swap_human_ids,
    "the access tokens only": swap_access_tokens_only,
}


@pytest.mark.parametrize("swap", list(SWAPS))
async def test_rows_swapped_between_humans_are_quarantined_never_served(
    workdir: Path, swap: str
) -> None:
    clock = ManualClock(start=time.time())
    sim = simulator(clock, rotate_refresh_tokens=True, reuse_grace=0.0)
    async with sim.running():
        config = write_config(workdir, sim.token_url)
        issued = {h: await seed_grant(workdir, sim, h) for h in (ADA, BOB, CYD)}
        with closing(sqlite3.connect(workdir / "haasd.db", isolation_level=None)) as conn:
            SWAPS[swap](conn)
        async with daemon_at(config, clock) as (daemon, http):
            answers = [await http.get(f"/v1/tokens/{h}") for h in (BOB, CYD)]
            for human, answer in zip((BOB, CYD), answers, strict=True):
                assert answer.status_code == 409, answer.text
                error = answer.json()["error"]
                assert error["type"] == "needs_reconsent"
                assert "store row unreadable" in error["message"]
                status = (await http.get(f"/v1/humans/{human}")).json()
                assert status["state"] == "needs_reconsent"
            texts = [a.text for a in answers]
            assert not any(token in text for token in issued.values() for text in texts)

            ada = (await http.get(f"/v1/tokens/{ADA}")).json()
            assert ada["access_token"] == issued[ADA]
            health = (await http.get("/v1/health")).json()
            assert health["status"] == "degraded"
            (reason,) = health["reasons"]
            assert "2 grant(s) quarantined" in reason and BOB in reason and CYD in reason

            await clock.advance(2 * HOUR)  # Ada refreshed twice; Bob and Cyd never asked for
            assert sim.stats.refreshes[ADA] >= 2
            assert sim.stats.refreshes[BOB] == sim.stats.refreshes[CYD] == 0
            served = (await http.get(f"/v1/tokens/{ADA}")).json()["access_token"]
            assert sim.validate_access_token(served) == ADA
            assert (await http.get(f"/v1/tokens/{BOB}")).status_code == 409
            assert daemon.store.unreadable == {BOB, CYD}
