"""Parley's Prometheus metrics: one registry per app, with label children bound once and reused.

Every label set is bounded by something an operator controls: route templates (never raw
paths), models from the configuration, key aliases from the admin's keys, and small fixed
vocabularies (status codes, outcome, failure kind). Children are looked up by a tuple in a
dict of our own, so a request costs a dict lookup and the updates themselves (see `families`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from parley.models.registry import ModelRegistry
from parley.observability.families import Buckets, CounterFamily, GaugeFamily, HistogramFamily, Value

# What a request's `method` label may be; anything else (a client may send any token) is OTHER.
HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"  # a path no route serves: one label value, however many such paths

# Seconds. A proxied token's first byte takes milliseconds; a local model's prompt can take seconds.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
QUEUE_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _HttpChildren:
    __slots__ = ("duration", "requests")

    def __init__(self, requests: Value, duration: Buckets) -> None:
        self.requests = requests
        self.duration = duration


class Metrics:
    """The metrics of one app. Others report through its small methods; `registry` is scraped.

    All but `queue_waited` are called on the event loop's thread (see `families`).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self._http_requests = CounterFamily(
            registry,
            "parley_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
        )
        self._http_duration = HistogramFamily(
            registry,
            "parley_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response (a stream's whole length).",
            ["route"],
            buckets=DURATION_BUCKETS,
        )
        self.streams_in_progress = GaugeFamily(
            registry, "parley_streams_in_progress", "Generations running now, by model.", ["model"]
        )
        self.generations = CounterFamily(
            registry,
            "parley_generations",
            "Generations ended, by model and outcome (complete, cancelled, failed).",
            ["model", "outcome"],
        )
        self.time_to_first_token = HistogramFamily(
            registry,
            "parley_time_to_first_token_seconds",
            "Time from a generation's start to its first text, reasoning or tool call.",
            ["model"],
            buckets=TTFT_BUCKETS,
        )
        self.generation_duration = HistogramFamily(
            registry,
            "parley_generation_duration_seconds",
            "A generation's whole length.",
            ["model"],
            buckets=DURATION_BUCKETS,
        )
        self.prompt_tokens = CounterFamily(
            registry, "parley_prompt_tokens", "Prompt tokens, by model and key alias.", ["model", "key"]
        )
        self.completion_tokens = CounterFamily(
            registry, "parley_completion_tokens", "Completion tokens, by model and key alias.", ["model", "key"]
        )
        self._upstream_errors = CounterFamily(
            registry,
            "parley_upstream_errors",
            "Failed calls to an upstream model server, by model and kind.",
            ["model", "kind"],
        )
        self._rate_limited = CounterFamily(
            registry,
            "parley_rate_limited",
            "Requests refused by a rate limit or budget, by kind and key alias.",
            ["kind", "key"],
        )
        # Observed on a local model's engine thread: prometheus-client's own, thread-safe histogram.
        self._queue_wait = Histogram(
            "parley_local_queue_wait_seconds",
            "Time a local model's request waited for a decoding slot.",
            ["model"],
            buckets=QUEUE_BUCKETS,
            registry=registry,
        )
        self._store_writes = HistogramFamily(
            registry,
            "parley_store_write_seconds",
            "Time the store's writer took to apply and commit one batch of writes.",
            buckets=STORE_BUCKETS,
        ).labels()
        self._store_ops = CounterFamily(
            registry, "parley_store_writes", "Writes applied by the store's batching writer."
        ).labels()
        self._http: dict[tuple[str, str, int], _HttpChildren] = {}

    # -- reported by the request edge ------------------------------------------------------------

    def request_ended(self, route: str, method: str, status: int, seconds: float) -> None:
        if method not in HTTP_METHODS:
            method = "OTHER"
        key = (route, method, status)
        children = self._http.get(key)
        if children is None:
            children = self._http[key] = _HttpChildren(
                self._http_requests.labels(route, method, str(status)), self._http_duration.labels(route)
            )
        children.requests.value += 1
        children.duration.observe(seconds)

    # -- reported by other parts (small functions, cheap to call) ---------------------------------

    def rate_limited(self, kind: str, key_alias: str = "open") -> None:
        """A request refused by a limit: `kind` is the limit's name (requests, tokens, streams, ...)."""
        self._rate_limited.labels(kind, key_alias).inc()

    def upstream_failed(self, model: str, kind: str) -> None:
        self._upstream_errors.labels(model, kind).inc()

    def queue_waited(self, model: str, seconds: float) -> None:
        """Called from a local model's engine thread."""
        self._queue_wait.labels(model).observe(seconds)

    def store_wrote(self, writes: int, seconds: float) -> None:
        self._store_writes.observe(seconds)
        self._store_ops.inc(writes)

    # -- read at scrape time -----------------------------------------------------------------------

    def watch_queues(self, models: ModelRegistry, store_queued: Callable[[], int]) -> None:
        """Gauges read when scraped: each local model's waiting requests and the store's queued writes."""
        self.registry.register(_QueueCollector(models, store_queued))


class _QueueCollector(Collector):
    def __init__(self, models: ModelRegistry, store_queued: Callable[[], int]) -> None:
        self._models = models
        self._store_queued = store_queued

    def collect(self) -> Iterable[Metric]:
        queue = GaugeMetricFamily(
            "parley_local_queue_length", "Requests waiting for a local model's decoding slot.", labels=["model"]
        )
        for entry in self._models.entries():
            waiting = entry.model.queued()
            if waiting is not None:
                queue.add_metric([entry.config.name], waiting)
        yield queue
        yield GaugeMetricFamily(
            "parley_store_queued_writes", "Writes waiting for the store's writer.", value=self._store_queued()
        )

    def describe(self) -> Iterator[Metric]:
        return iter(())
