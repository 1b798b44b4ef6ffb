"""Pooled models' endpoints in the metrics, read from the pools when scraped.

Labels are bounded by the configuration: models, their endpoints' names, the three states and
the fixed vocabulary of failure kinds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from parley.models.registry import ModelRegistry

ENDPOINT_STATES = ("healthy", "cooling", "probing")


class PoolCollector(Collector):
    def __init__(self, models: ModelRegistry) -> None:
        self._models = models

    def collect(self) -> Iterable[Metric]:
        state = GaugeMetricFamily(
            "parley_upstream_endpoint_state",
            "A pooled model's endpoint: 1 for the state it is in (healthy, cooling, probing), else 0.",
            labels=["model", "endpoint", "state"],
        )
        outstanding = GaugeMetricFamily(
            "parley_upstream_endpoint_outstanding",
            "Requests a pooled model's endpoint is serving now.",
            labels=["model", "endpoint"],
        )
        served = CounterMetricFamily(
            "parley_upstream_endpoint_served",
            "Replies a pooled model's endpoint started.",
            labels=["model", "endpoint"],
        )
        failures = CounterMetricFamily(
            "parley_upstream_endpoint_failures",
            "Failed attempts on a pooled model's endpoint, by kind (each retried elsewhere when it could be).",
            labels=["model", "endpoint", "kind"],
        )
        for entry in self._models.entries():
            for endpoint in entry.model.endpoints() or ():
                labels = [entry.config.name, endpoint.name]
                for name in ENDPOINT_STATES:
                    state.add_metric([*labels, name], 1.0 if endpoint.state == name else 0.0)
                outstanding.add_metric(labels, endpoint.outstanding)
                served.add_metric(labels, endpoint.served)
                for kind, count in endpoint.failures.items():
                    failures.add_metric([*labels, kind], count)
        yield from (state, outstanding, served, failures)

    def describe(self) -> Iterator[Metric]:
        return iter(())
