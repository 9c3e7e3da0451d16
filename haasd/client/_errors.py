"""What a haasd client raises: the daemon's error answers, and not reaching it at all.

The class says what to do; ``error_type`` is the daemon's own name for the error::

    HaasdError
    └── HaasdClientError       any other error answer (400 invalid_request, 502 ...)
        ├── UnknownHuman       404 unknown_human: no grant for that human
        ├── Forbidden          403 forbidden / insufficient_scope: an [[access]] matter
        ├── NeedsReconsent     409 needs_reconsent: the human must consent again
        ├── TokenUnavailable   503 token_unavailable: try again after ``retry_after``
        ├── ConsentDenied      403 consent_denied: the human (or the server) said no
        ├── InvalidConsentState  400 invalid_state: unknown, expired or used; start again
        └── DaemonUnreachable  no socket, nothing listening, no permission, or no answer

The other consent errors keep their type in ``error_type``: ``invalid_scope``,
``scope_not_allowed``, ``consent_limit`` and ``exchange_unavailable`` (503, try again after
``retry_after``), ``exchange_failed`` (502, ``details["server_error"]``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final

import httpx

from haasd.errors import HaasdError

__all__ = [
    "ConsentDenied",
    "DaemonUnreachable",
    "Forbidden",
    "HaasdClientError",
    "InvalidConsentState",
    "NeedsReconsent",
    "TokenUnavailable",
    "UnknownHuman",
    "error_from_response",
    "error_from_transport",
]


class HaasdClientError(HaasdError):
    """haasd answered with an error, or could not be asked.

    ``status`` is the HTTP status (None when no answer came), ``error_type`` the daemon's
    ``error.type``, ``retry_after`` the seconds it asked us to wait (or None), and
    ``details`` the answer's other fields (e.g. ``last_error`` of a failed refresh).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_type: str = "",
        retry_after: float | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.retry_after = retry_after
        self.details: Mapping[str, Any] = details or {}


class UnknownHuman(HaasdClientError):
    """No grant is stored for that human (404 ``unknown_human``)."""


class Forbidden(HaasdClientError):
    """This process's uid/gid may not have that (403 ``forbidden`` or
    ``insufficient_scope``): ask the operator for an ``[[access]]`` rule."""


class NeedsReconsent(HaasdClientError):
    """The grant is dead until the human consents again (409 ``needs_reconsent``)."""


class TokenUnavailable(HaasdClientError):
    """No token with the time asked for can be had now (503 ``token_unavailable``);
    ``retry_after`` says when to try again."""


class ConsentDenied(HaasdClientError):
    """The redirect carried an error instead of a code (403 ``consent_denied``):
    ``details["error"]`` is ``access_denied`` when the human said no. The consent is
    used up."""


class InvalidConsentState(HaasdClientError):
    """The callback's state is unknown, expired or already used (400 ``invalid_state``);
    nothing was exchanged: start a new consent."""


class DaemonUnreachable(HaasdClientError):
    """haasd could not be asked: ``socket_path`` is missing, nothing listens on it, this
    user may not open it, or no answer came in time (``reason`` says which)."""

    def __init__(self, socket_path: str, reason: str) -> None:
        self.socket_path = socket_path
        self.reason = reason
        super().__init__(
            f"cannot reach haasd on {socket_path}: {reason}; check "
            f"`systemctl status haasd` or `haasd health --socket {socket_path}`",
            error_type="unreachable",
        )


_BY_TYPE: Final[Mapping[str, type[HaasdClientError]]] = {
    "unknown_human": UnknownHuman,
    "forbidden": Forbidden,
    "insufficient_scope": Forbidden,
    "needs_reconsent": NeedsReconsent,
    "token_unavailable": TokenUnavailable,
    "consent_denied": ConsentDenied,
    "invalid_state": InvalidConsentState,
}


def error_from_response(response: httpx.Response) -> HaasdClientError:
    """The exception for an error answer (``response`` read), by its ``error.type``."""
    status = response.status_code
    error: Mapping[str, Any] = {}
    try:
        document = json.loads(response.content)
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), dict):
        error = document["error"]
    error_type = str(error.get("type") or f"http_{status}")
    message = str(error.get("message") or f"haasd answered HTTP {status}")
    details = {k: v for k, v in error.items() if k not in {"code", "type", "message"}}
    cls = _BY_TYPE.get(error_type, HaasdClientError)
    return cls(
        message,
        status=status,
        error_type=error_type,
        retry_after=_retry_after(details.get("retry_after"), response.headers),
        details=details,
    )


def _retry_after(value: object, headers: httpx.Headers) -> float | None:
    if value is None:
        value = headers.get("retry-after")
    if not isinstance(value, int | float | str):
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def error_from_transport(
    socket_path: str, exc: httpx.TransportError, timeout: float
) -> HaasdClientError:
    """What not getting an answer means, with the OS's reason when there is one."""
    if isinstance(exc, httpx.TimeoutException):
        return DaemonUnreachable(socket_path, f"no answer within {timeout:g}s")
    if isinstance(exc, httpx.ProtocolError):
        return HaasdClientError(
            f"haasd on {socket_path} answered something that is not HTTP/1.1: {exc}",
            error_type="protocol_error",
        )
    cause = _os_error(exc)
    if isinstance(cause, FileNotFoundError):
        reason = "no socket there (is haasd running, and is this its socket path?)"
    elif isinstance(cause, ConnectionRefusedError):
        reason = "nothing listens on it (haasd stopped, or is starting)"
    elif isinstance(cause, PermissionError):
        reason = "permission denied (this user needs write access to the socket)"
    elif cause is not None:
        reason = cause.strerror or str(cause)
    else:
        reason = str(exc) or type(exc).__name__
    return DaemonUnreachable(socket_path, reason)


def _os_error(exc: BaseException) -> OSError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
