from __future__ import annotations

import anyio

from haasd.events import Event, EventBus


def ev(kind: str, human: str = "usr_a", at: float = 0.0) -> Event:
    return Event(kind, human, at, {"reason": "x"})


async def test_subscribers_get_events_in_order_and_filtered() -> None:
    bus = EventBus()
    with (
        bus.subscribe() as everything,
        bus.subscribe(accepts=lambda e: e.human_id == "usr_b") as only_b,
    ):
        bus.publish(ev("token.refreshed", "usr_a"))
        bus.publish(ev("refresh.failed", "usr_b"))
        assert (await everything.get()).type == "token.refreshed"
        assert (await everything.get()).type == "refresh.failed"
        got = await only_b.get()
        assert (got.type, got.human_id) == ("refresh.failed", "usr_b")
        assert only_b.get_nowait() is None
        assert bus.subscriber_count == 2
    assert bus.subscriber_count == 0
    assert bus.published["token.refreshed"] == 1


async def test_slow_reader_gets_a_lost_notice_and_publishing_never_blocks() -> None:
    bus = EventBus()
    with bus.subscribe(maxsize=3) as slow:
        for i in range(10):
            bus.publish(ev("token.refreshed", f"usr_{i}", at=float(i)))
        lost = await slow.get()
        assert lost.type == "lost" and lost.details == {"count": 7}
        assert [(await slow.get()).human_id for _ in range(3)] == ["usr_7", "usr_8", "usr_9"]


async def test_reader_waits_for_the_next_event() -> None:
    bus = EventBus()
    with bus.subscribe() as sub:
        async with anyio.create_task_group() as tg:
            received: list[str] = []

            async def reader() -> None:
                async for event in sub:
                    received.append(event.type)
                    return

            tg.start_soon(reader)
            await anyio.wait_all_tasks_blocked()
            bus.publish(ev("grant.reconsent_due"))
    assert received == ["grant.reconsent_due"]


def test_event_json_has_type_human_and_rfc3339_time() -> None:
    assert ev("grant.needs_reconsent", at=0.0).to_json() == {
        "type": "grant.needs_reconsent",
        "human_id": "usr_a",
        "at": "1970-01-01T00:00:00Z",
        "reason": "x",
    }
