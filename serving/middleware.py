"""The API service's ASGI middlewares, one per job, and the request statistics they keep. Nothing here knows about
ECGs. ``service.py`` registers them explicitly, outermost first:

0. :class:`RequestIdMiddleware`: every request has an ID (``X-Request-ID``, accepted or generated), returned on
   the response, in its error body and in its log lines (:mod:`serving.logs`);
1. :class:`RequestStatsMiddleware`: counts every response of the routes (``/status``);
2. :class:`ApiKeyMiddleware`: 401 without ``Authorization: Bearer <key>`` (when a key is set);
3. :class:`RetryAfterMiddleware`: ``Retry-After`` on every 429 and 503 (BentoML's own 503s included);
4. :class:`serving.openapi.OpenAPIDocumentMiddleware`: the OpenAPI document (``/docs.json``);
   :class:`serving.pages.LandingPageMiddleware` and :class:`serving.pages.StaticFilesMiddleware`: ``GET /``, the
   page at ``/ui`` and its files;
5. :class:`UnknownProbeMiddleware`: 404 for a POST to a probe that is not loaded (``/probes/<name>``);
   :class:`MediaTypeMiddleware`: 415 for a POST body without its route's ``Content-Type``;
6. :class:`ConcurrencyLimitMiddleware`: 429 when too many POSTs are in flight (bodies being read included);
7. :class:`BodySizeLimitMiddleware`: 413 for a POST body over the limit, before BentoML parses it.

Every refusal is an error of ``contract.ERRORS``, answered by :func:`send_error`. No request body or signal value
is ever kept: the statistics hold counts, sizes and latencies only.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import numpy as np
from opentelemetry import trace

from serving import audit
from serving.contract import (
    JSON_MEDIA_TYPE,
    KEY_NAME,
    REQUEST_ID,
    REQUEST_ID_HEADER,
    RETRY_AFTER_S,
    RETRY_AFTER_STATUSES,
    BodyTooLargeError,
    MissingAPIKeyError,
    TooManyRequestsError,
    UnsupportedMediaTypeError,
    error_body,
    error_headers,
    error_status,
)
from serving.keys import KeyRing

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LATENCY_WINDOW = 1000  # latency percentiles are over the last this many requests per route


async def send_error(send: Send, exc: Exception) -> None:
    """Answer a request from a middleware with the JSON error of ``contract.ERRORS`` (the app is not called)."""
    status = error_status(exc).status
    payload = json.dumps(error_body(exc)).encode()
    headers = [(b"content-type", JSON_MEDIA_TYPE.encode()), (b"content-length", str(len(payload)).encode())]
    headers += [(key.lower().encode(), value.encode()) for key, value in error_headers(status).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


# A refused request's body is read and discarded before its answer is sent, up to these bounds: a client that
# writes its whole body before it reads (urllib, requests, many integration engines) then reads its 4xx instead
# of a broken pipe (with "Connection: close" the server closes as soon as it has answered, and unread bytes make
# the kernel reset the connection, answer included). Past either bound the answer goes at once. The byte bound is
# past any body limit in use (ECGFM_MAX_BODY_BYTES: 172.8 MB by default), so that a body just over the limit is
# drained too; discarding costs no memory, and the time bound caps what a client can take.
DRAIN_MAX_BYTES = 2**30
DRAIN_MAX_S = 10.0


async def drain_body(scope: Scope, receive: Receive) -> bool:
    """Read and discard the request body (at most :data:`DRAIN_MAX_BYTES`, :data:`DRAIN_MAX_S`); True when it was
    read to its end. A ``Content-Length`` over the bound is not read at all."""
    length = header(scope, b"content-length")
    if length.isdigit() and int(length) > DRAIN_MAX_BYTES:
        return False

    async def discard() -> bool:
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return False
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                return True
            if size > DRAIN_MAX_BYTES:
                return False

    try:
        return await asyncio.wait_for(discard(), DRAIN_MAX_S)
    except TimeoutError:
        return False


async def refuse(scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
    """:func:`send_error` after draining the request body (:func:`drain_body`), so that the client reads it."""
    await drain_body(scope, receive)
    await send_error(send, exc)


def header(scope: Scope, name: bytes) -> bytes:
    """A request header's value (``b""`` when absent); ``name`` in lower case."""
    return next((value for key, value in scope.get("headers", []) if key.lower() == name), b"")


def is_post_to(scope: Scope, paths: Iterable[str]) -> bool:
    return scope["type"] == "http" and scope.get("method") == "POST" and scope.get("path") in paths


# ---- request IDs ------------------------------------------------------------------------------------------------

# An X-Request-ID a caller sends is kept when it is 1 to 128 of these characters (a UUID, a gateway's ID), else
# replaced by a new one: what reaches a log line or a header cannot carry a line break or markup.
REQUEST_ID_SPAN_ATTRIBUTE = "ecgfm.request_id"  # on the API service's request span, to find a trace by its ID
KEY_NAME_SPAN_ATTRIBUTE = "ecgfm.key_name"  # the name of the request's API key (never the key)
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


# ---- audit trail ------------------------------------------------------------------------------------------------


class AuditMiddleware:
    """One line of ``audit_log`` (:mod:`serving.audit`) per POST to ``paths``, refusals included: the body hashed as
    it is read, the status as it is sent, the key name and record duration as noted inside."""

    def __init__(self, app: ASGIApp, audit_log: audit.AuditLog | None, paths: Iterable[str]) -> None:
        self.app, self.audit_log, self.paths = app, audit_log, frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.audit_log is None or not is_post_to(scope, self.paths):
            await self.app(scope, receive, send)
            return
        media_type = header(scope, b"content-type").decode("latin-1").split(";")[0].strip().lower()
        digest, received, complete = hashlib.sha256(), 0, False

        async def hashing_receive() -> Message:
            nonlocal received, complete
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                digest.update(chunk)
                received += len(chunk)
                complete = complete or not message.get("more_body", False)
            return message

        with audit.open_line(scope["path"], media_type) as line:
            written = False

            def write() -> None:
                nonlocal written
                line["body_bytes"] = received
                line["body_sha256"] = digest.hexdigest() if complete else None
                self.audit_log.write(line)  # type: ignore[union-attr]
                written = True

            async def status_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    line["status"] = message["status"]
                elif message["type"] == "http.response.body" and not message.get("more_body", False) and not written:
                    write()  # before the answer's end leaves: a client that has its answer finds its line
                await send(message)

            try:
                await self.app(scope, hashing_receive, status_send)
            finally:
                if not written:  # no answer (an error, a client gone): the line still goes
                    write()


# ---- guards ---------------------------------------------------------------------------------------------------


class ApiKeyMiddleware:
    """With keys in ``keys`` (:class:`serving.keys.KeyRing`), 401 (``WWW-Authenticate: Bearer``) unless the request
    carries ``Authorization: Bearer <key>`` of one of them; ``public_paths`` are exempt. The key's name (never the
    key) is set in :data:`contract.KEY_NAME` for log lines, on the request span and on the audit line."""

    def __init__(self, app: ASGIApp, keys: KeyRing, public_paths: Iterable[str]) -> None:
        self.app, self.keys = app, keys
        self.public_paths = frozenset(public_paths)
        keys.install_sighup()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.keys.enabled or scope["type"] != "http" or scope.get("path") in self.public_paths:
            await self.app(scope, receive, send)
            return
        name = self.keys.name_of(header(scope, b"authorization"))
        if name is None:
            error = "missing or wrong API key: send the header 'Authorization: Bearer <key>'"
            await refuse(scope, receive, send, MissingAPIKeyError(error))
            return
        token = KEY_NAME.set(name)
        trace.get_current_span().set_attribute(KEY_NAME_SPAN_ATTRIBUTE, name)  # a no-op when not traced
        audit.note(key_name=name)
        try:
            await self.app(scope, receive, send)
        finally:
            KEY_NAME.reset(token)


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


class UnknownProbeMiddleware:
    """404 for a POST under ``prefix`` to any path but ``paths`` (the loaded probes' routes), answered here before
    any routing: a name the router cannot match (BentoML's mount does not match a newline) gets the same JSON 404 as
    any other unknown name; ``refuse(name)`` is the error."""

    def __init__(self, app: ASGIApp, prefix: str, paths: Iterable[str], refuse: Callable[[str], Exception]) -> None:
        self.app, self.prefix, self.paths, self.refuse = app, prefix, frozenset(paths), refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] == "http"
            and scope.get("method") == "POST"
            and path.startswith(self.prefix)
            and path not in self.paths
        ):
            await send_error(send, self.refuse(path[len(self.prefix) :].split("/")[0]))
            return
        await self.app(scope, receive, send)


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
                await refuse(scope, receive, send, UnsupportedMediaTypeError(error))
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
            await refuse(scope, receive, send, TooManyRequestsError(error))
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
            await refuse(scope, receive, send, too_large)
            return
        body, disconnected = await self.read_body(receive)
        if disconnected:
            await send_error(send, too_large)  # a disconnected client never reads it; nothing is left to drain
            return
        if body is None:
            await refuse(scope, receive, send, too_large)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def read_body(self, receive: Receive) -> tuple[bytes | None, bool]:
        """(the whole body, False), or (None, False) as soon as it passes the limit, or (None, True) when the client
        disconnects."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, True
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None, False
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), False
