"""What the simulated authorization server is configured to do, and what its humans decide."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, cast, get_args

from haasd.secret import Secret

__all__ = ["SCOPES", "Decision", "Settings", "decision_of"]

#: what a simulated human does on the consent page: approve, deny, or close the tab
Decision = Literal["approve", "deny", "ignore"]
_DECISIONS: Final = frozenset(get_args(Decision))

#: The scopes the HaaS docs list.
SCOPES: Final = frozenset(
    {"status:read", "tasks:dispatch", "tasks:read", "communication:realtime", "profile:read"}
)


@dataclass(frozen=True, slots=True)
class Settings:
    """The server's configuration (:class:`~haasd.simulator.Simulator`'s arguments);
    a value out of range is a :class:`ValueError`."""

    client_id: str
    client_secret: Secret
    redirect_uris: tuple[str, ...] | None
    requests_per_minute: int
    expires_in: int
    refresh_token_lifetime: float
    rotate_refresh_tokens: bool
    reuse_detection: bool
    send_refresh_token_expires_in: bool
    reuse_grace: float
    omit_refresh_token_when_not_rotating: bool
    code_lifetime: float
    #: send ``human_id`` in token answers (the HaaS docs); False: a plain RFC 6749 answer
    name_humans: bool = True
    #: send ``scope`` in token answers; False: left out, as RFC 6749 §5.1 allows when it
    #: is the scope requested (which every answer of this server's is)
    include_scope: bool = True
    #: pick the human by ``login_hint``; False: the hint is ignored, as many servers do
    honour_login_hint: bool = True
    #: how many times a spent refresh token is honoured within ``reuse_grace``; None:
    #: as often as it is presented in the window (Okta's grace period, Auth0's reuse
    #: interval)
    grace_replays: int | None = 1

    def __post_init__(self) -> None:
        if not self.client_id or not self.client_secret:
            raise ValueError("client_id and client_secret must not be empty")
        if self.requests_per_minute < 1:
            raise ValueError("requests_per_minute must be at least 1")
        if self.expires_in < 1 or self.refresh_token_lifetime <= 0 or self.code_lifetime <= 0:
            raise ValueError("lifetimes must be positive")
        if self.reuse_grace < 0:
            raise ValueError("reuse_grace must not be negative")
        if self.grace_replays is not None and self.grace_replays < 1:
            raise ValueError("grace_replays must be at least 1, or None (no limit)")


def decision_of(decision: str) -> Decision:
    """``decision`` as a :data:`Decision`; a :class:`ValueError` when it is none."""
    if decision not in _DECISIONS:
        raise ValueError(f"decision must be one of {', '.join(sorted(_DECISIONS))}")
    return cast(Decision, decision)
