"""Server faults, table-driven (3 of 3): the revocation endpoint (RFC 7009) when a grant is deleted.

The rig of ``test_server_faults_answers`` (see ``fault_rig``), its revocation endpoint
behind the same scripted server. An administrator deletes a consented grant over the
socket; haasd forgets it at once and revokes its refresh token at the server in the
background, best effort. Each row is the revocation endpoint's answer and what must
come of it: the delete answered 204 whatever the server does, the grant gone from the
store and the socket, health ok, the revocation requests sent — one, or two when the
server may get over what stopped the first (RFC 7009 §2.2.1 lets a client retry a 503;
haasd tries again 10 s on, then 60 and 300 s) and the endpoint answers the second — a
redirect not followed, and whether the grant is still alive at the server afterwards
(the server's own record).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from fault_rig import ELSEWHERE, MARIA, rig
from fault_server import Action, Answer, Forward, Reset, Stall, json_answer

from haasd.errors import UnknownHumanError


@dataclass(frozen=True)
class Revocation:
    name: str
    answer: Action
    #: whether the server still honours the grant once the dust settles
    alive: bool
    #: revocation requests sent (a second: tried again, answered by the simulator)
    requests: int = 1
    #: seconds between the first and the second
    gap: float = 10.0
    read_timeout: float = 5.0


ROWS = [
    Revocation("200: revoked", Forward(), alive=False),
    Revocation("503: tried again 10 s on, revoked", Answer(503), alive=False, requests=2),
    Revocation(
        "503 Retry-After 120: tried again 120 s on",
        Answer(503, (("Retry-After", "120"),)),
        alive=False,
        requests=2,
        gap=120.0,
    ),
    Revocation(
        "400 unsupported_token_type: not tried again",
        json_answer(400, {"error": "unsupported_token_type"}),
        alive=True,
    ),
    Revocation(
        "401 invalid_client: not tried again",
        json_answer(401, {"error": "invalid_client"}),
        alive=True,
    ),
    Revocation(
        "302 elsewhere: not followed, tried again",
        Answer(302, (("Location", ELSEWHERE),)),
        alive=False,
        requests=2,
    ),
    Revocation("reset before the request is read", Reset("accepted"), alive=False, requests=2),
    Revocation("reset after the server revoked", Reset("acted"), alive=False, requests=2),
    Revocation("read timeout", Stall(), alive=False, requests=2, read_timeout=1.0),
]


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
async def test_a_delete_whatever_the_revocation_endpoint_does(
    row: Revocation, short_dir: Path
) -> None:
    async with rig(short_dir, (row.answer,), Forward(), {}, row.read_timeout) as r:
        await r.consent()
        r.events()
        deleted = await r.http.delete(f"/v1/humans/{MARIA}")
        await r.clock.advance(600)  # the revocation runs in the background: let it end
        assert deleted.status_code == 204
        assert (await r.http.get(f"/v1/tokens/{MARIA}")).status_code == 404
        with pytest.raises(UnknownHumanError):
            await r.store.get_grant(MARIA)
        health = (await r.http.get("/v1/health")).json()
        assert (health["status"], health["reasons"], health["grants"]) == ("ok", [], 0)
        assert r.fault.requests == row.requests, "revocation requests (and no refresh)"
        if row.requests == 2:
            assert r.fault.times[1] - r.fault.times[0] == pytest.approx(row.gap, abs=1.5)
        assert all(b"token_type_hint=refresh_token" in body for body in r.fault.bodies)
        assert r.elsewhere.requests == 0, "a redirect was followed"
        assert r.sim.has_active_grant(MARIA) is row.alive
        assert r.events() == ()
