"""What ``GET /v1/health`` and ``haasd health`` show: :class:`Health`, and its reasons."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from haasd.demand import RefusalReason

__all__ = ["Health", "Instance", "health_reasons"]

#: peers (and faulty grants) named in one health reason at most
PEERS_SHOWN: Final = 3


@dataclass(frozen=True, slots=True)
class Instance:
    """One haasd of a cluster, as its last heartbeat showed it (for status and health)."""

    instance_id: str
    host: str
    pid: int
    #: seconds since its last heartbeat, and since it started (the database's clock)
    heartbeat_age: float
    uptime: float
    #: leases it holds now
    leases: int

    def to_json(self) -> dict[str, object]:
        return {
            "instance": self.instance_id,
            "host": self.host,
            "pid": self.pid,
            "heartbeat_age": round(self.heartbeat_age, 1),
            "uptime": round(self.uptime),
            "leases": self.leases,
        }


@dataclass(frozen=True, slots=True)
class Health:
    """The engine's health: degraded while there is any reason, with its figures."""

    reasons: tuple[str, ...] = ()
    grants: int = 0
    refresh_backlog: int = 0
    in_flight: int = 0
    rate_budget_remaining: int = 0
    #: seconds until the rate budget (or the server's Retry-After) lets a request go
    rate_blocked_for: float | None = None
    #: in a cluster: this instance's name and the live instances (None: one haasd alone)
    instance: str | None = None
    instances: tuple[Instance, ...] = ()

    @property
    def status(self) -> Literal["ok", "degraded"]:
        return "degraded" if self.reasons else "ok"

    @property
    def ok(self) -> bool:
        return not self.reasons

    def to_json(self) -> dict[str, object]:
        """The body of ``GET /v1/health``."""
        body: dict[str, object] = {
            "status": self.status,
            "reasons": list(self.reasons),
            "grants": self.grants,
            "refresh_backlog": self.refresh_backlog,
            "in_flight": self.in_flight,
            "rate_budget_remaining": self.rate_budget_remaining,
            "rate_blocked_for": self.rate_blocked_for,
        }
        if self.instance is not None:
            body["cluster"] = {
                "instance": self.instance,
                "instances": [i.to_json() for i in self.instances],
            }
        return body


def health_reasons(
    *,
    client_fault: str | None,
    store_error: str | None,
    at_risk: int,
    refused_peers: Sequence[tuple[int | None, RefusalReason, int]],
    unreadable: frozenset[str],
    faults: Mapping[str, str],
    failing: Mapping[str, str] | None = None,
    cluster: str | None = None,
) -> tuple[str, ...]:
    """Why the engine is degraded, in the order an operator should look (none: ok)."""
    reasons: list[str] = [cluster] if cluster else []
    if client_fault:
        reasons.append(f"refreshing stopped: {client_fault}")
    if store_error:
        reasons.append(f"store not writable: {store_error}")
    if failing:
        (human, why), *_ = sorted(failing.items())
        reasons.append(
            f"{len(failing)} grant(s) without a live token while their refresh fails "
            f"(first: {human}, last error: {why})"
        )
    if at_risk:
        reasons.append(f"{at_risk} grant(s) may expire before the rate budget reaches them")
    for peer, reason, count in refused_peers[:PEERS_SHOWN]:
        who = "an unknown peer" if peer is None else f"peer uid {peer}"
        reasons.append(
            f"on-demand refreshes refused for {who}: {count} in the last minute "
            f"(last: {reason.value})"
        )
    if unreadable:
        names = ", ".join(sorted(unreadable)[:PEERS_SHOWN])
        reasons.append(
            f"{len(unreadable)} grant(s) quarantined, store row unreadable: {names}; "
            "re-consent them (haasd consent start --human ID)"
        )
    if faults:
        first = sorted(faults.items())[:PEERS_SHOWN]
        shown = ", ".join(f"{human} ({what})" for human, what in first)
        reasons.append(f"{len(faults)} grant(s) met an internal error: {shown}")
    return tuple(reasons)
