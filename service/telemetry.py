"""The service's Prometheus metrics (``GET /metrics``, prometheus_client's text format): requests by
endpoint and status, latency, queue depth, batch sizes, decisions."""
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Telemetry:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter('cflow_requests', 'HTTP requests answered', ['endpoint', 'status'],
                                registry=self.registry)
        self.latency = Histogram('cflow_predict_latency_seconds', 'POST /predict, request in to answer out',
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue = Gauge('cflow_queue_depth', 'requests admitted and not yet answered', registry=self.registry)
        self.batches = Histogram('cflow_batch_size', 'images per model call', buckets=(1, 2, 4, 8, 16, 32, 64),
                                 registry=self.registry)
        self.decisions = Counter('cflow_decisions', 'images decided', ['decision'], registry=self.registry)
        self.reloads = Counter('cflow_reloads', 'model reloads', ['result'], registry=self.registry)

    def text(self) -> bytes:
        return generate_latest(self.registry)
