"""What the generated hostile-input tests share: their hypothesis settings, a raw exchange
over a real Unix socket, an independent HTTP/1.1 reading of what came back (h11, not the
httptools the server parses with), and a snapshot of a store's rows.

Profiles: the default runs few examples, derandomized, so that a CI run is the same run
every time; ``HYPOTHESIS_PROFILE=long`` runs :data:`LONG_FACTOR` times as many, from a
random seed (pytest's ``--hypothesis-seed=N`` fixes it), for a bench run.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import h11
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

#: how many times the default's examples the ``long`` profile runs
LONG_FACTOR: Final = 50
PROFILE: Final = os.environ.get("HYPOTHESIS_PROFILE", "default")
if PROFILE not in ("default", "long"):
    raise RuntimeError(f"HYPOTHESIS_PROFILE must be 'default' or 'long', not {PROFILE!r}")
#: a whole exchange (send, every answer, the close) must end within this: no hang
EXCHANGE_DEADLINE: Final = 10.0


def profile(examples: int) -> settings:
    """The settings of a property run with ``examples`` examples by default."""
    long = PROFILE == "long"
    return settings(
        max_examples=examples * LONG_FACTOR if long else examples,
        derandomize=not long,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


#: characters beyond Latin-1 that text handling trips on: separators, a BOM, a
#: right-to-left override, a combining mark, one outside the BMP
_EXOTIC: Final = ("\u2028", "\ufeff", "\u202e", "\u0301", "\U0001f600", "\u00e9", "\uffff")


def texts(min_size: int = 0, max_size: int = 20) -> st.SearchStrategy[str]:
    """Any short text: Latin-1 (control characters included) with some characters beyond.

    One draw of bytes per string, where ``st.text()`` draws every character and first
    builds a table of all of Unicode (seconds on a fresh machine, every CI run)."""
    latin = st.binary(min_size=min_size, max_size=max_size).map(lambda b: b.decode("latin-1"))
    exotic = st.tuples(latin, st.sampled_from(_EXOTIC)).map(lambda t: t[0] + t[1])
    return st.one_of(latin, latin, exotic)


# --- one exchange on the socket -----------------------------------------------------------


@dataclass(frozen=True)
class Exchange:
    """What came back for some bytes sent: every byte, and whether the server closed."""

    data: bytes
    closed: bool
    seconds: float


def exchange(path: str, pieces: Sequence[bytes], *, half_close: bool = True) -> Exchange:
    """Send ``pieces`` one write each, half-close, and read until the server closes (or an
    event stream's head has come, which stays open by design)."""
    started = time.monotonic()
    with closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as sock:
        sock.settimeout(EXCHANGE_DEADLINE)
        sock.connect(path)
        try:
            for piece in pieces:
                sock.sendall(piece)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed early (a refusal): what it said is still readable
        data, closed = _read_to_close(sock, started)
    return Exchange(data, closed, time.monotonic() - started)


def _read_to_close(sock: socket.socket, started: float) -> tuple[bytes, bool]:
    data = b""
    while time.monotonic() - started < EXCHANGE_DEADLINE:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data, True
        except TimeoutError:
            break
        if not chunk:
            return data, True
        data += chunk
        if b"text/event-stream" in data and b"\r\n\r\n" in data:
            return data, False  # a stream: its head is the answer, it lasts by design
    return data, False


# --- reading the answers ------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


class BadAnswer(AssertionError):
    """The bytes that came back are not a sequence of valid HTTP/1.1 responses."""


def answers(data: bytes, methods: Sequence[bytes]) -> list[Answer]:
    """The responses in ``data``, read by h11 as a client that sent ``methods`` in order.

    A response to ``HEAD`` has no body; but a request the server could not read was no
    ``HEAD`` to it, and a body framed wrong may hold what the server took for further
    requests: each response is read as the request's method says, else as a ``GET`` (or
    a ``HEAD``, if one was sent), whichever lets every byte after it read as responses
    too. Raises :class:`BadAnswer` if no reading does."""
    options = [b"GET", b"HEAD"] if b"HEAD" in methods else [b"GET"]
    found = _from(data, methods, 0, options)
    if found is None:
        raise BadAnswer(f"not a sequence of HTTP/1.1 responses: {data[:600]!r}")
    return found


def _from(
    rest: bytes, methods: Sequence[bytes], index: int, options: Sequence[bytes]
) -> list[Answer] | None:
    if not rest:
        return []
    expected = methods[index] if index < len(methods) else b"GET"
    for method in dict.fromkeys([expected, *options]):
        try:
            answer, after = _one(rest, method)
        except (h11.ProtocolError, BadAnswer):
            continue
        if answer.headers.get(b"content-type", b"").startswith(b"text/event-stream"):
            return [answer]  # the stream goes on until the client leaves
        if answer.headers.get(b"connection", b"").lower() == b"close" and after:
            continue  # nothing may follow an answer that closes the connection
        tail = _from(after, methods, index + 1, options)
        if tail is not None:
            return [answer, *tail]
    return None


def _one(data: bytes, method: bytes) -> tuple[Answer, bytes]:
    """The first response in ``data`` and the bytes after it."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "haasd")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")  # what is there is all there is
    status, headers, body = 0, {}, b""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Response):
            status, headers = event.status_code, dict(event.headers)
            if headers.get(b"content-type", b"").startswith(b"text/event-stream"):
                return Answer(status, headers, b""), b""
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return Answer(status, headers, body), conn.trailing_data[0]
        elif isinstance(event, h11.InformationalResponse):
            continue
        else:  # NEED_DATA at the end of the bytes, or a close inside a response
            raise BadAnswer(f"a response cut short ({event!r})")


# --- the store's rows ---------------------------------------------------------------------


def store_rows(db: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every table's rows, sorted, but ``last_served_at`` (written later, in batches, for
    tokens served before: never by a refusal)."""
    uri = f"file:{db}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        out: dict[str, list[tuple[object, ...]]] = {}
        for table in tables:
            cursor = conn.execute(f"SELECT * FROM {table}")  # noqa: S608 - names from the schema
            names = [d[0] for d in cursor.description]
            rows = [
                tuple(v for n, v in zip(names, row, strict=True) if n != "last_served_at")
                for row in cursor
            ]
            out[table] = sorted(rows, key=repr)
    return out
