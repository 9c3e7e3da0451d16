from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import anyio
import httpx
import pytest
from structlog.testing import capture_logs

from haasd import __version__
from haasd.authclient import AuthClient, RequestFormat
from haasd.clock import Activity, ManualClock
from haasd.config import AuthMethod, HaasConfig, SecretSource
from haasd.errors import (
    AuthError,
    ClientAuthError,
    InvalidGrantError,
    LeaseEndedError,
    RateLimitedError,
    RequestRejectedError,
    TokenResponseError,
    TransientAuthError,
    UnnamedHumanError,
)
from haasd.grants import Outcome, classify
from haasd.ratelimit import MAX_WAIT, RateBudget
from haasd.secret import Secret

TOKEN_URL = "https://auth.haas.test/token"
CLIENT_ID = "haasd_tests"
CLIENT_SECRET = "client-secret-for-tests-only"
ACCESS = "haas_at_testAccessOne"
REFRESH = "haas_rt_testRefreshOne"
NEW_REFRESH = "haas_rt_testRefreshTwo"
CODE = "auth_code_for_tests"
VERIFIER = "verifier-for-tests-0123456789-abcdefghijklmnop"
HUMAN = "usr_maria_42"
SCOPE = ("tasks:dispatch", "status:read")
GRANT: dict[str, Any] = {
    "access_token": ACCESS,
    "token_type": "Bearer",
    "expires_in": 3600,
    "refresh_token": NEW_REFRESH,
    "scope": "tasks:dispatch status:read",
    "human_id": HUMAN,
}
SECRETS = (CLIENT_SECRET, ACCESS, REFRESH, NEW_REFRESH, CODE, VERIFIER)

Reply = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class Server:
    """A MockTransport handler: records what it was sent, answers from a script."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, Exception):
            raise reply
        return reply if isinstance(reply, httpx.Response) else reply(request)


def client_for(
    server: Server,
    budget: RateBudget | None = None,
    *,
    request_format: RequestFormat = "json",
    **options: Any,
) -> AuthClient:
    return AuthClient(
        token_url=TOKEN_URL,
        client_id=CLIENT_ID,
        client_secret=Secret(CLIENT_SECRET),
        budget=budget or RateBudget(60, ManualClock()),
        request_format=request_format,
        transport=httpx.MockTransport(server),
        **options,
    )


async def refresh(client: AuthClient) -> None:
    await client.refresh(Secret(REFRESH), human_id=HUMAN, scope=SCOPE)


def assert_nothing_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


# --- what the server sees -----------------------------------------------------------------


async def test_refresh_sends_the_documented_json_body() -> None:
    server = Server(httpx.Response(200, json=GRANT))
    async with client_for(server) as client:
        answer = await client.refresh(Secret(REFRESH), human_id=HUMAN, scope=SCOPE)
    [request] = server.requests
    assert (request.method, str(request.url)) == ("POST", TOKEN_URL)
    assert json.loads(request.content) == {
        "grant_type": "refresh_token",
        "refresh_token": REFRESH,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept"] == "application/json"
    assert f"haasd/{__version__}" == request.headers["user-agent"]
    assert "authorization" not in request.headers
    assert answer.refresh_token is not None
    assert (answer.access_token.reveal(), answer.refresh_token.reveal()) == (ACCESS, NEW_REFRESH)
    assert (answer.expires_in, answer.scope, answer.human_id) == (3600, SCOPE, HUMAN)
    assert client.stats.requests == {("refresh", "ok"): 1}
    assert client.stats.last_status == 200


async def test_a_refresh_whose_leave_to_send_ended_while_it_waited_sends_nothing() -> None:
    server = Server(httpx.Response(200, json=GRANT))
    asked: list[bool] = []

    def may_send() -> bool:  # asked once the budget let the request go
        asked.append(True)
        return False

    async with client_for(server) as client:
        with pytest.raises(LeaseEndedError) as ended:
            await client.refresh(Secret(REFRESH), human_id=HUMAN, scope=SCOPE, may_send=may_send)
        assert server.requests == [] and asked == [True]
        assert not ended.value.sent
        await client.refresh(Secret(REFRESH), human_id=HUMAN, scope=SCOPE, may_send=lambda: True)
    assert len(server.requests) == 1


async def test_exchange_sends_the_documented_json_body_with_the_pkce_verifier() -> None:
    server = Server(httpx.Response(200, json=GRANT))
    async with client_for(server) as client:
        answer = await client.exchange_code(CODE, "https://app.test/callback", VERIFIER)
    assert json.loads(server.requests[0].content) == {
        "grant_type": "authorization_code",
        "code": CODE,
        "redirect_uri": "https://app.test/callback",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "code_verifier": VERIFIER,
    }
    assert answer.human_id == HUMAN


async def test_exchange_without_verifier_sends_none() -> None:
    server = Server(httpx.Response(200, json=GRANT))
    async with client_for(server) as client:
        await client.exchange_code(CODE, "https://app.test/callback", None)
    assert "code_verifier" not in json.loads(server.requests[0].content)


async def test_form_encoded_bodies_when_configured() -> None:
    server = Server(httpx.Response(200, json=GRANT))
    async with client_for(server, request_format="form") as client:
        await client.exchange_code(CODE, "https://app.test/callback", VERIFIER)
        await refresh(client)
    exchange, refreshed = server.requests
    assert exchange.headers["content-type"] == "application/x-www-form-urlencoded"
    assert sorted(parse_qsl(exchange.content.decode())) == sorted(
        [
            ("grant_type", "authorization_code"),
            ("code", CODE),
            ("redirect_uri", "https://app.test/callback"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
            ("code_verifier", VERIFIER),
        ]
    )
    assert ("refresh_token", REFRESH) in parse_qsl(refreshed.content.decode())


def haas_config(**overrides: Any) -> HaasConfig:
    """The [haas] section these tests configure, with ``overrides``."""
    base = HaasConfig(
        environment="test",
        client_id=CLIENT_ID,
        client_secret=SecretSource("haas.client_secret", "client_secret", "HAASD_CLIENT_SECRET"),
        authorize_url="https://auth.haas.test/authorize",
        token_url=TOKEN_URL,
        redirect_uri="https://app.test/callback",
        scopes=SCOPE,
        plan="free",
        requests_per_minute=60,
        token_request_format="json",
    )
    return dataclasses.replace(base, **overrides)


async def test_from_config_takes_url_client_and_format() -> None:
    haas = haas_config(token_request_format="form")
    server = Server(httpx.Response(200, json=GRANT))
    transport = httpx.MockTransport(server)
    budget = RateBudget(60, ManualClock())
    async with AuthClient.from_config(
        haas, Secret(CLIENT_SECRET), budget, transport=transport
    ) as c:
        await refresh(c)
    assert str(server.requests[0].url) == TOKEN_URL
    assert ("client_id", CLIENT_ID) in parse_qsl(server.requests[0].content.decode())


async def test_a_refresh_answer_without_refresh_token_keeps_the_old_one() -> None:
    lean = {k: GRANT[k] for k in ("access_token", "token_type", "expires_in")}
    async with client_for(Server(httpx.Response(200, json=lean))) as client:
        answer = await client.refresh(Secret(REFRESH), human_id=HUMAN, scope=SCOPE)
    assert answer.refresh_token is None
    assert (answer.human_id, answer.scope) == (HUMAN, SCOPE)


async def test_redirects_are_not_followed() -> None:
    moved = httpx.Response(302, headers={"Location": "https://elsewhere.test/token?code=leak"})
    server = Server(moved, httpx.Response(200, json=GRANT))
    async with client_for(server) as client:
        with pytest.raises(TransientAuthError) as caught:
            await refresh(client)
    assert len(server.requests) == 1
    assert (
        caught.value.error_type,
        caught.value.status,
        caught.value.sent,
    ) == ("redirect", 302, False)
    assert "https://elsewhere.test/token" in str(caught.value)
    assert "leak" not in str(caught.value)


# --- what an answer means -----------------------------------------------------------------


def oauth(status: int, error: str, description: str = "as you were told") -> httpx.Response:
    return httpx.Response(status, json={"error": error, "error_description": description})


def seed_shape(status: int, kind: str) -> httpx.Response:
    body = {"error": {"code": status, "type": kind, "message": "no", "suggestion": "wait"}}
    return httpx.Response(status, json=body)


@pytest.mark.parametrize(
    ("reply", "error", "error_type", "answer"),
    [
        (oauth(400, "invalid_grant"), InvalidGrantError, "invalid_grant", Outcome.REFUSED),
        (oauth(401, "invalid_grant"), InvalidGrantError, "invalid_grant", Outcome.REFUSED),
        (seed_shape(400, "invalid_grant"), InvalidGrantError, "invalid_grant", Outcome.REFUSED),
        (oauth(401, "invalid_client"), ClientAuthError, "invalid_client", Outcome.CLIENT_FAULT),
        (
            oauth(400, "unauthorized_client"),
            ClientAuthError,
            "unauthorized_client",
            Outcome.CLIENT_FAULT,
        ),
        (httpx.Response(401), ClientAuthError, "unauthorized", Outcome.CLIENT_FAULT),
        (
            oauth(400, "invalid_request"),
            RequestRejectedError,
            "invalid_request",
            Outcome.CLIENT_FAULT,
        ),
        (
            oauth(400, "unsupported_grant_type"),
            RequestRejectedError,
            "unsupported_grant_type",
            Outcome.CLIENT_FAULT,
        ),
        (oauth(400, "invalid_scope"), RequestRejectedError, "invalid_scope", Outcome.CLIENT_FAULT),
        (
            httpx.Response(404, text="<html>gone</html>"),
            RequestRejectedError,
            "http_404",
            Outcome.CLIENT_FAULT,
        ),
        (oauth(400, "<b>what?</b>"), RequestRejectedError, "unknown_error", Outcome.CLIENT_FAULT),
        (
            oauth(400, "temporarily_unavailable"),
            TransientAuthError,
            "temporarily_unavailable",
            Outcome.TRANSIENT,
        ),
        (
            oauth(503, "temporarily_unavailable"),
            TransientAuthError,
            "temporarily_unavailable",
            Outcome.TRANSIENT,
        ),
        (httpx.Response(408), TransientAuthError, "timeout", Outcome.TRANSIENT),
        (httpx.Response(500, json={}), TransientAuthError, "server_error", Outcome.TRANSIENT),
        (
            httpx.Response(502, text="<html>bad gateway</html>"),
            TransientAuthError,
            "server_error",
            Outcome.TRANSIENT,
        ),
        (oauth(500, "invalid_grant"), TransientAuthError, "invalid_grant", Outcome.TRANSIENT),
        (
            seed_shape(429, "rate_limit_exceeded"),
            RateLimitedError,
            "rate_limit_exceeded",
            Outcome.TRANSIENT,
        ),
        (
            seed_shape(403, "rate_limit_exceeded"),
            RateLimitedError,
            "rate_limit_exceeded",
            Outcome.TRANSIENT,
        ),
        (httpx.Response(429), RateLimitedError, "rate_limit_exceeded", Outcome.TRANSIENT),
    ],
)
async def test_error_answers_map_to_typed_errors(
    reply: httpx.Response, error: type[AuthError], error_type: str, answer: Outcome
) -> None:
    async with client_for(Server(reply)) as client:
        with pytest.raises(AuthError) as caught:
            await refresh(client)
    assert error is type(caught.value)
    assert (error_type, reply.status_code) == (caught.value.error_type, caught.value.status)
    assert answer is classify(caught.value)
    assert str(reply.status_code) in str(caught.value)


@pytest.mark.parametrize(
    ("reply", "sent"),
    [
        (httpx.Response(502), True),  # a gateway: the server behind it may have acted
        (httpx.Response(504), True),
        (oauth(504, "temporarily_unavailable"), False),
        (httpx.Response(500), False),  # the server's own failure: back off
        (httpx.Response(503), False),
        (oauth(503, "temporarily_unavailable"), False),
        (oauth(400, "temporarily_unavailable"), False),
        (httpx.Response(408), False),
        (httpx.Response(429), False),
    ],
)
async def test_an_answered_failure_says_whether_the_server_may_have_acted(
    reply: httpx.Response, sent: bool
) -> None:
    async with client_for(Server(reply)) as client:
        with pytest.raises(TransientAuthError) as caught:
            await refresh(client)
    assert caught.value.sent is sent


async def test_a_503_passes_its_retry_after_on_without_blocking_the_budget() -> None:
    budget = RateBudget(60, ManualClock())
    reply = httpx.Response(503, headers={"Retry-After": "120"})
    async with client_for(Server(reply), budget) as client:
        with pytest.raises(TransientAuthError) as caught:
            await refresh(client)
    assert (caught.value.error_type, caught.value.retry_after) == ("server_error", 120.0)
    assert budget.blocked_until is None


async def test_the_server_description_is_kept_redacted_and_truncated() -> None:
    description = f"refresh token {REFRESH} was revoked; " + "x" * 500 + "\nline two"
    async with client_for(Server(oauth(400, "invalid_grant", description))) as client:
        with pytest.raises(InvalidGrantError) as caught:
            await refresh(client)
    message = str(caught.value)
    assert message.startswith("the token endpoint answered 400 invalid_grant: refresh token ")
    assert "was revoked" in message
    assert "\n" not in message and len(message) < 300
    assert_nothing_secret(message)


@pytest.mark.parametrize(
    ("headers", "body_retry", "expected"),
    [
        ({"Retry-After": "32"}, None, 32.0),
        ({}, 32, 32.0),
        ({"Retry-After": "10"}, 32, 32.0),  # the larger wins
        ({"Retry-After": "120"}, 32, 120.0),
        ({"Retry-After": "HTTP-DATE=45"}, None, 45.0),
        ({"Retry-After": "ZONELESS-DATE=45"}, None, 45.0),
        ({"Retry-After": "HTTP-DATE=-45"}, None, 0.0),  # a date already past
        ({"Retry-After": "soon"}, 5, 5.0),
        ({"Retry-After": "999999"}, None, MAX_WAIT),  # absurd: capped
    ],
)
async def test_429_retry_after_in_every_form_blocks_the_budget(
    headers: dict[str, str], body_retry: int | None, expected: float
) -> None:
    clock = ManualClock()
    raw = headers.get("Retry-After", "")
    if raw.startswith(("HTTP-DATE", "ZONELESS-DATE")):  # "... GMT" or "... -0000"
        kind, offset = raw.split("=")
        when = formatdate(clock.time() + float(offset), usegmt=kind == "HTTP-DATE")
        headers = {"Retry-After": when}
    error: dict[str, Any] = {"code": 429, "type": "rate_limit_exceeded", "message": "Slow down."}
    if body_retry is not None:
        error["retry_after"] = body_retry
    server = Server(httpx.Response(429, headers=headers, json={"error": error}))
    budget = RateBudget(60, clock)
    async with client_for(server, budget) as client:
        with pytest.raises(RateLimitedError) as caught:
            await refresh(client)
        assert (expected, False) == (caught.value.retry_after, caught.value.sent)
        assert (expected or None) == budget.blocked_until
        assert client.stats.requests == {("refresh", "rate_limited"): 1}


async def test_429_without_any_wait_still_holds_the_budget_back() -> None:
    budget = RateBudget(60, ManualClock())
    async with client_for(Server(httpx.Response(429)), budget) as client:
        with pytest.raises(RateLimitedError) as caught:
            await refresh(client)
        assert caught.value.retry_after is None
        assert budget.blocked_until == 10.0


async def test_remaining_zero_makes_the_next_call_wait_until_the_reset() -> None:
    clock = ManualClock()
    headers = {
        "X-RateLimit-Limit": "60",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(int(clock.time()) + 30),
    }
    server = Server(httpx.Response(200, json=GRANT, headers=headers))
    sent_at: list[float] = []
    async with client_for(server, RateBudget(60, clock)) as client:
        await refresh(client)

        async def second() -> None:
            await refresh(client)
            sent_at.append(clock.monotonic())

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(second)
                await clock.advance(29.5)
                assert (len(server.requests), sent_at) == (1, [])
                await clock.advance(0.5)
    assert sent_at == [30.0]
    assert len(server.requests) == 2


async def test_every_answer_feeds_the_budget_even_an_error() -> None:
    budget = RateBudget(60, ManualClock())
    reply = oauth(400, "invalid_grant")
    reply.headers.update({"X-RateLimit-Remaining": "5", "X-RateLimit-Reset": "oops"})
    async with client_for(Server(reply), budget) as client:
        with pytest.raises(InvalidGrantError):
            await refresh(client)
    assert budget.remaining == 5


# --- when no proper answer comes ----------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "error_type", "sent"),
    [
        (httpx.ConnectError, "network", False),
        (httpx.ConnectTimeout, "timeout", False),
        (httpx.PoolTimeout, "timeout", False),
        (httpx.ReadTimeout, "timeout", True),
        (httpx.WriteTimeout, "timeout", True),
        (httpx.ReadError, "network", True),
        (httpx.RemoteProtocolError, "network", True),
        (httpx.UnsupportedProtocol, "network", False),
    ],
)
async def test_network_failures_say_whether_the_server_may_have_acted(
    failure: type[httpx.TransportError], error_type: str, sent: bool
) -> None:
    server = Server(failure(f"boom {CLIENT_SECRET} {REFRESH}"))
    async with client_for(server) as client:
        with pytest.raises(TransientAuthError) as caught:
            await refresh(client)
    assert (error_type, sent, None) == (
        caught.value.error_type,
        caught.value.sent,
        caught.value.status,
    )
    assert isinstance(caught.value.__cause__, failure)
    assert "auth.haas.test" in str(caught.value)
    assert_nothing_secret(str(caught.value))


async def test_an_answer_that_trickles_past_the_deadline_is_a_timeout() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(1)
        return httpx.Response(200, json=GRANT)

    transport = httpx.MockTransport(slow)
    budget = RateBudget(60, ManualClock())
    async with AuthClient(
        token_url=TOKEN_URL,
        client_id=CLIENT_ID,
        client_secret=Secret(CLIENT_SECRET),
        budget=budget,
        transport=transport,
        deadline=0.02,
    ) as client:
        with pytest.raises(TransientAuthError) as caught:
            await refresh(client)
    assert (caught.value.error_type, caught.value.sent) == ("timeout", True)


async def endless() -> AsyncIterator[bytes]:
    for _ in range(10_000):
        yield b'{"access_token": "' + b"A" * 8192


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        (
            httpx.Response(
                200, text="<html><body>Welcome</body></html>", headers={"Content-Type": "text/html"}
            ),
            "not JSON (text/html",
        ),
        (httpx.Response(200, content=b"{" * 100_000), "larger than 65536 bytes"),
        (httpx.Response(200, content=endless()), "larger than 65536 bytes"),
        (httpx.Response(200, content=b"[" * 50_000 + b"]" * 50_000), "larger than"),
        (httpx.Response(200, content=b"[" * 30_000 + b"]" * 30_000), "not JSON"),
        (httpx.Response(200, json={**GRANT, "access_token": None}), "access_token is missing"),
        (
            httpx.Response(200, json={**GRANT, "refresh_token": "new\nline"}),
            "refresh_token is not a plausible token",
        ),
        (httpx.Response(200, json=[GRANT]), "not a JSON object"),
    ],
)
async def test_a_malformed_success_is_transient_and_counts_as_sent(
    reply: httpx.Response, problem: str
) -> None:
    async with client_for(Server(reply)) as client:
        with pytest.raises(TransientAuthError) as caught:
            await refresh(client)
        assert client.stats.requests == {("refresh", "malformed_response"): 1}
    error = caught.value
    assert (error.error_type, error.status, error.sent) == ("malformed_response", 200, True)
    assert problem in str(error)
    assert Outcome.TRANSIENT is classify(error)
    assert "<html" not in str(error) and "AAAA" not in str(error)
    assert error.__cause__ is None or isinstance(error.__cause__, TokenResponseError)


async def test_a_broken_success_hands_over_the_refresh_token_it_carries() -> None:
    """The server rotated: its new refresh token must be kept although the rest is bad."""
    reply = httpx.Response(200, json={**GRANT, "access_token": ""})
    async with client_for(Server(reply)) as client:
        with pytest.raises(TransientAuthError) as caught:
            await refresh(client)
    issued = caught.value.issued_refresh_token
    assert issued is not None and issued.reveal() == GRANT["refresh_token"]
    assert GRANT["refresh_token"] not in str(caught.value)


async def test_a_bad_field_beside_a_good_rotation_is_a_warning_not_a_failure() -> None:
    reply = httpx.Response(200, json={**GRANT, "scope": "status:read \x1b[2J", "expires_in": "x"})
    async with client_for(Server(reply)) as client:
        answer = await client.refresh(Secret(REFRESH), human_id=HUMAN, scope=SCOPE)
        assert client.stats.requests == {("refresh", "ok"): 1}
    assert answer.refresh_token is not None
    assert answer.refresh_token.reveal() == GRANT["refresh_token"]
    assert len(answer.warnings) == 2
    assert all("\x1b" not in w for w in answer.warnings)


# --- nothing secret leaks -----------------------------------------------------------------


def echo_everything(status: int) -> Callable[[httpx.Request], httpx.Response]:
    def reply(request: httpx.Request) -> httpx.Response:
        said = request.content.decode()
        return httpx.Response(
            status,
            json={"error": f"bad_{said}", "error_description": f"you sent {said}"},
            headers={"Location": f"https://x.test/{said}?q={said}"},
        )

    return reply


@pytest.mark.parametrize("status", [200, 302, 400, 401, 429, 500])
@pytest.mark.parametrize("request_format", ["json", "form"])
@pytest.mark.usefixtures("debug_logs")
async def test_no_token_or_secret_reaches_a_message_or_a_log(
    status: int, request_format: RequestFormat
) -> None:
    server = Server(echo_everything(status))
    clock = ManualClock()
    with capture_logs() as logs:
        async with client_for(server, RateBudget(60, clock), request_format=request_format) as c:
            with pytest.raises(AuthError) as exchange:
                await c.exchange_code(CODE, "https://app.test/callback", VERIFIER)
            await clock.advance(MAX_WAIT)  # past any block the answer asked for
            with pytest.raises(AuthError) as refresh:
                await c.refresh(Secret(REFRESH), human_id=HUMAN, scope=SCOPE)
    for error in (exchange.value, refresh.value):
        assert_nothing_secret(str(error), repr(error), error.error_type)
    assert logs
    assert_nothing_secret(repr(logs))


@pytest.mark.usefixtures("debug_logs")
async def test_requests_are_logged_at_debug_without_tokens() -> None:
    server = Server(httpx.Response(200, json=GRANT), oauth(400, "invalid_grant"))
    with capture_logs() as logs:
        async with client_for(server) as client:
            await refresh(client)
            with pytest.raises(InvalidGrantError):
                await refresh(client)
    events = [(e["event"], e["log_level"], e["kind"], e["status"], e["outcome"]) for e in logs]
    assert events == [
        ("haas.token_request", "debug", "refresh", 200, "ok"),
        ("haas.token_request", "debug", "refresh", 400, "invalid_grant"),
    ]
    assert all(e["latency_ms"] >= 0 for e in logs)
    assert_nothing_secret(repr(logs))
    assert client.stats.requests == {("refresh", "ok"): 1, ("refresh", "invalid_grant"): 1}
    assert client.stats.last_latency is not None and client.stats.last_status == 400


async def test_the_exchange_counts_as_activity_while_on_the_wire() -> None:
    activity = Activity()
    seen: list[int] = []

    def reply(request: httpx.Request) -> httpx.Response:
        seen.append(activity.count)
        return httpx.Response(200, json=GRANT)

    async with client_for(Server(reply), activity=activity) as client:
        await refresh(client)
    assert (seen, activity.count) == ([1], 0)


def test_an_unknown_request_format_is_refused() -> None:
    with pytest.raises(ValueError, match="request_format"):
        client_for(Server(httpx.Response(200)), request_format="xml")  # type: ignore[arg-type]


# --- standard OAuth 2.0: client authentication (RFC 6749 §2.3.1) ----------------------------

REVOCATION_URL = "https://auth.haas.test/revoke"
AWKWARD_ID = "my app:1%+é"
AWKWARD_SECRET = "s3:cr%t+ pä/="
#: RFC 6749 §2.3.1 / Appendix B, by hand: each form-urlencoded (UTF-8, space as "+")
AWKWARD_PAIR = "my+app%3A1%25%2B%C3%A9:s3%3Acr%25t%2B+p%C3%A4%2F%3D"


def basic_client(server: Server, budget: RateBudget | None = None, **options: Any) -> AuthClient:
    return AuthClient(
        token_url=TOKEN_URL,
        client_id=AWKWARD_ID,
        client_secret=Secret(AWKWARD_SECRET),
        budget=budget or RateBudget(60, ManualClock()),
        auth_method="client_secret_basic",
        transport=httpx.MockTransport(server),
        **options,
    )


def body_of(request: httpx.Request) -> dict[str, str]:
    if request.headers["content-type"] == "application/json":
        data: dict[str, str] = json.loads(request.content)
        return data
    return dict(parse_qsl(request.content.decode()))


@pytest.mark.parametrize("request_format", ["json", "form"])
async def test_basic_auth_sends_the_form_encoded_pair_and_nothing_in_the_body(
    request_format: RequestFormat,
) -> None:
    server = Server(httpx.Response(200, json=GRANT))
    revocation = "https://auth.haas.test/revoke"
    async with basic_client(
        server, request_format=request_format, revocation_url=revocation
    ) as client:
        await client.exchange_code(CODE, "https://app.test/callback", VERIFIER)
        await refresh(client)
        assert await client.revoke(Secret(NEW_REFRESH))
    expected = "Basic " + base64.b64encode(AWKWARD_PAIR.encode("ascii")).decode("ascii")
    for request in server.requests:
        assert request.headers["authorization"] == expected
        body = body_of(request)
        assert "client_id" not in body and "client_secret" not in body
    # what a server does with it (RFC 6749 §2.3.1): split at the first ":", then decode
    pair = base64.b64decode(expected.removeprefix("Basic ")).decode("ascii")
    raw_id, _, raw_secret = pair.partition(":")
    assert (unquote_plus(raw_id), unquote_plus(raw_secret)) == (AWKWARD_ID, AWKWARD_SECRET)
    exchange, refreshed, revoked = (body_of(r) for r in server.requests)
    assert exchange["code"] == CODE and refreshed["refresh_token"] == REFRESH
    assert revoked == {"token": NEW_REFRESH, "token_type_hint": "refresh_token"}


async def test_post_auth_sends_the_credentials_in_the_body_and_no_header() -> None:
    server = Server(httpx.Response(200, json=GRANT))
    revocation = "https://auth.haas.test/revoke"
    async with client_for(server, revocation_url=revocation) as client:
        await client.exchange_code(CODE, "https://app.test/callback", VERIFIER)
        assert await client.revoke(Secret(ACCESS), hint="access_token")
    exchange, revoked = server.requests
    assert "authorization" not in exchange.headers and "authorization" not in revoked.headers
    credentials = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    assert credentials.items() <= body_of(exchange).items()
    assert revoked.headers["content-type"] == "application/x-www-form-urlencoded"
    assert body_of(revoked) == {"token": ACCESS, "token_type_hint": "access_token", **credentials}


def test_an_unknown_auth_method_is_refused() -> None:
    with pytest.raises(ValueError, match="client_secret_basic"):
        client_for(Server(httpx.Response(200)), auth_method="private_key_jwt")


@pytest.mark.parametrize("status", [200, 302, 400, 401, 429, 500])
@pytest.mark.usefixtures("debug_logs")
async def test_basic_auth_and_revocation_leak_nothing_even_to_an_echoing_server(
    status: int,
) -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        said = request.content.decode() + " " + request.headers["authorization"]
        return httpx.Response(
            status,
            json={"error": f"bad_{said}", "error_description": f"you sent {said}"},
            headers={"Location": f"https://x.test/{said}?q={said}"},
        )

    secrets = (AWKWARD_SECRET, AWKWARD_PAIR, base64.b64encode(AWKWARD_PAIR.encode()).decode())
    clock = ManualClock()
    with capture_logs() as logs:
        async with basic_client(
            Server(echo), RateBudget(60, clock), revocation_url=REVOCATION_URL
        ) as client:
            with pytest.raises(AuthError) as caught:
                await client.exchange_code(CODE, "https://app.test/callback", VERIFIER)
            await clock.advance(MAX_WAIT)
            await client.revoke(Secret(NEW_REFRESH))
    texts = (str(caught.value), repr(caught.value), caught.value.error_type, repr(logs))
    for text in texts:
        assert_nothing_secret(text)
        assert not any(secret in text for secret in secrets)


# --- revocation (RFC 7009) ----------------------------------------------------------------


async def test_revocation_posts_the_token_and_is_true_on_200() -> None:
    server = Server(httpx.Response(200))  # also what it says to a token it never knew
    budget = RateBudget(60, ManualClock())
    async with client_for(server, budget, revocation_url=REVOCATION_URL) as client:
        assert client.can_revoke
        assert await client.revoke(Secret(NEW_REFRESH)) is True
        assert client.stats.requests == {("revoke", "ok"): 1}
    [request] = server.requests
    assert (request.method, str(request.url)) == ("POST", REVOCATION_URL)
    assert body_of(request)["token"] == NEW_REFRESH
    assert budget.remaining == budget.capacity - 1  # inside the one rate budget


async def test_revocation_without_an_endpoint_is_false_and_sends_nothing() -> None:
    server = Server(httpx.Response(200))
    async with client_for(server) as client:
        assert not client.can_revoke
        assert await client.revoke(Secret(NEW_REFRESH)) is False
    assert server.requests == []


@pytest.mark.parametrize(
    ("reply", "outcome", "said"),
    [
        (oauth(400, "unsupported_token_type"), "rejected", "400 unsupported_token_type"),
        (oauth(401, "invalid_client"), "client_auth", "token_endpoint_auth_method"),
        (oauth(503, "temporarily_unavailable"), "transient", "503"),
        (httpx.Response(404, text="<html>no</html>"), "rejected", "404"),
        (httpx.Response(302, headers={"Location": "https://x.test/r"}), "redirect", "revocation"),
        (httpx.ConnectError("refused"), "network", "could not connect"),
        (httpx.ReadTimeout("slow"), "timeout", "did not answer"),
    ],
)
async def test_a_failed_revocation_is_false_with_one_warning_never_an_error(
    reply: Reply, outcome: str, said: str
) -> None:
    with capture_logs() as logs:
        async with client_for(Server(reply), revocation_url=REVOCATION_URL) as client:
            assert await client.revoke(Secret(NEW_REFRESH)) is False
            assert client.stats.requests == {("revoke", outcome): 1}
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert "not revoked" in warning["event"] and said in warning["error"]
    assert "revocation endpoint" in warning["error"] or outcome in ("network", "timeout")
    assert_nothing_secret(repr(logs))


@pytest.mark.parametrize(
    ("reply", "answer"),
    [
        (httpx.Response(503, headers={"Retry-After": "30"}), 30.0),
        (oauth(503, "temporarily_unavailable"), 0.0),
        (httpx.ConnectError("refused"), 0.0),
        (oauth(400, "unsupported_token_type"), False),
        (httpx.Response(200), True),
    ],
)
async def test_a_revocation_to_try_again_says_how_long_the_server_asked_for(
    reply: Reply, answer: bool | float
) -> None:
    """``try_revoke`` for a caller in the background: a failure the server may get over
    gives the wait it named (RFC 7009 §2.2.1), without the warning that the token stays
    valid; one it will not get over is False with that warning."""
    with capture_logs() as logs:
        async with client_for(Server(reply), revocation_url=REVOCATION_URL) as client:
            got = await client.try_revoke(Secret(NEW_REFRESH))
    assert got == answer and type(got) is type(answer)
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == (answer is False)  # a wait is no final "not revoked"
    assert_nothing_secret(repr(logs))


async def test_a_429_to_a_revocation_holds_the_budget_back_too() -> None:
    budget = RateBudget(60, ManualClock())
    reply = httpx.Response(429, headers={"Retry-After": "40"})
    async with client_for(Server(reply), budget, revocation_url=REVOCATION_URL) as client:
        assert await client.revoke(Secret(NEW_REFRESH)) is False
    assert budget.blocked_until == 40.0


# --- answers of a plain RFC 6749 server (§5.1) --------------------------------------------

PLAIN: dict[str, Any] = {
    "access_token": ACCESS,
    "token_type": "Bearer",
    "expires_in": 3600,
    "refresh_token": NEW_REFRESH,
}


async def exchange(client: AuthClient, **asked: Any) -> Any:
    return await client.exchange_code(CODE, "https://app.test/callback", VERIFIER, **asked)


async def test_a_first_grant_without_scope_or_human_takes_what_the_consent_asked() -> None:
    async with client_for(Server(httpx.Response(200, json=PLAIN))) as client:
        answer = await exchange(client, human_id=HUMAN, scope=("status:read",))
    assert (answer.human_id, answer.scope, answer.expires_in) == (HUMAN, ("status:read",), 3600)
    assert answer.refresh_token is not None and answer.refresh_token.reveal() == NEW_REFRESH


async def test_the_answers_own_human_and_scope_win_over_what_was_asked() -> None:
    """A different human may approve (the consent reports it); the server may narrow."""
    answer_for = {**PLAIN, "human_id": "usr_bob_7", "scope": "tasks:read"}
    async with client_for(Server(httpx.Response(200, json=answer_for))) as client:
        answer = await exchange(client, human_id=HUMAN, scope=SCOPE)
    assert (answer.human_id, answer.scope) == ("usr_bob_7", ("tasks:read",))


async def test_a_first_grant_naming_no_human_is_unnamed_human_with_its_refresh_token() -> None:
    async with client_for(Server(httpx.Response(200, json={**PLAIN, "scope": "status:read"}))) as c:
        with pytest.raises(TransientAuthError) as caught:
            await exchange(c, scope=SCOPE)
        assert c.stats.requests == {("exchange", "unnamed_human"): 1}
    error = caught.value
    assert (error.error_type, error.status) == ("unnamed_human", 200)
    assert isinstance(error.__cause__, UnnamedHumanError)
    assert "--human" in str(error) and "human_id" in str(error)
    assert error.issued_refresh_token is not None
    assert error.issued_refresh_token.reveal() == NEW_REFRESH
    assert_nothing_secret(str(error), repr(error))


@pytest.mark.parametrize(
    "change",
    [
        {"scope": None},  # nothing asked either
        {"scope": "status:read \x1b[2J"},
        {"access_token": "bad token"},
        {"token_type": "mac"},
        {"expires_in": "an hour"},
        {"human_id": "Maria"},
        {"refresh_token_expires_in": "soon"},
    ],
)
async def test_an_unusable_first_grant_hands_over_its_refresh_token(
    change: dict[str, Any],
) -> None:
    """Never orphan a token: the code is spent, so the caller must get what was issued."""
    body = {k: v for k, v in {**GRANT, **change}.items() if v is not None}
    async with client_for(Server(httpx.Response(200, json=body))) as client:
        with pytest.raises(TransientAuthError) as caught:
            await exchange(client)
    error = caught.value
    assert (error.error_type, error.sent) == ("malformed_response", True)
    assert isinstance(error.__cause__, TokenResponseError)
    assert error.issued_refresh_token is not None
    assert error.issued_refresh_token.reveal() == NEW_REFRESH
    assert_nothing_secret(str(error))


async def test_a_first_grant_without_a_usable_refresh_token_hands_over_none() -> None:
    body = {**GRANT, "refresh_token": "two\nlines"}  # not VSCHAR (RFC 6749 A.17)
    async with client_for(Server(httpx.Response(200, json=body))) as client:
        with pytest.raises(TransientAuthError) as caught:
            await exchange(client)
    assert caught.value.issued_refresh_token is None
    assert "refresh_token is not a plausible token" in str(caught.value)


@pytest.mark.parametrize("token_type", ["bearer", "BEARER", "BeArEr"])
async def test_token_type_is_case_insensitive_on_both_paths(token_type: str) -> None:
    body = {**GRANT, "token_type": token_type}
    async with client_for(Server(httpx.Response(200, json=body))) as client:
        first = await exchange(client)
        again = await client.refresh(Secret(REFRESH), human_id=HUMAN, scope=SCOPE)
    assert first.human_id == HUMAN and again.warnings == ()


async def test_no_expires_in_means_the_default_lifetime_with_one_warning_per_client() -> None:
    lean = {k: v for k, v in GRANT.items() if k != "expires_in"}
    with capture_logs() as logs:
        async with client_for(
            Server(httpx.Response(200, json=lean)), default_lifetime=1200
        ) as client:
            first = await exchange(client)
            again = await client.refresh(Secret(REFRESH), human_id=HUMAN, scope=SCOPE)
            third = await client.refresh(Secret(REFRESH), human_id=HUMAN, scope=SCOPE)
    assert [a.expires_in for a in (first, again, third)] == [1200, 1200, 1200]
    assert first.lifetime_defaulted and again.lifetime_defaulted and again.warnings == ()
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1
    assert "expires_in" in warnings[0]["event"]
    assert warnings[0]["default_token_lifetime"] == 1200


async def test_an_answer_with_expires_in_warns_of_nothing() -> None:
    with capture_logs() as logs:
        async with client_for(Server(httpx.Response(200, json=GRANT))) as client:
            answer = await exchange(client)
    assert not answer.lifetime_defaulted
    assert [e for e in logs if e["log_level"] == "warning"] == []


@pytest.mark.parametrize("lifetime", [0, -5, True, 366 * 86400 + 1])
def test_a_default_lifetime_that_is_no_lifetime_is_refused(lifetime: int) -> None:
    with pytest.raises(ValueError, match="default_lifetime"):
        client_for(Server(httpx.Response(200)), default_lifetime=lifetime)


async def test_a_refresh_answer_without_scope_human_or_refresh_token_keeps_the_grants() -> None:
    lean = {"access_token": ACCESS, "token_type": "bearer", "expires_in": 20}
    async with client_for(Server(httpx.Response(200, json=lean))) as client:
        answer = await client.refresh(Secret(REFRESH), human_id=HUMAN, scope=SCOPE)
    assert (answer.refresh_token, answer.human_id, answer.scope) == (None, HUMAN, SCOPE)
    assert (answer.expires_in, answer.warnings) == (20, ())


async def test_from_config_takes_the_standard_oauth_keys() -> None:
    haas = haas_config(
        token_request_format="form",
        token_endpoint_auth_method="client_secret_basic",
        revocation_url=REVOCATION_URL,
        default_token_lifetime=900,
    )
    lean = {k: v for k, v in GRANT.items() if k != "expires_in"}
    server = Server(httpx.Response(200, json=lean))
    budget = RateBudget(60, ManualClock())
    async with AuthClient.from_config(
        haas, Secret(CLIENT_SECRET), budget, transport=httpx.MockTransport(server)
    ) as client:
        answer = await exchange(client)
        assert client.can_revoke and await client.revoke(Secret(NEW_REFRESH))
    assert answer.expires_in == 900
    exchanged, revoked = server.requests
    assert exchanged.headers["authorization"].startswith("Basic ")
    assert "client_secret" not in body_of(exchanged)
    assert str(revoked.url) == REVOCATION_URL


# --- refusals that point at the setting that fixes them ------------------------------------


@pytest.mark.parametrize("code", ["unsupported_grant_type", "invalid_request"])
async def test_a_json_body_refused_suggests_the_form_format(code: str) -> None:
    async with client_for(Server(oauth(400, code))) as client:
        with pytest.raises(RequestRejectedError) as caught:
            await refresh(client)
    assert 'haas.token_request_format = "form"' in str(caught.value)
    assert_nothing_secret(str(caught.value))


@pytest.mark.parametrize(
    ("reply", "request_format"),
    [
        (oauth(400, "unsupported_grant_type"), "form"),  # form already: not the cause
        (oauth(400, "invalid_scope"), "json"),
        (oauth(400, "invalid_grant"), "json"),
    ],
)
async def test_other_refusals_do_not_suggest_the_form_format(
    reply: httpx.Response, request_format: RequestFormat
) -> None:
    async with client_for(Server(reply), request_format=request_format) as client:
        with pytest.raises(AuthError) as caught:
            await refresh(client)
    assert "token_request_format" not in str(caught.value)


@pytest.mark.parametrize(
    ("method", "other"),
    [("client_secret_post", "client_secret_basic"), ("client_secret_basic", "client_secret_post")],
)
@pytest.mark.parametrize("reply", [oauth(401, "invalid_client"), httpx.Response(401)])
async def test_a_client_refusal_names_the_auth_method_and_the_other_one(
    method: AuthMethod, other: str, reply: httpx.Response
) -> None:
    async with client_for(Server(reply), auth_method=method) as client:
        with pytest.raises(ClientAuthError) as caught:
            await exchange(client)
    message = str(caught.value)
    assert "haas.token_endpoint_auth_method" in message
    assert f'"{method}" is in use' in message and f'may want "{other}"' in message
    assert "haas.client_id" in message and "client secret" in message
    assert_nothing_secret(message)


async def test_unauthorized_client_is_about_the_grant_type_not_the_credentials() -> None:
    async with client_for(Server(oauth(400, "unauthorized_client"))) as client:
        with pytest.raises(ClientAuthError) as caught:
            await refresh(client)
    assert "token_endpoint_auth_method" not in str(caught.value)


async def test_a_revocation_never_waits_long_for_the_rate_budget() -> None:
    """Callers shield revocations from cancellation: an exhausted budget must not hold
    them (and a shutdown) for up to an hour."""
    server = Server(httpx.Response(200))
    budget = RateBudget(60, ManualClock())
    budget.block_for(600)
    with capture_logs() as logs:
        async with client_for(server, budget, revocation_url=REVOCATION_URL) as client:
            with anyio.fail_after(5):
                assert await client.revoke(Secret(NEW_REFRESH)) is False
            assert client.stats.requests == {("revoke", "rate_limited"): 1}
    assert server.requests == []
    [warning] = [e for e in logs if e["log_level"] == "warning" and "revoked" in e["event"]]
    assert "rate budget" in warning["error"]
