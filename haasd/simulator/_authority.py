"""The simulated HaaS authorization server's decisions, without I/O.

:class:`Authority` holds the humans, authorization codes, grants and tokens, and answers
``/authorize`` and ``/token`` as pure functions of the request and the clock's wall time
``now``: bytes in, a :class:`~haasd.simulator._messages.Reply` out. The wire layer and the
fault injection live elsewhere.

A *grant* (here a :class:`~haasd.simulator._records.Family`) is one consent: the tokens
issued from one authorization code, and every refresh token rotated from them. Revoking it
revokes all of them.
"""

from __future__ import annotations

import hmac
import math
import secrets
from collections import deque
from collections.abc import Mapping

from haasd.simulator._authorize import (
    Redirect,
    malformed,
    query_params,
    redirect_ok,
    scope_of,
    verifier_problem,
)
from haasd.simulator._messages import Reply, html_reply, json_reply, oauth_error
from haasd.simulator._ratelimit import FixedWindowLimiter, too_many
from haasd.simulator._records import AccessTokenRecord, Code, Family, RefreshTokenRecord
from haasd.simulator._settings import SCOPES, Decision, Settings
from haasd.simulator._stats import SimulatorStats, SpentTokenRecord
from haasd.simulator._tokenrequest import (
    WWW_AUTHENTICATE,
    TokenRequest,
    invalid_request,
)

__all__ = ["SCOPES", "Authority", "Decision", "Settings"]


class Authority:
    """Humans, codes, grants and tokens; the answers to ``/authorize`` and ``/token``."""

    def __init__(self, settings: Settings, stats: SimulatorStats) -> None:
        self.settings = settings
        self._stats = stats
        self._limiter = FixedWindowLimiter(settings.requests_per_minute)
        self._humans: dict[str, Decision] = {}
        self._queue: deque[tuple[str, Decision | None]] = deque()
        self._auto_humans = 0
        self._codes: dict[str, Code] = {}
        self._refresh_tokens: dict[str, RefreshTokenRecord] = {}
        self._access_tokens: dict[str, AccessTokenRecord] = {}
        self._families: list[Family] = []

    # -- humans ------------------------------------------------------------------------

    def add_human(self, human_id: str, decision: Decision) -> None:
        if not human_id:
            raise ValueError("human_id must not be empty")
        self._humans[human_id] = decision

    def set_decision(self, human_id: str, decision: Decision) -> None:
        if human_id not in self._humans:
            raise KeyError(f"no simulated human {human_id!r}; add_human() first")
        self._humans[human_id] = decision

    def queue_human(self, human_id: str, decision: Decision | None) -> None:
        self._humans.setdefault(human_id, "approve")
        self._queue.append((human_id, decision))

    def revoke(self, human_id: str) -> int:
        """Revoke every grant and pending code of ``human_id``; how many grants."""
        for code in self._codes.values():
            if code.human_id == human_id:
                code.revoked = True
        live = [f for f in self._families if f.human_id == human_id and not f.revoked]
        for family in live:
            self._revoke_family(family)
        return len(live)

    def _choose_human(self, login_hint: str | None) -> tuple[str, Decision]:
        if login_hint is not None and self.settings.honour_login_hint:
            decision = self._humans.setdefault(login_hint, "approve")
            return login_hint, decision
        if self._queue:
            human_id, override = self._queue.popleft()
            return human_id, override or self._humans.setdefault(human_id, "approve")
        while True:
            self._auto_humans += 1
            human_id = f"usr_sim_{self._auto_humans}"
            if human_id not in self._humans:
                self._humans[human_id] = "approve"
                return human_id, "approve"

    # -- observation -------------------------------------------------------------------

    def validate_access_token(self, token: str, now: float) -> str | None:
        record = self._access_tokens.get(token)
        if record is None or record.revoked or record.family.revoked or now >= record.expires_at:
            return None
        return record.family.human_id

    def access_token_expires_at(self, token: str) -> float | None:
        record = self._access_tokens.get(token)
        return None if record is None else record.expires_at

    def has_active_grant(self, human_id: str, now: float) -> bool:
        return any(
            f.human_id == human_id and not f.revoked and now < f.expires_at for f in self._families
        )

    def human_for(self, request: TokenRequest) -> str | None:
        """The human a token request concerns, looked up without changing anything."""
        if code := self._codes.get(request.params.get("code", "")):
            return code.human_id
        if refresh := self._refresh_tokens.get(request.params.get("refresh_token", "")):
            return refresh.family.human_id
        return None

    def rate_status_headers(self, now: float) -> tuple[tuple[str, str], ...]:
        """The registered client's rate-limit headers, without counting a request."""
        return self._limiter.check(self.settings.client_id, now, consume=False).headers()

    # -- /authorize ----------------------------------------------------------------------

    def authorize(self, query: str, now: float) -> Reply:
        """``GET /authorize``: a human reads the consent page and decides."""
        params, repeated = query_params(query)
        headers = self.rate_status_headers(now)
        client_id = params.get("client_id")
        redirect_uri = params.get("redirect_uri")
        if client_id != self.settings.client_id or "client_id" in repeated:
            return html_reply(400, "Unknown application", "This client_id is not known.", headers)
        if (
            redirect_uri is None
            or "redirect_uri" in repeated
            or not redirect_ok(redirect_uri, self.settings.redirect_uris)
        ):
            message = "The redirect_uri is missing or not registered for this application."
            return html_reply(400, "Invalid redirect", message, headers)
        back = {"state": params["state"]} if "state" in params else {}
        redirect = Redirect(redirect_uri, back, headers)
        if problem := malformed(params, repeated):
            return redirect.error(*problem)
        scope = scope_of(params)
        if "*" in scope:
            self._choose_human(params.get("login_hint"))
            return self._closed_tab(headers)
        if unknown := [s for s in scope if s not in SCOPES]:
            return redirect.error("invalid_scope", f"unknown scope: {' '.join(unknown)}")
        return self._ask_human(params, client_id, scope, redirect, now)

    def _ask_human(
        self,
        params: Mapping[str, str],
        client_id: str,
        scope: tuple[str, ...],
        redirect: Redirect,
        now: float,
    ) -> Reply:
        """The human's decision on a well-formed request; a code when they approve."""
        human_id, decision = self._choose_human(params.get("login_hint"))
        if decision == "ignore":
            return self._closed_tab(redirect.headers)
        if decision == "deny":
            return redirect.error("access_denied", "the human declined")
        code = secrets.token_urlsafe(32)
        self._codes[code] = Code(
            client_id=client_id,
            redirect_uri=redirect.uri,
            scope=scope,
            human_id=human_id,
            challenge=params.get("code_challenge"),
            expires_at=now + self.settings.code_lifetime,
        )
        return redirect.to({"code": code}, human_id=human_id)

    @staticmethod
    def _closed_tab(headers: tuple[tuple[str, str], ...]) -> Reply:
        message = "The human looked at this page, sighed, and closed the tab."
        return html_reply(200, "Authorize this application?", message, headers)

    # -- /token --------------------------------------------------------------------------

    def token(self, request: TokenRequest, now: float) -> Reply:
        """``POST /token``, rate limit first (it is keyed by the claimed client)."""
        rate = self._limiter.check(request.claimed_client_id, now)
        if not rate.allowed:
            self._stats.rate_limited += 1
            return too_many(rate)
        return self._token(request, now).with_headers(rate.headers())

    def _token(self, request: TokenRequest, now: float) -> Reply:
        client_id = self._authenticate(request)
        if isinstance(client_id, Reply):
            return client_id
        params = request.params
        match params.get("grant_type"):
            case None:
                return invalid_request("grant_type is required")
            case "authorization_code":
                return self._exchange_code(params, client_id, now)
            case "refresh_token":
                return self._refresh(params, now)
            case other:
                return oauth_error(
                    400, "unsupported_grant_type", f"grant_type {other!r} is not supported"
                )

    def _authenticate(self, request: TokenRequest) -> str | Reply:
        """The authenticated client id (HTTP Basic or body credentials), or the error."""
        if request.error is not None:
            return request.error
        params = request.params
        if request.basic is not None:
            if "client_secret" in params:
                return invalid_request("use one client authentication method, not two")
            client_id, secret = request.basic
            if params.get("client_id", client_id) != client_id:
                return invalid_request("client_id in the body differs from Basic credentials")
        else:
            client_id, secret = params.get("client_id", ""), params.get("client_secret", "")
        if not (
            client_id == self.settings.client_id
            and hmac.compare_digest(secret.encode(), self.settings.client_secret.reveal().encode())
        ):
            return oauth_error(
                401, "invalid_client", "client authentication failed", WWW_AUTHENTICATE
            )
        return client_id

    # -- /revoke (RFC 7009) --------------------------------------------------------------

    def revocation(self, request: TokenRequest, now: float) -> Reply:
        """``POST /revoke``, rate limit first, as ``/token``."""
        rate = self._limiter.check(request.claimed_client_id, now)
        if not rate.allowed:
            self._stats.rate_limited += 1
            return too_many(rate)
        return self._revocation(request).with_headers(rate.headers())

    def _revocation(self, request: TokenRequest) -> Reply:
        """RFC 7009 §2: a refresh token revokes its whole grant (every token issued from
        the same code); an access token only itself. An unknown or already revoked
        token is answered 200 all the same (§2.2); ``token_type_hint`` is only a hint."""
        client_id = self._authenticate(request)
        if isinstance(client_id, Reply):
            return client_id
        token = request.params.get("token")
        if token is None:
            return invalid_request("token is required")
        self._stats.revocations += 1
        if (refresh := self._refresh_tokens.get(token)) is not None:
            if not refresh.family.revoked:
                self._revoke_family(refresh.family)
        elif (access := self._access_tokens.get(token)) is not None:
            access.revoked = True
        return json_reply(200, {})

    def _exchange_code(self, params: Mapping[str, str], client_id: str, now: float) -> Reply:
        if "code" not in params:
            return invalid_request("code is required")
        if "redirect_uri" not in params:
            return invalid_request("redirect_uri is required")
        code = self._spend_code(params["code"], client_id, now)
        if isinstance(code, Reply):
            return code
        if params["redirect_uri"] != code.redirect_uri:
            return oauth_error(400, "invalid_grant", "redirect_uri does not match the request")
        if problem := verifier_problem(code.challenge, params.get("code_verifier")):
            return oauth_error(400, "invalid_grant", problem)
        family = Family(code.human_id, code.scope, now + self.settings.refresh_token_lifetime)
        self._families.append(family)
        code.family = family
        self._stats.codes_exchanged += 1
        refresh = self._new_refresh_token(family)
        return self._token_reply(
            family, self._new_access_token(family, family.scope, now), refresh, now
        )

    def _spend_code(self, presented: str, client_id: str, now: float) -> Code | Reply:
        """The code ``presented``, spent by this presentation; or why it is no good."""
        code = self._codes.get(presented)
        if code is None or code.client_id != client_id:
            return oauth_error(400, "invalid_grant", "unknown authorization code")
        if code.revoked:
            return oauth_error(400, "invalid_grant", "the human withdrew consent")
        if code.spent:
            # RFC 6749 §4.1.2: a code used twice revokes what it was exchanged for
            self._stats.code_replays += 1
            if code.family is not None and not code.family.revoked:
                self._revoke_family(code.family)
            return oauth_error(400, "invalid_grant", "authorization code already used")
        code.spent = True  # by its first presentation, successful or not
        if now >= code.expires_at:
            return oauth_error(400, "invalid_grant", "authorization code expired")
        return code

    def _refresh(self, params: Mapping[str, str], now: float) -> Reply:
        if "refresh_token" not in params:
            return invalid_request("refresh_token is required")
        presented = params["refresh_token"]
        record = self._refresh_tokens.get(presented)
        if record is None:
            return oauth_error(400, "invalid_grant", "unknown refresh token")
        family = record.family
        human_id = family.human_id
        if family.revoked:
            return oauth_error(400, "invalid_grant", "refresh token revoked")
        if now >= family.expires_at:
            return oauth_error(400, "invalid_grant", "refresh token expired; re-authorize")
        if record.spent_at is not None:
            return self._reused(record, now)
        scope = family.scope
        if "scope" in params:
            scope = tuple(dict.fromkeys(params["scope"].split()))
            if not scope or not set(scope) <= set(family.scope):
                return oauth_error(400, "invalid_scope", "scope exceeds the granted scope")
        access = self._new_access_token(family, scope, now)
        self._stats.refreshes[human_id] += 1
        if not self.settings.rotate_refresh_tokens:
            keep = None if self.settings.omit_refresh_token_when_not_rotating else presented
            return self._token_reply(family, access, keep, now)
        successor = self._new_refresh_token(family)
        record.spent_at, record.successor, record.successor_access = now, successor, access
        return self._token_reply(family, access, successor, now)

    def _reused(self, record: RefreshTokenRecord, now: float) -> Reply:
        """A spent refresh token presented again: a grace replay, or reuse (revoking the
        grant when reuse detection is on)."""
        replay = self._grace_replay(record, now)
        if record.spent_at is not None:
            spent = SpentTokenRecord(
                now, record.family.human_id, record.spent_at, replay is not None
            )
            self._stats.spent_presented.append(spent)
        if replay is not None:
            return replay
        self._stats.reuse_events += 1
        if self.settings.reuse_detection:
            self._revoke_family(record.family)
            return oauth_error(400, "invalid_grant", "refresh token reused; grant revoked")
        return oauth_error(400, "invalid_grant", "refresh token already used")

    def _grace_replay(self, record: RefreshTokenRecord, now: float) -> Reply | None:
        """Within ``reuse_grace`` of its rotation, a spent token is honoured again
        (``grace_replays`` times at most).

        The answer repeats the rotation's tokens (the same access and refresh token,
        ``expires_in`` counted from now), as a client that lost the answer needs — but
        only while the new refresh token has not been used itself.
        """
        if record.spent_at is None or record.successor is None or record.successor_access is None:
            return None
        successor = self._refresh_tokens[record.successor]
        limit, grace = self.settings.grace_replays, self.settings.reuse_grace
        used_up = limit is not None and record.grace_used >= limit
        if used_up or now >= record.spent_at + grace or successor.spent_at is not None:
            return None
        record.grace_used += 1
        self._stats.grace_replays += 1
        return self._token_reply(record.family, record.successor_access, record.successor, now)

    def _revoke_family(self, family: Family) -> None:
        family.revoked = True
        self._stats.families_revoked += 1

    def _new_access_token(self, family: Family, scope: tuple[str, ...], now: float) -> str:
        token = "haas_at_" + secrets.token_urlsafe(32)
        self._access_tokens[token] = AccessTokenRecord(
            family, scope, now + self.settings.expires_in
        )
        return token

    def _new_refresh_token(self, family: Family) -> str:
        token = "haas_rt_" + secrets.token_urlsafe(32)
        self._refresh_tokens[token] = RefreshTokenRecord(family)
        return token

    def _token_reply(self, family: Family, access: str, refresh: str | None, now: float) -> Reply:
        """The HaaS docs' success body, keys in their order."""
        record = self._access_tokens[access]
        body: dict[str, str | int] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": max(0, math.floor(record.expires_at - now)),
        }
        if refresh is not None:
            body["refresh_token"] = refresh
        if self.settings.include_scope:
            body["scope"] = " ".join(record.scope)
        if self.settings.name_humans:
            body["human_id"] = family.human_id
        if self.settings.send_refresh_token_expires_in:
            body["refresh_token_expires_in"] = max(0, math.floor(family.expires_at - now))
        return json_reply(200, body, human_id=family.human_id)
