"""HTTP plumbing of the API service: the guard in front of every route, request and batch statistics, log hygiene.

Nothing here knows about ECGs: :mod:`service` wires these into ``ECGFMService`` and the model services, and
:mod:`contract` holds the limits and status codes they enforce. No request body or signal value is ever logged
or kept: the statistics hold counts, sizes and latencies only.
"""

from __future__ import annotations

import collections
import hmac
import json
import logging
import os
import threading
import time
from typing import Any

import numpy as np
import psutil
from pydantic import ValidationError

from contract import (
    API_KEY_ENV_VAR,
    BINARY_ENDPOINTS,
    ENDPOINTS,
    JSON_MEDIA_TYPE,
    MAX_BODY_BYTES,
    MAX_CONCURRENCY,
    NPY_MEDIA_TYPE,
    POST_ENDPOINTS,
    PUBLIC_PATHS,
    RETRY_AFTER_S,
    ECGRequest,
    document_error_responses,
)

LATENCY_WINDOW = 1000  # latency percentiles are over the last this many requests per endpoint
TRACKED_PATHS = ENDPOINTS + BINARY_ENDPOINTS  # what /status counts


def rss_mb() -> float:
    return round(psutil.Process().memory_info().rss / 2**20, 1)


class BatchStats:
    """Segments per model call, as a histogram, and the time spent in model calls (thread-safe; no inputs kept)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.histogram: collections.Counter[int] = collections.Counter()
        self.busy_s = 0.0

    def observe(self, n_segments: int, seconds: float) -> None:
        with self._lock:
            self.histogram[n_segments] += 1
            self.busy_s += seconds

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            histogram = dict(sorted(self.histogram.items()))
            busy_s = self.busy_s
        return {
            "calls": sum(histogram.values()),
            "segments": sum(size * count for size, count in histogram.items()),
            "max_batch_size_observed": max(histogram, default=0),
            "batch_sizes": {str(size): count for size, count in histogram.items()},
            "busy_s": round(busy_s, 6),
        }


class RequestStats:
    """Per-endpoint request and error counts and recent latencies of the API process."""

    def __init__(self) -> None:
        self.requests: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.latencies = {path: collections.deque(maxlen=LATENCY_WINDOW) for path in TRACKED_PATHS}

    def observe(self, path: str, status: int, seconds: float) -> None:
        self.requests[path] += 1
        self.errors[path] += status >= 400
        self.latencies[path].append(seconds * 1000.0)

    def to_dict(self) -> dict[str, Any]:
        result = {}
        for path in TRACKED_PATHS:
            values = np.asarray(self.latencies[path], dtype=np.float64)
            quantiles = {
                name: round(float(np.percentile(values, q)), 3) if values.size else None
                for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
            }
            result[path] = {"requests": self.requests[path], "errors": self.errors[path], "latency_ms": quantiles}
        return result


REQUEST_STATS = RequestStats()


class RequestStatsMiddleware:
    """ASGI middleware counting every response of the six endpoints (validation errors included)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path not in TRACKED_PATHS:
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_wrapper(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            REQUEST_STATS.observe(path, status, time.perf_counter() - started)


async def send_json(send: Any, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    """Answer a request from a middleware with a JSON body (the app is not called)."""
    payload = json.dumps(body).encode()
    raw_headers = [(b"content-type", JSON_MEDIA_TYPE.encode()), (b"content-length", str(len(payload)).encode())]
    raw_headers += [(key.lower().encode(), value.encode()) for key, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


async def read_body(receive: Any, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it passes ``limit`` bytes (the rest is never read)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class GuardMiddleware:
    """ASGI middleware in front of every route of the API service, in this order:

    1. API key: with ``ECGFM_API_KEY`` set, 401 (``WWW-Authenticate: Bearer``) unless the request carries
       ``Authorization: Bearer <key>`` (compared in constant time); :data:`PUBLIC_PATHS` are exempt.
    2. POSTs to the model endpoints: 415 unless ``Content-Type: application/json`` (``application/octet-stream``
       for the ``/npy`` variants); 413 when
       ``Content-Length`` exceeds :data:`~contract.MAX_BODY_BYTES`; 429 when :data:`~contract.MAX_CONCURRENCY`
       POSTs are already in flight; then the body is read here, counting bytes (chunked bodies have no
       Content-Length), and refused with 413 as soon as it passes the limit, before BentoML parses it.
    3. Every 429 and 503 gets ``Retry-After`` (BentoML's own 503s, e.g. a full batching queue, have none).
    4. ``GET /docs.json``: the error responses of the contract are added (:func:`contract.document_error_responses`).
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        key = os.environ.get(API_KEY_ENV_VAR, "")
        self.expected_authorization = f"Bearer {key}".encode() if key else None
        self.in_flight = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope.get("path", ""), scope.get("method", "")
        headers = {key.decode("latin-1").lower(): value for key, value in scope.get("headers", [])}
        if self.expected_authorization is not None and path not in PUBLIC_PATHS:
            given = headers.get("authorization", b"")
            if not hmac.compare_digest(given, self.expected_authorization):
                error = "missing or wrong API key: send the header 'Authorization: Bearer <key>'"
                await send_json(send, 401, {"error": error}, {"WWW-Authenticate": "Bearer"})
                return

        async def send_with_retry_after(message: dict) -> None:
            if message["type"] == "http.response.start" and message["status"] in (429, 503):
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"retry-after"]
                message = {**message, "headers": [*headers, (b"retry-after", str(RETRY_AFTER_S).encode())]}
            await send(message)

        if method == "GET" and path == "/docs.json":
            await self.app(scope, receive, documenting_errors(send))
        elif method == "POST" and path in POST_ENDPOINTS:
            await self.guard_post(scope, receive, send_with_retry_after, headers, JSON_MEDIA_TYPE)
        elif method == "POST" and path in BINARY_ENDPOINTS:
            await self.guard_post(scope, receive, send_with_retry_after, headers, NPY_MEDIA_TYPE)
        else:
            await self.app(scope, receive, send_with_retry_after)

    async def guard_post(
        self, scope: dict, receive: Any, send: Any, headers: dict[str, bytes], expected_media_type: str
    ) -> None:
        media_type = headers.get("content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        if media_type != expected_media_type:
            kind = "JSON" if expected_media_type == JSON_MEDIA_TYPE else "a NumPy .npy file"
            error = f"the body must be {kind}, sent with 'Content-Type: {expected_media_type}'"
            await send_json(send, 415, {"error": error})
            return
        too_large = {"error": f"the body is larger than {MAX_BODY_BYTES} bytes (ECGFM_MAX_BODY_BYTES)"}
        length = headers.get("content-length", b"")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            await send_json(send, 413, too_large)
            return
        if self.in_flight >= MAX_CONCURRENCY:
            error = f"more than {MAX_CONCURRENCY} requests in flight (ECGFM_MAX_CONCURRENCY); retry later"
            await send_json(send, 429, {"error": error})
            return
        self.in_flight += 1
        try:
            body = await read_body(receive, MAX_BODY_BYTES)
            if body is None:
                await send_json(send, 413, too_large)  # a disconnected client never reads it
                return
            replayed = False

            async def replay() -> dict:
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send)
        finally:
            self.in_flight -= 1


def documenting_errors(send: Any) -> Any:
    """A ``send`` that adds the contract's error responses to the OpenAPI document passing through it."""
    start: dict = {}
    chunks: list[bytes] = []

    async def send_documented(message: dict) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(chunks)
        if start["status"] == 200:
            body = json.dumps(document_error_responses(json.loads(body), POST_ENDPOINTS, PUBLIC_PATHS)).encode()
        headers = [(key, value) for key, value in start.get("headers", []) if key.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return send_documented


class ValidationTracebackFilter(logging.Filter):
    """Replace the traceback BentoML logs for every 400 with a one-line summary.

    pydantic hides input values (``hide_input_in_errors``), but its message still names each unknown key of the
    body, and a key can carry data (``{"<patient name>": ...}``). The summary keeps the error types and the
    known field names only.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ValidationError):
            where = sorted(
                {
                    str(e["loc"][0]) if e["loc"] and e["loc"][0] in ECGRequest.model_fields else "-"
                    for e in exc.errors(include_input=False)
                }
            )
            kinds = sorted({e["type"] for e in exc.errors(include_input=False)})
            record.msg = f"{record.msg}: 400, {exc.error_count()} validation error(s) {kinds} in fields {where}"
            record.exc_info, record.exc_text = None, None
        return True


# The logger of BentoML's ``log_exception`` (bentoml._internal.server.http_app), which every 400 goes through.
logging.getLogger("bentoml._internal.server.http_app").addFilter(ValidationTracebackFilter())
