"""The simulated HaaS authorization server: test mode's simulated humans.

A real HTTP/1.1 server on a loopback TCP port (anyio + h11), so httpx talks to it exactly
as to ``auth.api4human.com``. It implements what the HaaS authentication page documents —
``GET /authorize`` with humans who approve, deny or close the tab, ``POST /token`` with
the ``authorization_code`` and ``refresh_token`` grants, per-plan rate limits — plus the
standard OAuth behaviour a careful client must survive: single-use codes, PKCE (S256),
refresh-token rotation with reuse detection, the 30-day absolute limit, and injected
faults. Every lifetime runs on the injected :class:`~haasd.clock.Clock`::

    sim = Simulator(clock, client_id="...", client_secret="...", rotate_refresh_tokens=True)
    async with sim.running() as base_url:
        tokens = await sim.consent("usr_maria_42", "status:read")
        ...

Modules: ``_authority`` (the decisions, pure), ``_authorize`` (``/authorize`` and PKCE
checks), ``_records`` (grants, codes and tokens issued), ``_settings`` (configuration and
decisions), ``_tokenrequest`` (reading ``/token`` bodies), ``_ratelimit`` (the HaaS docs'
fixed window), ``_faults`` (fault injection), ``_endpoints`` (routes, with faults around
``/token``), ``_http`` (the h11 connection loop), ``_simulator`` (the public class),
``_stats`` (counters), ``_messages`` (request and response values).
"""

from haasd.simulator._faults import MalformedKind
from haasd.simulator._ratelimit import Plan
from haasd.simulator._settings import Decision
from haasd.simulator._simulator import Simulator, SimulatorError
from haasd.simulator._stats import SimulatorStats, SpentTokenRecord, TokenRequestRecord

__all__ = [
    "Decision",
    "MalformedKind",
    "Plan",
    "Simulator",
    "SimulatorError",
    "SimulatorStats",
    "SpentTokenRecord",
    "TokenRequestRecord",
]
