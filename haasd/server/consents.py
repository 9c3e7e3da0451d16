"""The consent routes: start a human's consent, and finish it from the browser's redirect.

==========================================  =======  =====================================
route                                       who      answer
==========================================  =======  =====================================
``GET /v1/consents``                        admin    200 the redirect URI, TTL, bound
``POST /v1/consents``                       admin    201 the URL to send the human to
``POST /v1/consents/callback``              admin    201 the human's status
==========================================  =======  =====================================

``POST /v1/consents`` takes an optional JSON object: ``scopes`` (a list, or one
space-separated string: it may narrow the configured scopes, never widen), ``human_id``
(a re-consent, or a known human's onboarding: the admin rule must cover that human) and
``redirect_uri`` (the configured loopback redirect URI on another port, RFC 8252 §7.3:
what ``haasd consent listen`` sends). ``POST /v1/consents/callback`` takes
``{"callback_url"}`` (the whole URL the browser was redirected to), or ``{"state",
"code"}``, or ``{"state", "error"[, "error_description"]}``. The human who approves is
the authorization server's word, known only after the exchange: finishing needs an admin
rule, not one for that human.

Errors, in the seed's shape (:class:`haasd.errors.ConsentError` and its subclasses):

====================  ======  ==============================================================
type                  status  meaning
====================  ======  ==============================================================
invalid_request       400     malformed body, human id, redirect URI or callback URL
invalid_scope         400     ``*`` (with the seed's advice), an unknown scope, or none
scope_not_allowed     400     a scope beyond the configured ones
invalid_state         400     unknown, expired or used state; nothing was exchanged
consent_denied        403     the redirect carried an error (``error``: ``access_denied``…)
exchange_failed       502     the server refused the code (``server_error``: its type)
exchange_unavailable  503     the exchange failed for now: the same callback may be sent
                              again (``retry_after``) until ``expires_at``
consent_limit         503     too many consents are pending (``retry_after``)
====================  ======  ==============================================================
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import anyio
import structlog

from haasd.clock import rfc3339
from haasd.consent._oauth import loopback_port
from haasd.errors import (
    ConsentDeniedError,
    ConsentError,
    ConsentLimitError,
    ConsentRequestError,
    ExchangeFailedError,
    ExchangeUnavailableError,
    HaasdError,
    InvalidStateError,
    ScopeError,
)
from haasd.grants import status_of
from haasd.server.answers import Problem, check_method, invalid
from haasd.server.http import Limits, json_response
from haasd.server.service import TokenService

if TYPE_CHECKING:
    from haasd.consent import ConsentFlow, ConsentResult, PendingConsent

__all__ = ["CONSENTS", "ConsentRoutes", "consent_problem"]

CONSENTS: Final = b"/v1/consents"
_CALLBACK: Final = b"/v1/consents/callback"
_START_FIELDS: Final = frozenset({"scopes", "human_id", "redirect_uri"})
_CALLBACK_FIELDS: Final = frozenset({"callback_url", "state", "code", "error", "error_description"})
#: the longest string field accepted (a callback URL is bounded by the flow itself)
_MAX_FIELD: Final = 8192
#: seconds to suggest when a transient failure names no Retry-After
_DEFAULT_RETRY: Final = 5.0

_audit = structlog.get_logger("haasd.audit")

#: raises a 403 Problem unless the peer is an admin (for the human, when one is named)
NeedAdmin = Callable[[str | None], None]


def _retry_after(seconds: float | None) -> int:
    if seconds is None or not math.isfinite(seconds):
        seconds = _DEFAULT_RETRY
    return max(1, math.ceil(seconds))


def _busy(error_type: str, message: str, seconds: float | None, **extra: Any) -> Problem:
    wait = _retry_after(seconds)
    headers = {"Retry-After": str(wait)}
    return Problem(503, error_type, message, headers=headers, retry_after=wait, **extra)


def consent_problem(exc: ConsentError) -> Problem:
    """The answer to a consent error (the module's table)."""
    message = str(exc)
    if isinstance(exc, ScopeError):
        return Problem(400, exc.error_type, message, scopes=list(exc.scopes))
    if isinstance(exc, ConsentRequestError):
        return invalid(message)
    if isinstance(exc, InvalidStateError):
        return Problem(400, "invalid_state", message, reason=exc.reason)
    if isinstance(exc, ConsentDeniedError):
        return Problem(
            403,
            "consent_denied",
            message,
            error=exc.error_type,
            error_description=exc.description,
        )
    if isinstance(exc, ExchangeFailedError):
        return Problem(
            502, "exchange_failed", message, server_error=exc.error_type, server_status=exc.status
        )
    if isinstance(exc, ExchangeUnavailableError):
        return _busy(
            "exchange_unavailable",
            message,
            exc.retry_after,
            server_error=exc.error_type,
            expires_at=rfc3339(exc.expires_at),
        )
    if isinstance(exc, ConsentLimitError):
        return _busy("consent_limit", message, exc.retry_after, limit=exc.limit)
    return Problem(500, "consent_failed", message)


def _parse(body: bytes, fields: frozenset[str]) -> dict[str, Any]:
    """The body's JSON object (``{}`` when empty), without null fields; 400 otherwise."""
    if not body.strip():
        return {}
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise invalid("the body is not JSON") from None
    if not isinstance(document, dict):
        raise invalid("the body must be a JSON object")
    if unknown := sorted(set(document) - fields):
        known = ", ".join(sorted(fields))
        raise invalid(f"unknown field {', '.join(unknown)}; known fields: {known}")
    return {name: value for name, value in document.items() if value is not None}


def _text(document: Mapping[str, Any], name: str) -> str | None:
    value = document.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > _MAX_FIELD:
        raise invalid(f"{name} must be a non-empty string")
    return value


def _scopes(document: Mapping[str, Any]) -> Sequence[str] | None:
    value = document.get("scopes")
    if value is None:
        return None
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list) and all(isinstance(s, str) and len(s) <= 64 for s in value):
        return [word for s in value for word in s.split()]
    raise invalid("scopes must be a list of scope names (or one space-separated string)")


def _started_json(pending: PendingConsent) -> dict[str, object]:
    answer: dict[str, object] = {
        "authorization_url": pending.authorization_url,
        "state": pending.state,
        "expires_at": rfc3339(pending.expires_at),
        "consent_id": pending.consent_id,
        "scope": " ".join(pending.scope),
        "redirect_uri": pending.redirect_uri,
        "reconsent": pending.reconsent,
    }
    if pending.human_id is not None:
        answer["human_id"] = pending.human_id
    return answer


class ConsentRoutes:
    """The consent routes over one :class:`~haasd.consent.ConsentFlow` (or none: 404)."""

    __slots__ = ("_flow", "_limits", "_pattern", "_service")

    def __init__(
        self,
        flow: ConsentFlow | None,
        service: TokenService,
        limits: Limits,
        human_id_pattern: re.Pattern[str],
    ) -> None:
        self._flow = flow
        self._service = service
        self._limits = limits
        self._pattern = human_id_pattern

    def handle(
        self, method: bytes, path: bytes, body: bytes, need_admin: NeedAdmin, peer_uid: int
    ) -> bytes | Awaitable[bytes]:
        """The answer to a request under ``/v1/consents`` (raises :class:`Problem`)."""
        if path == CONSENTS:
            check_method(method, b"GET", b"POST")
        elif path == _CALLBACK:
            check_method(method, b"POST")
        else:
            raise Problem(404, "not_found", "no such route; see GET /v1/health")
        need_admin(None)  # before the body is read: others learn nothing from it
        flow = self._flow
        if flow is None:
            raise Problem(404, "not_found", "this haasd does not take consents")
        if method == b"GET":
            return json_response(200, self._settings(flow))
        if path == CONSENTS:
            document = _parse(body, _START_FIELDS)
            human_id = _text(document, "human_id")
            if human_id is not None:
                if not self._pattern.fullmatch(human_id):
                    raise invalid(f"not a human id (expected the form {self._pattern.pattern!r})")
                need_admin(human_id)
            scopes, redirect_uri = _scopes(document), _text(document, "redirect_uri")
            return self._start(flow, scopes, human_id, redirect_uri, peer_uid)
        document = _parse(body, _CALLBACK_FIELDS)
        url = _text(document, "callback_url")
        if url is not None:
            if len(document) > 1:
                raise invalid("give either callback_url or state with code or error, not both")
            return self._finish(flow, peer_uid, lambda: flow.finish_url(url))
        state, code, error = (_text(document, n) for n in ("state", "code", "error"))
        description = _text(document, "error_description")
        if state is None or (code is None) == (error is None):
            raise invalid("give callback_url, or state with either code or error")
        if description is not None and error is None:
            raise invalid("error_description goes with error")
        return self._finish(
            flow,
            peer_uid,
            lambda: flow.finish(state, code=code, error=error, error_description=description),
        )

    @staticmethod
    def _settings(flow: ConsentFlow) -> dict[str, object]:
        redirect_uri = flow.redirect_uri
        try:
            loopback_port(redirect_uri)
            loopback = True
        except ConsentRequestError:
            loopback = False
        return {
            "redirect_uri": redirect_uri,
            "loopback": loopback,
            "pending_ttl": flow.pending_ttl,
            "max_pending": flow.max_pending,
        }

    async def _start(
        self,
        flow: ConsentFlow,
        scopes: Sequence[str] | None,
        human_id: str | None,
        redirect_uri: str | None,
        peer_uid: int,
    ) -> bytes:
        try:
            with anyio.fail_after(self._limits.handler_timeout):
                pending = await flow.start(scopes, human_id, redirect_uri=redirect_uri)
        except ConsentError as exc:
            return consent_problem(exc).answer()
        except (HaasdError, TimeoutError) as exc:  # the store: try again
            reason = str(exc) or "timed out"
            problem = _busy("consent_unavailable", f"cannot start a consent now: {reason}", None)
            return problem.answer()
        _audit.info(
            "consent.started_by_admin",
            human_id=human_id,
            consent_id=pending.consent_id,
            peer_uid=peer_uid,
        )
        return json_response(201, _started_json(pending))

    async def _finish(
        self, flow: ConsentFlow, peer_uid: int, finish: Callable[[], Awaitable[ConsentResult]]
    ) -> bytes:
        try:
            # a timeout cancels the exchange: the flow keeps the consent for another try
            with anyio.fail_after(self._limits.handler_timeout):
                result = await finish()
        except ConsentError as exc:
            return consent_problem(exc).answer()
        except TimeoutError:
            message = "the code exchange timed out; the consent is kept: send the callback again"
            return _busy("exchange_unavailable", message, None, server_error="timeout").answer()
        except HaasdError as exc:  # the grant could not be stored: the code is spent
            return Problem(500, "consent_failed", str(exc)).answer()
        _audit.info(
            "consent.finished_by_admin",
            human_id=result.human_id,
            consent_id=result.consent_id,
            peer_uid=peer_uid,
        )
        service = self._service
        grant = service.grant(result.human_id) or result.grant
        answer = status_of(grant, service.clock.time(), service.policy)
        answer |= {
            "consent_id": result.consent_id,
            "requested_scope": " ".join(result.requested_scope),
            "replaced": result.replaced,
            "different_human": result.different_human,
        }
        if result.different_human:
            answer["expected_human_id"] = result.expected_human_id
        return json_response(201, answer)
