"""The token endpoint's replies, read by the pure interpreter: status and body to outcome.

No HTTP here: :func:`haasd.replies.interpret` takes a status, headers and body bytes and
says what they mean; tests/test_authclient.py checks the same over a real exchange.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from haasd.errors import (
    AuthError,
    ClientAuthError,
    InvalidGrantError,
    RateLimitedError,
    RequestRejectedError,
    TokenResponseError,
    TransientAuthError,
    UnnamedHumanError,
)
from haasd.ratelimit import MAX_WAIT
from haasd.replies import (
    DEFAULT_RATE_LIMIT_BLOCK,
    Asked,
    Interpretation,
    RateLimitNote,
    interpret,
    outcome_label,
    rate_limit_note,
)
from haasd.tokens import TokenResponse

NOW = 1_800_000_000.0
HUMAN = "usr_maria_42"
SCOPE = ("tasks:dispatch", "status:read")
ACCESS = "haas_at_testAccessOne"
NEW_REFRESH = "haas_rt_testRefreshTwo"
CLIENT_SECRET = "client-secret-for-tests-only"
GRANT: dict[str, Any] = {
    "access_token": ACCESS,
    "token_type": "Bearer",
    "expires_in": 3600,
    "refresh_token": NEW_REFRESH,
    "scope": "tasks:dispatch status:read",
    "human_id": HUMAN,
}
REFRESH = Asked("refresh", human_id=HUMAN, scope=SCOPE, hidden=(CLIENT_SECRET,))
EXCHANGE = Asked("exchange", hidden=(CLIENT_SECRET,))
REVOKE = Asked("revoke", hidden=(CLIENT_SECRET,))


def body(value: object) -> bytes:
    return json.dumps(value).encode()


def oauth(error: str, description: str = "as you were told") -> bytes:
    """RFC 6749 §5.2's error shape."""
    return body({"error": error, "error_description": description})


def docs_shape(kind: str, retry_after: object = None) -> bytes:
    """The HaaS docs' error shape."""
    error: dict[str, object] = {"code": 429, "type": kind, "message": "no"}
    if retry_after is not None:
        error["retry_after"] = retry_after
    return body({"error": error})


def read(
    status: int,
    content: bytes | None,
    asked: Asked = REFRESH,
    headers: dict[str, str] | None = None,
) -> Interpretation:
    return interpret(status, headers or {}, content, asked, NOW)


def failure(
    status: int, content: bytes | None, asked: Asked = REFRESH, **headers: str
) -> AuthError:
    result = read(status, content, asked, {k.replace("_", "-"): v for k, v in headers.items()})
    assert isinstance(result.result, AuthError)
    return result.result


# --- the table: status and body shape to error, error_type, sent -----------------------------


@pytest.mark.parametrize(
    ("status", "content", "error", "error_type", "sent"),
    [
        (400, oauth("invalid_grant"), InvalidGrantError, "invalid_grant", None),
        (401, oauth("invalid_grant"), InvalidGrantError, "invalid_grant", None),
        (400, docs_shape("invalid_grant"), InvalidGrantError, "invalid_grant", None),
        (401, oauth("invalid_client"), ClientAuthError, "invalid_client", None),
        (400, oauth("unauthorized_client"), ClientAuthError, "unauthorized_client", None),
        (401, b"", ClientAuthError, "unauthorized", None),
        (400, oauth("invalid_request"), RequestRejectedError, "invalid_request", None),
        (400, oauth("invalid_scope"), RequestRejectedError, "invalid_scope", None),
        (404, b"<html>gone</html>", RequestRejectedError, "http_404", None),
        (400, oauth("<b>what?</b>"), RequestRejectedError, "unknown_error", None),
        (
            400,
            oauth("temporarily_unavailable"),
            TransientAuthError,
            "temporarily_unavailable",
            False,
        ),
        (
            503,
            oauth("temporarily_unavailable"),
            TransientAuthError,
            "temporarily_unavailable",
            False,
        ),
        (
            504,
            oauth("temporarily_unavailable"),
            TransientAuthError,
            "temporarily_unavailable",
            False,
        ),
        (408, b"", TransientAuthError, "timeout", False),
        (500, b"{}", TransientAuthError, "server_error", False),
        (503, b"", TransientAuthError, "server_error", False),
        (502, b"<html>bad gateway</html>", TransientAuthError, "server_error", True),
        (504, b"", TransientAuthError, "server_error", True),
        (500, oauth("invalid_grant"), TransientAuthError, "invalid_grant", False),
        (429, b"", RateLimitedError, "rate_limit_exceeded", False),
        (429, docs_shape("rate_limit_exceeded"), RateLimitedError, "rate_limit_exceeded", False),
        (403, docs_shape("rate_limit_exceeded"), RateLimitedError, "rate_limit_exceeded", False),
        (302, b"", TransientAuthError, "redirect", False),
        (101, b"", TransientAuthError, "http_101", True),
        (200, b"<html>hello</html>", TransientAuthError, "malformed_response", True),
        (200, None, TransientAuthError, "malformed_response", True),
        (200, body([GRANT]), TransientAuthError, "malformed_response", True),
        (200, body({**GRANT, "access_token": ""}), TransientAuthError, "malformed_response", True),
    ],
)
def test_each_reply_stands_for_one_typed_error(
    status: int,
    content: bytes | None,
    error: type[AuthError],
    error_type: str,
    sent: bool | None,
) -> None:
    caught = failure(status, content)
    assert type(caught) is error
    assert (caught.error_type, caught.status) == (error_type, status)
    assert str(status) in str(caught)
    if sent is not None:
        assert isinstance(caught, TransientAuthError)
        assert caught.sent is sent


def test_a_good_refresh_reply_is_the_checked_tokens() -> None:
    result = read(200, body(GRANT)).result
    assert isinstance(result, TokenResponse)
    assert (result.access_token.reveal(), result.human_id, result.scope) == (ACCESS, HUMAN, SCOPE)
    assert result.refresh_token is not None
    assert result.refresh_token.reveal() == NEW_REFRESH


def test_a_refresh_reply_without_human_scope_or_rotation_keeps_the_grants() -> None:
    bare = {"access_token": ACCESS, "token_type": "bearer"}
    result = read(200, body(bare)).result
    assert isinstance(result, TokenResponse)
    assert (result.human_id, result.scope, result.refresh_token) == (HUMAN, SCOPE, None)
    assert result.lifetime_defaulted


def test_a_first_grant_takes_the_human_and_scope_the_consent_asked_for() -> None:
    bare = {"access_token": ACCESS, "token_type": "Bearer", "refresh_token": NEW_REFRESH}
    asked = Asked("exchange", human_id=HUMAN, scope=SCOPE)
    result = read(200, body(bare), asked).result
    assert isinstance(result, TokenResponse)
    assert (result.human_id, result.scope) == (HUMAN, SCOPE)


def test_a_first_grant_naming_no_human_is_unnamed_human_with_its_refresh_token() -> None:
    nameless = {k: v for k, v in GRANT.items() if k != "human_id"}
    caught = failure(200, body(nameless), EXCHANGE)
    assert isinstance(caught, TransientAuthError)
    assert (caught.error_type, caught.sent) == ("unnamed_human", True)
    assert isinstance(caught.__cause__, UnnamedHumanError)
    assert caught.issued_refresh_token is not None
    assert caught.issued_refresh_token.reveal() == NEW_REFRESH


def test_a_broken_success_hands_over_the_refresh_token_it_carries() -> None:
    caught = failure(200, body({**GRANT, "access_token": 42}))
    assert isinstance(caught, TransientAuthError)
    assert isinstance(caught.__cause__, TokenResponseError)
    assert caught.__suppress_context__
    assert caught.issued_refresh_token is not None
    assert caught.issued_refresh_token.reveal() == NEW_REFRESH
    assert ACCESS not in str(caught) and NEW_REFRESH not in str(caught)


def test_an_oversized_or_non_json_success_says_which() -> None:
    assert "larger than 65536 bytes" in str(failure(200, None))
    html = failure(200, b"<html/>", REFRESH, content_type="text/html")
    assert "it is not JSON (text/html)" in str(html)


# --- what the rate budget is told ------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "headers", "block_for", "retry_after"),
    [
        (b"", {}, DEFAULT_RATE_LIMIT_BLOCK, None),
        (b"", {"Retry-After": "30"}, 30.0, 30.0),
        (b"", {"retry-after": " 7.5 "}, 7.5, 7.5),
        (b"", {"Retry-After": "Thu, 15 Jan 2027 08:01:00 GMT"}, 60.0, 60.0),
        (b"", {"Retry-After": "Thu, 15 Jan 2027 07:00:00 GMT"}, 0.0, 0.0),
        (b"", {"Retry-After": "soon"}, DEFAULT_RATE_LIMIT_BLOCK, None),
        (b"", {"Retry-After": "-5"}, DEFAULT_RATE_LIMIT_BLOCK, None),
        (docs_shape("rate_limit_exceeded", 45), {"Retry-After": "30"}, 45.0, 45.0),
        (docs_shape("rate_limit_exceeded", True), {}, DEFAULT_RATE_LIMIT_BLOCK, None),
        (b"", {"Retry-After": "99999"}, 99999.0, MAX_WAIT),
    ],
)
def test_a_429_tells_the_budget_to_wait_and_the_caller_how_long(
    content: bytes, headers: dict[str, str], block_for: float, retry_after: float | None
) -> None:
    meaning = read(429, content, REFRESH, headers)
    assert isinstance(meaning.result, RateLimitedError)
    # uncapped for the budget, which caps and logs an absurd wait itself
    assert meaning.block_for == pytest.approx(block_for)
    assert meaning.result.retry_after == pytest.approx(retry_after)


@pytest.mark.parametrize("status", [200, 400, 401, 500, 502, 503])
def test_nothing_but_slow_down_blocks_the_budget(status: int) -> None:
    content = body(GRANT) if status == 200 else b""
    assert read(status, content, REFRESH, {"Retry-After": "30"}).block_for is None


def test_a_503_passes_its_retry_after_on() -> None:
    caught = failure(503, b"", REFRESH, retry_after="120")
    assert isinstance(caught, TransientAuthError)
    assert caught.retry_after == 120.0


@pytest.mark.parametrize(
    ("headers", "note"),
    [
        ({}, RateLimitNote(None, None, None)),
        (
            {"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1e9"},
            RateLimitNote(60, 0, 1e9),
        ),
        ({"x-ratelimit-remaining": " 12 "}, RateLimitNote(None, 12, None)),
        (
            {"X-RateLimit-Limit": "many", "X-RateLimit-Reset": "inf"},
            RateLimitNote(None, None, None),
        ),
        ({"X-RateLimit-Remaining": "-3"}, RateLimitNote(None, -3, None)),  # the budget says absurd
    ],
)
def test_the_rate_limit_headers_as_numbers(headers: dict[str, str], note: RateLimitNote) -> None:
    assert rate_limit_note(headers) == note


# --- what a message says -------------------------------------------------------------------


def test_the_server_description_is_kept_redacted_and_truncated() -> None:
    text = f"bad secret {CLIENT_SECRET} \x1b[31m" + "x" * 500
    caught = failure(400, oauth("invalid_scope", text))
    message = str(caught)
    assert CLIENT_SECRET not in message and "\x1b" not in message
    assert message.endswith("x…")


def test_an_error_code_carrying_a_secret_is_not_shown() -> None:
    caught = failure(400, oauth(CLIENT_SECRET))
    assert caught.error_type == "unknown_error"
    assert CLIENT_SECRET not in str(caught)


def test_a_redirect_names_its_target_without_credentials_or_query() -> None:
    caught = failure(302, b"", REFRESH, location="https://user:pw@elsewhere.test/login?code=x")
    assert "redirect to https://elsewhere.test/login not followed" in str(caught)
    assert "check haas.token_url" in str(caught)
    assert "pw" not in str(caught) and "code=x" not in str(caught)


@pytest.mark.parametrize(
    ("request_format", "code", "hinted"),
    [
        ("json", "unsupported_grant_type", True),
        ("json", "invalid_request", True),
        ("json", "invalid_scope", False),
        ("form", "invalid_request", False),
    ],
)
def test_a_json_body_refused_suggests_the_form_format(
    request_format: str, code: str, hinted: bool
) -> None:
    asked = Asked("refresh", human_id=HUMAN, request_format="form")
    if request_format == "json":
        asked = REFRESH
    assert ('token_request_format = "form"' in str(failure(400, oauth(code), asked))) is hinted


@pytest.mark.parametrize(
    ("status", "code", "hinted"),
    [(401, "invalid_client", True), (401, None, True), (400, "unauthorized_client", False)],
)
def test_a_client_refusal_names_the_auth_method_and_the_other_one(
    status: int, code: str | None, hinted: bool
) -> None:
    asked = Asked("refresh", human_id=HUMAN, client_id="haasd_tests")
    caught = failure(status, b"" if code is None else oauth(code), asked)
    message = str(caught)
    assert ("haas.client_id (haasd_tests)" in message) is hinted
    assert (
        '"client_secret_post" is in use, the server may want "client_secret_basic"' in message
    ) is hinted


# --- revocation (RFC 7009) -----------------------------------------------------------------


def test_a_revocation_taken_is_no_tokens_and_no_error() -> None:
    assert read(200, b"", REVOKE) == Interpretation(None)
    assert read(200, b"<html>whatever</html>", REVOKE) == Interpretation(None)


def test_a_refused_revocation_names_the_revocation_endpoint() -> None:
    refused = failure(400, oauth("unsupported_token_type"), REVOKE)
    assert isinstance(refused, RequestRejectedError)
    assert str(refused).startswith("the revocation endpoint answered 400")
    moved = failure(301, b"", REVOKE, location="https://elsewhere.test/")
    assert "check haas.revocation_url" in str(moved)


def test_a_429_to_a_revocation_blocks_the_budget_too() -> None:
    assert read(429, b"", REVOKE, {"Retry-After": "20"}).block_for == 20.0


# --- the rest ------------------------------------------------------------------------------


def test_a_refresh_is_asked_for_a_named_human() -> None:
    with pytest.raises(ValueError, match="human_id"):
        Asked("refresh")


def test_the_same_reply_always_means_the_same() -> None:
    """No state: reading a reply twice gives equal outcomes (nothing was spent)."""
    first, second = (read(429, b"", REFRESH, {"Retry-After": "5"}) for _ in range(2))
    assert first.block_for == second.block_for == 5.0
    assert str(first.result) == str(second.result)


@pytest.mark.parametrize(
    ("error", "label"),
    [
        (RateLimitedError("rate_limit_exceeded", "m"), "rate_limited"),
        (InvalidGrantError("invalid_grant", "m"), "invalid_grant"),
        (ClientAuthError("invalid_client", "m"), "client_auth"),
        (RequestRejectedError("invalid_scope", "m"), "rejected"),
        (TransientAuthError("timeout", "m"), "timeout"),
        (TransientAuthError("unnamed_human", "m"), "unnamed_human"),
        (TransientAuthError("server_error", "m"), "transient"),
    ],
)
def test_each_failure_has_one_metrics_label(error: AuthError, label: str) -> None:
    assert outcome_label(error) == label
