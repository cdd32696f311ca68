"""Prometheus metrics of one server, in a registry of its own (``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "kshot_requests", "HTTP requests answered", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "kshot_request_seconds",
            "Time to answer a request",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "kshot_batch_images",
            "Images per forward pass",
            ["library"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.forward = Histogram(
            "kshot_forward_seconds",
            "Time of a batch: forward pass and decisions",
            ["library"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue = Gauge(
            "kshot_queue_images", "Images waiting for a forward pass", ["library"], registry=r
        )
        self.images = Gauge("kshot_library_images", "Images enrolled", ["library"], registry=r)
        self.classes = Gauge("kshot_library_classes", "Classes enrolled", ["library"], registry=r)
