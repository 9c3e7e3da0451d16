"""The refresh engine's figures for ``/metrics`` (the server adds its own).

Computed when scraped from what the engine already counts: refreshes by outcome, the
refresh round-trip histogram, the rate budget, grants at risk.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from haasd.demand import RefusalReason
from haasd.ratelimit import RateBudget
from haasd.refresher import LATENCY_BUCKETS, Refresher

__all__ = ["EngineCollector"]

_OUTCOMES = ("ok", "transient", "refused", "client_fault")


class EngineCollector(Collector):
    """Refreshes by outcome, their latency, the rate budget and grants at risk."""

    def __init__(self, refresher: Refresher, budget: RateBudget) -> None:
        self._refresher = refresher
        self._budget = budget

    def collect(self) -> Iterator[Metric]:
        yield from self._refreshes()
        yield from self._budget_and_backlog()
        yield from self._refusals_and_faults()
        yield from self._cluster()

    def _refreshes(self) -> Iterator[Metric]:
        """Refreshes by outcome, the late ones, and their round trip."""
        stats = self._refresher.stats
        refreshes = CounterMetricFamily(
            "haasd_refreshes", "Refresh attempts that ended, by outcome", labels=["outcome"]
        )
        for outcome in _OUTCOMES:
            refreshes.add_metric([outcome], stats.refreshes[outcome])
        yield refreshes
        yield CounterMetricFamily(
            "haasd_refreshes_late",
            "Refreshes that landed after the old access token had expired",
            value=stats.late,
        )
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(
            (*LATENCY_BUCKETS, float("inf")), stats.latency_buckets, strict=True
        ):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        yield HistogramMetricFamily(
            "haasd_refresh_latency_seconds",
            "Round trip of refresh requests to the HaaS token endpoint",
            buckets=buckets,
            sum_value=stats.latency_sum,
        )

    def _budget_and_backlog(self) -> Iterator[Metric]:
        """The rate budget, and the grants it may not reach in time."""
        yield GaugeMetricFamily(
            "haasd_rate_budget_remaining",
            "Requests haasd may still send to HaaS in the current minute",
            value=self._budget.remaining,
        )
        yield GaugeMetricFamily(
            "haasd_rate_limit_per_minute",
            "The plan's requests per minute (or the server's lower word)",
            value=self._budget.limit,
        )
        yield GaugeMetricFamily(
            "haasd_grants_at_risk",
            "Grants whose token may expire before the rate budget reaches them",
            value=float(self._refresher.at_risk()),
        )
        yield GaugeMetricFamily(
            "haasd_refresh_backlog",
            "Grants due for a refresh and waiting for a worker",
            value=float(self._refresher.backlog),
        )

    def _refusals_and_faults(self) -> Iterator[Metric]:
        """On-demand refreshes refused, quarantined grants, a store that refuses writes,
        a stop for a client fault."""
        refused = CounterMetricFamily(
            "haasd_on_demand_refused",
            "Refreshes asked for on demand (min_ttl, admin refresh) and refused, by reason",
            labels=["reason"],
        )
        for reason in RefusalReason:
            refused.add_metric([reason.value], self._refresher.demand.refused[reason])
        yield refused
        yield GaugeMetricFamily(
            "haasd_grants_quarantined",
            "Grants whose stored row could not be read (they need re-consent)",
            value=float(len(self._refresher.store.unreadable)),
        )
        yield GaugeMetricFamily(
            "haasd_store_writable",
            "0 while the store refuses writes (a full disk): health says which answers wait",
            value=0.0 if self._refresher.stats.store_error else 1.0,
        )
        yield GaugeMetricFamily(
            "haasd_refreshing_stopped",
            "1 while refreshing is stopped by a client-credentials fault",
            value=1.0 if self._refresher.stats.client_fault else 0.0,
        )

    def _cluster(self) -> Iterator[Metric]:
        """In a cluster: the live instances, and the leases this one holds."""
        health = self._refresher.health()
        if health.instance is None:
            return
        yield GaugeMetricFamily(
            "haasd_cluster_instances",
            "Live haasd instances sharing the store (heartbeats within cluster.lease)",
            value=float(len(health.instances)),
        )
        mine = [i.leases for i in health.instances if i.instance_id == health.instance]
        yield GaugeMetricFamily(
            "haasd_cluster_leases_held",
            "Grant leases this instance holds now (refreshes under way here)",
            value=float(mine[0] if mine else 0),
        )
        yield GaugeMetricFamily(
            "haasd_cluster_store_reachable",
            "1 while this instance reaches the shared store, 0 while it is cut off",
            value=0.0 if any(r.startswith("cluster:") for r in health.reasons) else 1.0,
        )
