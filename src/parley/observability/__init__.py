"""Observability: Prometheus metrics, JSON logs, and where Prometheus reads the metrics."""

from parley.observability.exposition import require_admin
from parley.observability.metrics import Metrics
from parley.observability.service import Observability

__all__ = ["Metrics", "Observability", "require_admin"]
