"""Strategies for what a hostile or broken client sends on the token socket: request
lines, methods, targets, headers, bodies (JSON for the POST routes), framing (length,
chunked, both, none, wrong), pipelining, truncation and the split into writes.

:func:`sessions` draws a :class:`Session`: the bytes of one connection as the writes that
carry them, and the method of each request in it (to read the answers by).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Final

from hostile import texts
from hypothesis import strategies as st

#: the human the daemon under test holds, one it may hold, one it never holds
HUMANS: Final = ("usr_maria_42", "usr_bob_7", "usr_nobody_1")
METHODS: Final = (b"GET", b"HEAD", b"POST", b"DELETE", b"PUT", b"OPTIONS", b"PATCH", b"TRACE")
SCOPES: Final = ("tasks:dispatch", "status:read", "tasks:read", "profile:read", "*", "")


@dataclass(frozen=True)
class Session:
    pieces: tuple[bytes, ...]
    methods: tuple[bytes, ...]

    @property
    def data(self) -> bytes:
        return b"".join(self.pieces)


# --- the parts of a request: each drawn well formed, or broken ----------------------------
# (bytes drawn whole and mapped onto an alphabet: one draw each, where a regex or text
# strategy draws every character, at a cost that shows at thousands of examples)


def _alphabet(chars: bytes) -> bytes:
    return bytes(chars[i % len(chars)] for i in range(256))


_LOWER: Final = _alphabet(b"abcdefghijklmnopqrstuvwxyz0123456789_")
_UPPER: Final = _alphabet(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TCHAR: Final = _alphabet(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+.^_`|~-"
)
_VCHAR: Final = _alphabet(bytes(range(0x20, 0x7F)))


def _over(chars: bytes, min_size: int, max_size: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=min_size, max_size=max_size).map(lambda b: b.translate(chars))


_known_humans = st.sampled_from([h.encode() for h in HUMANS])
humans = st.one_of(
    _known_humans,
    _over(_LOWER, 0, 70).map(lambda b: b"usr_" + b),
    st.binary(max_size=24),
    st.sampled_from([b"usr_%6Daria_42", b"..", b"usr_maria_42/", b"", b"%00", b"usr_*"]),
)
_query_values = st.one_of(
    st.integers(-(10**12), 10**12).map(lambda n: str(n).encode()),
    st.sampled_from([b"", b"nan", b"inf", b"1e9", b"0x10", b"%20", b"tasks:dispatch"]),
    _over(_VCHAR, 0, 20),
)
_query_pairs = st.lists(
    st.tuples(st.sampled_from([b"min_ttl", b"scope", b"wait", b"x", b""]), _query_values),
    max_size=3,
)
queries = st.one_of(
    st.just(b""),
    _query_pairs.map(lambda ps: b"?" + b"&".join(k + b"=" + v for k, v in ps)),
)
_good_paths = st.one_of(
    st.sampled_from(
        [b"/v1/health", b"/v1/humans", b"/metrics", b"/v1/consents", b"/v1/events", b"/"]
    ),
    _known_humans.map(lambda h: b"/v1/tokens/" + h),
    _known_humans.map(lambda h: b"/v1/humans/" + h),
    _known_humans.map(lambda h: b"/v1/humans/" + h + b"/refresh"),
)
_odd_paths = st.one_of(
    st.sampled_from([b"*", b"/v1/tokens/", b"/v1/humans/", b"http://haasd/v1/health", b""]),
    humans.map(lambda h: b"/v1/tokens/" + h),
    humans.map(lambda h: b"/v1/humans/" + h + b"/refresh"),
    st.binary(max_size=40).map(lambda b: b"/" + b),
    st.integers(1000, 20_000).map(lambda n: b"/v1/tokens/" + b"a" * n),
)
good_targets = st.tuples(_good_paths, queries).map(lambda pq: pq[0] + pq[1])
odd_targets = st.one_of(
    st.tuples(_odd_paths, queries).map(lambda pq: pq[0] + pq[1]),
    st.tuples(_good_paths, st.binary(max_size=30)).map(lambda pq: pq[0] + b"?" + pq[1]),
)
good_methods = st.sampled_from([b"GET"] * 6 + [b"HEAD", b"POST", b"POST", b"DELETE", b"PUT"])
odd_methods = st.one_of(
    st.sampled_from(METHODS), _over(_UPPER, 1, 12), st.binary(min_size=1, max_size=8)
)
good_versions = st.sampled_from([b"HTTP/1.1"] * 5 + [b"HTTP/1.0"])
odd_versions = st.one_of(
    st.sampled_from([b"HTTP/2.0", b"HTTP/1.1x", b"HTTP/9.9", b"http/1.1", b""]),
    st.binary(max_size=10),
)

# --- headers ------------------------------------------------------------------------------

_good_names = st.one_of(
    st.sampled_from([b"Host", b"Connection", b"Accept", b"User-Agent", b"Content-Type"]),
    _over(_TCHAR, 1, 20),
)
_good_values = st.one_of(
    st.sampled_from([b"haasd", b"close", b"keep-alive", b"application/json", b"*/*", b""]),
    _over(_VCHAR, 0, 40),
)
good_headers = st.lists(st.tuples(_good_names, _good_values), max_size=5)
_odd_header = st.one_of(
    st.tuples(
        st.sampled_from([b"Connection", b"Upgrade", b"Expect", b"Transfer-Encoding"]),
        st.sampled_from([b"Upgrade", b"websocket", b"h2c", b"100-continue", b"gzip", b"chunked"]),
    ),
    st.tuples(st.binary(max_size=12), st.binary(max_size=40)),
    st.tuples(_good_names, st.integers(1, 40_000).map(lambda n: b"v" * n)),
    st.tuples(_good_names, st.sampled_from([b" spaced ", b"a\x00b", b"a\rb", b"\xff\xfe"])),
)
odd_headers = st.tuples(good_headers, st.lists(_odd_header, min_size=1, max_size=3)).map(
    lambda gh: gh[0] + gh[1]
)

# --- bodies -------------------------------------------------------------------------------

_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    texts(max_size=16),
    st.sampled_from(SCOPES + HUMANS),
)
_any_json = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts(max_size=12), inner),
    max_leaves=12,
)
_start_fields = st.fixed_dictionaries(
    {},
    optional={
        "scopes": st.one_of(st.lists(st.sampled_from(SCOPES), max_size=4), texts(max_size=30)),
        "human_id": st.one_of(st.sampled_from(HUMANS), texts(max_size=20)),
        "redirect_uri": st.sampled_from(
            ["http://127.0.0.1:8765/callback", "http://127.0.0.1:9/callback", "https://x/y", ""]
        ),
        "extra": _any_json,
    },
)
_callback_fields = st.fixed_dictionaries(
    {},
    optional={
        "callback_url": st.one_of(
            st.just("http://127.0.0.1:8765/callback?state=s&code=c"), texts(max_size=60)
        ),
        "state": texts(max_size=30),
        "code": texts(max_size=30),
        "error": st.sampled_from(["access_denied", "server_error", "", "\x00"]),
        "error_description": texts(max_size=30),
    },
)
json_documents = st.one_of(_start_fields, _callback_fields, _any_json).map(
    lambda d: json.dumps(d).encode()
)


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    """A JSON body: well formed, cut short, with a repeated field, or not UTF-8."""
    body = draw(json_documents)
    how = draw(st.sampled_from(["whole", "whole", "cut", "repeat", "latin1", "deep"]))
    if how == "cut" and body:
        return body[: draw(st.integers(0, len(body) - 1))]
    if how == "repeat":
        return b'{"state": "a", "state": "b"}'
    if how == "latin1":
        return b'{"human_id": "\xe9"}'
    if how == "deep":
        depth = draw(st.integers(10, 5000))
        return b"[" * depth + b"]" * depth
    return body


bodies = st.one_of(st.just(b""), st.just(b""), st.just(b""), json_bodies(), st.binary(max_size=200))


@st.composite
def _framed(draw: st.DrawFn, body: bytes, broken: bool) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The framing headers and the bytes on the wire for ``body``."""
    ways = ["wrong", "both", "bad", "chunked-bad"] if broken else ["length", "chunked"]
    how = "none" if not body and not broken else draw(st.sampled_from(ways))
    if how == "length":
        return [(b"Content-Length", b"%d" % len(body))], body
    if how == "wrong":
        n = len(body) + draw(st.integers(-len(body) - 5, 5))
        return [(b"Content-Length", b"%d" % n)], body
    if how == "bad":
        value = draw(st.sampled_from([b"-1", b"1e3", b"0x10", b"", b"99999999999999999999"]))
        return [(b"Content-Length", value), (b"Content-Length", b"%d" % len(body))], body
    if how == "none":
        return [], body
    framing = [(b"Transfer-Encoding", b"chunked")]
    if how == "both":
        framing.append((b"Content-Length", b"%d" % len(body)))
    return framing, draw(_chunked(body, how == "chunked-bad"))


@st.composite
def _chunked(draw: st.DrawFn, body: bytes, broken: bool) -> bytes:
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
    parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if b > a]
    sizes = [b"%x" % len(p) for p in parts]
    endings = [b"0\r\n\r\n", b"0\r\nX-Trailer: 1\r\n\r\n", b"0;ext=1\r\n\r\n"]
    if broken:
        endings = [b"", b"zz\r\n", b"0\r\n", b"-1\r\n\r\n", b"FFFFFFFFFFFFFFFFFF\r\n"]
        if sizes:
            sizes[0] = draw(st.sampled_from([b"%x" % (len(parts[0]) + 1), b"", b"g", b" 1"]))
    out = b"".join(z + b"\r\n" + p + b"\r\n" for z, p in zip(sizes, parts, strict=True))
    return out + draw(st.sampled_from(endings))


# --- requests and sessions ----------------------------------------------------------------

#: what a broken request breaks (one part; the others stay well formed)
PARTS: Final = ("method", "target", "version", "headers", "framing", "newline")


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """One request's bytes and its method: well formed, or with one part broken."""
    broken = draw(st.sampled_from([None, None, *PARTS]))
    method = draw(odd_methods if broken == "method" else good_methods)
    target = draw(odd_targets if broken == "target" else good_targets)
    if method == b"DELETE":  # keep the human whose tokens the other requests ask for
        target = target.replace(b"usr_maria_42", b"usr_nobody_1")
    body = draw(json_bodies() if method == b"POST" else bodies)
    framing, wire = draw(_framed(body, broken == "framing"))
    version = draw(odd_versions if broken == "version" else good_versions)
    head = [(b"Host", b"haasd"), *draw(odd_headers if broken == "headers" else good_headers)]
    head += framing
    random.Random(draw(st.integers(0, 1 << 16))).shuffle(head)  # one draw: any order
    newline = draw(st.sampled_from([b"\n", b"\r", b"\r\r\n"])) if broken == "newline" else b"\r\n"
    lines = [method + b" " + target + b" " + version]
    lines += [name + b": " + value for name, value in head]
    return newline.join(lines) + newline + newline + wire, method


@st.composite
def sessions(draw: st.DrawFn) -> Session:
    """1-3 requests pipelined, maybe cut short or followed by garbage, sent in 1-4 writes."""
    drawn = draw(st.lists(requests(), min_size=1, max_size=3))
    data = b"".join(r for r, _ in drawn)
    end = draw(st.sampled_from(["whole", "whole", "cut", "garbage"]))
    if end == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif end == "garbage":
        data += draw(st.binary(min_size=1, max_size=64))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=3))))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return Session(tuple(p for p in pieces if p), tuple(m for _, m in drawn))
