"""Prometheus metrics of one gateway, in a registry of its own (several gateways may share a
process, as tests do), exposed on ``/metrics`` by the HTTP edge.

The figures every request moves (requests by outcome, their latency, cache lookups) are
kept in :class:`Tally` slots, one list per thread, bumped without a lock and summed when
Prometheus scrapes. prometheus_client's own counters take a mutex per increment, and a cached
answer costs only tens of microseconds in all. The rarer figures (statements, engine errors,
the audit backlog) are prometheus_client's own.

>>> metrics = Metrics()
>>> metrics.count_request("ok", 0.0007)
>>> text = metrics.exposition()
>>> b'citygate_requests_total{outcome="ok"} 1.0' in text
True
>>> b'citygate_request_duration_seconds_bucket{le="0.001"} 1.0' in text
True
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# Latency buckets from a cached answer (sub-millisecond) to a slow federated join.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
OUTCOMES = ("ok", "partial", "error", "refused", "unauthenticated", "forbidden", "bad_request")
CACHES = ("document", "plan", "result", "introspection")
RESULTS = ("hit", "miss", "off")

_OUTCOME = {outcome: index for index, outcome in enumerate(OUTCOMES)}
_LOOKUP = {key: len(OUTCOMES) + index for index, key in enumerate(itertools.product(CACHES, RESULTS))}
_PLAN_HIT, _RESULT_HIT = _LOOKUP["plan", "hit"], _LOOKUP["result", "hit"]
_BUCKET0 = len(OUTCOMES) + len(_LOOKUP)  # then one slot per bucket and +Inf, then the sum
_SUM = _BUCKET0 + len(BUCKETS) + 1
_SLOTS = _SUM + 1


class Tally:
    """Numbers added to without a lock: each thread adds to a list of its own, and ``totals``
    sums the lists. A scrape may miss an addition still in flight, never lose one."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._local = threading.local()
        self._lists: list[list[float]] = []
        self._lock = threading.Lock()  # taken once per thread, and by each scrape

    def mine(self) -> list[float]:
        slots: list[float] | None = getattr(self._local, "slots", None)
        if slots is None:
            slots = self._local.slots = [0.0] * self.size
            with self._lock:
                self._lists.append(slots)
        return slots

    def totals(self) -> list[float]:
        with self._lock:
            lists = list(self._lists)
        return [sum(column) for column in zip(*lists, strict=True)] if lists else [0.0] * self.size


class _Hot(Collector):
    """The tallied figures as Prometheus metric families."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    def collect(self) -> Iterator[Metric]:
        totals = self.tally.totals()
        requests = CounterMetricFamily("citygate_requests", "GraphQL requests by outcome", labels=["outcome"])
        for outcome, index in _OUTCOME.items():
            requests.add_metric([outcome], totals[index])
        yield requests
        lookups = CounterMetricFamily(
            "citygate_cache_lookups", "Cache lookups by cache and result", labels=["cache", "result"]
        )
        for (cache, result), index in _LOOKUP.items():
            if totals[index] or result != "off" or cache == "result":  # only the result cache is ever off
                lookups.add_metric([cache, result], totals[index])
        yield lookups
        counts = itertools.accumulate(totals[_BUCKET0:_SUM])
        bounds = [*map(str, BUCKETS), "+Inf"]
        latency = HistogramMetricFamily(
            "citygate_request_duration_seconds", "Whole GraphQL requests, from the body read to the response"
        )
        latency.add_metric([], list(zip(bounds, counts, strict=True)), sum_value=totals[_SUM])
        yield latency


class _Flushes(Collector):
    """The audit trail's writes so far, each flushed once: fewer than its records while
    concurrent requests share them (group commit)."""

    def __init__(self) -> None:
        self.flushes: Callable[[], int] = lambda: 0  # the trail's, once a gateway has one

    def collect(self) -> Iterator[Metric]:
        meaning = "Writes of the audit trail, each flushed once (fsync): fewer than its records under concurrency"
        yield CounterMetricFamily("citygate_audit_flushes", meaning, value=self.flushes())


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._tally = Tally(_SLOTS)
        self.registry.register(_Hot(self._tally))
        self.audit_flushes = _Flushes()
        self.registry.register(self.audit_flushes)
        self.statement_seconds = Histogram(
            "citygate_statement_duration_seconds",
            "Root-field statements by department read, engine and route (cache hits included)",
            ["department", "engine", "route"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.engine_errors = Counter(
            "citygate_engine_errors",
            "Root fields the engine failed, by engine, error code and route",
            ["engine", "code", "route"],
            registry=self.registry,
        )
        self.batched_keys = Histogram(
            "citygate_batched_keys",
            "Keys a relationship followed by key between stores was given (one observation per part and request)",
            buckets=(1, 10, 100, 1_000, 10_000, 100_000),
            registry=self.registry,
        )
        self.engine_up = Gauge(
            "citygate_engine_up",
            "Whether the engine answered the last health check",
            ["engine"],
            registry=self.registry,
        )
        self.route_up = Gauge(
            "citygate_route_up",
            "Whether the route (the engine, or a store's own: delegated:<store>) answered the last health check",
            ["route"],
            registry=self.registry,
        )
        self.department_up = Gauge(
            "citygate_department_up",
            "Whether the department's store answered the last health check",
            ["department"],
            registry=self.registry,
        )
        self.audit_backlog = Gauge(
            "citygate_audit_backlog", "Audit records queued but not yet written", registry=self.registry
        )
        self.audit_up = Gauge(
            "citygate_audit_up",
            "Whether the audit trail can be written (0: every request is refused until it can)",
            registry=self.registry,
        )
        self.state_up = Gauge(
            "citygate_state_up",
            "Whether the shared state (privacy budgets, rate limits) answered the last health check "
            "(0: noisy answers and rate-limited requests are refused until it does)",
            registry=self.registry,
        )
        self.audit_refused = Counter(
            "citygate_audit_refused_requests",
            "Requests refused because their audit record could not be written",
            registry=self.registry,
        )
        self.audit_unrecorded = Counter(
            "citygate_audit_unrecorded_refusals",
            "Requests refused by the throttle before identity and counted in a `throttled` audit record,"
            " not recorded one by one",
            registry=self.registry,
        )

    def count_request(self, outcome: str, seconds: float) -> None:
        """A finished request: its outcome and how long it took."""
        slots = self._tally.mine()
        slots[_OUTCOME[outcome]] += 1
        slots[_BUCKET0 + bisect.bisect_left(BUCKETS, seconds)] += 1
        slots[_SUM] += seconds

    def count_lookup(self, cache: str, result: str) -> None:
        self._tally.mine()[_LOOKUP[cache, result]] += 1

    def count_cached(self, fields: int) -> None:
        """A request answered wholly from the caches: a plan hit and a result hit per root field."""
        slots = self._tally.mine()
        slots[_PLAN_HIT] += 1
        slots[_RESULT_HIT] += fields

    def record_health(
        self, engine: str, reachable: bool, departments: dict[str, str], routes: dict[str, str] | None = None
    ) -> None:
        """A health check's findings (a department the engine could not be asked about is down)."""
        self.engine_up.labels(engine).set(1.0 if reachable else 0.0)
        for route, state in (routes or {}).items():
            self.route_up.labels(route).set(1.0 if state == "ok" else 0.0)
        for department, state in departments.items():
            self.department_up.labels(department).set(1.0 if state == "ok" else 0.0)

    def record_state(self, up: bool) -> None:
        self.state_up.set(1.0 if up else 0.0)

    def watch_audit(
        self, backlog: Callable[[], int], trouble: Callable[[], str | None], flushes: Callable[[], int]
    ) -> None:
        """The trail's backlog, whether it can be written and how many writes it took, read at
        each scrape."""
        self.audit_backlog.set_function(lambda: float(backlog()))
        self.audit_up.set_function(lambda: 0.0 if trouble() is not None else 1.0)
        self.audit_flushes.flushes = flushes

    def count_audit_refusal(self) -> None:
        self.audit_refused.inc()

    def count_unrecorded(self) -> None:
        self.audit_unrecorded.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
