"""The refresh engine's figures for health and /metrics: outcomes, latency, faults."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Final

__all__ = ["LATENCY_BUCKETS", "RefresherStats"]

#: upper bounds (seconds) of the refresh-latency histogram's buckets
LATENCY_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(slots=True)
class RefresherStats:
    """Figures for health and /metrics."""

    refreshes: Counter[str] = field(default_factory=Counter)  # by outcome
    #: refresh round trips: a count per bucket of LATENCY_BUCKETS (+ one for +Inf), sum
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    #: refreshes that landed after the old access token had already expired
    late: int = 0
    client_fault: str | None = None
    store_error: str | None = None
    at_risk: int = 0

    def observe_latency(self, seconds: float) -> None:
        index = next(
            (i for i, bound in enumerate(LATENCY_BUCKETS) if seconds <= bound),
            len(LATENCY_BUCKETS),
        )
        self.latency_buckets[index] += 1
        self.latency_sum += seconds
