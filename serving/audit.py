"""The audit trail (``ECGFM_AUDIT_LOG``): one JSON line per POST request, written when it ends, whatever its status.

A line holds who asked what and what came of it, never what was in it::

    {"time": "2026-12-02T14:03:11.250Z", "request_id": "4c0f...", "key_name": "ward-7-cart", "route": "/clinical",
     "media_type": "application/json", "status": 200, "duration_s": 10.0, "body_bytes": 451234,
     "body_sha256": "9f2c..."}

``body_sha256`` is the sha256 of the body as received (``sha256sum`` of the file a client sent gives the same), to
match a result to its input without keeping the input; ``null`` when the body was not read to its end (a 413 over
the drain bound, a client that went away). ``duration_s`` is the record's duration when it was decoded, else
``null``; ``key_name`` is the name of the API key (``null`` without keys or with a wrong one). No sample value,
lead name, patient field or key ever goes into a line: the handlers can only add :data:`NOTED_FIELDS`.

:class:`serving.middleware.AuditMiddleware` sits right inside the request-ID middleware, so it sees every refusal
of the middlewares inside it (401, 413, 415, 429). Each line is written and flushed by itself, under a
lock, in the API worker (one per process: ``workers=1``); the SIGTERM drain (:mod:`serving.lifecycle`) lets the
requests in flight end, so their lines are written before the process exits.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO, Any

from serving.contract import REQUEST_ID

STDOUT_DESTINATIONS = ("-", "stdout")
NOTED_FIELDS = ("key_name", "duration_s")  # what the code inside may add to a request's line (note)
MAX_MEDIA_TYPE_CHARS = 100

# The open line of the request being answered (set by open_line; note() writes into it).
_CURRENT: ContextVar[dict[str, Any] | None] = ContextVar("audit_line", default=None)


def note(**fields: Any) -> None:
    """Add ``key_name`` or ``duration_s`` to the audit line of the request being answered (no-op without one)."""
    line = _CURRENT.get()
    if line is None:
        return
    unknown = set(fields) - set(NOTED_FIELDS)
    if unknown:
        raise ValueError(f"not an audit field: {sorted(unknown)}")
    line.update(fields)


class AuditLogError(ValueError):
    """``ECGFM_AUDIT_LOG`` names a file that cannot be opened for appending."""


class AuditLog:
    """An append-only JSON Lines file (or stdout), opened at the first line; one :meth:`write` is one flushed line."""

    def __init__(self, destination: str) -> None:
        self.destination = destination
        self._lock = threading.Lock()
        self._file: IO[str] | None = None

    def open(self) -> IO[str]:
        """The destination, opened for appending (OSError when it cannot be: start-up stops, see service.py)."""
        if self.destination in STDOUT_DESTINATIONS:
            return sys.stdout
        return open(self.destination, "a", encoding="utf-8")

    def check(self) -> None:
        """Open and close the destination now (:class:`AuditLogError` when it cannot be opened: start-up stops)."""
        if self.destination in STDOUT_DESTINATIONS:
            return
        try:
            self.open().close()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            message = f"ECGFM_AUDIT_LOG={self.destination}: cannot be opened for appending ({reason})"
            raise AuditLogError(message) from None

    def write(self, line: dict[str, Any]) -> None:
        text = json.dumps(line, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file is None:
                self._file = self.open()
            self._file.write(text)
            self._file.flush()


def utc_timestamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z"


@contextmanager
def open_line(route: str, media_type: str) -> Iterator[dict[str, Any]]:
    """The audit line of a request beginning now, open to :func:`note` until the block ends."""
    line: dict[str, Any] = {
        "time": utc_timestamp(time.time()),
        "request_id": REQUEST_ID.get(),
        "key_name": None,
        "route": route,
        "media_type": media_type[:MAX_MEDIA_TYPE_CHARS] or None,
        "status": 500,  # unless a response starts
        "duration_s": None,
    }
    token = _CURRENT.set(line)
    try:
        yield line
    finally:
        _CURRENT.reset(token)
