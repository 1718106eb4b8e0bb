"""Prometheus metrics of one gateway, in a registry of its own (several gateways may share a
process, as tests do), exposed on ``/metrics`` by the HTTP edge.

>>> metrics = Metrics()
>>> metrics.requests.labels(outcome="ok").inc()
>>> b'citygate_requests_total{outcome="ok"} 1.0' in metrics.exposition()
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Latency buckets from a cached answer (sub-millisecond) to a slow federated join.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("citygate_requests", "GraphQL requests by outcome", ["outcome"], registry=self.registry)
        self.request_seconds = Histogram(
            "citygate_request_duration_seconds",
            "Whole GraphQL requests, from the body read to the response",
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.statement_seconds = Histogram(
            "citygate_statement_duration_seconds",
            "Root-field statements by department read and engine (cache hits included)",
            ["department", "engine"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.cache = Counter(
            "citygate_cache_lookups", "Cache lookups by cache and result", ["cache", "result"], registry=self.registry
        )
        self.engine_errors = Counter(
            "citygate_engine_errors",
            "Root fields the engine failed, by engine and error code",
            ["engine", "code"],
            registry=self.registry,
        )
        self.audit_backlog = Gauge(
            "citygate_audit_backlog", "Audit records queued but not yet written", registry=self.registry
        )

        # Labelled children looked up once: ``labels()`` costs microseconds per call.
        self._requests: dict[str, Any] = {}
        self._lookups: dict[tuple[str, str], Any] = {}

    def count_request(self, outcome: str) -> None:
        child = self._requests.get(outcome)
        if child is None:
            child = self._requests[outcome] = self.requests.labels(outcome=outcome)
        child.inc()

    def count_lookup(self, cache: str, result: str) -> None:
        child = self._lookups.get((cache, result))
        if child is None:
            child = self._lookups[(cache, result)] = self.cache.labels(cache=cache, result=result)
        child.inc()

    def watch_backlog(self, backlog: Callable[[], int]) -> None:
        self.audit_backlog.set_function(lambda: float(backlog()))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
