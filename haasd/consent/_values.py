"""What the consent flow gives and needs: a started consent, a finished one, a grant keeper."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from haasd.grants import Grant, Policy

__all__ = ["ConsentResult", "GrantKeeper", "MayHold", "PendingConsent"]

#: may whoever finishes a consent hold this human's grant? (the server asks its rules)
MayHold = Callable[[str], bool]


class GrantKeeper(Protocol):
    """What the flow needs of the refresh engine (:class:`~haasd.refresher.Refresher`)."""

    @property
    def policy(self) -> Policy:
        """The refresh policy in force now: a reload may replace it, so it is read for
        every new grant, never kept."""
        ...

    def grant(self, human_id: str) -> Grant | None:
        """The human's grant, if one is kept."""
        ...

    async def add(self, grant: Grant) -> None:
        """Store a grant (replacing the human's earlier one at once) and schedule it."""
        ...


@dataclass(frozen=True, slots=True)
class PendingConsent:
    """A started consent: send the human to ``authorization_url`` before ``expires_at``.

    ``state`` is what the callback must bring back; it is stored only as a digest and
    never logged, so it is kept out of ``repr`` (as is the URL, which carries it).
    """

    consent_id: str
    state: str = field(repr=False)
    authorization_url: str = field(repr=False)
    scope: tuple[str, ...]
    #: the human asked for (``login_hint``): a re-consent or a known human's onboarding
    human_id: str | None
    #: True when ``human_id`` has a grant now (whatever its state)
    reconsent: bool
    redirect_uri: str
    created_at: float
    expires_at: float
    #: something the starter should know before sending the human (e.g. that a consent
    #: without a human id will be refused by this server), or None
    warning: str | None = None


@dataclass(frozen=True, slots=True)
class ConsentResult:
    """A finished consent: the grant is stored and scheduled."""

    consent_id: str
    #: whom the server says consented (the grant is stored under this id)
    human_id: str
    scope: tuple[str, ...]
    requested_scope: tuple[str, ...]
    #: an earlier grant of ``human_id`` was replaced (atomically)
    replaced: bool
    #: the consent named a human and another one approved: a new grant for that other
    #: human (if the finisher may hold them); the named human's grant is untouched
    different_human: bool
    expected_human_id: str | None
    grant: Grant = field(repr=False)
