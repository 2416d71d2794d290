"""The service's Prometheus metrics, in a registry of its own: requests by route and status, request latency,
the model's batch sizes, and refusals by reason."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    """The counters and histograms `/metrics` shows (Prometheus text format)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mura_requests", "HTTP requests answered", ["route", "status"], registry=self.registry)
        self.latency = Histogram(
            "mura_request_seconds",
            "Time to answer a request",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.batch_images = Histogram(
            "mura_batch_images", "Images in each batch the model ran", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.refusals = Counter(
            "mura_refusals", "Requests or files refused, by reason", ["reason"], registry=self.registry
        )

    def text(self) -> bytes:
        """The metrics in Prometheus' text exposition format."""
        return generate_latest(self.registry)
