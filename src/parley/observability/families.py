"""Metric families for the request path: updated on the event loop's thread only, with no lock.

prometheus-client's own metrics take a lock and make several Python calls for every update
(about 1.5 µs a counter increment and 3.5 µs a histogram observation here); a proxied chat
updates about ten of them. These are a float or a list of bucket counts the loop's thread adds
to, and prometheus-client reads them through a collector when scraped (also on the loop, in
`/metrics` or the metrics port's handler), so they cost a tenth of that. What is updated from
another thread (a local model's engine) keeps prometheus-client's thread-safe metrics.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry


class Value:
    """A counter's or gauge's value."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class Buckets:
    """A histogram's observations: a count per bucket (the last one +Inf) and their sum."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # Prometheus buckets are `le`: the first bound at or above the amount.
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.sum += amount


class _Family(Collector):
    def __init__(self, registry: CollectorRegistry, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.label_names = list(labels)
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        return iter(())


class CounterFamily(_Family):
    def __init__(self, registry: CollectorRegistry, name: str, documentation: str, labels: Sequence[str] = ()) -> None:
        super().__init__(registry, name, documentation, labels)
        self._children: dict[tuple[str, ...], Value] = {}

    def labels(self, *values: str) -> Value:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = Value()
        return child

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.label_names)
        for values, child in list(self._children.items()):
            family.add_metric(list(values), child.value)
        yield family


class GaugeFamily(CounterFamily):
    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.label_names)
        for values, child in list(self._children.items()):
            family.add_metric(list(values), child.value)
        yield family


class HistogramFamily(_Family):
    def __init__(
        self,
        registry: CollectorRegistry,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        *,
        buckets: Sequence[float],
    ) -> None:
        super().__init__(registry, name, documentation, labels)
        self._bounds = tuple(buckets)
        self._bucket_names = [repr(float(bound)) for bound in self._bounds] + ["+Inf"]
        self._children: dict[tuple[str, ...], Buckets] = {}

    def labels(self, *values: str) -> Buckets:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = Buckets(self._bounds)
        return child

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.label_names)
        for values, child in list(self._children.items()):
            cumulative, total = [], 0
            for name, count in zip(self._bucket_names, child.counts, strict=True):
                total += count
                cumulative.append((name, float(total)))
            family.add_metric(list(values), cumulative, child.sum)
        yield family
