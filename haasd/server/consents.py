"""The consent routes: start a human's consent, and finish it from the browser's redirect.

==========================================  =======  =====================================
route                                       who      answer
==========================================  =======  =====================================
``GET /v1/consents``                        admin    200 the redirect URI, TTL, bound
``POST /v1/consents``                       admin    201 the URL to send the human to
                                            (of the human named, else of everyone)
``POST /v1/consents/callback``              admin    201 the human's status
                                            (of the human who approved)
==========================================  =======  =====================================

``POST /v1/consents`` takes an optional JSON object: ``scopes`` (a list, or one
space-separated string: it may narrow the configured scopes, never widen), ``human_id``
(a re-consent, or a known human's onboarding: the admin rule must cover that human) and
``redirect_uri`` (the configured loopback redirect URI on another port, RFC 8252 §7.3:
what ``haasd consent listen`` sends). ``POST /v1/consents/callback`` takes
``{"callback_url"}`` (the whole URL the browser was redirected to), or ``{"state",
"code"}``, or ``{"state", "error"[, "error_description"]}``.

**Limited admins stay inside their humans.** A consent started without ``human_id`` may
end with any human, so it needs an admin rule that covers every human id (``*``,
``usr_*``: :func:`~haasd.server.access.covers_everyone`). The human who approves is the
authorization server's word, known only after the exchange: finishing needs an admin
rule, and the approved human must be among the finisher's admin humans — otherwise 403
and nothing is stored (the tokens the exchange gave are dropped, and revoked when
``haas.revocation_url`` is configured: ``revoked``). A consent that names a human outside
the finisher's rules is refused unused. So every answer names only humans the peer
administers.

**The human of a grant.** A server that names no human in its token answers needs the
consent to name one (``human_id``): it is sent as ``login_hint`` and the grant is stored
under it. Without one such a consent is refused at finish (502 ``exchange_failed``,
``server_error`` ``unnamed_human``); once haasd has seen such an answer, ``POST
/v1/consents`` without ``human_id`` says so in a ``warning`` field.

Bodies are UTF-8 JSON objects without repeated fields; every string field is non-empty,
bounded and printable (ASCII where RFC 6749 says so): otherwise 400 ``invalid_request``
naming the field, before anything is looked up.

Errors, in the HaaS docs' shape (:class:`haasd.errors.ConsentError` and its subclasses):

====================  ======  ==============================================================
type                  status  meaning
====================  ======  ==============================================================
invalid_request       400     malformed body, human id, redirect URI or callback URL
invalid_scope         400     ``*`` (with the HaaS docs' advice), an unknown scope, or none
scope_not_allowed     400     a scope beyond the configured ones
invalid_state         400     unknown, expired or used state; nothing was exchanged
forbidden             403     not an admin, or not for this consent's human (nothing stored;
                              ``exchanged``, and ``revoked`` when tokens were issued)
consent_denied        403     the redirect carried an error (``error``: ``access_denied``…)
exchange_failed       502     the code is used up: the server refused it (``server_error``:
                              its type), or ``exchanged``: the code was sent and the answer
                              is lost or unusable (no human named, another human, malformed);
                              ``revoked`` says whether the tokens it issued were revoked.
                              Start a new consent
exchange_unavailable  503     the server never saw the code (no connection, 429, 503): the
                              same callback may be sent again (``retry_after``) until
                              ``expires_at``
consent_limit         503     too many consents are pending (``retry_after``)
====================  ======  ==============================================================
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import anyio
import structlog

from haasd.config import AccessRule
from haasd.errors import (
    ConsentDeniedError,
    ConsentError,
    ConsentForbiddenError,
    ConsentLimitError,
    ConsentRequestError,
    ExchangeFailedError,
    ExchangeUnavailableError,
    HaasdError,
    InvalidStateError,
    ScopeError,
)
from haasd.grants import status_of
from haasd.loopback import loopback_port
from haasd.server.access import covers_everyone, is_admin
from haasd.server.answers import Problem, check_method, invalid
from haasd.server.consent_bodies import (
    CALLBACK_BODY_FIELDS,
    START_FIELDS,
    parse_object,
    scopes_of,
    text_field_of,
)
from haasd.server.http import Limits, json_response
from haasd.server.service import TokenService
from haasd.timefmt import rfc3339

if TYPE_CHECKING:
    from haasd.consent import ConsentFlow, ConsentResult, PendingConsent

__all__ = ["CONSENTS", "ConsentRoutes", "Deny", "Rules", "consent_problem"]

CONSENTS: Final = b"/v1/consents"
_CALLBACK: Final = b"/v1/consents/callback"
#: seconds to suggest when a transient failure names no Retry-After
_DEFAULT_RETRY: Final = 5.0

_audit = structlog.get_logger("haasd.audit")

#: the peer's matching rules as they are now (a reload may change them mid-request)
Rules = Callable[[], Sequence[AccessRule]]
#: ``deny(human_id, reason, route)``: audits a refusal, gives the 403 to raise
Deny = Callable[[str | None, str, str], Problem]

_NEED_ADMIN: Final = "an admin [[access]] rule is needed"
_NEED_EVERYONE: Final = (
    "a consent without human_id may end with any human, so it needs an admin [[access]] "
    'rule covering every human (such as humans = ["usr_*"]); name the human with human_id'
)


def _retry_after(seconds: float | None) -> int:
    if seconds is None or not math.isfinite(seconds):
        seconds = _DEFAULT_RETRY
    return max(1, math.ceil(seconds))


def _later(error_type: str, message: str, seconds: float | None, **extra: Any) -> Problem:
    """A 503 that says when to come back (``Retry-After``)."""
    wait = _retry_after(seconds)
    headers = {"Retry-After": str(wait)}
    return Problem(503, error_type, message, headers=headers, retry_after=wait, **extra)


def _revoked(revoked: bool | None) -> dict[str, Any]:
    """``revoked`` for an answer, when the server issued tokens haasd did not keep."""
    return {} if revoked is None else {"revoked": revoked}


def consent_problem(exc: ConsentError) -> Problem:
    """The answer to a consent error (the module's table)."""
    message = str(exc)
    if isinstance(exc, ScopeError):
        return Problem(400, exc.error_type, message, scopes=list(exc.scopes))
    if isinstance(exc, ConsentRequestError):
        return invalid(message)
    if isinstance(exc, InvalidStateError):
        return Problem(400, "invalid_state", message, reason=exc.reason)
    if isinstance(exc, ConsentForbiddenError):
        return Problem(
            403,
            "forbidden",
            message,
            exchanged=exc.exchanged,
            outcome="forbidden",
            **_revoked(exc.revoked),
        )
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
            502,
            "exchange_failed",
            message,
            server_error=exc.error_type,
            server_status=exc.status,
            exchanged=exc.exchanged,
            **_revoked(exc.revoked),
        )
    if isinstance(exc, ExchangeUnavailableError):
        return _later(
            "exchange_unavailable",
            message,
            exc.retry_after,
            server_error=exc.error_type,
            expires_at=rfc3339(exc.expires_at),
        )
    if isinstance(exc, ConsentLimitError):
        return _later("consent_limit", message, exc.retry_after, limit=exc.limit)
    return Problem(500, "consent_failed", message)


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
    if pending.warning is not None:
        answer["warning"] = pending.warning
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
        self,
        method: bytes,
        path: bytes,
        body: bytes,
        peer_uid: int,
        rules: Rules,
        deny: Deny,
    ) -> bytes | Awaitable[bytes]:
        """The answer to a request under ``/v1/consents`` (raises :class:`Problem`).

        ``rules`` are the asking peer's; ``deny`` audits a refusal (see the module).
        """
        if path == CONSENTS:
            check_method(method, b"GET", b"POST")
        elif path == _CALLBACK:
            check_method(method, b"POST")
        else:
            raise Problem(404, "not_found", "no such route; see GET /v1/health")
        if not is_admin(rules()):  # before the body is read: others learn nothing from it
            raise deny(None, _NEED_ADMIN, "admin")
        flow = self._flow
        if flow is None:
            raise Problem(404, "not_found", "this haasd does not take consents")
        if method == b"GET":
            return json_response(200, self._settings(flow))
        if path == CONSENTS:
            return self._start_request(flow, body, peer_uid, rules, deny)
        return self._callback_request(flow, body, peer_uid, rules, deny)

    def _start_request(
        self, flow: ConsentFlow, body: bytes, peer_uid: int, rules: Rules, deny: Deny
    ) -> Awaitable[bytes]:
        document = parse_object(body, START_FIELDS)
        human_id = text_field_of(document, "human_id")
        scopes, redirect_uri = scopes_of(document), text_field_of(document, "redirect_uri")
        if human_id is None:
            if not covers_everyone(rule for rule in rules() if rule.admin):
                raise deny(None, _NEED_EVERYONE, "consent")
        elif not self._pattern.fullmatch(human_id):
            raise invalid(f"not a human id (expected the form {self._pattern.pattern!r})")
        elif not is_admin(rules(), human_id):
            raise deny(human_id, _NEED_ADMIN, "admin")
        return self._start(flow, scopes, human_id, redirect_uri, peer_uid)

    def _callback_request(
        self, flow: ConsentFlow, body: bytes, peer_uid: int, rules: Rules, deny: Deny
    ) -> Awaitable[bytes]:
        document = parse_object(body, CALLBACK_BODY_FIELDS)
        url = text_field_of(document, "callback_url")

        def may_hold(human_id: str) -> bool:
            return is_admin(rules(), human_id)  # asked when the human is known: rules now

        if url is not None:
            if len(document) > 1:
                raise invalid("give either callback_url or state with code or error, not both")
            return self._finish(
                flow, peer_uid, deny, lambda: flow.finish_url(url, may_hold=may_hold)
            )
        state, code, error = (text_field_of(document, n) for n in ("state", "code", "error"))
        description = text_field_of(document, "error_description")
        if state is None or (code is None) == (error is None):
            raise invalid("give callback_url, or state with either code or error")
        if description is not None and error is None:
            raise invalid("error_description goes with error")
        return self._finish(
            flow,
            peer_uid,
            deny,
            lambda: flow.finish(
                state, code=code, error=error, error_description=description, may_hold=may_hold
            ),
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
            problem = _later("consent_unavailable", f"cannot start a consent now: {reason}", None)
            return problem.answer()
        _audit.info(
            "consent.started_by_admin",
            human_id=human_id,
            consent_id=pending.consent_id,
            peer_uid=peer_uid,
        )
        return json_response(201, _started_json(pending))

    async def _finish(
        self,
        flow: ConsentFlow,
        peer_uid: int,
        deny: Deny,
        finish: Callable[[], Awaitable[ConsentResult]],
    ) -> bytes:
        try:
            # a timeout cancels the exchange: the flow keeps the consent for another try
            with anyio.fail_after(self._limits.handler_timeout):
                result = await finish()
        except ConsentForbiddenError as exc:  # audited as the refusal it is
            deny(None, str(exc), "consent")
            return consent_problem(exc).answer()
        except ConsentError as exc:
            return consent_problem(exc).answer()
        except TimeoutError:
            message = "the code exchange timed out; the consent is kept: send the callback again"
            return _later("exchange_unavailable", message, None, server_error="timeout").answer()
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
