"""Prometheus metrics of the proxy (the only module that imports prometheus_client).

Kept cheap on the hot path: a handful of counter increments per call, label values from small
fixed sets (endpoint, status class, token kind, refusal code). With several worker processes set
`PROMETHEUS_MULTIPROC_DIR` (an empty directory shared by the workers) and /metrics adds up every
worker's figures; without it each worker reports its own.

Money in metrics is a float: metrics are for dashboards, the ledger keeps exact decimals.
"""

from __future__ import annotations

import os
from decimal import Decimal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter(
    "tokenbudget_proxy_requests_total",
    "Proxied calls by endpoint and status",
    ["endpoint", "status"],
)
LATENCY = Histogram(
    "tokenbudget_proxy_request_seconds",
    "Time to the response headers (streams: to the first byte sent)",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
TOKENS = Counter("tokenbudget_tokens_total", "Tokens metered, by kind", ["kind"])
COST = Counter("tokenbudget_cost_usd_total", "Cost of metered calls in USD")
REFUSALS = Counter("tokenbudget_refusals_total", "Calls refused, by reason", ["reason"])
UPSTREAM_ERRORS = Counter(
    "tokenbudget_upstream_errors_total", "Upstream failures, by kind", ["kind"]
)
# Per deployment ("<route>@<upstream>/<upstream model>": bounded by the catalogue).
DEPLOYMENT_REQUESTS = Counter(
    "tokenbudget_deployment_requests_total",
    "Attempts sent to each deployment, by outcome (ok, connect, timeout, http_NNN)",
    ["deployment", "outcome"],
)
DEPLOYMENT_LATENCY = Histogram(
    "tokenbudget_deployment_seconds",
    "Time from an attempt's start to its answer's head (or its failure), per deployment",
    ["deployment"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BREAKER_OPEN = Gauge(
    "tokenbudget_deployment_breaker_open",
    "1 while a deployment's circuit breaker is open (or half-open) in this process",
    ["deployment"],
    multiprocess_mode="max",
)
STREAM_PENDING = Gauge(
    "tokenbudget_usage_stream_pending",
    "Usage events not yet in the database (undelivered + unacknowledged)",
    multiprocess_mode="max",
)
STREAM_AGE = Gauge(
    "tokenbudget_usage_stream_oldest_seconds",
    "Age of the oldest usage event not yet in the database",
    multiprocess_mode="max",
)
DEAD_LETTERS = Gauge(
    "tokenbudget_usage_dead_letters",
    "Usage events the consumer could not write as they came, by state (written: escaped text, "
    "charge applied; unapplied: waiting for replay_dead_letters; replayed)",
    ["state"],
    multiprocess_mode="max",
)
REDIS_DEGRADED = Gauge(
    "tokenbudget_redis_degraded",
    "1 while this process finds Redis unreachable (TB_REDIS_DOWN_MODE applies)",
    multiprocess_mode="max",
)


def call_recorded(
    *,
    input_tokens: int,
    output_tokens: int,
    cached: int,
    cache_write: int,
    reasoning: int,
    cost: Decimal,
) -> None:
    for kind, count in (
        ("input", input_tokens),
        ("output", output_tokens),
        ("cached_input", cached),
        ("cache_write", cache_write),
        ("reasoning", reasoning),
    ):
        if count:
            TOKENS.labels(kind).inc(count)
    if cost:
        COST.inc(float(cost))


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
