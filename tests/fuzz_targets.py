"""The fuzz targets: bytes in, an AssertionError (or any exception) out if a property
breaks. bench/fuzz.py runs them under atheris; tests/test_fuzz_corpus.py replays the
corpus it kept (tests/fuzz_corpus/<target>/) through the same functions, without it.

``http``: the socket server's request path in this process, without a socket — bytes
(the first byte sets the size of the reads they arrive in) into
:class:`~haasd.server.http.HttpConnection` in front of the real router, over an engine
of one grant. Every answer must be valid HTTP/1.1 (read by h11), none a 500 (a handler
that failed), and the connection must end once the client's bytes do.

``token_answer``: a reply of the token endpoint — a status, headers and a body, packed as
:func:`unpack_reply` reads them — through :func:`haasd.replies.interpret`: it must
always give checked tokens or an AuthError, show no secret of the request in a message,
and never drop a well-formed refresh token a 2xx carried.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Mapping
from typing import Final

import anyio
import anyio.abc
from hostile import answers
from support import FakeService, make_grant

from haasd.errors import AuthError
from haasd.replies import Asked, interpret
from haasd.server import Limits, Peer
from haasd.server.http import HttpConnection, json_response
from haasd.server.routes import Router
from haasd.tokens import HUMAN_ID_RE, MAX_LIFETIME, MAX_TOKEN_LENGTH, TokenResponse

__all__ = ["TARGETS", "check_interpretation", "http", "token_answer", "unpack_reply"]

# --- http ---------------------------------------------------------------------------------

#: one event loop for every input, made at the first (a loop per input costs more than
#: the input)
_LOOPS: list[asyncio.AbstractEventLoop] = []
_SMALL: Final = Limits(max_head=2048, max_headers=16, max_body=1024)


class _Wire(anyio.abc.ByteStream):
    """A client that sends ``chunks``, then closes its side, and reads everything; it
    leaves an event stream once its head has come (a stream lasts by design)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks
        self.out = bytearray()
        #: set once an event stream's head has come: the client then leaves
        self.streaming = anyio.Event()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await anyio.lowlevel.checkpoint()
        if not self._chunks:
            raise anyio.EndOfStream
        return self._chunks.pop(0)

    async def send(self, item: bytes) -> None:
        await anyio.lowlevel.checkpoint()
        if self.streaming.is_set():
            raise anyio.BrokenResourceError
        self.out += item
        if b"text/event-stream" in self.out:
            self.streaming.set()

    async def send_eof(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()


def _router() -> Router:
    service = FakeService([make_grant()])
    return Router(
        service,
        (),  # the default rules: this uid is admin
        daemon_uid=os.geteuid(),
        limits=_SMALL,
        human_id_pattern=HUMAN_ID_RE,
        metrics=lambda: json_response(200, {}),
    )


async def _serve(chunks: list[bytes]) -> bytes:
    context = _router().connect(Peer(uid=os.geteuid(), gid=os.getegid(), pid=os.getpid()))
    wire = _Wire(chunks)

    async def leave_a_stream(scope: anyio.CancelScope) -> None:
        await wire.streaming.wait()
        scope.cancel()

    with anyio.fail_after(5):  # no hang: the client's bytes end, so must the connection
        async with anyio.create_task_group() as tg:
            tg.start_soon(leave_a_stream, tg.cancel_scope)
            await HttpConnection(wire, context.handle, _SMALL).run()
            tg.cancel_scope.cancel()
    context.close()
    return bytes(wire.out)


def http(data: bytes) -> None:
    """One connection's bytes through the request path; see the module's docstring."""
    if not data:
        return
    size, wire = 1 + data[0] * 4, data[1:]
    chunks = [wire[i : i + size] for i in range(0, len(wire), size)]
    if not _LOOPS:
        _LOOPS.append(asyncio.new_event_loop())
    out = _LOOPS[0].run_until_complete(_serve(chunks))
    methods = [b"HEAD"] if b"HEAD" in wire else []
    statuses = [a.status for a in answers(out, methods)]
    assert 500 not in statuses, f"a handler failed on {wire[:300]!r}"


# --- token_answer -------------------------------------------------------------------------

CLIENT_SECRET: Final = "fuzz-client-secret-7f3a"
SENT_REFRESH: Final = "haas_rt_fuzz_sent_refresh_token_91c2"
_STATUSES: Final = (200, 200, 200, 201, 204, 301, 400, 401, 403, 408, 429, 500, 502, 503, 504)


def unpack_reply(data: bytes) -> tuple[int, dict[str, str], bytes, Asked]:
    """Fuzz bytes as a reply: byte 0 the status (from a table, or 100-599), byte 1 what
    was asked, then ``name: value`` header lines up to a blank line, then the body."""
    first = data[0] if data else 0
    status = _STATUSES[first] if first < len(_STATUSES) else 100 + first * 2
    kind = data[1] % 4 if len(data) > 1 else 0
    head, _, body = data[2:].partition(b"\n\n")
    headers: dict[str, str] = {}
    for line in head.decode("latin-1").split("\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip()] = value.strip()
    return status, headers, body, asked_by(kind)


def asked_by(kind: int) -> Asked:
    """0: a refresh; 1: an exchange naming the human; 2: one naming none; 3: a revocation."""
    hidden = (SENT_REFRESH, CLIENT_SECRET)
    if kind == 0:
        return Asked("refresh", human_id="usr_maria_42", scope=("tasks:dispatch",), hidden=hidden)
    if kind == 1:
        return Asked("exchange", human_id="usr_maria_42", scope=("status:read",), hidden=hidden)
    if kind == 2:
        return Asked("exchange", hidden=hidden)
    return Asked("revoke", hidden=hidden)


def token_answer(data: bytes) -> None:
    status, headers, body, asked = unpack_reply(data)
    check_interpretation(status, headers, body, asked)


def check_interpretation(
    status: int, headers: Mapping[str, str], body: bytes | None, asked: Asked
) -> None:
    """The properties of any reply's meaning (see the module's docstring)."""
    meaning = interpret(status, headers, body, asked, 1_800_000_000.0)
    result = meaning.result
    assert meaning.block_for is None or meaning.block_for >= 0
    if isinstance(result, AuthError):
        for secret in asked.hidden:
            assert secret not in str(result), "a secret of the request in a message"
        assert not (200 <= status < 300) or result.error_type in (
            "malformed_response",
            "unnamed_human",
        )
    elif isinstance(result, TokenResponse):
        assert 200 <= status < 300 and asked.kind != "revoke"
        _check_tokens(result, asked)
    else:  # None: a revocation the server took
        assert asked.kind == "revoke" and 200 <= status < 300
    if 200 <= status < 300 and asked.kind != "revoke":
        _check_kept(_issued_refresh(body), result)


def _check_tokens(tokens: TokenResponse, asked: Asked) -> None:
    access = tokens.access_token.reveal()
    assert 0 < len(access) <= MAX_TOKEN_LENGTH and access.isascii() and access.isprintable()
    assert " " not in access
    assert 0 <= tokens.expires_in <= MAX_LIFETIME
    assert all(s and " " not in s for s in tokens.scope)
    if asked.kind == "refresh":
        assert tokens.human_id == asked.human_id
    else:
        assert HUMAN_ID_RE.fullmatch(tokens.human_id)


def _issued_refresh(body: bytes | None) -> str | None:
    """The answer's refresh token if it is one haasd must keep: a string of RFC 6749's
    VSCHAR (printable ASCII and space, A.17), at most MAX_TOKEN_LENGTH long."""
    try:
        document = json.loads(body) if body is not None else None
    except (ValueError, RecursionError):
        return None
    value = document.get("refresh_token") if isinstance(document, dict) else None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TOKEN_LENGTH:
        return None
    return value if all(0x20 <= ord(c) <= 0x7E for c in value) else None


def _check_kept(issued: str | None, result: TokenResponse | AuthError | None) -> None:
    """A well-formed refresh token in a 2xx is kept: in the tokens, or in the error."""
    if issued is None:
        return
    if isinstance(result, TokenResponse):
        kept = result.refresh_token
    else:
        kept = getattr(result, "issued_refresh_token", None)
    assert kept is not None and kept.reveal() == issued, "a rotated refresh token was dropped"


TARGETS: Final[dict[str, Callable[[bytes], None]]] = {"http": http, "token_answer": token_answer}
