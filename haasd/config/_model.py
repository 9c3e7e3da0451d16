"""The frozen dataclasses a configuration loads into, and the constants they rest on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from haasd.config._secrets import SecretSource
from haasd.grants import Policy

#: The scopes the HaaS docs list.
SCOPES: Final = (
    "status:read",
    "tasks:dispatch",
    "tasks:read",
    "communication:realtime",
    "profile:read",
)
#: Requests per minute by plan, from the HaaS docs' rate-limit table.
PLAN_REQUESTS_PER_MINUTE: Final = {"free": 60, "pro": 300, "enterprise": 1000}

STAR_SCOPE_ADVICE: Final = (
    "'*' is not a scope: request the minimum you need "
    "(requesting * makes most humans close the authorization page)"
)
ENV_PREFIX: Final = "HAASD_"
DEFAULT_CONNECT_TIMEOUT: Final = 20.0
DEFAULT_AUTHORIZE_URL: Final = "https://auth.api4human.com/authorize"
DEFAULT_TOKEN_URL: Final = "https://auth.api4human.com/token"  # noqa: S105 - a URL

Environment = Literal["test", "live"]
#: how the client authenticates to the token endpoint (RFC 6749 §2.3.1, RFC 7591's names)
AuthMethod = Literal["client_secret_post", "client_secret_basic"]


@dataclass(frozen=True, slots=True)
class HaasConfig:
    environment: Environment
    client_id: str
    client_secret: SecretSource
    authorize_url: str
    token_url: str
    redirect_uri: str
    scopes: tuple[str, ...]
    plan: str
    requests_per_minute: int
    token_request_format: Literal["json", "form"]
    #: how the client authenticates at the token (and revocation) endpoint
    token_endpoint_auth_method: AuthMethod = "client_secret_post"  # noqa: S105 - a name
    #: RFC 7009 token revocation, if the server has it
    revocation_url: str | None = None
    #: seconds an access token lives when the token endpoint's answer has no expires_in
    default_token_lifetime: int = 3600


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where the grants live: a SQLite file (``path``, the default) or, when ``url`` is
    set, a PostgreSQL database shared by several instances (``path`` is then unused)."""

    path: Path
    key: SecretSource
    #: ``postgresql://user@host:port/db`` without any password (that is in ``password``)
    url: str | None = None
    #: the database password's source, when ``url`` is set; a server that authenticates
    #: otherwise (peer, certificates) needs none: see :meth:`SecretSource.load_optional`
    password: SecretSource | None = None
    #: at start, how long an unreachable database is retried before ``haasd run`` gives up
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT

    def describe(self) -> str:
        """Where the store is, for ``check-config``: the file, or the URL and where its
        password comes from (never the password)."""
        if self.url is None or self.password is None:
            return str(self.path)
        source = self.password.describe()
        given = "no password" if source == "nowhere" else f"password from {source}"
        return f"{self.url} (PostgreSQL, {given})"


#: the refresh policy's defaults, declared once (:class:`haasd.grants.Policy`)
_POLICY: Final = Policy()


@dataclass(frozen=True, slots=True)
class RefreshConfig:
    """The ``[refresh]`` keys; each defaults to the refresh policy's own default."""

    refresh_fraction: float = _POLICY.refresh_fraction
    refresh_token_lifetime: float = _POLICY.refresh_token_lifetime
    reconsent_warning: float = _POLICY.reconsent_warning
    refresh_idle: float = _POLICY.refresh_idle
    serve_margin: float = _POLICY.serve_margin
    on_demand_cooldown: float = _POLICY.on_demand_cooldown
    on_demand_share: float = _POLICY.on_demand_share


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """``[cluster]``: several instances on one PostgreSQL store (``store.url``)."""

    #: how long a grant's lease lasts unless renewed: a dead instance's grants are taken
    #: over this long after it stops renewing, well inside servers' reuse grace windows
    lease: float = 15.0


@dataclass(frozen=True, slots=True)
class SocketConfig:
    path: Path
    mode: int = 0o660


@dataclass(frozen=True, slots=True)
class ConsentConfig:
    #: how long a started consent waits for the human before it is abandoned
    pending_ttl: float = 900.0
    #: the most consents that may be pending at once
    max_pending: int = 1000


@dataclass(frozen=True, slots=True)
class AccessRule:
    """Which peers (by uid and/or gid) may have which humans' tokens."""

    uid: int | None
    gid: int | None
    humans: tuple[str, ...]
    scopes: tuple[str, ...] | None  # None: any scope the grant holds
    admin: bool


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    haas: HaasConfig
    store: StoreConfig
    refresh: RefreshConfig
    socket: SocketConfig
    access: tuple[AccessRule, ...]
    log: LogConfig
    consent: ConsentConfig = ConsentConfig()
    cluster: ClusterConfig = ClusterConfig()
    #: how many ``[[access]]`` rules of the file ``HAASD_ACCESS`` replaced (0: none)
    access_replaced: int = 0
