"""Serving while the daemon starts (haasd.server.starting): a token whose stored row has
the time asked for is answered before every grant is loaded; everything else waits for
the start, and is then answered as usual — never from a half-loaded memory."""

from __future__ import annotations

from dataclasses import replace

import anyio
from support import MARIA, NOW, FakeService, RawClient, Reply, get, make_grant, serving

from haasd.errors import StoreError
from haasd.secret import Secret
from haasd.server import Limits

SHORT = "usr_short_1"
STALE = "usr_stale_7"


def loading(*extra: str) -> FakeService:
    grants = [make_grant(), make_grant(SHORT, token="short-lived", ttl=30)]
    grants += [make_grant(h, token=f"tok-{h}") for h in extra]
    service = FakeService(grants)
    service.loading = True
    return service


async def test_a_fresh_token_is_served_from_its_row_before_the_start() -> None:
    service = loading()
    async with serving(service, starting=True) as s:
        reply = await get(s.path, f"/v1/tokens/{MARIA}")
        assert reply.status == 200
        assert reply.json()["access_token"] == make_grant().access_token.reveal()
        assert service.peeked == [MARIA]
        assert service.served == [(MARIA, NOW)], "counted as served, as any token is"
        missing = await get(s.path, f"/v1/tokens/{MARIA}?scope=tasks:dispatch%20profile:read")
        assert (missing.status, missing.error_type) == (403, "insufficient_scope")


async def asked_before_the_start(service: FakeService, *targets: str) -> dict[str, Reply]:
    """Ask for every target at once while the daemon starts; check that none is answered
    before the start; then let it start and give back the answers."""
    answers: dict[str, Reply] = {}
    async with serving(service, starting=True) as s:

        async def ask(target: str) -> None:
            answers[target] = await get(s.path, target)

        async with anyio.create_task_group() as tg:
            for target in targets:
                tg.start_soon(ask, target)
            await anyio.sleep(0.3)
            assert answers == {}, "nothing answered from a half-loaded memory"
            assert service.ensured == [], "no refresh before the start"
            service.loading = False
            s.server.started()
        answers["after"] = await get(s.path, "/v1/humans")  # and nothing waits any more
    return answers


async def test_a_token_that_needs_a_refresh_waits_for_the_start() -> None:
    service = loading()
    service.outcome[SHORT] = replace(
        make_grant(SHORT), access_token=Secret("refreshed"), access_expires_at=NOW + 3600
    )
    target = f"/v1/tokens/{SHORT}?min_ttl=300"
    answer = (await asked_before_the_start(service, target))[target]
    assert answer.status == 200
    assert answer.json()["access_token"] == "refreshed"
    assert service.ensured == [(SHORT, 300.0)]


async def test_a_store_that_cannot_answer_now_makes_the_token_wait_for_the_start() -> None:
    service = loading()
    service.outcome[f"peek {MARIA}"] = StoreError("store x: read failed: the database is gone")
    target = f"/v1/tokens/{MARIA}"
    answer = (await asked_before_the_start(service, target))[target]
    assert (answer.status, service.peeked) == (200, [MARIA]), "from memory, once loaded"


async def test_unknown_humans_and_other_routes_wait_and_are_answered_as_usual() -> None:
    service = loading(STALE)
    targets = ["/v1/tokens/usr_nobody_1", f"/v1/humans/{MARIA}", "/v1/humans", "/v1/health"]
    answers = await asked_before_the_start(service, *targets)
    after = answers["after"]
    assert answers["/v1/tokens/usr_nobody_1"].status == 404
    assert answers[f"/v1/humans/{MARIA}"].json()["human_id"] == MARIA
    humans = [row["human_id"] for row in answers["/v1/humans"].json()["humans"]]
    assert humans == [MARIA, SHORT, STALE] == [row["human_id"] for row in after.json()["humans"]]
    assert answers["/v1/health"].status == 200


async def test_a_start_that_takes_longer_than_the_wait_asked_is_a_503() -> None:
    service = loading()
    async with serving(service, starting=True, limits=Limits(handler_timeout=0.6)) as s:
        with anyio.fail_after(5):
            token = await get(s.path, f"/v1/tokens/{SHORT}?min_ttl=300&wait=0")
            status = await get(s.path, f"/v1/humans/{MARIA}")
    assert (token.status, token.headers["retry-after"]) == (503, "1")
    assert "loading its grants" in token.json()["error"]["message"]
    assert (status.status, status.headers["retry-after"]) == (503, "1")


async def test_the_event_stream_opens_at_once() -> None:
    async with serving(loading(), starting=True) as s, RawClient.connect(s.path) as client:
        await client.send(b"GET /v1/events HTTP/1.1\r\nHost: haasd\r\n\r\n")
        with anyio.fail_after(2):
            head = await client.stream.receive()
    assert head.startswith(b"HTTP/1.1 200 OK") and b"text/event-stream" in head


async def test_a_server_not_starting_never_peeks() -> None:
    service = FakeService([make_grant()])
    async with serving(service) as s:
        assert (await get(s.path, "/v1/tokens/usr_nobody_1")).status == 404
        assert (await get(s.path, f"/v1/tokens/{MARIA}")).status == 200
    assert service.peeked == []
