"""Generated replies of the token endpoint, valid and broken, through what haasd makes of
them (:func:`haasd.replies.interpret`, and the token parser under it): always checked
tokens or a typed AuthError, never another exception; no secret of the request in a
message; a well-formed refresh token in a 2xx is never dropped (the server has rotated to
it). The properties are tests/fuzz_targets.py's, which the fuzzer checks too.
"""

from __future__ import annotations

import json
from email.utils import format_datetime

from fuzz_targets import SENT_REFRESH, asked_by, check_interpretation
from hostile import profile, texts
from hypothesis import example, given
from hypothesis import strategies as st

from haasd.errors import RateLimitedError
from haasd.replies import DEFAULT_RATE_LIMIT_BLOCK, Asked, interpret

_printable = st.binary(min_size=1, max_size=40).map(
    lambda b: b.translate(bytes(0x21 + i % 94 for i in range(256))).decode()
)
tokens = st.one_of(
    _printable.map(lambda s: "haas_at_" + s),
    st.sampled_from(["", " ", "a b", "é", "\x00", SENT_REFRESH, "x" * 5000]),
    st.integers(),
    st.none(),
    st.lists(st.just("a"), max_size=2),
)
seconds = st.one_of(
    st.integers(-(10**15), 10**15),
    st.sampled_from(["3599", " 60 ", "-1", "1e3", "", "NaN", True, None, 3600.5, 0]),
    st.floats(),
)
scopes = st.one_of(
    st.sampled_from(["tasks:dispatch status:read", "*", "", " ", 'a"b', "a\\b", "é"]),
    texts(max_size=30),
    st.lists(texts(max_size=5), max_size=3),
)
human_ids = st.one_of(
    st.sampled_from(["usr_maria_42", "usr_other_1", "USR_X", "", "usr_" + "a" * 80]),
    texts(max_size=20),
    st.integers(),
)
token_answers = st.fixed_dictionaries(
    {},
    optional={
        "access_token": tokens,
        "refresh_token": tokens,
        "token_type": st.sampled_from(["Bearer", "bearer", "BEARER", "mac", "", 1]),
        "expires_in": seconds,
        "refresh_token_expires_in": seconds,
        "scope": scopes,
        "human_id": human_ids,
    },
)
_codes = st.sampled_from(
    (
        *("invalid_grant", "invalid_client", "unauthorized_client", "invalid_request"),
        *("invalid_scope", "unsupported_grant_type", "temporarily_unavailable"),
        *("server_error", "rate_limit_exceeded", "x" * 100, "a b", "", SENT_REFRESH),
    )
)
error_answers = st.one_of(
    st.fixed_dictionaries(
        {"error": _codes}, optional={"error_description": texts(max_size=60) | tokens}
    ),
    st.fixed_dictionaries(
        {
            "error": st.fixed_dictionaries(
                {},
                optional={
                    "code": st.integers(),
                    "type": _codes,
                    "message": texts(max_size=40),
                    "retry_after": seconds,
                    "suggestion": texts(max_size=20),
                },
            )
        }
    ),
)
documents = st.one_of(token_answers, error_answers, st.lists(st.integers(), max_size=2))


@st.composite
def bodies(draw: st.DrawFn) -> bytes | None:
    how = draw(st.sampled_from(["json", "json", "json", "cut", "html", "bytes", "over"]))
    if how == "over":
        return None  # larger than the cap: the client never read it
    if how == "html":
        return b"<html><body>502 Bad Gateway</body></html>"
    if how == "bytes":
        return draw(st.binary(max_size=60))
    body = json.dumps(draw(documents)).encode()
    return body[: draw(st.integers(0, len(body)))] if how == "cut" else body


retry_afters = st.one_of(
    st.integers(-10, 10**12).map(str),
    st.datetimes().map(lambda d: format_datetime(d, usegmt=False)),
    st.sampled_from(["", "soon", "Wed, 21 Oct 20155555555555555555 07:28:00 GMT", "inf"]),
    texts(max_size=30),
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "Retry-After": retry_afters,
        "X-RateLimit-Limit": st.sampled_from(["300", "-1", "x", "1e400"]),
        "X-RateLimit-Remaining": st.sampled_from(["0", "299", "nan"]),
        "X-RateLimit-Reset": st.sampled_from(["1800000060", "0", "-5", "9" * 40]),
        "Content-Type": st.sampled_from(["application/json", "text/html", SENT_REFRESH]),
        "Location": st.sampled_from(["https://u:p@x.example/a?code=1", "::", ""]),
        "WWW-Authenticate": st.sampled_from(['Bearer error="invalid_token"', "Basic"]),
    },
)
statuses = st.one_of(
    st.sampled_from([200, 201, 204, 301, 302, 400, 401, 403, 408, 429, 500, 502, 503, 504]),
    st.integers(100, 599),
)


@profile(300)
@given(
    status=statuses,
    headers=headers,
    body=bodies(),
    kind=st.integers(0, 3),
)
@example(  # found by bench/fuzz.py: a year past datetime's range raised OverflowError
    status=429,
    headers={"Retry-After": "Wed, 21 Oct 20155555555555555555555555555 07:28:00 GMT"},
    body=b'{"error": {"code": 429, "type": "rate_limit_exceeded"}}',
    kind=0,
)
def test_every_reply_means_tokens_or_an_auth_error(
    status: int, headers: dict[str, str], body: bytes | None, kind: int
) -> None:
    check_interpretation(status, headers, body, asked_by(kind))


def test_a_retry_after_date_past_the_calendar_is_no_wait_the_429_still_counts() -> None:
    """A Retry-After whose year overflows a datetime raised OverflowError out of interpret,
    so a 429 was logged as a haasd defect instead of slowing the rate budget down."""
    late = {"Retry-After": "Wed, 21 Oct 201555555555555555555555 07:28:00 GMT"}
    asked = Asked("refresh", human_id="usr_maria_42")
    meaning = interpret(429, late, b"{}", asked, 1_800_000_000.0)
    assert isinstance(meaning.result, RateLimitedError)
    assert meaning.block_for == DEFAULT_RATE_LIMIT_BLOCK  # as if it named no wait
