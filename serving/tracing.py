"""BentoML's tracing configuration of every service: OpenTelemetry over OTLP/HTTP, off unless ``ECGFM_OTLP_ENDPOINT``
(or OpenTelemetry's own endpoint variables) is set; the request ID is an attribute of the API service's request span
(:data:`serving.middleware.REQUEST_ID_SPAN_ATTRIBUTE`)."""

from __future__ import annotations

from typing import Any

# Probes and scrapes are not traced: they would drown the requests in a trace store.
UNTRACED_PATHS = ("/livez", "/readyz", "/healthz", "/health", "/metrics")


def tracing_config(endpoint: str, sample_rate: float) -> dict[str, Any]:
    """The ``tracing`` option of ``@bentoml.service`` for every service: spans over OTLP/HTTP to ``endpoint``
    (empty: ``{}``, BentoML's default of no tracing). BentoML opens a span per request in each service and carries
    the trace context on its calls between services (W3C ``traceparent``), so one request is one trace. Spans hold
    methods, paths, statuses and timings; never a header's or a body's content (OpenTelemetry captures headers
    only when its ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*`` variables say so; docs/operations.md)."""
    if not endpoint:
        return {}
    return {
        "exporter_type": "otlp",
        "sample_rate": sample_rate,
        "excluded_urls": list(UNTRACED_PATHS),
        "otlp": {"protocol": "http", "endpoint": endpoint},
    }
