"""The refresh engine: every grant fresh, inside the rate limit, never a lost refresh token.

It holds every grant in memory (tokens decrypted once at start) and keeps them current:

* **One heap** of wall-clock deadlines, one entry per grant (stale entries skipped by
  version), drives everything: refreshes ahead of expiry and the clock passing the
  re-consent warning or the 30-day limit. Between deadlines the engine sleeps.
* **Due refreshes** go to a ready queue ordered by access expiry — earliest first when
  demand exceeds the budget — drained by a few workers.
* **Single flight**: at most one refresh per grant is in flight, whoever asked for it
  (the schedule, :meth:`Refresher.ensure_fresh`, an admin); the rest wait for it. The
  flight runs in the engine's own task group, so a caller that goes away cannot cut it.
* **Write before serve**: an intent (fingerprint of the refresh token being spent) is
  written before the request; the answer's tokens are written, synced and shielded from
  cancellation before memory — and so any reader — sees them.

What a grant is and what an answer does to it is :mod:`haasd.grants`; when and whether
to refresh is :mod:`haasd.refresh_policy` (pure decisions); storage is any
:class:`~haasd.grantstore.GrantStore`; who may refresh a grant now is a
:class:`~haasd.coordination.Coordination`. This package does the I/O, in parts composed
by :class:`Refresher` (``_engine``): ``_memory`` (the grants and the notes about them,
and the one policy in force), ``_scheduler`` (deadlines, ready queue, workers),
``_flight`` (single flight in the engine's task group), ``_asking`` (whether a refresh a
caller asked for may start), ``_refresh`` (one refresh: permit, intent, request),
``_outcome`` (written, then kept, scheduled and announced), ``_unwritten`` (answers the
store refused, held in memory and written once it can), ``_risk`` (grants at risk)
and ``_stats`` (the figures for /metrics); :meth:`Refresher.health` is a
:class:`haasd.health.Health`.
"""

from haasd.health import Health
from haasd.refresh_policy import STARTUP_SPREAD
from haasd.refresher._engine import SERVED_FLUSH_EVERY, Refresher
from haasd.refresher._flight import Flight
from haasd.refresher._refresh import LOST_ANSWER_DELAY, LOST_ANSWER_RETRIES, Checkpoint
from haasd.refresher._risk import RISK_CHECK_EVERY
from haasd.refresher._scheduler import MAX_SLEEP
from haasd.refresher._stats import LATENCY_BUCKETS, RefresherStats

__all__ = [
    "LATENCY_BUCKETS",
    "LOST_ANSWER_DELAY",
    "LOST_ANSWER_RETRIES",
    "MAX_SLEEP",
    "RISK_CHECK_EVERY",
    "SERVED_FLUSH_EVERY",
    "STARTUP_SPREAD",
    "Checkpoint",
    "Flight",
    "Health",
    "Refresher",
    "RefresherStats",
]
