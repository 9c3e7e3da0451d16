"""What the consent flow tells: an event on the bus and a log line for each step."""

from __future__ import annotations

import structlog

from haasd.consent._oauth import consent_id
from haasd.consent._values import ConsentResult, PendingConsent
from haasd.events import Event, EventBus
from haasd.store import PendingRecord
from haasd.timefmt import rfc3339

__all__ = [
    "announce_abandoned",
    "announce_denied",
    "announce_failed",
    "announce_granted",
    "announce_started",
]

_log = structlog.get_logger("haasd.consent")


def announce_started(events: EventBus, pending: PendingConsent, now: float) -> None:
    """``consent.started``; the pending consent's warning, if any, as a log line."""
    details = {
        "consent_id": pending.consent_id,
        "scope": " ".join(pending.scope),
        "expires_at": rfc3339(pending.expires_at),
        "reconsent": pending.reconsent,
    }
    events.publish(Event("consent.started", pending.human_id, now, details))
    _log.info("consent started", human_id=pending.human_id, **details)
    if pending.warning is not None:
        _log.warning(pending.warning, consent_id=pending.consent_id)


def announce_denied(events: EventBus, record: PendingRecord, error: str, now: float) -> None:
    """``consent.denied``: the redirect carried ``error``."""
    details = {"consent_id": consent_id(record.state_id), "error": error}
    events.publish(Event("consent.denied", record.human_id, now, details))
    _log.info("consent denied", human_id=record.human_id, **details)


def announce_failed(
    events: EventBus,
    record: PendingRecord,
    error: str,
    human_id: str | None,
    revoked: bool | None,
    now: float,
) -> None:
    """``consent.failed`` (the caller logs why); ``revoked`` when tokens were issued."""
    details: dict[str, object] = {"consent_id": consent_id(record.state_id), "error": error}
    if revoked is not None:
        details["revoked"] = revoked
    events.publish(Event("consent.failed", human_id, now, details))


def announce_granted(events: EventBus, result: ConsentResult, now: float) -> None:
    """``consent.granted``; a warning when another human approved, a note when the server
    granted other scopes than asked for."""
    grant, human_id = result.grant, result.human_id
    different = result.different_human
    details: dict[str, object] = {
        "consent_id": result.consent_id,
        "scope": " ".join(grant.scope),
        "replaced": result.replaced,
        "different_human": different,
        "refresh_expires_at": rfc3339(grant.refresh_expires_at),
    }
    if different:
        details["expected_human_id"] = result.expected_human_id
    events.publish(Event("consent.granted", human_id, now, details))
    _log.info("consent granted", human_id=human_id, **details)
    if different:
        _log.warning(
            "a different human approved the consent; the named human's grant is unchanged",
            human_id=human_id,
            expected_human_id=result.expected_human_id,
        )
    if set(grant.scope) != set(result.requested_scope):
        _log.info(
            "the server granted other scopes than asked for",
            human_id=human_id,
            requested=" ".join(result.requested_scope),
            granted=" ".join(grant.scope),
        )


def announce_abandoned(events: EventBus, record: PendingRecord, now: float) -> None:
    """``consent.abandoned``: nobody finished the consent before it expired."""
    details = {
        "consent_id": consent_id(record.state_id),
        "scope": " ".join(record.scope),
        "reason": "expired",
        "expired_at": rfc3339(record.expires_at),
    }
    events.publish(Event("consent.abandoned", record.human_id, now, details))
    _log.info("consent abandoned", human_id=record.human_id, **details)
