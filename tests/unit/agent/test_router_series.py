"""The router's request series (metrics.RouterSeries) are what prometheus_client's own Counter and
Histogram would expose for the same requests: same names, labels, buckets, counts and sums."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aiinfra.agent.metrics import LATENCY_BUCKETS, Metrics

# Values on bucket bounds (a bound holds values equal to it), between them, past the last, and none.
REQUESTS = [
    ("m7", 200, 0.05, 0.01, 12, 6),
    ("m7", 200, 0.0500001, 0.05, 3, 1),
    ("m7", 200, 2.5, None, 100, 40),
    ("m14", 200, 301.0, 120.0, 1, 1),
    ("m14", 200, 0.0, 0.0, 0, 0),
    ("(unknown)", 404, 0.001, None, 0, 0),
    ("m7", 503, 0.2, None, 0, 0),
]


def samples(exposition: bytes) -> set[tuple[str, tuple, float]]:
    return {
        (s.name, tuple(sorted(s.labels.items())), round(s.value, 9))
        for family in text_string_to_metric_families(exposition.decode())
        if family.name.startswith("aiinfra_router_") and "queue" not in family.name and "rate" not in family.name
        for s in family.samples
        if not s.name.endswith("_created")
    }


def reference() -> bytes:
    registry = CollectorRegistry()
    requests = Counter("aiinfra_router_requests", "", ["model", "status"], registry=registry)
    latency = Histogram("aiinfra_router_request_duration_seconds", "", ["model"], buckets=LATENCY_BUCKETS,
                        registry=registry)  # fmt: skip
    ttft = Histogram("aiinfra_router_time_to_first_token_seconds", "", ["model"], buckets=LATENCY_BUCKETS,
                     registry=registry)  # fmt: skip
    tokens = Counter("aiinfra_router_tokens", "", ["model", "direction"], registry=registry)
    for model, status, latency_s, ttft_s, prompt, completion in REQUESTS:
        requests.labels(model=model, status=str(status)).inc()
        if status == 200:
            latency.labels(model=model).observe(latency_s)
            if ttft_s is not None:
                ttft.labels(model=model).observe(ttft_s)
            tokens.labels(model=model, direction="prompt").inc(prompt)
            tokens.labels(model=model, direction="completion").inc(completion)
    return generate_latest(registry)


def test_the_router_series_expose_what_prometheus_clients_own_would():
    metrics = Metrics()
    for request in REQUESTS:
        metrics.router.observe(*request)
    ours = samples(metrics.exposition())
    assert ours == samples(reference())
    assert ("aiinfra_router_request_duration_seconds_bucket", (("le", "0.05"), ("model", "m7")), 1) in ours
