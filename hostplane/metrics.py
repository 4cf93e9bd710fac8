"""Prometheus plumbing both services share: a registry per app and API latency."""

import time

from flask import Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest


def install_request_metrics(app, service):
    """Give `app` its own registry (so tests may build many apps) and time every request."""
    registry = CollectorRegistry()
    latency = Histogram(f"{service}_api_request_seconds", "API request latency",
                        ["method", "endpoint", "status"], registry=registry,
                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                 1, 2.5, 5, 10))
    app.extensions["metrics_registry"] = registry

    @app.before_request
    def _start_timer():
        g.request_started = time.perf_counter()

    @app.after_request
    def _observe(response):
        started = g.get("request_started")
        if started is not None:
            latency.labels(request.method, request.endpoint or "unknown",
                           str(response.status_code)).observe(time.perf_counter() - started)
        return response

    return registry


def counter(app, name, text, labels=()):
    return Counter(name, text, list(labels), registry=app.extensions["metrics_registry"])


def histogram(app, name, text, labels=(), buckets=Histogram.DEFAULT_BUCKETS):
    return Histogram(name, text, list(labels), registry=app.extensions["metrics_registry"],
                     buckets=buckets)


def metrics_response(registry):
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
