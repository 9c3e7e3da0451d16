"""``GET /metrics``: the server's figures in the Prometheus text format.

Each :class:`~haasd.server.TokenServer` has its own :class:`CollectorRegistry` (never the
process-global one). Figures are computed when scraped, from what the server and the
service already hold, so serving a token costs one ``Counter`` increment and nothing else.
The refresh engine adds its own collectors (refreshes by outcome, latency, rate budget)
with :meth:`TokenServer.register_collector`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from haasd.grants import State, state_at
from haasd.server.http import response
from haasd.server.routes import Router

__all__ = ["OUTCOMES", "ServerCollector", "exposition"]

#: every outcome of ``GET /v1/tokens`` (each is exported, zero or not)
OUTCOMES: Final = (
    "served",
    "forbidden",
    "insufficient_scope",
    "unknown_human",
    "needs_reconsent",
    "unavailable",
    "invalid_request",
)


class ServerCollector(Collector):
    """Tokens served by outcome, grants by state, the nearest expiries, open connections."""

    def __init__(self, router: Router, connections: Callable[[], int]) -> None:
        self._router = router
        self._connections = connections

    def collect(self) -> Iterator[Metric]:
        outcomes = self._router.outcomes
        served = CounterMetricFamily(
            "haasd_tokens_served", "Token requests answered, by outcome", labels=["outcome"]
        )
        served.add_metric(["served"], self._router.served)
        for outcome in OUTCOMES[1:]:
            served.add_metric([outcome], outcomes[outcome])
        yield served

        service = self._router.service
        now = service.clock.time()
        counts = dict.fromkeys(State, 0)
        access: float | None = None
        limit: float | None = None
        for grant in service.grant_times():
            state = state_at(grant.state, grant.refresh_expires_at, now, service.policy)
            counts[state] += 1
            if state is State.NEEDS_RECONSENT:
                continue
            if access is None or grant.access_expires_at < access:
                access = grant.access_expires_at
            if limit is None or grant.refresh_expires_at < limit:
                limit = grant.refresh_expires_at
        grants = GaugeMetricFamily("haasd_grants", "Grants in memory, by state", labels=["state"])
        for state, count in counts.items():
            grants.add_metric([state.value], count)
        yield grants
        if access is not None and limit is not None:
            yield GaugeMetricFamily(
                "haasd_earliest_access_expiry_seconds",
                "Seconds until the earliest access token of a live grant expires",
                value=access - now,
            )
            yield GaugeMetricFamily(
                "haasd_earliest_refresh_limit_seconds",
                "Seconds until the earliest refresh-token limit (re-consent) of a live grant",
                value=limit - now,
            )
        yield GaugeMetricFamily(
            "haasd_connections", "Open connections on the token socket", value=self._connections()
        )


_CONTENT_TYPE: Final = CONTENT_TYPE_LATEST.encode("ascii")


def exposition(registry: CollectorRegistry) -> Callable[[], bytes]:
    """The whole ``/metrics`` answer for ``registry``, rendered when called."""

    def render() -> bytes:
        return response(200, generate_latest(registry), content_type=_CONTENT_TYPE)

    return render
