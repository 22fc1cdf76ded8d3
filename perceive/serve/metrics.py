"""``GET /metrics``: Prometheus text format, one registry per server (tests run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("perceive_requests", "Chat requests by outcome", ["status"], registry=r)
        self.hops = Counter("perceive_hops", "Perception calls run, by action", ["action"], registry=r)
        self.tokens = Counter("perceive_tokens", "Tokens by kind (prompt: fed; generated)", ["kind"], registry=r)
        self.queue = Gauge("perceive_queue_depth", "Requests waiting to join the running batch", registry=r)
        self.running = Gauge("perceive_running", "Samples in the running batch", registry=r)
        self.latency = Histogram("perceive_request_seconds", "Request latency, queueing included",
                                 buckets=_LATENCY, registry=r)
        self.step = Histogram("perceive_step_seconds", "One model step of the running batch",
                              buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5), registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
