"""Quiet under floods: refusal and error lines are counted per peer, so thousands of
refusals write a handful of lines whose counts add up to every one of them."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs
from support import MARIA, RawClient, rule, serving

from haasd.clock import ManualClock
from haasd.server import Limits
from haasd.server.tally import Tally

FLOOD = 5000


class Lines:
    """A stand-in for a structlog logger that keeps what it was asked to write."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.lines.append((level, event, fields))

    def counts(self, event: str = "access.denied") -> list[int]:
        return [fields["count"] for _, name, fields in self.lines if name == event]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_first_refusal_is_written_at_once_and_repeats_as_one_count() -> None:
    clock, log = Clock(), Lines()
    tally = Tally(10.0, clock=clock)
    for n in range(5):
        tally.note(log, "warning", "access.denied", 1001, human_id=f"usr_{n}")
    assert (log.lines) == [
        ("warning", "access.denied", {"human_id": "usr_0", "peer_uid": 1001, "count": 1})
    ]
    clock.now += 9.9
    tally.flush(clock.now)
    assert len(log.lines) == 1  # the window has not ended
    clock.now += 0.1
    tally.flush(clock.now)
    assert log.lines[1] == (
        "warning",
        "access.denied",
        {"human_id": "usr_4", "peer_uid": 1001, "count": 4},  # the latest's details
    )
    assert len(tally) == 0
    tally.note(log, "warning", "access.denied", 1001)
    assert log.counts() == [1, 4, 1]


def test_peers_and_kinds_are_counted_apart() -> None:
    clock, log = Clock(), Lines()
    tally = Tally(10.0, clock=clock)
    for uid in (1001, 1002, 1001, 1002, 1001):
        tally.note(log, "warning", "access.denied", uid)
        tally.note(log, "warning", "connection refused", uid)
    tally.flush()
    totals: dict[tuple[str, int], int] = {}
    for _, event, fields in log.lines:
        key = (event, fields["peer_uid"])
        totals[key] = totals.get(key, 0) + fields["count"]
    assert totals == {
        ("access.denied", 1001): 3,
        ("access.denied", 1002): 2,
        ("connection refused", 1001): 3,
        ("connection refused", 1002): 2,
    }
    assert len(log.lines) == 8  # each: one line at once, one with the repeats


def test_a_repeat_after_its_window_starts_a_new_one_even_before_a_flush() -> None:
    clock, log = Clock(), Lines()
    tally = Tally(1.0, clock=clock)
    for _ in range(3):
        tally.note(log, "warning", "access.denied", 7)
    clock.now += 5
    tally.note(log, "warning", "access.denied", 7)
    assert log.counts() == [1, 2, 1]


def test_a_zero_window_writes_every_line() -> None:
    log = Lines()
    tally = Tally(0.0, clock=Clock())
    for _ in range(3):
        tally.note(log, "warning", "access.denied", 7)
    assert log.counts() == [1, 1, 1]


def test_many_peers_cannot_grow_it_beyond_its_bound() -> None:
    clock, log = Clock(), Lines()
    tally = Tally(10.0, max_entries=4, clock=clock)
    for uid in range(1000, 1100):
        tally.note(log, "warning", "access.denied", uid, peer_pid=uid + 1)
    assert len(tally) == 5  # four peers, and one entry for all the others
    tally.flush()
    assert sum(log.counts()) == 100
    others = [fields for _, _, fields in log.lines if fields["peer_uid"] == "other"]
    assert others[-1] == {"peer_uid": "other", "count": 95}  # 1 written at once + 95
    assert all("peer_pid" not in fields for fields in others)


def test_the_traceback_goes_with_the_first_line_only() -> None:
    log = Lines()
    tally = Tally(10.0, clock=Clock())
    for _ in range(3):
        tally.note(log, "error", "server.handler_failed", 7, exc_info=True)
    tally.flush()
    assert [fields.get("exc_info") for _, _, fields in log.lines] == [True, None]


# --- against the real server --------------------------------------------------------------


async def _flood(path: str, request: bytes, count: int, status: bytes) -> None:
    """Pipeline ``count`` requests on one connection and read every answer."""
    async with RawClient.connect(path) as client:

        async def send() -> None:
            for _ in range(count // 100):
                await client.send(request * 100)

        seen = 0
        tail = b""
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(send)
                while seen < count:
                    data = tail + await client.stream.receive()
                    seen += data.count(status)
                    tail = data[-len(status) :]  # a status line split across reads
                    seen -= tail.count(status)
            assert seen == count


@pytest.mark.usefixtures("debug_logs")
async def test_a_flood_of_forbidden_requests_writes_a_handful_of_lines() -> None:
    request = f"GET /v1/tokens/{MARIA} HTTP/1.1\r\nHost: h\r\n\r\n".encode()
    with capture_logs() as logs:
        async with serving(rules=[rule(humans=("usr_team_*",))]) as s:
            await _flood(s.path, request, FLOOD, b"HTTP/1.1 403 ")
    denied = [e for e in logs if e["event"] == "access.denied"]
    assert len(denied) <= 3
    assert sum(e["count"] for e in denied) == FLOOD
    assert denied[0]["count"] == 1  # the first one at once


@pytest.mark.usefixtures("debug_logs")
async def test_the_count_is_written_when_the_window_ends_while_serving() -> None:
    request = f"GET /v1/humans/{MARIA} HTTP/1.1\r\nHost: h\r\n\r\n".encode()
    limits = Limits(refusal_window=2.0)  # longer than a watchdog tick (1 s)
    clock = ManualClock()
    rules = [rule(humans=("usr_team_*",))]
    with capture_logs() as logs:
        async with serving(rules=rules, limits=limits, clock=clock) as s:
            await _flood(s.path, request, 1000, b"HTTP/1.1 403 ")
            await clock.advance(limits.refusal_window - 0.01)
            denied = [e["count"] for e in logs if e["event"] == "access.denied"]
            assert denied == [1], "the repeats wait for the end of the window"
            await clock.advance(0.01 + limits.watchdog_tick)
            denied = [e["count"] for e in logs if e["event"] == "access.denied"]
            assert denied == [1, 999], "written by the watchdog, while serving"


@pytest.mark.usefixtures("debug_logs")
async def test_many_malformed_requests_write_a_handful_of_lines() -> None:
    with capture_logs() as logs:
        async with serving() as s:
            for _ in range(200):
                async with RawClient.connect(s.path) as client:
                    await client.send(b"HELLO\r\n\r\n")
                    assert (await client.reply()).status == 400
    rejected = [e for e in logs if e["event"] == "request.rejected"]
    assert len(rejected) <= 2
    assert sum(e["count"] for e in rejected) == 200
    assert rejected[0]["status"] == 400
