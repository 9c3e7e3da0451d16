"""HTTP/1.1 responses as bytes: what the connection loop writes and the routes return.

Every response says ``Cache-Control: no-store`` (tokens must never sit in a cache). The
error shape is the HaaS docs': ``{"error": {"code", "type", "message", ...}}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Final

__all__ = [
    "INTERNAL_ERROR",
    "INTERNAL_ERROR_HEAD",
    "JSON",
    "REJECT_TYPES",
    "error_body",
    "head_only",
    "json_response",
    "rejection",
    "response",
    "with_close",
]

JSON: Final = b"application/json"
_CLOSE: Final = b"Connection: close\r\n"


def _status_line(status: int) -> bytes:
    return f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode("ascii")


_STATUS: Final = {s.value: _status_line(s.value) for s in HTTPStatus if s.value >= 200}
_NO_STORE: Final = b"Cache-Control: no-store\r\n"


def response(
    status: int,
    body: bytes = b"",
    *,
    content_type: bytes = JSON,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """A whole response: status line, ``Cache-Control: no-store``, length, body."""
    parts = [_STATUS[status], _NO_STORE]
    if headers:
        parts.extend(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers.items())
    if status == 204:  # RFC 9110: a 204 has no Content-Length (and no body)
        parts.append(b"\r\n")
        return b"".join(parts)
    parts += (b"Content-Type: ", content_type, b"\r\nContent-Length: ")
    parts += (str(len(body)).encode("ascii"), b"\r\n\r\n", body)
    return b"".join(parts)


def json_response(status: int, document: object, headers: Mapping[str, str] | None = None) -> bytes:
    """A whole response with ``document`` as compact JSON."""
    body = json.dumps(document, separators=(",", ":")).encode("utf-8")
    return response(status, body, headers=headers)


def error_body(status: int, error_type: str, message: str, **extra: object) -> dict[str, object]:
    """The HaaS docs' error shape: ``{"error": {"code", "type", "message", ...}}``."""
    return {"error": {"code": status, "type": error_type, "message": message, **extra}}


def with_close(answer: bytes) -> bytes:
    """The same answer with ``Connection: close``: the connection ends after it."""
    cut = answer.index(b"\r\n") + 2
    return answer[:cut] + _CLOSE + answer[cut:]


def head_only(answer: bytes) -> bytes:
    """The answer to a ``HEAD``: the ``GET`` answer's status and headers (its
    ``Content-Length`` too, RFC 9110 §9.3.2), without the body."""
    return answer[: answer.index(b"\r\n\r\n") + 4]


#: a request that broke the protocol or a limit: its status, error type and reason
REJECT_TYPES: Final = {
    400: ("invalid_request", "malformed HTTP request"),
    413: ("payload_too_large", "request body too large"),
    414: ("uri_too_long", "request target too long"),
    431: ("request_header_fields_too_large", "request head too large or too many headers"),
}

#: the answer when a handler failed: the daemon lives on, this connection closes
INTERNAL_ERROR: Final = with_close(
    json_response(500, error_body(500, "internal_error", "haasd failed to answer; see its log"))
)
INTERNAL_ERROR_HEAD: Final = head_only(INTERNAL_ERROR)


def rejection(status: int, message: str | None = None) -> bytes:
    """The answer to a request that broke the protocol or a limit; the connection closes."""
    error_type, default = REJECT_TYPES[status]
    answer = json_response(status, error_body(status, error_type, message or default))
    return with_close(answer)
