"""The operator's Prometheus metrics, on BentoML's ``/metrics`` beside its own (docs/operations.md, "Metrics").

``bentoml serve`` runs the API service and each model service in processes of their own and starts every one
with ``PROMETHEUS_MULTIPROC_DIR`` set: prometheus_client then keeps each process's samples in files there, and
the API service's ``/metrics`` reads all of them (``MultiProcessCollector``). So a metric defined here and
recorded in a model worker (:func:`observe_batch`) is served by the API service like one recorded there, in the
default registry, as BentoML's own are (``bentoml.metrics`` is a deprecated alias of prometheus_client).

Where each is recorded:

* the API service: records scored (:func:`record_scored`), each model call as the API sees it
  (:func:`model_call`: serialisation, the HTTP round trip, the wait in the model service's batching queue, the
  batch), and each model service's readiness at every probe (:func:`set_ready`);
* a model service (``ModelService.run_batch``): each batch as it runs (:func:`observe_batch`).

BentoML's own series already give requests and responses by endpoint and status (its middleware is outside
ours, so it sees the 401/413/415/429 our middlewares send), their duration, requests in progress, and requests per
batch (``bentoml_service_adaptive_batch_size``); nothing here repeats them.

Labels are fixed, small sets: a scoring route, an output, a model kind, a saliency flag. No request content, no ID.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import get_args

from prometheus_client import Counter, Gauge, Histogram

from ecgfm.network.checkpoint import ModelKind
from serving.contract import FILE_POST_ROUTES, JSON_POST_ROUTES, NPY_POST_ROUTES

MODELS: tuple[ModelKind, ...] = get_args(ModelKind)
# The output each scoring route answers: /clinical, /clinical/npy and /clinical/file answer "clinical", ...
OUTPUTS = {route: route.split("/")[1] for route in (*JSON_POST_ROUTES, *NPY_POST_ROUTES, *FILE_POST_ROUTES)}
OTHER_ROUTE = "other"  # the endpoint label of a path not in OUTPUTS (none today: the handlers are bound to them)
PROBE_OUTPUT = "probe"  # the output label of a loaded probe's routes (/probes/<name>, .../npy, .../file)
_probe_endpoints: set[str] = set()  # those routes, from start_api_series: a bounded set of label values
# Seconds, from a small model's few milliseconds to a 10-minute record on a CPU (ECGFM_REQUEST_TIMEOUT_S: 300 s).
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Segments in one batch: powers of two past any ECGFM_MAX_BATCH_SIZE in use (8 on CPU, 32 on CUDA by default).
SEGMENTS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
MODEL_LABELS = ("model", "saliency")

# ---- the API service ------------------------------------------------------------------------------------------

RECORDS_SCORED = Counter(
    "ecgfm_records_scored_total",
    "Records answered with model outputs (200), by route and output.",
    ("endpoint", "output"),
)
MODEL_CALL_SECONDS = Histogram(
    "ecgfm_model_call_seconds",
    "One model call as the API service sees it (retries, HTTP, the model service's queue and batch), by model.",
    MODEL_LABELS,
    buckets=SECONDS_BUCKETS,
)
MODEL_CALL_SEGMENT_SECONDS = Counter(
    "ecgfm_model_call_segment_seconds_total",
    "Sum over answered model calls of segments x call seconds (API service); queue wait, with the batch's twin.",
    MODEL_LABELS,
)
MODEL_READY = Gauge(
    "ecgfm_model_ready",
    "1 when the model service answered the API service's last probe within 3 s, else 0.",
    ("model",),
    multiprocess_mode="mostrecent",  # the last probe's answer, also across a restarted API worker
)

# ---- the model services ---------------------------------------------------------------------------------------

SEGMENTS_SCORED = Counter(
    "ecgfm_segments_scored_total",
    "5-second segments run through the model, by model.",
    MODEL_LABELS,
)
BATCH_SECONDS = Histogram(
    "ecgfm_model_batch_seconds",
    "Execution of one batch in the model service (padding decoded, the model's forward), by model.",
    MODEL_LABELS,
    buckets=SECONDS_BUCKETS,
)
BATCH_SEGMENTS = Histogram(
    "ecgfm_model_batch_segments",
    "Segments in one batch as the model service runs it (across requests), by model.",
    MODEL_LABELS,
    buckets=SEGMENTS_BUCKETS,
)
BATCH_SEGMENT_SECONDS = Counter(
    "ecgfm_model_batch_segment_seconds_total",
    "Sum over batches of segments x batch seconds (model service); queue wait, with the model call's twin.",
    MODEL_LABELS,
)


def _flag(saliency: bool) -> str:
    return "true" if saliency else "false"


def start_api_series(probe_routes: Iterable[str] = ()) -> None:
    """Every series the API service records, at 0: a rate is defined from the first scrape, and an alert on "nothing
    scored" sees a zero rather than no series. ``probe_routes``: the POST paths of the loaded probes."""
    _probe_endpoints.update(probe_routes)
    for endpoint, output in scored_series():
        RECORDS_SCORED.labels(endpoint, output)
    for model in MODELS:
        for saliency in (False, True):
            MODEL_CALL_SECONDS.labels(model, _flag(saliency))
            MODEL_CALL_SEGMENT_SECONDS.labels(model, _flag(saliency))


def start_model_series(model: ModelKind) -> None:
    """Every series a model service records, at 0 (as :func:`start_api_series`)."""
    for saliency in (False, True):
        for metric in (SEGMENTS_SCORED, BATCH_SECONDS, BATCH_SEGMENTS, BATCH_SEGMENT_SECONDS):
            metric.labels(model, _flag(saliency))


def scored_series() -> list[tuple[str, str]]:
    """The (endpoint, output) labels of ``ecgfm_records_scored_total``: each scoring route, each loaded probe's."""
    return [*OUTPUTS.items(), *((endpoint, PROBE_OUTPUT) for endpoint in sorted(_probe_endpoints))]


def record_scored(endpoint: str) -> None:
    """One record answered with model outputs on ``endpoint`` (a scoring route's or a loaded probe's path)."""
    output = OUTPUTS.get(endpoint) or (PROBE_OUTPUT if endpoint in _probe_endpoints else None)
    RECORDS_SCORED.labels(endpoint if output else OTHER_ROUTE, output or OTHER_ROUTE).inc()


@contextlib.contextmanager
def model_call(model: ModelKind, saliency: bool, segments: int) -> Iterator[None]:
    """Times the model call of ``segments`` segments made in the ``with`` block, observed when it returns (a call
    that raises is not: its status is in BentoML's request counter)."""
    started = time.perf_counter()
    yield
    seconds = time.perf_counter() - started
    MODEL_CALL_SECONDS.labels(model, _flag(saliency)).observe(seconds)
    MODEL_CALL_SEGMENT_SECONDS.labels(model, _flag(saliency)).inc(segments * seconds)


def observe_batch(model: ModelKind, saliency: bool, segments: int, seconds: float) -> None:
    """One batch of ``segments`` segments that the model service ran in ``seconds``."""
    labels = (model, _flag(saliency))
    SEGMENTS_SCORED.labels(*labels).inc(segments)
    BATCH_SECONDS.labels(*labels).observe(seconds)
    BATCH_SEGMENTS.labels(*labels).observe(segments)
    BATCH_SEGMENT_SECONDS.labels(*labels).inc(segments * seconds)


def set_ready(model: ModelKind, ready: bool) -> None:
    """The answer of a probe of ``model``'s service (``/readyz``, ``/health``, ``/info``, ``/status``)."""
    MODEL_READY.labels(model).set(1 if ready else 0)
