"""Server faults, table-driven (2 of 3): the exchange breaks, or its answer is wrong.

The same rig and rows as ``test_server_faults_answers`` (see ``fault_rig``): the first
refresh of a consented grant meets the fault, and the row says what comes of it.

What the rows hold to:

* A connection reset before or after the request went, or no answer within the read
  timeout: haasd cannot know whether the server acted, so it tries again promptly with
  the same refresh token. If the server had rotated, a reuse grace (30 s) gives the
  answer back; without one (0 s) reuse detection refuses, and the grant is reported
  as needing re-consent because a rotation was interrupted — never silently lost.
* A 2xx that is no token answer (HTML, truncated JSON) is a lost answer: the same.
* Every field a server may omit or get wrong is an input: no ``expires_in`` is the
  default lifetime; a count in a string is read; a huge one is capped; zero or negative
  is a token already expired, never served, refreshed again at once and then with
  backoff (never the whole rate budget spent on one grant).
* What the server issued is written before anything else in the answer is judged: a
  200 with a new refresh token but no access token keeps the new refresh token, and the
  retry spends it; a refresh token with a space is one (RFC 6749 A.17: VSCHAR). No
  ``refresh_token`` keeps the old one (RFC 6749 §6) — which a server that rotated
  anyway has spent: the next refresh is refused, and says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fault_rig import READ_TIMEOUT, Row, expected, run_row
from fault_server import Answer, Forward, Reset, Rewrite, Stall

ON = Forward()  # the simulator answers (rotating the refresh token)
GRACE = {"reuse_grace": 30.0}
SPACED = " v2"
#: real seconds the client waits for a stalled answer
STALLED = 1.0
INTERRUPTED = "a refresh-token rotation was interrupted"
#: three requests a round (two prompt retries of a lost answer), backoff from 10 s (20
#: seeds of bench/server_faults.py: 20 to 35)
LOST_BACKOFF = (14, 45)
HTML = Answer(200, (("Content-Type", "text/html"),), b"<html><body>Sign in</body></html>")
TRUNCATED = Answer(
    200, (("Content-Type", "application/json"),), b'{"access_token": "haas_at_x", "expi'
)


def field(name: str, value: Any = None) -> Forward:
    """The simulator's answer with ``name`` set to ``value`` (None: left out)."""

    def rewrite(answer: dict[str, Any]) -> dict[str, Any]:
        if value is None:
            answer.pop(name, None)
        else:
            answer[name] = value
        return answer

    rewritten: Rewrite = rewrite
    return Forward(rewritten)


def spaced() -> Forward:
    """The simulator's answer, its new refresh token holding a space (the endpoint takes
    it out again when the token comes back: the simulator's own tokens have none)."""

    def rewrite(answer: dict[str, Any]) -> dict[str, Any]:
        answer["refresh_token"] += SPACED
        return answer

    rewritten: Rewrite = rewrite
    return Forward(rewritten)


def recovered(name: str, fault: Forward | Answer | Reset | Stall, **sim: Any) -> Row:
    """A lost answer, once: the prompt retry (1 s later, same refresh token) works."""
    return Row(
        name, (fault,), ON, state="active", token=200, events=("token.refreshed",),
        further=1, gap=(1, 1), sim=sim, read_timeout=_read_timeout(fault),
    )  # fmt: skip


def interrupted(name: str, fault: Reset | Stall) -> Row:
    """The server rotated and the answer was lost; no grace: the retry is refused."""
    return Row(
        name, (fault,), ON, state="needs_reconsent", token=409,
        events=("grant.needs_reconsent",), further=1, gap=(1, 1), error=INTERRUPTED,
        read_timeout=_read_timeout(fault),
    )  # fmt: skip


def _read_timeout(fault: object) -> float:
    """A second for the client to give up on a stalled answer (real time), else the rig's."""
    return STALLED if isinstance(fault, Stall) else READ_TIMEOUT


def kept(name: str, fault: Forward, **sim: Any) -> Row:
    """An answer read as good: refreshed, nothing more sent in the window."""
    return Row(
        name, (fault,), ON, state="active", token=200, events=("token.refreshed",),
        further=0, sim=sim,
    )  # fmt: skip


# fmt: off
ROWS = [
    # --- the exchange breaks -----------------------------------------------------------
    recovered("reset before the request is read", Reset("accepted")),
    recovered("reset after the request is read", Reset("read")),
    recovered("read timeout, nothing done", Stall()),
    interrupted("reset after the server rotated, grace 0", Reset("acted")),
    recovered("reset after the server rotated, grace 30", Reset("acted"), **GRACE),
    interrupted("read timeout after the server rotated, grace 0", Stall(forward=True)),
    recovered("read timeout after the server rotated, grace 30", Stall(forward=True), **GRACE),
    Row(
        "reset throughout", (), Reset("accepted"), state="active", token=200,
        events=("refresh.failed",), further=LOST_BACKOFF, gap=(1, 1), error="network",
    ),
    # --- a 2xx that is no token answer ----------------------------------------------------
    recovered("HTML 200 once", HTML),
    recovered("truncated JSON once", TRUNCATED),
    recovered("200 over 64 KiB once", Answer(200, (), b"{" + b" " * 70_000 + b"}")),
    Row(
        "HTML 200 throughout", (), HTML, state="active", token=200,
        events=("refresh.failed",), further=LOST_BACKOFF, gap=(1, 1),
        error="malformed_response",
    ),
    # --- expires_in ------------------------------------------------------------------------
    kept("expires_in missing: the default lifetime", field("expires_in")),
    kept("expires_in huge: capped", field("expires_in", 10**12)),
    kept("expires_in a string of seconds", field("expires_in", "3600")),
    kept("expires_in a string, no number: the default", field("expires_in", "an hour")),
    Row(
        "expires_in 0 throughout", (), field("expires_in", 0), state="active", token=503,
        events=("token.refreshed",), further=(4, 15), gap=(0, 0), error="expires_in 0",
    ),
    Row(
        "expires_in negative throughout", (), field("expires_in", -60), state="active",
        token=503, events=("token.refreshed",), further=(4, 15), gap=(0, 0),
        error="expires_in 0",
    ),
    kept("token_type not Bearer: kept, served as Bearer", field("token_type", "mac")),
    kept("human_id another human's: kept for this one", field("human_id", "usr_someone_else")),
    # --- the tokens themselves ----------------------------------------------------------
    Row(
        "200 without access_token: its new refresh token kept", (field("access_token"),), ON,
        state="active", token=200, events=("refresh.failed", "token.refreshed"), further=1,
        gap=(1, 10),
    ),
    Row(
        "200 without refresh_token, not rotating", (field("refresh_token"),), ON,
        state="active", token=200, events=("token.refreshed",), further=1, window=3000,
        sim={"rotate_refresh_tokens": False},
    ),
    Row(
        "200 without refresh_token, rotated anyway", (field("refresh_token"),), ON,
        state="needs_reconsent", token=409,
        events=("token.refreshed", "grant.needs_reconsent"), further=1, window=3000,
        error="the server refused the grant",
    ),
    Row(
        "refresh_token with a space (RFC 6749 A.17: VSCHAR)", (spaced(),), ON, state="active",
        token=200, events=("token.refreshed",), further=1, window=3000,
        inbound=lambda body: body.replace(SPACED.encode(), b""),
    ),
]
# fmt: on


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
async def test_a_broken_exchange_comes_to_what_its_row_says(row: Row, short_dir: Path) -> None:
    seen, _ = await run_row(row, short_dir)
    assert seen == expected(row, seen)
