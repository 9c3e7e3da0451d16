"""Nothing a client sends crashes the server, blocks it, or holds up other clients."""

from __future__ import annotations

import anyio
import pytest
from support import MARIA, FakeService, RawClient, eventually, get, make_grant, serving

from haasd.clock import ManualClock
from haasd.server import Limits

SMALL = Limits(
    max_head=1024,
    max_headers=8,
    max_body=256,
    request_timeout=0.3,
    idle_timeout=0.3,
    write_timeout=0.3,
    max_connections=6,
    max_connections_per_uid=3,
)


async def rejected(path: str, data: bytes) -> tuple[int, str, bool]:
    """Send ``data``; the status and error type of the answer, and whether it then closed."""
    async with RawClient.connect(path) as client:
        await client.send(data)
        reply = await client.reply()
        return reply.status, reply.error_type, await client.closed()


async def still_serving(path: str) -> bool:
    return (await get(path, f"/v1/tokens/{MARIA}")).status == 200


async def test_an_oversized_head_is_431() -> None:
    data = b"GET /v1/health HTTP/1.1\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
    async with serving(limits=SMALL) as s:
        assert await rejected(s.path, data) == (431, "request_header_fields_too_large", True)
        assert await still_serving(s.path)


async def test_one_header_line_dribbled_past_the_limit_is_431() -> None:
    async with serving(limits=SMALL) as s, RawClient.connect(s.path) as client:
        await client.send(b"GET /v1/health HTTP/1.1\r\nX-Long: ")
        for _ in range(6):  # never a newline: httptools would buffer it all
            await client.send(b"b" * 300)
            await anyio.sleep(0.01)  # real time: each chunk reaches the server as a read
        assert (await client.reply()).status == 431
        assert await client.closed()


async def test_too_many_headers_is_431() -> None:
    headers = b"".join(b"X-%d: 1\r\n" % n for n in range(9))
    async with serving(limits=SMALL) as s:
        data = b"GET /v1/health HTTP/1.1\r\n" + headers + b"\r\n"
        assert await rejected(s.path, data) == (431, "request_header_fields_too_large", True)


async def test_an_overlong_target_is_414() -> None:
    async with serving(limits=SMALL) as s:
        data = b"GET /v1/tokens/" + b"a" * 1100 + b" HTTP/1.1\r\n\r\n"
        assert await rejected(s.path, data) == (414, "uri_too_long", True)


async def test_a_body_announced_too_large_is_413_before_it_is_sent() -> None:
    async with serving(limits=SMALL) as s:
        data = b"POST /v1/humans/usr_a/refresh HTTP/1.1\r\nContent-Length: 100000\r\n\r\n"
        assert await rejected(s.path, data) == (413, "payload_too_large", True)


async def test_a_chunked_body_growing_too_large_is_413() -> None:
    chunk = b"%x\r\n%s\r\n" % (200, b"z" * 200)
    async with serving(limits=SMALL) as s:
        data = b"POST /v1/health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2
        assert await rejected(s.path, data) == (413, "payload_too_large", True)


async def test_a_bad_content_length_is_400() -> None:
    async with serving(limits=SMALL) as s:
        data = b"POST /v1/health HTTP/1.1\r\nContent-Length: -5\r\n\r\n"
        assert await rejected(s.path, data) == (400, "invalid_request", True)


async def test_a_small_body_is_read_and_ignored() -> None:
    async with serving(limits=SMALL) as s, RawClient.connect(s.path) as client:
        await client.send(
            b"DELETE /v1/humans/usr_maria_42 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
        )
        assert (await client.reply()).status == 204
        assert (await client.request("GET", "/v1/health")).status == 200


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(40)) + b"\r\n\r\n",
        b"HELLO\r\n\r\n",
        b"GET /x y z HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\n\r\n",
    ],
)
async def test_garbage_is_400_and_the_server_keeps_serving(garbage: bytes) -> None:
    async with serving(limits=SMALL) as s:
        assert await rejected(s.path, garbage) == (400, "invalid_request", True)
        assert await still_serving(s.path)


async def test_an_upgrade_is_answered_then_the_connection_closes() -> None:
    data = b"GET /v1/health HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    async with serving(limits=SMALL) as s, RawClient.connect(s.path) as client:
        await client.send(data)
        assert (await client.reply()).status == 200
        assert await client.closed()


async def test_a_head_that_never_completes_is_closed_after_the_limit() -> None:
    clock = ManualClock()
    async with serving(limits=SMALL, clock=clock) as s, RawClient.connect(s.path) as client:
        await client.send(b"GET /v1/health HTTP/1.1\r\nHost: h\r\n")
        for _ in range(3):  # a byte now and then does not buy more time
            await clock.advance(0.05)
            await client.send(b"X")
        await clock.advance(SMALL.request_timeout - 0.16)
        assert s.server.connections == 1, "closed before the limit"
        await clock.advance(0.01 + 2 * SMALL.watchdog_tick)
        assert await client.closed()
        assert await still_serving(s.path)


async def test_an_idle_connection_is_closed_after_the_idle_limit() -> None:
    clock = ManualClock()
    async with serving(limits=SMALL, clock=clock) as s, RawClient.connect(s.path) as client:
        assert (await client.request("GET", "/v1/health")).status == 200
        await clock.advance(SMALL.idle_timeout - 0.01)
        assert s.server.connections == 1, "closed before the limit"
        await clock.advance(0.01 + 2 * SMALL.watchdog_tick)
        assert await client.closed()


async def test_blank_lines_do_not_keep_an_idle_connection_open() -> None:
    clock = ManualClock()
    async with serving(limits=SMALL, clock=clock) as s, RawClient.connect(s.path) as client:
        for _ in range(6):  # a blank line every 50 ms, up to the limit
            await client.send(b"\r\n")
            await clock.advance(0.05)
        await clock.advance(2 * SMALL.watchdog_tick)
        assert await client.closed()


async def test_connections_beyond_the_per_uid_cap_get_503() -> None:
    async with serving(limits=SMALL) as s:
        async with (
            RawClient.connect(s.path) as a,
            RawClient.connect(s.path) as b,
            RawClient.connect(s.path) as c,
            RawClient.connect(s.path) as extra,
        ):
            reply = await extra.reply()
            assert (reply.status, reply.error_type) == (503, "too_many_connections")
            assert reply.headers["connection"] == "close"
            assert await extra.closed()
            for client in (a, b, c):
                assert (await client.request("GET", "/v1/health")).status == 200
        await eventually(lambda: s.server.connections == 0)
        assert await still_serving(s.path)


async def test_connections_beyond_the_total_cap_get_503() -> None:
    limits = Limits(max_connections=2, max_connections_per_uid=10)
    async with (
        serving(limits=limits) as s,
        RawClient.connect(s.path) as a,
        RawClient.connect(s.path) as b,
    ):
        assert (await a.request("GET", "/v1/health")).status == 200
        assert (await b.request("GET", "/v1/health")).status == 200
        async with RawClient.connect(s.path) as extra:
            assert (await extra.reply()).status == 503


async def test_a_failing_handler_is_500_and_nothing_else_breaks() -> None:
    service = FakeService([make_grant()])
    service.health_error = RuntimeError("bug")
    async with serving(service, limits=SMALL) as s:
        async with RawClient.connect(s.path) as client:
            reply = await client.request("GET", "/v1/health")
            assert (reply.status, reply.error_type) == (500, "internal_error")
            assert await client.closed()
        assert await still_serving(s.path)


async def test_a_reader_that_stops_reading_is_dropped_without_stalling_others() -> None:
    request = f"GET /v1/tokens/{MARIA} HTTP/1.1\r\nHost: h\r\n\r\n".encode()
    async with serving(limits=SMALL) as s, RawClient.connect(s.path) as greedy:
        with anyio.move_on_after(2):
            try:
                while True:  # pipelined requests, answers never read: the server's writes block
                    await greedy.send(request * 200)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
        assert await still_serving(s.path)
        await eventually(lambda: s.server.connections == 0)


# --- HEAD ---------------------------------------------------------------------------------------


async def read_to_end(client: RawClient) -> bytes:
    data = b""
    with anyio.fail_after(5):
        try:
            while True:
                data += await client.stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return data


def split_head(data: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """A response's status line, its headers, and every byte after its head."""
    head, _, rest = data.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return status.encode(), {k.lower(): v for k, v in headers.items()}, rest


@pytest.mark.parametrize("target", ["/v1/health", f"/v1/humans/{MARIA}", "/v1/humans/usr_nobody"])
async def test_head_has_the_get_headers_and_no_body_and_the_next_request_is_answered(
    target: str,
) -> None:
    request = f"{{}} {target} HTTP/1.1\r\nHost: h\r\n\r\n"
    last = f"GET {target} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    async with serving(limits=SMALL) as s, RawClient.connect(s.path) as client:
        await client.send((request.format("HEAD") + request.format("GET") + last).encode())
        data = await read_to_end(client)
    head_status, head_headers, rest = split_head(data)
    get_status, get_headers, rest = split_head(rest)  # right after the HEAD's head
    length = int(get_headers["content-length"])
    body, rest = rest[:length], rest[length:]
    assert head_status == get_status
    assert head_headers == get_headers
    assert str(len(body)) == head_headers["content-length"] != "0"
    assert split_head(rest)[0] == get_status  # the pipelined GET after it, whole


async def test_head_of_the_event_stream_is_its_head_alone() -> None:
    async with serving(limits=SMALL) as s, RawClient.connect(s.path) as client:
        await client.send(b"HEAD /v1/events HTTP/1.1\r\nHost: h\r\n\r\n")
        data = await read_to_end(client)
    status, headers, rest = split_head(data)
    assert (status, headers["content-type"], rest) == (b"HTTP/1.1 200 OK", "text/event-stream", b"")
    assert s.service.events.subscriber_count == 0
