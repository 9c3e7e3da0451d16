"""The daemon's answers as values: tokens, statuses, health; and the event stream's
lines as events. Pure: bytes or JSON in, values out."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from haasd.secret import Secret
from haasd.timefmt import rfc3339

__all__ = [
    "Cluster",
    "ClusterInstance",
    "ConsentSettings",
    "EventParser",
    "FinishedConsent",
    "Health",
    "HumanStatus",
    "StartedConsent",
    "Token",
    "parse_time",
    "scope_tuple",
]


def parse_time(text: object) -> float:
    """An RFC 3339 timestamp (``...Z``) as epoch seconds."""
    if not isinstance(text, str):
        raise ValueError(f"not a timestamp: {text!r}")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {text!r}")
    return moment.timestamp()


def _optional_time(text: object) -> float | None:
    return None if text is None else parse_time(text)


def scope_tuple(scope: str | Iterable[str] | None) -> tuple[str, ...]:
    """Scopes as a sorted tuple without repeats; a string is space-separated."""
    if scope is None:
        return ()
    words = scope.split() if isinstance(scope, str) else [w for s in scope for w in s.split()]
    return tuple(sorted(set(words)))


@dataclass(frozen=True, slots=True)
class Token:
    """An access token from haasd. ``expires_at`` is epoch seconds; ``expires_in`` the
    seconds it had left when handed to you. Its ``repr`` never shows the token."""

    human_id: str
    access_token: Secret
    token_type: str
    expires_at: float
    expires_in: int
    scope: tuple[str, ...]
    environment: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Token:
        token = data["access_token"]
        expires_in = data["expires_in"]
        if not isinstance(token, str) or not token:
            raise ValueError("access_token is not a string")
        if not isinstance(expires_in, int) or isinstance(expires_in, bool):
            raise ValueError("expires_in is not a whole number")
        return cls(
            human_id=str(data["human_id"]),
            access_token=Secret(token),
            token_type=str(data["token_type"]),
            expires_at=parse_time(data["expires_at"]),
            expires_in=expires_in,
            scope=tuple(str(data["scope"]).split()),
            environment=str(data["environment"]),
        )

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header's value. Reveals the token: send it, never log it."""
        return f"{self.token_type} {self.access_token.reveal()}"


@dataclass(frozen=True, slots=True)
class HumanStatus:
    """What haasd shows about a grant (never a token); times are epoch seconds."""

    human_id: str
    state: str  # active, reconsent_due or needs_reconsent
    scope: tuple[str, ...]
    access_expires_at: float
    refresh_expires_at: float
    last_refresh_at: float | None
    last_error: str | None
    reconsent_days_left: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HumanStatus:
        days = data.get("reconsent_days_left")
        error = data.get("last_error")
        return cls(
            human_id=str(data["human_id"]),
            state=str(data["state"]),
            scope=tuple(str(data["scope"]).split()),
            access_expires_at=parse_time(data["access_expires_at"]),
            refresh_expires_at=parse_time(data["refresh_expires_at"]),
            last_refresh_at=_optional_time(data.get("last_refresh_at")),
            last_error=None if error is None else str(error),
            reconsent_days_left=days if isinstance(days, int) else None,
        )

    def to_json(self) -> dict[str, object]:
        """The daemon's own shape (RFC 3339 times, space-separated scope)."""
        return {
            "human_id": self.human_id,
            "state": self.state,
            "scope": " ".join(self.scope),
            "access_expires_at": rfc3339(self.access_expires_at),
            "refresh_expires_at": rfc3339(self.refresh_expires_at),
            "last_refresh_at": None
            if self.last_refresh_at is None
            else rfc3339(self.last_refresh_at),
            "last_error": self.last_error,
            "reconsent_days_left": self.reconsent_days_left,
        }


@dataclass(frozen=True, slots=True)
class StartedConsent:
    """A consent haasd started (``POST /v1/consents``): send the human to
    ``authorization_url`` before ``expires_at`` (epoch seconds). The URL carries the
    single-use ``state``: neither is shown in ``repr``."""

    authorization_url: str = field(repr=False)
    state: str = field(repr=False)
    expires_at: float
    consent_id: str
    scope: tuple[str, ...]
    redirect_uri: str
    #: the human named (a re-consent, or a known human's onboarding), if any
    human_id: str | None
    #: the named human has a grant now, which the consent will replace
    reconsent: bool
    #: what haasd wants the starter to know first (e.g. a consent without a human id
    #: will be refused by this server), if anything
    warning: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StartedConsent:
        human_id, warning = data.get("human_id"), data.get("warning")
        return cls(
            authorization_url=str(data["authorization_url"]),
            state=str(data["state"]),
            expires_at=parse_time(data["expires_at"]),
            consent_id=str(data["consent_id"]),
            scope=tuple(str(data["scope"]).split()),
            redirect_uri=str(data["redirect_uri"]),
            human_id=None if human_id is None else str(human_id),
            reconsent=bool(data.get("reconsent", False)),
            warning=None if warning is None else str(warning),
        )


@dataclass(frozen=True, slots=True)
class FinishedConsent:
    """A consent haasd finished (``POST /v1/consents/callback``): the grant it stored."""

    status: HumanStatus
    consent_id: str
    requested_scope: tuple[str, ...]
    #: an earlier grant of the same human was replaced
    replaced: bool
    #: the consent named a human and another approved: ``status`` is the other's new
    #: grant, and ``expected_human_id``'s grant is unchanged
    different_human: bool
    expected_human_id: str | None

    @property
    def human_id(self) -> str:
        return self.status.human_id

    @property
    def scope(self) -> tuple[str, ...]:
        return self.status.scope

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FinishedConsent:
        expected = data.get("expected_human_id")
        return cls(
            status=HumanStatus.from_json(data),
            consent_id=str(data["consent_id"]),
            requested_scope=tuple(str(data.get("requested_scope", "")).split()),
            replaced=bool(data["replaced"]),
            different_human=bool(data["different_human"]),
            expected_human_id=None if expected is None else str(expected),
        )


@dataclass(frozen=True, slots=True)
class ConsentSettings:
    """How haasd takes consents (``GET /v1/consents``)."""

    redirect_uri: str
    #: the redirect URI is a loopback one (``haasd consent listen`` can catch it)
    loopback: bool
    pending_ttl: float
    max_pending: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ConsentSettings:
        return cls(
            redirect_uri=str(data["redirect_uri"]),
            loopback=bool(data["loopback"]),
            pending_ttl=float(data["pending_ttl"]),
            max_pending=int(data["max_pending"]),
        )


@dataclass(frozen=True, slots=True)
class ClusterInstance:
    """One haasd of a cluster, as its last heartbeat showed it: ``heartbeat_age`` and
    ``uptime`` in seconds (the database's clock), ``leases`` the grants it holds now."""

    instance_id: str
    host: str
    pid: int
    heartbeat_age: float
    uptime: float
    leases: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClusterInstance:
        return cls(
            instance_id=str(data["instance"]),
            host=str(data["host"]),
            pid=_whole(data["pid"], "pid"),
            heartbeat_age=float(data["heartbeat_age"]),
            uptime=float(data["uptime"]),
            leases=_whole(data["leases"], "leases"),
        )

    def to_json(self) -> dict[str, object]:
        """The daemon's own shape."""
        return {
            "instance": self.instance_id,
            "host": self.host,
            "pid": self.pid,
            "heartbeat_age": self.heartbeat_age,
            "uptime": self.uptime,
            "leases": self.leases,
        }


@dataclass(frozen=True, slots=True)
class Cluster:
    """The haasd instances sharing one PostgreSQL store: ``instance`` is the name of the
    one that answered; ``instances`` the live ones, by name."""

    instance: str
    instances: tuple[ClusterInstance, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Cluster:
        instances = data["instances"]
        if not isinstance(instances, list):
            raise ValueError("cluster.instances is not a list")
        parsed = tuple(ClusterInstance.from_json(i) for i in instances)
        return cls(str(data["instance"]), parsed)

    def to_json(self) -> dict[str, object]:
        """The daemon's own shape."""
        return {"instance": self.instance, "instances": [i.to_json() for i in self.instances]}


def _whole(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} is not a whole number")
    return value


@dataclass(frozen=True, slots=True)
class Health:
    """``GET /v1/health``: ``status`` is ``ok`` or ``degraded``, with the reasons; the
    rest of the answer (grants, backlog, rate budget, ...) is in ``details``. ``cluster``:
    the instances sharing the store, when it is PostgreSQL (None: one haasd alone)."""

    status: str
    reasons: tuple[str, ...]
    details: Mapping[str, Any] = field(default_factory=dict)
    cluster: Cluster | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Health:
        reasons = data.get("reasons") or ()
        if not isinstance(reasons, list | tuple):
            raise ValueError("reasons is not a list")
        details = {k: v for k, v in data.items() if k not in {"status", "reasons"}}
        cluster = data.get("cluster")
        if cluster is not None and not isinstance(cluster, Mapping):
            raise ValueError("cluster is not an object")
        return cls(
            str(data["status"]),
            tuple(str(r) for r in reasons),
            details,
            None if cluster is None else Cluster.from_json(cluster),
        )


class EventParser:
    """``text/event-stream`` lines in, events out: one JSON object per ``data:``.

    Comment lines (``: heartbeat``) are skipped; an event ends at a blank line. Each
    event is the ``data`` object, with ``type`` from the ``event:`` line if it lacks one.
    """

    __slots__ = ("_data", "_name")

    def __init__(self) -> None:
        self._name = ""
        self._data: list[str] = []

    def feed(self, line: str) -> dict[str, Any] | None:
        """One line (without its line end); the event it completes, if any."""
        if not line:
            name, data = self._name, self._data
            self._name, self._data = "", []
            if not data:
                return None
            event = json.loads("\n".join(data))
            if not isinstance(event, dict):
                raise ValueError("an event's data is not a JSON object")
            if name:
                event.setdefault("type", name)
            return event
        if line.startswith(":"):
            return None
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if key == "event":
            self._name = value
        elif key == "data":
            self._data.append(value)
        return None  # id:, retry: and unknown fields are ignored, as the spec says
