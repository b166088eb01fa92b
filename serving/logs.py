"""Log hygiene: the request ID (and the API key's name) on every log line written while a request is answered,
and no request values in BentoML's validation tracebacks. Installed once at start-up; no request body or signal
value is ever logged."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from pydantic import ValidationError

from serving.contract import KEY_NAME, REQUEST_ID


class RequestIdLogFilter(logging.Filter):
    """Adds `` (request_id=<id>)`` to a log line written while a request is answered, `` (request_id=<id>,
    key=<name>)`` when it came with a named API key (the key's name, never the key). It runs on BentoML's handlers
    after BentoML's own ``TraceRecordFilter``, whose ``trace_msg`` ends every line of its format."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = REQUEST_ID.get()
        if request_id is not None and "request_id=" not in getattr(record, "trace_msg", ""):
            key_name = KEY_NAME.get()
            key = f", key={key_name}" if key_name is not None else ""
            record.trace_msg = f"{getattr(record, 'trace_msg', '')} (request_id={request_id}{key})"
        return True


def install_request_id_logging() -> None:
    """Attach :class:`RequestIdLogFilter` to every handler of the root and ``bentoml`` loggers (once per process)."""
    for logger in (logging.getLogger(), logging.getLogger("bentoml")):
        for handler in logger.handlers:
            if not any(isinstance(existing, RequestIdLogFilter) for existing in handler.filters):
                handler.addFilter(RequestIdLogFilter())


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
