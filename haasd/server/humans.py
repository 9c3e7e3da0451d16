"""The routes about humans: a grant's status, the list of them, an admin's refresh, a delete.

The caller has checked the peer's access; these turn the engine's answer (or its error)
into the response, and audit what an admin did.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import anyio
import structlog

from haasd.config import AccessRule
from haasd.errors import (
    HaasdError,
    InvalidGrantError,
    NeedsReconsentError,
    TokenUnavailableError,
    UnknownHumanError,
)
from haasd.grants import state_at, status_of
from haasd.server.access import is_admin
from haasd.server.answers import Problem, reconsent, unavailable, unknown
from haasd.server.http import json_response, response
from haasd.server.service import TokenService

__all__ = ["WAIT_SLACK", "delete_answer", "humans_answer", "refresh_answer", "status_answer"]

_audit = structlog.get_logger("haasd.audit")

#: a waiting request's own deadline beyond the engine's ``wait`` (the engine answers first)
WAIT_SLACK: Final = 1.0


def status_answer(service: TokenService, human_id: str) -> bytes:
    """``GET /v1/humans/{human_id}``: the grant's status, or 404."""
    grant = service.grant(human_id)
    if grant is None:
        raise unknown(human_id)
    return json_response(200, status_of(grant, service.clock.time(), service.policy))


def humans_answer(service: TokenService, matched: Sequence[AccessRule]) -> bytes:
    """``GET /v1/humans``: the status of every grant the ``matched`` rules administer."""
    now = service.clock.time()
    rows = [
        status_of(g, now, service.policy)
        for g in sorted(service.grants(), key=lambda g: g.human_id)
        if is_admin(matched, g.human_id)
    ]
    return json_response(200, {"humans": rows})


async def refresh_answer(service: TokenService, human_id: str, wait: float, peer_uid: int) -> bytes:
    """``POST /v1/humans/{human_id}/refresh``: refresh now, within ``wait`` seconds; the
    new status, or why not (502 ``refresh_failed`` with the grant's last error and state)."""
    try:
        with anyio.fail_after(wait + WAIT_SLACK):
            grant = await service.refresh_now(human_id, wait=wait, peer=peer_uid)
    except UnknownHumanError:
        return unknown(human_id).answer()
    except NeedsReconsentError as exc:
        return reconsent(human_id, exc.reason).answer()
    except TokenUnavailableError as exc:
        return unavailable(exc.reason, exc.retry_after).answer()
    except (HaasdError, TimeoutError) as exc:
        return _refresh_failed(service, human_id, exc).answer()
    _audit.info("grant.refreshed_by_admin", human_id=human_id, peer_uid=peer_uid)
    return json_response(200, status_of(grant, service.clock.time(), service.policy))


def _refresh_failed(service: TokenService, human_id: str, exc: Exception) -> Problem:
    current = service.grant(human_id)
    last_error = (current.last_error if current else None) or str(exc) or "timed out"
    message = (
        "the refresh failed: the server refused the grant, so the human must consent again"
        if isinstance(exc, InvalidGrantError)
        else "the refresh failed; the stored tokens are unchanged"
    )
    state = None
    if current is not None:
        now = service.clock.time()
        policy = service.policy
        state = state_at(current.state, current.refresh_expires_at, now, policy).value
    return Problem(502, "refresh_failed", message, last_error=last_error, state=state)


async def delete_answer(service: TokenService, human_id: str, peer_uid: int) -> bytes:
    """``DELETE /v1/humans/{human_id}``: forget the grant (204), or 404."""
    existed = await service.delete(human_id)
    if not existed:
        return unknown(human_id).answer()
    _audit.warning("grant.deleted_by_admin", human_id=human_id, peer_uid=peer_uid)
    return response(204)
