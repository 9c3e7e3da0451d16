"""Server faults, table-driven (1 of 3): the token endpoint answers with an error.

One row per fault, each run against the real refresh path (see ``fault_rig``): the
first refresh of a consented grant meets the fault; the row says what comes of it — the
grant's state and the socket's answer, the lifecycle events, ``GET /v1/health``, and how
many more requests haasd sends in the window after the first.

What the rows hold to:

* RFC 6749 §5.2: ``invalid_grant`` ends the grant (re-consent, nothing more sent);
  every other refusal — ``invalid_client`` and any 401 (with ``WWW-Authenticate``, as
  §5.2 has it), ``unauthorized_client``, ``invalid_request``, ``unsupported_grant_type``,
  ``invalid_scope``, a code no RFC names — is haasd's client or request at fault: no
  grant is blamed or touched, refreshing stops for all until the operator acts, and
  health says so.
* A server's own failure (5xx) is retried with backoff; a gateway's 502 may hide an
  answer, so the same refresh token is tried again promptly first.
* ``Retry-After`` (RFC 9110 §10.2.3) as seconds or an HTTP-date is honoured to the
  second; a negative or unreadable one is ignored; an absurd one is capped at an hour.
  The HaaS docs' 429 body names its wait in ``retry_after``.
* A redirect is never followed: the credentials in the request go nowhere else.

The last test runs three of the rows through the whole daemon as ``haasd run`` composes
it from a config file, to show the rig's composition is the real one.
"""

from __future__ import annotations

import email.utils
import time
from pathlib import Path

import pytest
from fault_rig import ELSEWHERE, FIRST, MARIA, SIM_OPTIONS, Row, expected, run_row
from fault_server import Answer, FaultServer, Forward, json_answer
from harness import simulator
from support_daemon import daemon_at, seed_grant, write_config

from haasd.clock import ManualClock

ON = Forward()  # the simulator answers (rotating the refresh token)
STOPPED = "refreshing stopped: the server rejects haasd's client"
#: backoff with full jitter from 10 s over 600 s: its ceilings (10, 20, 40 … s) allow no
#: fewer; the most is the jitter's (20 seeds of bench/server_faults.py: 6 to 12)
BACKOFF = (5, 15)
#: the same, three requests a round: the answer may be lost, so two prompt retries
#: (20 seeds: 20 to 35)
LOST_BACKOFF = (14, 45)


def oauth(code: str, status: int = 400, *headers: tuple[str, str]) -> Answer:
    """An RFC 6749 §5.2 error answer."""
    return json_answer(status, {"error": code, "error_description": "as the server says"}, *headers)


def client_fault(name: str, answer: Answer) -> Row:
    """A refusal that is haasd's client's, not the human's: the grant stays as it was."""
    return Row(
        name, (answer,), ON, state="active", token=200, events=(),
        health="degraded", reason=STOPPED, further=0,
    )  # fmt: skip


def retried(name: str, answer: Answer, gap: tuple[float, float]) -> Row:
    """One failure the server asks to be retried; the retry goes after ``gap`` and works."""
    return Row(
        name, (answer,), ON, state="active", token=200,
        events=("refresh.failed", "token.refreshed"), further=1, gap=gap,
    )  # fmt: skip


def http_date(seconds_after_first: float) -> str:
    return email.utils.formatdate(FIRST + seconds_after_first, usegmt=True)


HAAS_429 = json_answer(
    429,
    {
        "error": {
            "code": 429,
            "type": "rate_limit_exceeded",
            "message": "Slow down. Even machines benefit from patience.",
            "retry_after": 32,
            "suggestion": "Consider batching requests or upgrading your plan.",
        }
    },
)
CHALLENGE = ("WWW-Authenticate", 'Basic realm="haas"')
INVALID_CLIENT = oauth("invalid_client", 401, CHALLENGE)
DATE = http_date(300)

# fmt: off
ROWS = [
    # --- RFC 6749 §5.2, each error code ---------------------------------------------
    client_fault("invalid_request", oauth("invalid_request")),
    client_fault("invalid_client 401 WWW-Authenticate", oauth("invalid_client", 401, CHALLENGE)),
    Row(
        "invalid_grant", (oauth("invalid_grant"),), ON, state="needs_reconsent", token=409,
        events=("grant.needs_reconsent",), further=0, error="the server refused the grant",
    ),
    client_fault("unauthorized_client", oauth("unauthorized_client")),
    client_fault("unsupported_grant_type", oauth("unsupported_grant_type")),
    client_fault("invalid_scope", oauth("invalid_scope")),
    client_fault("a code no RFC names", oauth("no_such_error_code")),
    client_fault(
        "401 bare, WWW-Authenticate only",
        Answer(401, (("WWW-Authenticate", 'Bearer error="invalid_token"'),)),
    ),
    # --- the client rejected: one refresh tried 15 min on, then 30, 60, 60 … min apart ---
    Row(
        "invalid_client, then accepted again: refreshing resumes", (INVALID_CLIENT,), ON,
        state="active", token=200, events=("token.refreshed",), further=1, gap=(900, 1020),
        window=1800,
    ),
    Row(
        "invalid_client throughout: tried again after 15, 30 and 60 min", (), INVALID_CLIENT,
        state="active", token=503, events=(), health="degraded", reason=STOPPED,
        further=3, gap=(900, 1020), window=7200,
    ),
    # --- the server's own failures ------------------------------------------------------
    Row(
        "500 throughout", (), Answer(500), state="active", token=200,
        events=("refresh.failed",), further=BACKOFF, gap=(1, 10), error="server_error",
    ),
    Row(
        "502 throughout", (), Answer(502), state="active", token=200,
        events=("refresh.failed",), further=LOST_BACKOFF, gap=(1, 1), error="server_error",
    ),
    Row(
        "503 temporarily_unavailable throughout", (), oauth("temporarily_unavailable", 503),
        state="active", token=200, events=("refresh.failed",), further=BACKOFF, gap=(1, 10),
        error="temporarily_unavailable",
    ),
    Row(
        "500 throughout, past the token's end: health says so",
        (), Answer(500), state="active", token=503, events=("refresh.failed",),
        health="degraded", reason="without a live token while their refresh fails",
        further=(6, 30), gap=(1, 10), window=1200, error="server_error",
    ),
    retried("500 once", Answer(500), (1, 10)),
    # --- Retry-After ----------------------------------------------------------------------
    retried("503 Retry-After 120", Answer(503, (("Retry-After", "120"),)), (120, 120)),
    retried("503 Retry-After HTTP-date", Answer(503, (("Retry-After", DATE),)), (299, 301)),
    retried("503 Retry-After negative: ignored", Answer(503, (("Retry-After", "-5"),)), (1, 10)),
    retried("503 Retry-After garbage: ignored", Answer(503, (("Retry-After", "soon"),)), (1, 10)),
    Row(
        "503 Retry-After absurd: capped at an hour",
        (Answer(503, (("Retry-After", "999999999"),)),), ON, state="active", token=200,
        events=("refresh.failed", "token.refreshed"), further=1, gap=(3600, 3600), window=3700,
    ),
    Row(
        "429 Retry-After absurd: capped at an hour",
        (Answer(429, (("Retry-After", "1e12"),)),), ON, state="active", token=200,
        events=("refresh.failed", "token.refreshed"), further=1, gap=(3600, 3600), window=3700,
    ),
    retried("429 the HaaS docs' body, retry_after 32", HAAS_429, (32, 32)),
    retried("429 naming no wait: 10 s", Answer(429), (10, 10)),
    # --- redirects: never followed --------------------------------------------------------
    retried("302 elsewhere", Answer(302, (("Location", ELSEWHERE),)), (1, 10)),
    Row(
        "307 elsewhere throughout", (), Answer(307, (("Location", ELSEWHERE),)),
        state="active", token=200, events=("refresh.failed",), further=BACKOFF, gap=(1, 10),
        error="not followed",
    ),
]
# fmt: on


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
async def test_an_error_answer_comes_to_what_its_row_says(row: Row, short_dir: Path) -> None:
    seen, _ = await run_row(row, short_dir)
    assert seen == expected(row, seen)


async def test_the_whole_daemon_meets_the_faults_as_the_rig_does(short_dir: Path) -> None:
    """``haasd run`` as composed from a config file (its own jitter, its own clients), on
    three rows in turn: a server's wait, a client fault, a refusal."""
    clock = ManualClock(start=time.time())
    sim = simulator(clock, **SIM_OPTIONS)
    wait = Answer(503, (("Retry-After", "120"),))
    script = (wait, ON, oauth("invalid_client", 401, CHALLENGE), oauth("invalid_grant"))
    async with sim.running(), (fault := FaultServer(clock, sim.base_url, script, ON)).running():
        config = write_config(short_dir, fault.url)
        await seed_grant(short_dir, sim, MARIA)
        async with daemon_at(config, clock) as (_, http):
            await clock.advance(3600)  # the first refresh (503, 120 s) and its retry (200)
            assert fault.requests == 2 and abs(fault.times[1] - fault.times[0] - 120) < 0.001
            assert (await http.get(f"/v1/tokens/{MARIA}")).status_code == 200
            await http.post(f"/v1/humans/{MARIA}/refresh")  # invalid_client
            health = (await http.get("/v1/health")).json()
            assert health["status"] == "degraded" and STOPPED in health["reasons"][0]
            await clock.advance(600)  # one refresh is tried again only 15 min on
            assert fault.requests == 3, "refreshing stopped: nothing sent"
            refused = await http.post(f"/v1/humans/{MARIA}/refresh")  # an admin's: invalid_grant
            assert refused.status_code == 502, refused.text  # the server's refusal, relayed
            status = (await http.get(f"/v1/humans/{MARIA}")).json()
            assert status["state"] == "needs_reconsent"
            assert (await http.get(f"/v1/tokens/{MARIA}")).status_code == 409
            await clock.advance(3600)
            assert fault.requests == 4, "nothing more sent for a refused grant"
