"""Fault injection for ``/token``: a script of faults, random 5xx, added latency.

Every ``/token`` request takes the next scripted fault, in the order they were queued;
when the script is empty, :meth:`FaultScript.set_flaky`'s dice decide. A fault that is
not ``after_processing`` stands *in front of* the service (a proxy, a load balancer): the
request never reaches it, so nothing changes, no rate budget is spent and no
``X-RateLimit-*`` headers are sent unless the fault gives them.
"""

from __future__ import annotations

import json
import random
import secrets
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias, assert_never, get_args

from haasd.simulator._messages import Reply, html_reply, json_reply
from haasd.simulator._ratelimit import RATE_LIMIT_MESSAGE, RATE_LIMIT_SUGGESTION

__all__ = [
    "ELSEWHERE",
    "MALFORMED_KINDS",
    "OVERSIZED_BYTES",
    "Drop",
    "Fail",
    "Fault",
    "FaultBody",
    "FaultScript",
    "Malformed",
    "MalformedKind",
    "failure_reply",
    "malformed_reply",
]

MalformedKind = Literal[
    "html",
    "empty",
    "truncated_json",
    "missing_access_token",
    "bad_expires_in",
    "wrong_token_type",
    "odd_scope",
    "oversized",
    "redirect",
]
MALFORMED_KINDS: Final[tuple[MalformedKind, ...]] = get_args(MalformedKind)

#: Where a ``redirect`` fault sends the client (a single sign-on page, say).
ELSEWHERE: Final = "https://sso.example.invalid/login?continue=%2Ftoken"
#: The ``scope`` of an ``odd_scope`` answer.
ODD_SCOPE: Final = "status:read \ud800 \x1b[2J"
#: Size of the padding in an ``oversized`` answer.
OVERSIZED_BYTES: Final = 4 * 1024 * 1024

#: A failure body: JSON (a mapping), text, raw bytes, or ``None`` for a default.
FaultBody: TypeAlias = Mapping[str, object] | str | bytes | None

_FLAKY_STATUSES: Final = (500, 502, 503, 504)


@dataclass(frozen=True, slots=True)
class Fail:
    """Answer with ``reply`` instead of processing the request."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class Drop:
    """Close the connection without answering, before or after processing."""

    after_processing: bool


@dataclass(frozen=True, slots=True)
class Malformed:
    """Answer with a malformed success; ``after_processing`` mangles the real answer."""

    kind: MalformedKind
    after_processing: bool


Fault: TypeAlias = Fail | Drop | Malformed


class FaultScript:
    """What goes wrong with the next ``/token`` requests."""

    __slots__ = ("_flaky", "_rng", "_script", "latency")

    def __init__(self) -> None:
        self._script: deque[Fault] = deque()
        self._flaky = 0.0
        self._rng = random.Random(0)  # reproducible faults, not security
        #: real seconds to wait before handling each ``/token`` request
        self.latency = 0.0

    def __len__(self) -> int:
        return len(self._script)

    def push(self, fault: Fault, n: int) -> None:
        if n < 0:
            raise ValueError("n must not be negative")
        self._script.extend([fault] * n)

    def set_flaky(self, probability: float, seed: int | None) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        self._flaky = probability
        self._rng = random.Random(seed)  # reproducible faults, not security

    def clear(self) -> None:
        self._script.clear()
        self._flaky = 0.0
        self.latency = 0.0

    def next(self) -> Fault | None:
        """The fault for the request at hand, if any."""
        if self._script:
            return self._script.popleft()
        if self._flaky and self._rng.random() < self._flaky:
            return Fail(failure_reply(self._rng.choice(_FLAKY_STATUSES), None, None))
        return None


def _default_body(status: int, retry_after: str | None) -> Mapping[str, object]:
    if status == 429:
        seconds = int(retry_after) if retry_after and retry_after.isdigit() else 1
        return {
            "error": {
                "code": 429,
                "type": "rate_limit_exceeded",
                "message": RATE_LIMIT_MESSAGE,
                "retry_after": seconds,
                "suggestion": RATE_LIMIT_SUGGESTION,
            }
        }
    if status == 503:
        error, description = "temporarily_unavailable", "the service is temporarily unavailable"
    else:
        error, description = "server_error", "the service failed to handle the request"
    return {"error": error, "error_description": description}


def failure_reply(status: int, body: FaultBody, headers: Mapping[str, str] | None) -> Reply:
    """An injected answer; ``body=None`` gives a default that fits ``status``.

    Defaults: 429 → the HaaS docs' rate-limit body (``retry_after`` from a numeric
    ``Retry-After`` header, else 1, with ``Retry-After: 1`` added); 503 →
    ``temporarily_unavailable``; anything else → ``server_error``.
    """
    given = dict(headers or {})
    names = {name.lower() for name in given}
    extra: list[tuple[str, str]] = []
    if body is None:
        retry_after = next((v for k, v in given.items() if k.lower() == "retry-after"), None)
        body = _default_body(status, retry_after)
        if status == 429 and retry_after is None:
            extra.append(("Retry-After", "1"))
    if isinstance(body, bytes):
        data, content_type = body, "application/octet-stream"
    elif isinstance(body, str):
        data, content_type = body.encode(), "text/plain; charset=utf-8"
    else:
        data, content_type = json.dumps(body).encode(), "application/json"
    if "content-type" not in names:
        extra.insert(0, ("Content-Type", content_type))
    framing = {"content-length", "transfer-encoding"}  # the wire layer frames the body
    kept = tuple((k, v) for k, v in given.items() if k.lower() not in framing)
    return Reply(status, (*extra, *kept), data)


def _token_body(processed: Reply | None) -> dict[str, object]:
    """The processed success body, or a plausible one with tokens nobody issued."""
    if processed is not None and processed.status == 200:
        try:
            document = json.loads(processed.body)
        except ValueError:
            document = None
        if isinstance(document, dict) and "access_token" in document:
            return document
    return {
        "access_token": "haas_at_" + secrets.token_urlsafe(32),
        "token_type": "Bearer",
        "expires_in": 3600,
        "refresh_token": "haas_rt_" + secrets.token_urlsafe(32),
        "scope": "status:read",
        "human_id": "usr_sim_unknown",
    }


def malformed_reply(kind: MalformedKind, processed: Reply | None) -> Reply:
    """A 200 (or a 302) that a careful client must not take for a token answer."""
    human_id = processed.human_id if processed is not None else None
    body = _token_body(processed)
    reply: Reply
    match kind:
        case "html":
            reply = html_reply(200, "Sign in", "Your session has expired. Please sign in again.")
        case "empty":
            reply = Reply(200, (("Content-Type", "application/json"),), b"")
        case "truncated_json":
            whole = json.dumps(body).encode()
            reply = Reply(200, (("Content-Type", "application/json"),), whole[: len(whole) // 2])
        case "missing_access_token":
            del body["access_token"]
            reply = json_reply(200, body)
        case "bad_expires_in":
            reply = json_reply(200, body | {"expires_in": "one hour"})
        case "wrong_token_type":
            reply = json_reply(200, body | {"token_type": "mac"})
        case "odd_scope":  # a lone surrogate and a terminal escape: valid JSON, bad text
            reply = json_reply(200, body | {"scope": ODD_SCOPE})
        case "oversized":
            reply = json_reply(200, body | {"padding": "x" * OVERSIZED_BYTES})
        case "redirect":
            reply = Reply(302, (("Location", ELSEWHERE), ("Content-Type", "text/plain")), b"")
        case _:  # pragma: no cover - exhaustive
            assert_never(kind)
    return Reply(reply.status, reply.headers, reply.body, human_id)
