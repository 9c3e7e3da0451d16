"""What the routes answer: error answers, the token answer, and the audit of handouts.

Error answers are :class:`Problem` exceptions raised anywhere below a route and turned into
the HaaS docs' shape, ``{"error": {"code", "type", "message", ...}}``, in one place.

A token answer is encoded once per token (:class:`TokenBody`, kept for the humans served
most recently: :mod:`haasd.server.bodies`): only ``expires_in`` is written per request.

Every token handed out is audited as ``token.served`` with human, scope, peer uid/pid and
the token's fingerprint — never the token (:class:`AuditLedger`). One structlog line
through the daemon's chain (timestamp, redaction, JSON) costs about as much as answering
the request itself (~45 µs measured, against a budget of ~40 µs a request at the target
load), so repeats of the same token on the same connection within
``Limits.audit_window`` share a line: each line's ``count`` is the handouts it stands
for. The first handout of a token on a connection is logged at once, what is pending is
logged when the connection closes, and the sum of ``count`` is every token handed out.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

from haasd.clock import rfc3339
from haasd.crypto import fingerprint
from haasd.demand import DEFAULT_WAIT, MAX_WAIT
from haasd.grants import Grant
from haasd.secret import Secret
from haasd.server.access import Decision, excess_scopes
from haasd.server.http import error_body, json_response

__all__ = [
    "NO_SCOPES",
    "PLAIN",
    "AuditLedger",
    "Problem",
    "TokenBody",
    "TokenQuery",
    "check_ceiling",
    "check_method",
    "check_scope",
    "invalid",
    "parse_human_id",
    "parse_query",
    "parse_token_query",
    "parse_wait",
    "reconsent",
    "unavailable",
    "unknown",
]

NO_SCOPES: Final[frozenset[str]] = frozenset()
_LEDGER_SIZE: Final = 64
_TOKEN_HEAD: Final = (
    b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n"
    b"Content-Type: application/json\r\nContent-Length: "
)


class Problem(Exception):
    """An error answer; ``outcome`` names it for the tokens-served metric (or is empty)."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        *,
        outcome: str = "",
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.outcome = outcome
        self.headers = headers
        self.extra = extra

    def answer(self) -> bytes:
        body = error_body(self.status, self.error_type, str(self), **self.extra)
        return json_response(self.status, body, self.headers)


def invalid(message: str) -> Problem:
    return Problem(400, "invalid_request", message, outcome="invalid_request")


def check_method(method: bytes, *allowed: bytes) -> None:
    """405 ``method_not_allowed`` (with ``Allow``) unless ``method`` is one of ``allowed``."""
    if method not in allowed:
        names = ", ".join(a.decode() for a in allowed)
        raise Problem(405, "method_not_allowed", f"use {names}", headers={"Allow": names})


def unknown(human_id: str) -> Problem:
    return Problem(
        404, "unknown_human", f"no grant for human {human_id!r}", outcome="unknown_human"
    )


def reconsent(human_id: str, reason: str | None) -> Problem:
    message = f"human {human_id!r} must consent again: {reason or 'the grant expired'}"
    return Problem(409, "needs_reconsent", message, outcome="needs_reconsent")


def unavailable(reason: str, retry_after: float) -> Problem:
    seconds = max(1, math.ceil(retry_after)) if math.isfinite(retry_after) else 60
    return Problem(
        503,
        "token_unavailable",
        f"no token with the time asked for can be had now: {reason}",
        outcome="unavailable",
        headers={"Retry-After": str(seconds)},
        retry_after=seconds,
    )


def check_scope(grant: Grant, required: frozenset[str]) -> None:
    """403 ``insufficient_scope`` unless ``grant`` holds every scope in ``required``."""
    missing = [s for s in required if s not in grant.scope]
    if missing:
        raise Problem(
            403,
            "insufficient_scope",
            f"the grant does not hold scope {' '.join(sorted(missing))!r}",
            outcome="insufficient_scope",
        )


def check_ceiling(grant: Grant, decision: Decision) -> None:
    """403 ``insufficient_scope`` when the grant's token carries a scope beyond every rule
    that allowed the request (least privilege, :func:`~haasd.server.access.excess_scopes`)."""
    extra = excess_scopes(decision, grant.scope)
    if extra:
        names = " ".join(sorted(extra))
        raise Problem(
            403,
            "insufficient_scope",
            f"this human's token carries scope {names!r}, beyond what this peer's [[access]] "
            "rule allows; a narrower token needs a consent for fewer scopes",
            outcome="insufficient_scope",
            scopes=sorted(extra),
        )


def parse_human_id(raw: bytes, pattern: re.Pattern[str]) -> str:
    """The human id in a path segment; 400 unless ``pattern`` matches all of it."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if not pattern.fullmatch(text):
        raise invalid(f"not a human id (expected the form {pattern.pattern!r})")
    return text


@dataclass(frozen=True, slots=True)
class TokenQuery:
    """What a token request asks for beyond the human."""

    #: seconds the token must have left
    min_ttl: int = 0
    #: scopes the token must carry
    scopes: frozenset[str] = NO_SCOPES
    #: seconds to wait for a refresh, at most :data:`MAX_WAIT`
    wait: float = DEFAULT_WAIT


#: a token request that asks for nothing in particular
PLAIN: Final = TokenQuery()


def parse_wait(value: str) -> float:
    """The ``wait`` parameter: seconds, capped at :data:`MAX_WAIT`; 400 if not a number."""
    try:
        wait = float(value)
    except ValueError:
        raise invalid("wait must be a number of seconds >= 0") from None
    if not wait >= 0:  # also NaN
        raise invalid("wait must be a number of seconds >= 0")
    return min(wait, MAX_WAIT)


def parse_query(query: bytes, known: tuple[str, ...]) -> dict[str, str]:
    """A query string's parameters, each at most once and among ``known``; else 400."""
    try:
        pairs = parse_qsl(
            query.decode("ascii"), keep_blank_values=True, strict_parsing=True, max_num_fields=8
        )
    except (UnicodeDecodeError, ValueError):
        raise invalid("malformed query string") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise invalid(f"query parameter {name!r} given twice")
        if name not in known:
            raise invalid(f"unknown query parameter {name!r}; known: {', '.join(known)}")
        params[name] = value
    return params


def parse_token_query(query: bytes, max_min_ttl: int) -> TokenQuery:
    """``min_ttl``, ``scope`` and ``wait`` from a query string; 400 for anything else."""
    min_ttl, scopes, wait = 0, NO_SCOPES, DEFAULT_WAIT
    for name, value in parse_query(query, ("min_ttl", "scope", "wait")).items():
        if name == "wait":
            wait = parse_wait(value)
        elif name == "min_ttl":
            if not (value.isascii() and value.isdigit() and len(value) <= 9):
                raise invalid("min_ttl must be a whole number of seconds >= 0")
            min_ttl = int(value)
            if min_ttl > max_min_ttl:
                raise invalid(f"min_ttl must be at most {max_min_ttl}")
        elif name == "scope":
            words = value.split()
            if not words or any(len(w) > 64 or not w.isprintable() for w in words):
                raise invalid("scope must be space-separated scope names")
            scopes = frozenset(words)
    return TokenQuery(min_ttl, scopes, wait)


@dataclass(frozen=True, slots=True)
class TokenBody:
    """A token answer, encoded once per token: only ``expires_in`` is filled per request."""

    token: Secret
    expires_at: float
    prefix: bytes
    scope: str
    fingerprint: str

    @classmethod
    def of(cls, grant: Grant) -> TokenBody:
        scope = " ".join(grant.scope)
        document = {
            "human_id": grant.human_id,
            "access_token": grant.access_token.reveal(),
            "token_type": "Bearer",
            "expires_at": rfc3339(grant.access_expires_at),
            "scope": scope,
            "environment": grant.environment,
        }
        encoded = json.dumps(document, separators=(",", ":")).encode("utf-8")
        return cls(
            grant.access_token,
            grant.access_expires_at,
            encoded[:-1] + b',"expires_in":',
            scope,
            fingerprint(grant.access_token),
        )

    def fits(self, grant: Grant) -> bool:
        """Still the answer for ``grant`` (the same token, the same expiry)?"""
        return self.expires_at == grant.access_expires_at and self.token == grant.access_token

    def answer(self, expires_in: int) -> bytes:
        """The whole 200 response."""
        tail = b"%d}" % expires_in
        length = b"%d\r\n\r\n" % (len(self.prefix) + len(tail))
        return _TOKEN_HEAD + length + self.prefix + tail


class _Entry:
    __slots__ = ("human_id", "logged_at", "pending", "scope")

    def __init__(self, human_id: str, scope: str, logged_at: float) -> None:
        self.human_id = human_id
        self.scope = scope
        self.logged_at = logged_at
        self.pending = 0


class AuditLedger:
    """One connection's ``token.served`` lines, coalesced per token (see the module)."""

    __slots__ = ("_entries", "_log", "_now", "_window")

    def __init__(
        self, log: Any, window: float, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._log = log  # a structlog logger bound to the peer
        self._window = window
        self._now = monotonic
        #: fingerprint -> handouts not yet in a line, and when the last line was written
        self._entries: dict[str, _Entry] = {}

    def served(self, human_id: str, body: TokenBody) -> None:
        at = self._now()
        entry = self._entries.get(body.fingerprint)
        if entry is not None and at - entry.logged_at < self._window:
            entry.pending += 1
            return
        count = 1 if entry is None else entry.pending + 1
        self._log.info(
            "token.served",
            human_id=human_id,
            scope=body.scope,
            fingerprint=body.fingerprint,
            count=count,
        )
        if entry is None:
            if len(self._entries) >= _LEDGER_SIZE:
                self.close()
            self._entries[body.fingerprint] = _Entry(human_id, body.scope, at)
        else:
            entry.pending = 0
            entry.logged_at = at

    def close(self) -> None:
        """Write the lines still pending (the connection ended)."""
        for fp, entry in self._entries.items():
            if entry.pending:
                self._log.info(
                    "token.served",
                    human_id=entry.human_id,
                    scope=entry.scope,
                    fingerprint=fp,
                    count=entry.pending,
                )
        self._entries.clear()
