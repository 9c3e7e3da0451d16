"""A real, independent OAuth 2.0 authorization server for the tests: Authlib's, stock.

Authlib implements the protocol. This module supplies only what Authlib leaves to every
deployment — storage (plain objects in memory), a login page (test scaffolding: the
browser names the user it logs in as) — and the settings a real deployment chooses:

- the authorization code grant with PKCE required, S256 only (RFC 7636; RFC 9700 §2.1.1);
- the refresh token grant with rotation (Authlib's ``INCLUDE_NEW_REFRESH_TOKEN``: a new
  refresh token on every refresh, the old one revoked, its access token with it, as
  Authlib's own token model does) and reuse detection: a revoked refresh token presented
  again is ``invalid_grant`` and revokes every token of its grant (RFC 9700 §4.14.2);
- RFC 7662 introspection, for a resource server's own client, and RFC 7009 revocation;
- confidential clients registered with a ``token_endpoint_auth_method``
  (``client_secret_basic`` unless told otherwise); access tokens of 20 s.

Token answers are Authlib's own: RFC 6749 §5.1 fields, never a ``human_id``. Authlib
always sends ``scope``; ``omit_scope=True`` is the one tweak, and a small one: the token
generator drops ``scope`` when it is the scope requested, as §5.1 allows. Two more stock
settings other deployments choose: ``rotate=False`` is Authlib's default refresh grant
(the refresh token stays, answers carry none: §6), and ``access_lifetime=0`` issues
tokens that do not expire, whose answers carry no ``expires_in``.

It serves over real loopback HTTP — werkzeug's server in a thread, 127.0.0.1, an
ephemeral port — and records what it saw of every request to its token and revocation
endpoints, so tests assert on the server's view, not haasd's.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import anyio.to_thread
import httpx
from authlib.integrations.flask_oauth2 import (  # type: ignore[import-untyped]
    AuthorizationServer,
)
from authlib.oauth2 import OAuth2Error  # type: ignore[import-untyped]
from authlib.oauth2.rfc6749 import (  # type: ignore[import-untyped]
    AuthorizationCodeMixin,
    ClientMixin,
    TokenMixin,
    grants,
)
from authlib.oauth2.rfc6749.errors import (  # type: ignore[import-untyped]
    InvalidRequestError,
)
from authlib.oauth2.rfc7009 import RevocationEndpoint  # type: ignore[import-untyped]
from authlib.oauth2.rfc7636 import CodeChallenge  # type: ignore[import-untyped]
from authlib.oauth2.rfc7662 import IntrospectionEndpoint  # type: ignore[import-untyped]
from flask import Flask, Response, request
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

__all__ = ["ACCESS_LIFETIME", "AuthlibServer", "Client", "RevocationRecord", "TokenRecord"]

#: seconds an access token lives
ACCESS_LIFETIME: Final = 20
#: seconds an authorization code lives (RFC 6749 §4.1.2 recommends at most 10 minutes)
CODE_LIFETIME: Final = 300
RESOURCE_SERVER: Final = "resource-server"


@dataclass
class Client(ClientMixin):  # type: ignore[misc]
    """A registered client, as Authlib's own client model keeps one."""

    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...] = ()
    scope: str = ""
    grant_types: tuple[str, ...] = ("authorization_code", "refresh_token")
    token_endpoint_auth_method: str = "client_secret_basic"
    may_introspect: bool = False

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if self.redirect_uris else None

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return ""
        allowed = set(self.scope.split())
        return " ".join(s for s in scope.split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.token_endpoint_auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass
class AuthorizationCode(AuthorizationCodeMixin):  # type: ignore[misc]
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user_id: str
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: float = field(default_factory=time.time)

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def is_expired(self) -> bool:
        return self.auth_time + CODE_LIFETIME < time.time()


@dataclass
class Token(TokenMixin):  # type: ignore[misc]
    """One token answer's tokens. As in Authlib's token model, revoking either token
    revokes the pair (a rotated refresh token takes its access token with it)."""

    client_id: str
    user_id: str
    grant_id: str  # every token descending from one authorization code
    access_token: str
    refresh_token: str | None
    scope: str
    expires_in: int  # 0: never expires
    issued_at: float = field(default_factory=time.time)
    revoked_at: float | None = None

    def check_client(self, client: Client) -> bool:
        return self.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return bool(self.expires_in) and self.issued_at + self.expires_in < time.time()

    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def get_user(self) -> User:
        return User(self.user_id)

    def get_client(self) -> None:
        return None


@dataclass(frozen=True)
class User:
    id: str

    def get_user_id(self) -> str:
        return self.id


@dataclass(frozen=True)
class TokenRecord:
    """One request to the token endpoint, as the server saw it."""

    received_at: float
    answered_at: float
    grant_type: str | None
    #: how the client authenticated: "basic", "body", "both" or "none"
    credentials: str
    content_type: str
    refresh_token: str | None  # the refresh token presented
    status: int
    error: str | None
    body: dict[str, Any]  # the answer's JSON


@dataclass(frozen=True)
class RevocationRecord:
    """One request to the revocation endpoint, as the server saw it."""

    token: str | None
    token_type_hint: str | None
    credentials: str
    status: int


class S256CodeChallenge(CodeChallenge):  # type: ignore[misc]
    """Authlib's PKCE extension with the settings RFC 9700 asks for: S256 only, and a
    challenge required of every client, confidential ones too."""

    SUPPORTED_CODE_CHALLENGE_METHOD: Final = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD: Final = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        if not grant.request.payload.data.get("code_challenge"):
            raise InvalidRequestError("Missing 'code_challenge'")
        super().validate_code_challenge(grant, redirect_uri)


class AuthlibServer:
    """An Authlib authorization server with its clients, users and tokens in memory.

    ``with server.running():`` serves it on 127.0.0.1; the ``*_url`` attributes say
    where. Every request is handled under one lock, so the records read consistently.
    """

    def __init__(
        self,
        *,
        users: tuple[str, ...] = (),
        clients: tuple[Client, ...] = (),
        access_lifetime: int = ACCESS_LIFETIME,
        omit_scope: bool = False,
        rotate: bool = True,
    ) -> None:
        self.users: set[str] = set(users)
        self.clients = {c.client_id: c for c in clients}
        self.resource_server = Client(
            RESOURCE_SERVER, secrets.token_urlsafe(24), grant_types=(), may_introspect=True
        )
        self.clients[RESOURCE_SERVER] = self.resource_server
        self.codes: dict[str, AuthorizationCode] = {}
        self.tokens: list[Token] = []
        self.token_requests: list[TokenRecord] = []
        self.revocations: list[RevocationRecord] = []
        self.omit_scope = omit_scope
        self.rotate = rotate
        self._lock = threading.Lock()
        self._revoked = threading.Condition(self._lock)
        self.app = self._app(access_lifetime)
        self.base_url = ""

    # --- what the tests read and do -------------------------------------------------------

    @property
    def authorize_url(self) -> str:
        return f"{self.base_url}/authorize"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/token"

    @property
    def introspection_url(self) -> str:
        return f"{self.base_url}/introspect"

    @property
    def revocation_url(self) -> str:
        return f"{self.base_url}/revoke"

    def refreshes(self) -> list[TokenRecord]:
        with self._lock:
            return [r for r in self.token_requests if r.grant_type == "refresh_token"]

    def requests(self) -> list[TokenRecord]:
        with self._lock:
            return list(self.token_requests)

    def revoke_user(self, user_id: str) -> int:
        """What an administrator does at the server: revoke every token of ``user_id``.
        Returns how many were live."""
        with self._lock:
            now = time.time()
            live = [t for t in self.tokens if t.user_id == user_id and t.revoked_at is None]
            for token in live:
                token.revoked_at = now
            return len(live)

    def superseded_at(self, access_token: str) -> float | None:
        """When the server answered the refresh that rotated ``access_token``'s refresh
        token away, if one did."""
        with self._lock:
            token = self._by_access(access_token)
            if token is None or token.refresh_token is None:
                return None
            spent = [
                r.answered_at
                for r in self.token_requests
                if r.refresh_token == token.refresh_token and r.status == 200
            ]
            return spent[0] if spent else None

    async def revocations_seen(self, count: int, within: float = 10.0) -> list[RevocationRecord]:
        """The revocation requests, once at least ``count`` have been answered (a client
        may revoke in the background); AssertionError if not ``within`` seconds."""

        def wait() -> bool:
            with self._revoked:
                return self._revoked.wait_for(lambda: len(self.revocations) >= count, within)

        assert await anyio.to_thread.run_sync(wait), f"fewer than {count} revocations"
        with self._lock:
            return list(self.revocations)

    async def approve(self, authorization_url: str, user_id: str, *, confirm: bool = True) -> str:
        """Be the human's browser: open the authorization page, log in as ``user_id`` and
        approve (or deny); return where the server redirects, the callback URL."""
        async with httpx.AsyncClient(follow_redirects=False) as browser:
            page = await browser.get(authorization_url)
            assert page.status_code == 200, page.text
            answer = await browser.post(
                authorization_url,
                data={"username": user_id, "confirm": "yes" if confirm else "no"},
            )
        assert answer.status_code == 302, answer.text
        return answer.headers["location"]

    async def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662, as a resource server asks: the token's metadata, ``active`` first."""
        rs = self.resource_server
        async with httpx.AsyncClient() as http:
            reply = await http.post(
                self.introspection_url,
                data={"token": token},
                auth=(rs.client_id, rs.client_secret),
            )
        reply.raise_for_status()
        data: dict[str, Any] = reply.json()
        return data

    @contextmanager
    def running(self) -> Iterator[AuthlibServer]:
        server: BaseWSGIServer = make_server(
            "127.0.0.1", 0, self.app, threaded=True, request_handler=_QuietHandler
        )
        self.base_url = f"http://127.0.0.1:{server.server_port}"
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)

    # --- storage: what Authlib asks of a deployment ---------------------------------------

    def _by_access(self, access_token: str) -> Token | None:
        return next((t for t in self.tokens if t.access_token == access_token), None)

    def _by_refresh(self, refresh_token: str) -> Token | None:
        """The newest token answer holding ``refresh_token`` (without rotation, each
        refresh hands it on to the next answer's record)."""
        held = [t for t in self.tokens if t.refresh_token == refresh_token]
        return held[-1] if held else None

    def _query_client(self, client_id: str) -> Client | None:
        return self.clients.get(client_id)

    def _save_token(self, token: dict[str, Any], req: Any) -> None:
        code = getattr(req, "authorization_code", None)
        old: Token | None = getattr(req, "refresh_token", None)
        grant_id = old.grant_id if old is not None else code.code if code else "?"
        self.tokens.append(
            Token(
                client_id=req.client.client_id,
                user_id=req.user.id,
                grant_id=grant_id,
                access_token=token["access_token"],
                # not rotated: the refresh token stays, and moves on to this answer
                refresh_token=token.get("refresh_token", old.refresh_token if old else None),
                scope=token.get("scope", old.scope if old else code.scope if code else ""),
                expires_in=token.get("expires_in", 0),
            )
        )

    def _revoke_grant(self, grant_id: str) -> None:
        now = time.time()
        for token in self.tokens:
            if token.grant_id == grant_id and token.revoked_at is None:
                token.revoked_at = now

    # --- the application -----------------------------------------------------------------

    def _app(self, access_lifetime: int) -> Flask:
        app = Flask("authlib_server")
        app.config.update(
            OAUTH2_REFRESH_TOKEN_GENERATOR=True,
            OAUTH2_TOKEN_EXPIRES_IN={
                "authorization_code": access_lifetime,
                "refresh_token": access_lifetime,
            },
        )
        server = AuthorizationServer(app, self._query_client, self._save_token)
        if self.omit_scope:
            server.register_token_generator("default", _omitting_scope(server, app.config))
        server.register_grant(self._code_grant(), [S256CodeChallenge(required=True)])
        server.register_grant(self._refresh_grant())
        server.register_endpoint(self._introspection_endpoint())
        server.register_endpoint(self._revocation_endpoint())

        @app.route("/authorize", methods=["GET", "POST"])
        def authorize() -> Response:
            with self._lock:
                return self._authorize(server)

        @app.route("/token", methods=["POST"])
        def token() -> Response:
            with self._lock:
                return self._token(server)

        @app.route("/introspect", methods=["POST"])
        def introspect() -> Response:
            with self._lock:
                response: Response = server.create_endpoint_response("introspection")
                return response

        @app.route("/revoke", methods=["POST"])
        def revoke() -> Response:
            with self._lock:
                response: Response = server.create_endpoint_response("revocation")
                self.revocations.append(
                    RevocationRecord(
                        token=request.form.get("token"),
                        token_type_hint=request.form.get("token_type_hint"),
                        credentials=_credentials(),
                        status=response.status_code,
                    )
                )
                self._revoked.notify_all()
                return response

        return app

    def _authorize(self, server: AuthorizationServer) -> Response:
        """The login-and-consent page: GET shows it, POST (username, confirm) answers."""
        user = None
        if request.method == "POST":
            name = request.form.get("username", "")
            user = User(name) if name in self.users else None
        try:
            grant = server.get_consent_grant(end_user=user)
        except OAuth2Error as error:
            response: Response = server.handle_error_response(request, error)
            return response
        if request.method == "GET":
            return Response("<form method=post>log in and approve</form>", mimetype="text/html")
        approved = user if request.form.get("confirm") == "yes" else None
        response = server.create_authorization_response(grant_user=approved, grant=grant)
        return response

    def _token(self, server: AuthorizationServer) -> Response:
        received = time.time()
        response: Response = server.create_token_response()
        body = response.get_json(silent=True) or {}
        self.token_requests.append(
            TokenRecord(
                received_at=received,
                answered_at=time.time(),
                grant_type=request.form.get("grant_type"),
                credentials=_credentials(),
                content_type=request.content_type or "",
                refresh_token=request.form.get("refresh_token"),
                status=response.status_code,
                error=body.get("error"),
                body=body,
            )
        )
        return response

    def _code_grant(self) -> type[grants.AuthorizationCodeGrant]:
        owner = self

        class CodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
            def save_authorization_code(self, code: str, req: Any) -> None:
                owner.codes[code] = AuthorizationCode(
                    code=code,
                    client_id=req.client.client_id,
                    redirect_uri=req.payload.redirect_uri or "",
                    scope=req.payload.scope or "",
                    user_id=req.user.id,
                    code_challenge=req.payload.data.get("code_challenge"),
                    code_challenge_method=req.payload.data.get("code_challenge_method"),
                )

            def query_authorization_code(
                self, code: str, client: Client
            ) -> AuthorizationCode | None:
                item = owner.codes.get(code)
                if item and item.client_id == client.client_id and not item.is_expired():
                    return item
                return None

            def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
                owner.codes.pop(authorization_code.code, None)

            def authenticate_user(self, authorization_code: AuthorizationCode) -> User:
                return User(authorization_code.user_id)

        return CodeGrant

    def _refresh_grant(self) -> type[grants.RefreshTokenGrant]:
        owner = self

        class RefreshGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
            INCLUDE_NEW_REFRESH_TOKEN = owner.rotate

            def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
                token = owner._by_refresh(refresh_token)
                if token is None:
                    return None
                if token.is_revoked():  # reuse: the whole grant goes
                    owner._revoke_grant(token.grant_id)
                    return None
                return token

            def authenticate_user(self, refresh_token: Token) -> User | None:
                return User(refresh_token.user_id)

            def revoke_old_credential(self, refresh_token: Token) -> None:
                refresh_token.revoked_at = time.time()

        return RefreshGrant

    def _introspection_endpoint(self) -> type[IntrospectionEndpoint]:
        owner = self

        class Introspection(IntrospectionEndpoint):  # type: ignore[misc]
            def query_token(self, token: str, token_type_hint: str | None) -> Token | None:
                return owner._by_access(token) or owner._by_refresh(token)

            def introspect_token(self, token: Token) -> dict[str, Any]:
                return {
                    "active": True,
                    "client_id": token.client_id,
                    "token_type": "Bearer",
                    "username": token.user_id,
                    "sub": token.user_id,
                    "scope": token.scope,
                    "iat": int(token.issued_at),
                } | ({"exp": int(token.issued_at + token.expires_in)} if token.expires_in else {})

            def check_permission(self, token: Token, client: Client, req: Any) -> bool:
                return client.may_introspect

        return Introspection

    def _revocation_endpoint(self) -> type[RevocationEndpoint]:
        owner = self

        class Revocation(RevocationEndpoint):  # type: ignore[misc]
            def query_token(self, token: str, token_type_hint: str | None) -> Token | None:
                return owner._by_access(token) or owner._by_refresh(token)

            def revoke_token(self, token: Token, req: Any) -> None:
                # a refresh token revokes its grant (RFC 7009 §2.1 allows it; Authlib's
                # model revokes the pair)
                if token.refresh_token == req.form.get("token"):
                    owner._revoke_grant(token.grant_id)
                else:
                    token.revoked_at = time.time()

        return Revocation


def _omitting_scope(server: AuthorizationServer, config: Any) -> Any:
    """Authlib's bearer token generator, leaving out ``scope`` when it is the scope
    requested (RFC 6749 §5.1: OPTIONAL if identical)."""
    stock = server.create_bearer_token_generator(config)

    def generate(**kwargs: Any) -> dict[str, Any]:
        token: dict[str, Any] = stock(**kwargs)
        if token.get("scope") == kwargs.get("scope"):
            token.pop("scope", None)
        return token

    return generate


def _credentials() -> str:
    """How the client of this request authenticated: Basic header, body, both or none."""
    basic = request.headers.get("Authorization", "").lower().startswith("basic ")
    body = "client_secret" in request.form
    return {(True, False): "basic", (False, True): "body", (True, True): "both"}.get(
        (basic, body), "none"
    )


class _QuietHandler(WSGIRequestHandler):
    """werkzeug's handler without a log line per request."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass
