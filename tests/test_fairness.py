"""Fair and bounded, against the whole daemon: a real socket, the simulator over loopback
HTTP, a real store. A careless or hostile app must not cost another app its fresh token,
hang a request, or get a token about to die."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from random import Random

import anyio
import httpx
import pytest
from harness import simulator
from prometheus_client.parser import text_string_to_metric_families
from support_daemon import daemon_at, seed_grant, write_config

from haasd.app import Daemon
from haasd.clock import ManualClock
from haasd.crypto import Key, Sealer
from haasd.grants import Policy, new_grant
from haasd.simulator import Simulator, TokenRequestRecord
from haasd.store import Store
from haasd.tokens import parse_token_response

A, B = "usr_abused_1", "usr_other_2"


@dataclass
class Running:
    daemon: Daemon
    sim: Simulator
    client: httpx.AsyncClient
    clock: ManualClock

    def refreshes(self, human_id: str) -> list[TokenRequestRecord]:
        return [
            r
            for r in self.sim.requests_log
            if r.grant_type == "refresh_token" and r.human_id == human_id
        ]


@pytest.fixture
async def live(short_dir: Path) -> AsyncIterator[Running]:
    clock = ManualClock(start=time.time())
    sim = simulator(clock, rotate_refresh_tokens=True, reuse_grace=0.0)
    async with sim.running():
        config_path = write_config(short_dir, sim.token_url)
        for human in (A, B):
            await seed_grant(short_dir, sim, human)
        async with daemon_at(config_path, clock) as (daemon, client):
            yield Running(daemon, sim, client, clock)


def error(reply: httpx.Response) -> dict[str, object]:
    body = reply.json()["error"]
    assert isinstance(body, dict)
    return body


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no sample {name} {labels}")


async def test_a_min_ttl_loop_costs_at_most_one_refresh_and_starves_no_one(live: Running) -> None:
    # a min_ttl no token from this server can meet: refused at once, for free
    for _ in range(50):
        never = await live.client.get(f"/v1/tokens/{A}", params={"min_ttl": "86400"})
        assert never.status_code == 503
    assert error(never)["type"] == "token_unavailable"
    assert "at most" in str(error(never)["message"])
    assert live.refreshes(A) == []
    # a min_ttl one fresh token meets for a while: one refresh, then the cooldown answers
    statuses = []
    for _ in range(280):
        reply = await live.client.get(f"/v1/tokens/{A}", params={"min_ttl": "3500"})
        statuses.append(reply.status_code)
        await live.clock.advance(1)
    # the consent's token served ~98 s, one refresh ~98 s more, then the 5-minute cooldown
    assert len(live.refreshes(A)) == 1
    assert statuses.count(503) > 60 and statuses.count(200) > 150
    cooled = await live.client.get(f"/v1/tokens/{A}", params={"min_ttl": "3590"})
    assert cooled.status_code == 503 and int(cooled.headers["retry-after"]) >= 1
    assert error(cooled)["retry_after"] == int(cooled.headers["retry-after"])
    # health names the peer whose demand is refused; the metric counts it
    health = (await live.client.get("/v1/health")).json()
    assert health["status"] == "degraded"
    assert any("on-demand refreshes refused for peer uid" in r for r in health["reasons"])
    metrics = (await live.client.get("/metrics")).text
    assert metric(metrics, "haasd_on_demand_refused_total", reason="impossible_min_ttl") == 50
    assert metric(metrics, "haasd_on_demand_refused_total", reason="cooldown") > 60
    # meanwhile the other human stays fresh on the schedule: past its due time, a request
    # for a long-lived token joins the scheduled refresh (it costs no on-demand share)
    await live.clock.advance(3000)
    other = await live.client.get(f"/v1/tokens/{B}", params={"min_ttl": "3000"})
    assert other.status_code == 200 and other.json()["expires_in"] > 600
    assert len(live.refreshes(B)) >= 1
    # a minute after the last refusal, health is ok again
    assert (await live.client.get("/v1/health")).json()["status"] == "ok"


async def test_a_request_that_cannot_be_answered_in_time_is_answered_at_once(
    live: Running,
) -> None:
    """HaaS asked for 300 s of quiet: a token request that needs a refresh gets 503 with
    retry_after now, not a hang; a token still valid is served as ever."""
    live.sim.fail_next(1, status=429, headers={"Retry-After": "300"})
    refreshed = await live.client.post(f"/v1/humans/{B}/refresh")
    assert (refreshed.status_code, error(refreshed)["type"]) == (502, "refresh_failed")
    again = await live.client.post(f"/v1/humans/{B}/refresh")
    assert again.status_code == 503 and int(again.headers["retry-after"]) >= 250
    await live.clock.advance(60)
    late = await live.client.get(f"/v1/tokens/{A}", params={"min_ttl": "3560", "wait": "20"})
    assert late.status_code == 503
    assert int(late.headers["retry-after"]) >= 200  # the server's word, not a timeout
    assert "wait" in str(error(late)["message"])
    assert (await live.client.get(f"/v1/tokens/{A}")).status_code == 200


async def test_wait_must_be_a_number_and_is_capped(live: Running) -> None:
    bad = await live.client.get(f"/v1/tokens/{A}", params={"wait": "soon"})
    assert (bad.status_code, error(bad)["type"]) == (400, "invalid_request")
    assert (await live.client.get(f"/v1/tokens/{A}", params={"wait": "999"})).status_code == 200


async def test_a_token_about_to_die_is_never_served(live: Running) -> None:
    live.sim.flaky(1.0)  # every refresh fails from now on
    grant = live.daemon.refresher.grant(A)
    assert grant is not None
    await live.clock.advance_to(grant.access_expires_at - 1.5)
    reply = await live.client.get(f"/v1/tokens/{A}", params={"wait": "1"})
    assert reply.status_code == 503
    assert "access_token" not in reply.text


async def test_an_odd_scope_in_a_refresh_answer_keeps_the_rotation_and_the_daemon(
    live: Running,
) -> None:
    before = live.daemon.refresher.grant(A)
    assert before is not None
    live.sim.malformed_next(1, kind="odd_scope", after_processing=True)
    refreshed = await live.client.post(f"/v1/humans/{A}/refresh")
    assert refreshed.status_code == 200
    assert refreshed.json()["scope"] == " ".join(before.scope)  # the old scope, kept
    stored = await live.daemon.store.get_grant(A)
    assert stored.refresh_token != before.refresh_token  # the rotation is on disk
    served = await live.client.get(f"/v1/tokens/{A}")
    assert live.sim.validate_access_token(served.json()["access_token"]) == A
    await live.clock.advance(3600)  # the next refresh spends the new refresh token
    again = await live.client.get(f"/v1/tokens/{A}")
    assert again.status_code == 200
    assert again.json()["access_token"] != served.json()["access_token"]
    assert live.daemon.refresher.grant(A) is not None
    assert (await live.client.get("/v1/health")).json()["status"] == "ok"


async def test_after_a_reload_consents_and_refreshes_use_the_new_policy(live: Running) -> None:
    config = live.daemon.config
    path = Path(config.source)
    path.write_text(path.read_text() + '\n[refresh]\nrefresh_token_lifetime = "10d"\n')
    assert live.daemon.reload(path, {})
    started = await live.client.post("/v1/consents", json={"human_id": "usr_new_3"})
    assert started.status_code == 201
    live.sim.add_human("usr_new_3")
    callback = await live.sim.visit(started.json()["authorization_url"])
    assert callback is not None
    finished = await live.client.post("/v1/consents/callback", json={"callback_url": callback})
    assert finished.status_code == 201
    grant = live.daemon.refresher.grant("usr_new_3")
    assert grant is not None
    assert grant.refresh_expires_at - grant.consented_at == pytest.approx(10 * 86400)
    assert live.daemon.refresher.policy.refresh_token_lifetime == 10 * 86400


async def test_served_times_reach_the_store_within_seconds(live: Running) -> None:
    assert (await live.client.get(f"/v1/tokens/{A}")).status_code == 200
    served_at = live.clock.time()

    def on_disk() -> float | None:  # what a daemon restarted after a crash would read
        with closing(sqlite3.connect(live.daemon.config.store.path)) as db:
            row = db.execute("SELECT last_served_at FROM grants WHERE human_id = ?", (A,))
            value = row.fetchone()[0]
        return None if value is None else float(value)

    assert on_disk() is None
    with anyio.fail_after(15):
        while on_disk() is None:  # noqa: ASYNC110 - the daemon's own timer writes it
            await anyio.sleep(0.2)
    assert on_disk() == pytest.approx(served_at)


async def test_a_peer_gets_no_token_wider_than_its_rule(short_dir: Path) -> None:
    """A status:read rule never hands out a token that can dispatch tasks."""
    clock = ManualClock(start=time.time())
    sim = simulator(clock)
    rules = '[[access]]\nuid = 0\nhumans = ["usr_*"]\nscopes = ["status:read"]\n'
    async with sim.running():
        config_path = write_config(short_dir, sim.token_url, extra=rules)
        await seed_grant(short_dir, sim, "usr_wide_1")  # tasks:dispatch status:read
        key = Key.from_text((short_dir / "store.key").read_text())
        answer = parse_token_response(await sim.consent("usr_narrow_2", "status:read"))
        async with await Store.open(short_dir / "haasd.db", Sealer(key)) as store:
            await store.put_grant(new_grant(answer, "test", clock.time(), Policy(), Random(1)))
        async with daemon_at(config_path, clock) as (_, client):
            wide = await client.get("/v1/tokens/usr_wide_1")
            narrow = await client.get("/v1/tokens/usr_narrow_2")
    assert (wide.status_code, error(wide)["type"]) == (403, "insufficient_scope")
    assert error(wide)["scopes"] == ["tasks:dispatch"]
    assert "access_token" not in wide.text
    assert narrow.status_code == 200 and narrow.json()["scope"] == "status:read"
