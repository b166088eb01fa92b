"""HTTP plumbing of the API service: one ASGI middleware per job, request and batch statistics, log hygiene.

Nothing here knows about ECGs. ``service.py`` registers the middlewares explicitly, outermost first:

0. :class:`RequestIdMiddleware`: every request has an ID (``X-Request-ID``, accepted or generated), returned on
   the response, in its error body and in its log lines (:class:`RequestIdLogFilter`);
1. :class:`RequestStatsMiddleware`: counts every response of the routes (``/status``);
2. :class:`ApiKeyMiddleware`: 401 without ``Authorization: Bearer <key>`` (when a key is set);
3. :class:`RetryAfterMiddleware`: ``Retry-After`` on every 429 and 503 (BentoML's own 503s included);
4. :class:`OpenAPIDocumentMiddleware`: the OpenAPI document (``/docs.json``) describes this service and lists
   ``contract.ERRORS``;
   :class:`LandingPageMiddleware`: ``GET /`` is the service's own page (no third-party resources), not BentoML's;
   :class:`StaticFilesMiddleware`: the page at ``/ui`` and its files (scripts and styles from this origin only);
5. :class:`MediaTypeMiddleware`: 415 for a POST body without its route's ``Content-Type``;
6. :class:`ConcurrencyLimitMiddleware`: 429 when too many POSTs are in flight (bodies being read included);
7. :class:`BodySizeLimitMiddleware`: 413 for a POST body over the limit, before BentoML parses it.

:func:`tracing_config` is BentoML's tracing configuration of every service (OpenTelemetry over OTLP/HTTP, off
unless ``ECGFM_OTLP_ENDPOINT`` is set); the request ID is an attribute of the API service's request span.

:func:`defer_sigterm` keeps a model worker up on SIGTERM until the API worker has drained its requests.

Every refusal is an error of ``contract.ERRORS``, answered by :func:`send_error`. :func:`install_log_filter` is
called once at start-up. No request body or signal value is ever logged or kept: the statistics hold counts,
sizes and latencies only.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import html
import itertools
import json
import logging
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from opentelemetry import trace
from pydantic import ValidationError

from contract import (
    ERRORS,
    JSON_MEDIA_TYPE,
    REQUEST_ID,
    REQUEST_ID_HEADER,
    RETRY_AFTER_S,
    RETRY_AFTER_STATUSES,
    BodyTooLargeError,
    ErrorResponse,
    MissingAPIKeyError,
    TooManyRequestsError,
    UnsupportedMediaTypeError,
    ValidationErrorResponse,
    error_body,
    error_headers,
    error_status,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LATENCY_WINDOW = 1000  # latency percentiles are over the last this many requests per route


def rss_mb() -> float:
    return round(psutil.Process().memory_info().rss / 2**20, 1)


async def send_error(send: Send, exc: Exception) -> None:
    """Answer a request from a middleware with the JSON error of ``contract.ERRORS`` (the app is not called)."""
    status = error_status(exc).status
    payload = json.dumps(error_body(exc)).encode()
    headers = [(b"content-type", JSON_MEDIA_TYPE.encode()), (b"content-length", str(len(payload)).encode())]
    headers += [(key.lower().encode(), value.encode()) for key, value in error_headers(status).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def header(scope: Scope, name: bytes) -> bytes:
    """A request header's value (``b""`` when absent); ``name`` in lower case."""
    return next((value for key, value in scope.get("headers", []) if key.lower() == name), b"")


def is_post_to(scope: Scope, paths: Iterable[str]) -> bool:
    return scope["type"] == "http" and scope.get("method") == "POST" and scope.get("path") in paths


# ---- request IDs ------------------------------------------------------------------------------------------------

# An X-Request-ID a caller sends is kept when it is 1 to 128 of these characters (a UUID, a gateway's ID), else
# replaced by a new one: what reaches a log line or a header cannot carry a line break or markup.
REQUEST_ID_SPAN_ATTRIBUTE = "ecgfm.request_id"  # on the API service's request span, to find a trace by its ID
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


class RequestIdMiddleware:
    """Every HTTP request gets an ID: the caller's ``X-Request-ID`` when it matches :data:`REQUEST_ID_PATTERN`,
    else a new UUID (hex). It is set in :data:`contract.REQUEST_ID` while the request is answered (error bodies
    and log lines read it), sent back as ``X-Request-ID``, and added to JSON error bodies written by BentoML
    itself (its 400 for a body that does not match the schema, its 503 for a full queue)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = header(scope, REQUEST_ID_HEADER.lower().encode()).decode("latin-1")
        request_id = given if REQUEST_ID_PATTERN.fullmatch(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        trace.get_current_span().set_attribute(REQUEST_ID_SPAN_ATTRIBUTE, request_id)  # a no-op when not traced
        start: Message = {}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
                if message["status"] >= 400 and header(message, b"content-type").startswith(JSON_MEDIA_TYPE.encode()):
                    start.update(message)  # held until the body is known to carry the ID
                    return
            elif message["type"] == "http.response.body" and start:
                if not message.get("more_body", False):  # a whole JSON body (a streamed one is left as it is)
                    message = {**message, "body": self.with_request_id(message.get("body", b""), request_id)}
                    headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
                    start["headers"] = [*headers, (b"content-length", str(len(message["body"])).encode())]
                await send(dict(start))
                start.clear()
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)

    @staticmethod
    def with_request_id(body: bytes, request_id: str) -> bytes:
        """A JSON object body with ``request_id`` added when it has none (any other body unchanged)."""
        try:
            payload = json.loads(body)
        except ValueError:
            return body
        if not isinstance(payload, dict) or "request_id" in payload:
            return body
        return json.dumps({**payload, "request_id": request_id}).encode()


class RequestIdLogFilter(logging.Filter):
    """Adds `` (request_id=<id>)`` to a log line written while a request is answered. It runs on BentoML's
    handlers after BentoML's own ``TraceRecordFilter``, whose ``trace_msg`` ends every line of its format."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = REQUEST_ID.get()
        if request_id is not None and "request_id=" not in getattr(record, "trace_msg", ""):
            record.trace_msg = f"{getattr(record, 'trace_msg', '')} (request_id={request_id})"
        return True


def install_request_id_logging() -> None:
    """Attach :class:`RequestIdLogFilter` to every handler of the root and ``bentoml`` loggers (once per process)."""
    for logger in (logging.getLogger(), logging.getLogger("bentoml")):
        for handler in logger.handlers:
            if not any(isinstance(existing, RequestIdLogFilter) for existing in handler.filters):
                handler.addFilter(RequestIdLogFilter())


# ---- statistics -----------------------------------------------------------------------------------------------


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
    """Per-route request and error counts and recent latencies of the API process."""

    def __init__(self, paths: Iterable[str]) -> None:
        self.paths = tuple(paths)
        self.requests: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.latencies = {path: collections.deque(maxlen=LATENCY_WINDOW) for path in self.paths}

    def observe(self, path: str, status: int, seconds: float) -> None:
        self.requests[path] += 1
        self.errors[path] += status >= 400
        self.latencies[path].append(seconds * 1000.0)

    def to_dict(self) -> dict[str, Any]:
        result = {}
        for path in self.paths:
            values = np.asarray(self.latencies[path], dtype=np.float64)
            quantiles = {
                name: round(float(np.percentile(values, q)), 3) if values.size else None
                for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
            }
            result[path] = {"requests": self.requests[path], "errors": self.errors[path], "latency_ms": quantiles}
        return result


class RequestStatsMiddleware:
    """Counts every response of the tracked routes into ``stats`` (refusals and validation errors included)."""

    def __init__(self, app: ASGIApp, stats: RequestStats) -> None:
        self.app, self.stats = app, stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path not in self.stats.paths:
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            self.stats.observe(path, status, time.perf_counter() - started)


# ---- guards ---------------------------------------------------------------------------------------------------


class ApiKeyMiddleware:
    """With ``api_key`` set, 401 (``WWW-Authenticate: Bearer``) unless the request carries
    ``Authorization: Bearer <key>`` (compared in constant time); ``public_paths`` are exempt."""

    def __init__(self, app: ASGIApp, api_key: str, public_paths: Iterable[str]) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None
        self.public_paths = frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        protected = self.expected is not None and scope["type"] == "http" and scope.get("path") not in self.public_paths
        if protected and not hmac.compare_digest(header(scope, b"authorization"), self.expected):
            error = "missing or wrong API key: send the header 'Authorization: Bearer <key>'"
            await send_error(send, MissingAPIKeyError(error))
            return
        await self.app(scope, receive, send)


class RetryAfterMiddleware:
    """Every 429 and 503 leaves with ``Retry-After`` (BentoML's own 503s, e.g. a full batching queue, have none)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_retry_after(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in RETRY_AFTER_STATUSES:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"retry-after"]
                message = {**message, "headers": [*headers, (b"retry-after", str(RETRY_AFTER_S).encode())]}
            await send(message)

        await self.app(scope, receive, send_with_retry_after)


class MediaTypeMiddleware:
    """415 for a POST to one of ``media_types``' routes without that route's ``Content-Type``."""

    def __init__(self, app: ASGIApp, media_types: dict[str, str]) -> None:
        self.app, self.media_types = app, media_types

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if is_post_to(scope, self.media_types):
            expected = self.media_types[scope["path"]]
            given = header(scope, b"content-type").decode("latin-1").split(";")[0].strip().lower()
            if given != expected:
                kind = "JSON" if expected == JSON_MEDIA_TYPE else "a NumPy .npy file"
                error = f"the body must be {kind}, sent with 'Content-Type: {expected}'"
                await send_error(send, UnsupportedMediaTypeError(error))
                return
        await self.app(scope, receive, send)


class ConcurrencyLimitMiddleware:
    """429 when ``max_concurrency`` POSTs to ``paths`` are already in flight (reading their body counts)."""

    def __init__(self, app: ASGIApp, paths: Iterable[str], max_concurrency: int) -> None:
        self.app, self.paths, self.max_concurrency = app, frozenset(paths), max_concurrency
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_post_to(scope, self.paths):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_concurrency:
            error = f"more than {self.max_concurrency} requests in flight (ECGFM_MAX_CONCURRENCY); retry later"
            await send_error(send, TooManyRequestsError(error))
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class BodySizeLimitMiddleware:
    """413 for a POST to ``paths`` whose body passes ``max_body_bytes``: by its ``Content-Length`` at once, else
    while it is read here (chunked bodies have none); the rest of an oversized body is never read. The app gets
    the body replayed whole."""

    def __init__(self, app: ASGIApp, paths: Iterable[str], max_body_bytes: int) -> None:
        self.app, self.paths, self.max_body_bytes = app, frozenset(paths), max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_post_to(scope, self.paths):
            await self.app(scope, receive, send)
            return
        too_large = BodyTooLargeError(f"the body is larger than {self.max_body_bytes} bytes (ECGFM_MAX_BODY_BYTES)")
        length = header(scope, b"content-length")
        if length.isdigit() and int(length) > self.max_body_bytes:
            await send_error(send, too_large)
            return
        body = await self.read_body(receive)
        if body is None:
            await send_error(send, too_large)  # a disconnected client never reads it
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it passes the limit or the client disconnects."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


# ---- OpenAPI --------------------------------------------------------------------------------------------------


def document_error_responses(
    spec: dict[str, Any], media_types: dict[str, str], public_paths: Iterable[str]
) -> dict[str, Any]:
    """Add ``contract.ERRORS`` to BentoML's OpenAPI document (``@bentoml.api`` cannot declare them).

    The POSTs of ``media_types`` get every error documented on ``"post"``; their 400 is
    :class:`~contract.ValidationErrorResponse` for JSON (BentoML documents ``detail`` as a string, but sends a
    list) and their 422 is the contract's (not FastAPI's own). Every other operation outside ``public_paths``
    gets the errors documented on ``"get"``. ``spec`` is changed in place and returned.
    """
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for model in (ErrorResponse, ValidationErrorResponse):
        schemas[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")

    def response(description: str, model: type) -> dict[str, Any]:
        schema = {"$ref": f"#/components/schemas/{model.__name__}"}
        return {"description": description, "content": {JSON_MEDIA_TYPE: {"schema": schema}}}

    public = frozenset(public_paths)
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            if method == "post" and path in media_types:
                on = "post"
            elif path not in public:
                on = "get"
            else:
                continue
            responses = operation.setdefault("responses", {})
            for row in ERRORS.values():
                if on not in row.documented_on:
                    continue
                if on == "post" and row.status in (400, 422):  # replace FastAPI's and BentoML's own
                    json_400 = row.status == 400 and media_types[path] == JSON_MEDIA_TYPE
                    responses[str(row.status)] = (
                        response("Not JSON, or does not match the request schema", ValidationErrorResponse)
                        if json_400
                        else response(row.description, ErrorResponse)
                    )
                else:
                    responses.setdefault(str(row.status), response(row.description, ErrorResponse))
    return spec


class OpenAPIDocumentMiddleware:
    """``GET /docs.json`` leaves with ``info`` (title, version, description: this service, not BentoML's generic
    text) and the contract's error responses added (:func:`document_error_responses`)."""

    def __init__(
        self, app: ASGIApp, info: dict[str, Any], media_types: dict[str, str], public_paths: Iterable[str]
    ) -> None:
        self.app, self.info, self.media_types, self.public_paths = app, info, media_types, tuple(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "GET" or scope.get("path") != "/docs.json":
            await self.app(scope, receive, send)
            return
        start: Message = {}
        chunks: list[bytes] = []

        async def send_documented(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            if start["status"] == 200:
                spec = document_error_responses(json.loads(body), self.media_types, self.public_paths)
                spec["info"] = dict(self.info)
                body = json.dumps(spec).encode()
            headers = [(key, value) for key, value in start.get("headers", []) if key.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, send_documented)


def fill_template(template: str, **fields: str) -> str:
    """``template`` with each ``{name}`` replaced by its field, HTML-escaped (CSS braces are left alone)."""
    for name, value in fields.items():
        template = template.replace("{" + name + "}", html.escape(value))
    return template


class LandingPageMiddleware:
    """``GET /`` answers with ``html`` (instead of BentoML's API explorer, which loads scripts from other hosts),
    under a Content-Security-Policy that allows nothing but this origin and the page's own inline style (by hash)."""

    def __init__(self, app: ASGIApp, html: str) -> None:
        self.app = app
        self.body = html.encode()
        styles = re.findall(r"<style>(.*?)</style>", html, flags=re.DOTALL)
        hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in styles)
        style_src = hashes or "'none'"
        policy = f"default-src 'none'; style-src {style_src}; img-src 'self'; "
        policy += "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        self.headers = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", str(len(self.body)).encode()),
            (b"content-security-policy", policy.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != "/" or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else self.body})


class StaticFilesMiddleware:
    """``GET`` (or ``HEAD``) of one of ``files``' paths answers that file (its bytes and media type), under a
    Content-Security-Policy that allows scripts, styles, images and requests from this origin only (nothing inline,
    nothing from another host); every other request passes through. The service's page at /ui is served so."""

    POLICY = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )

    def __init__(self, app: ASGIApp, files: dict[str, tuple[bytes, str]]) -> None:
        self.app = app
        self.files = {
            path: (
                body,
                [
                    (b"content-type", media_type.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"content-security-policy", self.POLICY.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-cache"),
                ],
            )
            for path, (body, media_type) in files.items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self.files.get(scope.get("path")) if scope["type"] == "http" else None
        if found is None or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        body, headers = found
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


MEDIA_TYPES_BY_SUFFIX = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".csv": "text/csv; charset=utf-8",
    ".hea": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}


def static_files(directory: Path, prefix: str, names: Iterable[str] | None = None) -> dict[str, tuple[bytes, str]]:
    """``{prefix + name: (bytes, media type)}`` for the files of ``directory`` (or those of ``names``), read now;
    nothing when the directory is absent."""
    if not directory.is_dir():
        return {}
    paths = [directory / name for name in names] if names is not None else sorted(directory.iterdir())
    return {
        prefix + path.name: (
            path.read_bytes(),
            MEDIA_TYPES_BY_SUFFIX.get(path.suffix.lower(), "application/octet-stream"),
        )
        for path in paths
        if path.is_file()
    }


# ---- shutdown -------------------------------------------------------------------------------------------------


def worker_alive(service_name: str) -> bool:
    """Whether a sibling worker process (same parent, the ``bentoml serve`` arbiter) serves ``service_name``."""
    try:
        siblings = psutil.Process(os.getppid()).children()
    except psutil.Error:
        return False
    for sibling in siblings:
        try:
            command = sibling.cmdline()
        except psutil.Error:
            continue
        if any(a == "--service-name" and b == service_name for a, b in itertools.pairwise(command)):
            return True
    return False


def defer_sigterm(until: Callable[[], bool], bound_s: float) -> None:
    """On SIGTERM, call the handler installed now (uvicorn's graceful exit) only once ``until()`` holds or after
    ``bound_s``. A model worker calls this at start-up with "the API worker has exited": ``bentoml serve`` stops
    every worker at the same time, and a model worker that left at once would fail the API worker's requests in
    flight (503) instead of letting them drain. Must be called on the main thread."""
    original = signal.getsignal(signal.SIGTERM)

    def exit_when_done(signum: int) -> None:
        deadline = time.monotonic() + bound_s
        while not until() and time.monotonic() < deadline:
            time.sleep(0.2)
        if callable(original):
            original(signum, None)

    def on_sigterm(signum: int, frame: object) -> None:
        threading.Thread(target=exit_when_done, args=(signum,), daemon=True, name="deferred-sigterm").start()

    signal.signal(signal.SIGTERM, on_sigterm)


# ---- logs -----------------------------------------------------------------------------------------------------

# The logger of BentoML's ``log_exception`` (bentoml._internal.server.http_app), which every 400 goes through.
BENTOML_HTTP_LOGGER = "bentoml._internal.server.http_app"


class ValidationTracebackFilter(logging.Filter):
    """Replace the traceback BentoML logs for every 400 with a one-line summary.

    pydantic hides input values (``hide_input_in_errors``), but its message still names each unknown key of the
    body, and a key can carry data (``{"<patient name>": ...}``). The summary keeps the error types and the
    known field names only.
    """

    def __init__(self, known_fields: Iterable[str] = ()) -> None:
        super().__init__()
        self.known_fields = frozenset(known_fields)  # kept in the summary; any other key is shown as "-"

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ValidationError):
            errors = exc.errors(include_input=False)
            where = sorted({str(e["loc"][0]) if e["loc"] and e["loc"][0] in self.known_fields else "-" for e in errors})
            kinds = sorted({e["type"] for e in errors})
            record.msg = f"{record.msg}: 400, {exc.error_count()} validation error(s) {kinds} in fields {where}"
            record.exc_info, record.exc_text = None, None
        return True


def install_log_filter(known_fields: Iterable[str]) -> None:
    """Attach :class:`ValidationTracebackFilter` to BentoML's HTTP logger (once per process)."""
    logger = logging.getLogger(BENTOML_HTTP_LOGGER)
    if not any(isinstance(existing, ValidationTracebackFilter) for existing in logger.filters):
        logger.addFilter(ValidationTracebackFilter(known_fields))


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
