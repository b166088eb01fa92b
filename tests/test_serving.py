"""The HTTP plumbing (``serving/``: middleware, logs, keys, openapi) on its own: each middleware, the OpenAPI error
responses, the log filter.

The same behaviour through the real server is tested in ``tests/test_hardening.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re

import pytest
from pydantic import ValidationError

from serving.contract import (
    DOCS_PAGES,
    ERRORS,
    GET_ROUTES,
    JSON_MEDIA_TYPE,
    POST_MEDIA_TYPES,
    PUBLIC_PATHS,
    REQUEST_ID,
    ECGRequest,
)
from serving.keys import KeyRing
from serving.logs import ValidationTracebackFilter, install_log_filter
from serving.middleware import (
    ApiKeyMiddleware,
    BodySizeLimitMiddleware,
    ConcurrencyLimitMiddleware,
    MediaTypeMiddleware,
    RequestIdMiddleware,
    RetryAfterMiddleware,
    UnknownProbeMiddleware,
)
from serving.openapi import document_error_responses


def openapi_fragment() -> dict:
    ok = {"200": {"description": "ok"}}
    return {
        "paths": {
            "/clinical": {"post": {"responses": {**ok, "400": {"description": "BentoML's"}}}},
            "/clinical/npy": {"post": {"responses": {**ok, "422": {"description": "FastAPI's"}}}},
            "/info": {"get": {"responses": dict(ok)}},
            "/readyz": {"get": {"responses": dict(ok)}},
        }
    }


def test_openapi_gets_every_post_error_status_with_the_error_schema() -> None:
    spec = document_error_responses(openapi_fragment(), POST_MEDIA_TYPES, PUBLIC_PATHS)
    responses = spec["paths"]["/clinical"]["post"]["responses"]
    assert {"400", "401", "413", "415", "422", "429", "503"} <= set(responses)
    assert responses["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ValidationErrorResponse")
    assert spec["components"]["schemas"]["ValidationErrorResponse"]["properties"]["detail"]["type"] == "array"


def test_openapi_npy_posts_get_the_contracts_400_and_422_instead_of_fastapis() -> None:
    responses = document_error_responses(openapi_fragment(), POST_MEDIA_TYPES, PUBLIC_PATHS)["paths"]["/clinical/npy"]
    assert responses["post"]["responses"]["422"]["description"].startswith("Well-formed, but not a usable ECG")
    assert responses["post"]["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ErrorResponse"
    )


def test_openapi_gets_401_on_protected_gets_only() -> None:
    spec = document_error_responses(openapi_fragment(), POST_MEDIA_TYPES, PUBLIC_PATHS)
    assert "401" in spec["paths"]["/info"]["get"]["responses"]
    assert set(spec["paths"]["/readyz"]["get"]["responses"]) == {"200"}


def test_each_documented_status_comes_from_one_row_of_the_contract() -> None:
    for operation in ("post", "get"):
        statuses = [row.status for row in ERRORS.values() if operation in row.documented_on]
        assert len(statuses) == len(set(statuses)), operation
    documented_on_posts = sorted(row.status for row in ERRORS.values() if "post" in row.documented_on)
    assert documented_on_posts == [400, 401, 413, 415, 422, 429, 503]
    assert all(row.description for row in ERRORS.values())


def run_asgi(
    app: object,
    path: str = "/clinical",
    headers: dict[str, str] | None = None,
    body_chunks: tuple[bytes, ...] = (b"{}",),
    method: str = "POST",
) -> list[dict]:
    """One request (a POST unless ``method``) through an ASGI app; the messages it sent."""
    sent: list[dict] = []
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.encode(), v.encode()) for k, v in (headers or {"content-type": JSON_MEDIA_TYPE}).items()],
    }
    chunks = list(body_chunks)

    async def receive() -> dict:
        if not chunks:
            return {"type": "http.disconnect"}
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


async def answers_200(scope: dict, receive: object, send: object) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def echo(scope: dict, receive: object, send: object) -> None:
    """The app behind a middleware: answers 200 with the method, path and whole body it was given."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    payload = json.dumps({"method": scope["method"], "path": scope["path"], "body": body.decode()}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-echo", b"1")]})
    await send({"type": "http.response.body", "body": payload})


def answer_of(sent: list[dict]) -> tuple[int, dict[bytes, bytes], dict]:
    """(status, headers, JSON body) of the messages an ASGI app sent, checked to be one well-formed response."""
    assert sent[0]["type"] == "http.response.start"
    assert [message["type"] for message in sent[1:]] == ["http.response.body"] * (len(sent) - 1)
    headers = dict(sent[0]["headers"])
    body = b"".join(message.get("body", b"") for message in sent[1:])
    if sent[0]["status"] != 200 or b"x-echo" not in headers:  # the middlewares' own answers say their length
        assert int(headers[b"content-length"]) == len(body)
    return sent[0]["status"], headers, json.loads(body)


GUARDS = {
    "api key": lambda app: ApiKeyMiddleware(app, keys=KeyRing("s3cret"), public_paths=PUBLIC_PATHS),
    "media type": lambda app: MediaTypeMiddleware(app, media_types=POST_MEDIA_TYPES),
    "concurrency": lambda app: ConcurrencyLimitMiddleware(app, paths=POST_MEDIA_TYPES, max_concurrency=1),
    "body size": lambda app: BodySizeLimitMiddleware(app, paths=POST_MEDIA_TYPES, max_body_bytes=10),
    "retry after": RetryAfterMiddleware,
}
KEYED = {"content-type": JSON_MEDIA_TYPE, "authorization": "Bearer s3cret"}


@pytest.mark.parametrize("guard", GUARDS)
def test_an_admitted_request_reaches_the_app_unchanged(guard: str) -> None:
    sent = run_asgi(GUARDS[guard](echo), headers=KEYED, body_chunks=(b'{"a"', b": 1}"))
    status, headers, body = answer_of(sent)
    assert (status, headers.get(b"x-echo"), body) == (200, b"1", {"method": "POST", "path": "/clinical",
                                                                   "body": '{"a": 1}'})  # fmt: skip


@pytest.mark.parametrize("guard", ["media type", "concurrency", "body size"])
def test_the_post_guards_leave_other_methods_and_paths_alone(guard: str) -> None:
    middleware = GUARDS[guard](echo)
    if guard == "concurrency":
        middleware.in_flight = 1  # full: a guarded POST would be refused
    big = (b"x" * 11,)  # over the body limit
    no_type = {"authorization": "Bearer s3cret"}
    for method, path in (("GET", "/clinical"), ("POST", "/elsewhere"), ("PUT", "/clinical/npy")):
        status, _, body = answer_of(run_asgi(middleware, path=path, method=method, headers=no_type, body_chunks=big))
        assert (status, body["path"], body["body"]) == (200, path, "x" * 11), (method, path)


@pytest.mark.parametrize(("guard", "status", "message"), [
    ("api key", 401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'"),
    ("media type", 415, "the body must be JSON, sent with 'Content-Type: application/json'"),
    ("body size", 413, "the body is larger than 10 bytes (ECGFM_MAX_BODY_BYTES)"),
    ("concurrency", 429, "more than 1 requests in flight (ECGFM_MAX_CONCURRENCY); retry later"),
])  # fmt: skip
def test_a_refusal_is_the_contracts_json_error_and_the_app_is_not_called(guard: str, status: int, message: str) -> None:
    called = []

    async def app(scope: dict, receive: object, send: object) -> None:
        called.append(scope)
        await answers_200(scope, receive, send)

    middleware = GUARDS[guard](app)
    headers = {"content-type": "text/plain"} if guard == "media type" else {"content-type": JSON_MEDIA_TYPE}
    if guard == "concurrency":
        middleware.in_flight = 1
    got, response_headers, body = answer_of(run_asgi(middleware, headers=headers, body_chunks=(b"0123456789", b"!")))
    assert (got, body, called) == (status, {"error": message}, [])
    assert response_headers[b"content-type"] == b"application/json"


@pytest.mark.parametrize("guard", ["api key", "media type", "body size", "concurrency"])
def test_a_refusal_reads_the_whole_body_before_it_answers(guard: str) -> None:
    """A client that writes its whole body before reading must find its answer: the body is drained first."""
    events: list[str] = []
    chunks = [b"0123456789", b"x" * 100, b"!"]

    async def receive() -> dict:
        chunk = chunks.pop(0)
        events.append("read")
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: dict) -> None:
        events.append(message["type"])

    middleware = GUARDS[guard](answers_200)
    if guard == "concurrency":
        middleware.in_flight = 1
    headers = [(b"content-type", b"text/plain" if guard == "media type" else JSON_MEDIA_TYPE.encode())]
    scope = {"type": "http", "method": "POST", "path": "/clinical", "headers": headers}
    asyncio.run(middleware(scope, receive, send))
    assert chunks == [] and events[-2:] == ["http.response.start", "http.response.body"]
    assert "http.response.start" not in events[: events.index("http.response.start")]


def test_the_npy_routes_ask_for_a_numpy_body() -> None:
    sent = run_asgi(GUARDS["media type"](echo), path="/both/npy", headers={"content-type": JSON_MEDIA_TYPE})
    error = "the body must be a NumPy .npy file, sent with 'Content-Type: application/octet-stream'"
    assert answer_of(sent)[0::2] == (415, {"error": error})


def test_a_concurrency_slot_is_freed_when_the_request_ends_even_by_an_error() -> None:
    middleware = ConcurrencyLimitMiddleware(echo, paths=POST_MEDIA_TYPES, max_concurrency=1)
    assert answer_of(run_asgi(middleware))[0] == 200 and middleware.in_flight == 0

    async def broken(scope: dict, receive: object, send: object) -> None:
        raise RuntimeError("a bug")

    failing = ConcurrencyLimitMiddleware(broken, paths=POST_MEDIA_TYPES, max_concurrency=1)
    with pytest.raises(RuntimeError):
        run_asgi(failing)
    assert failing.in_flight == 0
    assert answer_of(run_asgi(middleware))[0] == 200  # the next request gets the slot


def test_the_api_key_header_is_found_whatever_its_case_and_must_match_exactly() -> None:
    guarded = ApiKeyMiddleware(echo, keys=KeyRing("s3cret"), public_paths=PUBLIC_PATHS)
    assert answer_of(run_asgi(guarded, headers={"Authorization": "Bearer s3cret"}))[0] == 200
    for wrong in ("bearer s3cret", "Bearer s3cret ", "Bearer", "s3cret", ""):
        assert answer_of(run_asgi(guarded, headers={"authorization": wrong}))[0] == 401, wrong
    assert answer_of(run_asgi(guarded, headers={}))[0] == 401
    assert answer_of(run_asgi(guarded, path="/health", method="GET", headers={}))[0] == 200


def test_retry_after_replaces_one_already_there_and_leaves_other_statuses_alone() -> None:
    def answering(status: int, headers: list) -> object:
        async def app(scope: dict, receive: object, send: object) -> None:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b"{}"})

        return app

    for status in (429, 503):
        start = run_asgi(RetryAfterMiddleware(answering(status, [(b"Retry-After", b"60")])))[0]
        assert [v for k, v in start["headers"] if k.lower() == b"retry-after"] == [b"2"], status
    for status in (200, 400, 500):
        start = run_asgi(RetryAfterMiddleware(answering(status, [(b"x", b"y")])))[0]
        assert start["headers"] == [(b"x", b"y")], status


def test_a_503_from_behind_gets_retry_after() -> None:
    async def overloaded(scope: dict, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b'{"error": "busy"}'})

    start = run_asgi(RetryAfterMiddleware(overloaded))[0]
    assert (b"retry-after", b"2") in start["headers"]


def test_api_key_is_required_except_on_public_paths() -> None:
    guarded = ApiKeyMiddleware(answers_200, keys=KeyRing("s3cret"), public_paths=PUBLIC_PATHS)
    assert run_asgi(guarded)[0]["status"] == 401
    assert (b"www-authenticate", b"Bearer") in run_asgi(guarded)[0]["headers"]
    wrong = {"content-type": JSON_MEDIA_TYPE, "authorization": "Bearer s3cre"}
    assert run_asgi(guarded, headers=wrong)[0]["status"] == 401
    right = {"content-type": JSON_MEDIA_TYPE, "authorization": "Bearer s3cret"}
    assert run_asgi(guarded, headers=right)[0]["status"] == 200
    assert run_asgi(guarded, path="/readyz")[0]["status"] == 200


def test_without_an_api_key_nothing_is_guarded() -> None:
    assert run_asgi(ApiKeyMiddleware(answers_200, keys=KeyRing(), public_paths=PUBLIC_PATHS))[0]["status"] == 200


@pytest.mark.parametrize(("path", "content_type", "status"), [
    ("/clinical", JSON_MEDIA_TYPE, 200),
    ("/clinical", "application/json; charset=utf-8", 200),
    ("/clinical", "text/plain", 415),
    ("/clinical/npy", JSON_MEDIA_TYPE, 415),
    ("/clinical/npy", "application/octet-stream", 200),
])  # fmt: skip
def test_each_post_route_takes_its_own_media_type(path: str, content_type: str, status: int) -> None:
    middleware = MediaTypeMiddleware(answers_200, media_types=POST_MEDIA_TYPES)
    assert run_asgi(middleware, path=path, headers={"content-type": content_type})[0]["status"] == status


def test_posts_beyond_the_concurrency_limit_are_429_with_retry_after() -> None:
    middleware = ConcurrencyLimitMiddleware(answers_200, paths=POST_MEDIA_TYPES, max_concurrency=1)
    assert run_asgi(middleware)[0]["status"] == 200
    middleware.in_flight = 1  # one request already in flight
    start = run_asgi(middleware)[0]
    assert start["status"] == 429 and (b"retry-after", b"2") in start["headers"]


def test_a_body_over_the_limit_is_413_by_length_or_while_read() -> None:
    middleware = BodySizeLimitMiddleware(answers_200, paths=POST_MEDIA_TYPES, max_body_bytes=10)
    declared = {"content-type": JSON_MEDIA_TYPE, "content-length": "11"}
    assert run_asgi(middleware, headers=declared)[0]["status"] == 413
    assert run_asgi(middleware, body_chunks=(b"123456", b"78901"))[0]["status"] == 413  # chunked, no length
    assert run_asgi(middleware, body_chunks=(b"12345", b"67890"))[0]["status"] == 200  # exactly the limit


def test_a_validation_traceback_is_logged_as_a_summary_without_body_keys() -> None:
    try:
        ECGRequest.model_validate_json('{"signal": [[1.0]], "fs": 500, "Jane Doe": 1}')
    except ValidationError as exc:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "Exception on /clinical [POST]", (), (ValidationError, exc, None)
        )
    ValidationTracebackFilter(ECGRequest.model_fields).filter(record)
    assert record.exc_info is None
    assert (
        record.getMessage()
        == "Exception on /clinical [POST]: 400, 1 validation error(s) ['extra_forbidden'] in fields ['-']"
    )


def test_the_log_filter_is_installed_once_on_bentomls_http_logger() -> None:
    logger = logging.getLogger("bentoml._internal.server.http_app")
    install_log_filter(ECGRequest.model_fields)
    install_log_filter(ECGRequest.model_fields)
    assert sum(isinstance(f, ValidationTracebackFilter) for f in logger.filters) == 1


def test_a_body_of_exactly_the_limit_is_admitted_by_its_declared_length_too() -> None:
    middleware = BodySizeLimitMiddleware(echo, paths=POST_MEDIA_TYPES, max_body_bytes=10)
    declared = {"content-type": JSON_MEDIA_TYPE, "content-length": "10"}
    assert answer_of(run_asgi(middleware, headers=declared, body_chunks=(b"0123456789",)))[0::2] == (
        200, {"method": "POST", "path": "/clinical", "body": "0123456789"}
    )  # fmt: skip


def test_the_app_gets_the_read_body_once_then_what_the_client_sends_next() -> None:
    seen = []

    async def reads_twice(scope: dict, receive: object, send: object) -> None:
        seen.append(await receive())
        seen.append(await receive())
        await answers_200(scope, receive, send)

    run_asgi(BodySizeLimitMiddleware(reads_twice, paths=POST_MEDIA_TYPES, max_body_bytes=10), body_chunks=(b"ab", b"c"))
    assert seen == [{"type": "http.request", "body": b"abc", "more_body": False}, {"type": "http.disconnect"}]


def test_a_client_that_disconnects_mid_body_is_not_passed_on() -> None:
    called = []

    async def app(scope: dict, receive: object, send: object) -> None:
        called.append(scope)

    sent: list[dict] = []
    messages = [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.disconnect"}]
    scope = {"type": "http", "method": "POST", "path": "/clinical", "headers": []}

    async def receive() -> dict:
        return messages.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(BodySizeLimitMiddleware(app, paths=POST_MEDIA_TYPES, max_body_bytes=10)(scope, receive, send))
    assert called == []


def test_the_concurrency_limit_counts_every_request_in_flight() -> None:
    release = asyncio.Event()

    async def holds(scope: dict, receive: object, send: object) -> None:
        await release.wait()
        await answers_200(scope, receive, send)

    middleware = ConcurrencyLimitMiddleware(holds, paths=POST_MEDIA_TYPES, max_concurrency=2)
    scope = {"type": "http", "method": "POST", "path": "/clinical", "headers": []}

    async def one() -> int:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        await middleware(scope, receive, send)
        return sent[0]["status"]

    async def three() -> list[int]:
        tasks = [asyncio.create_task(one()) for _ in range(3)]
        await asyncio.sleep(0.05)
        in_flight = middleware.in_flight
        release.set()
        return [*(await asyncio.gather(*tasks)), in_flight]

    *statuses, in_flight = asyncio.run(three())
    assert sorted(statuses) == [200, 200, 429] and in_flight == 2 and middleware.in_flight == 0


def test_the_log_summary_names_known_fields_keeps_the_record_and_other_logs_alone() -> None:
    try:
        ECGRequest.model_validate_json('{"signal": "text", "fs": 500, "Jane Doe": 1}')
    except ValidationError as exc:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "Exception", (), (ValidationError, exc, None))
    assert ValidationTracebackFilter(ECGRequest.model_fields).filter(record) is True  # the line is kept
    assert record.getMessage().endswith("in fields ['-', 'signal']") and "Jane" not in record.getMessage()
    other = logging.LogRecord("x", logging.ERROR, __file__, 1, "a message", (), None)
    assert ValidationTracebackFilter().filter(other) is True and other.getMessage() == "a message"


def test_the_log_filter_goes_on_bentomls_http_logger_with_the_request_fields() -> None:
    logger = logging.getLogger("bentoml._internal.server.http_app")
    for existing in [f for f in logger.filters if isinstance(f, ValidationTracebackFilter)]:
        logger.removeFilter(existing)
    install_log_filter(ECGRequest.model_fields)
    (installed,) = [f for f in logger.filters if isinstance(f, ValidationTracebackFilter)]
    assert installed.known_fields == frozenset(ECGRequest.model_fields)
    assert not any(isinstance(f, ValidationTracebackFilter) for f in logging.getLogger().filters)


def test_a_post_to_a_probe_that_is_not_loaded_is_a_json_404_whatever_its_name() -> None:
    """Answered before routing: a name with a newline (which BentoML's mount does not match) included."""
    from serving.contract import ProbeNotFoundError, probe_post_routes

    loaded = probe_post_routes(("rhythm",))
    middleware = UnknownProbeMiddleware(
        echo, prefix="/probes/", paths=loaded, refuse=lambda name: ProbeNotFoundError(f"no probe {name!r}")
    )
    for path in ("/probes/other", "/probes/a\nb/npy", "/probes/rhythm/other", "/probes/"):
        status, _, body = answer_of(run_asgi(middleware, path=path, headers=KEYED))
        assert status == 404 and body["error"] == f"no probe {path.removeprefix('/probes/').split('/')[0]!r}", path
    for path in (*loaded, "/probes", "/clinical"):
        assert answer_of(run_asgi(middleware, path=path, headers=KEYED))[0] == 200, path
    assert answer_of(run_asgi(middleware, path="/probes/other", method="GET", headers=KEYED))[0] == 200


def test_the_request_schema_is_as_strict_as_validation() -> None:
    """What /docs.json says of a JSON body (schemathesis generates from it) is what preprocess accepts: a body at
    the schema's edges passes validation, one just past them is refused."""
    from ecgfm.records.preprocess import ECGInputError, preprocess
    from serving.openapi import FS_PARAMETER

    properties = ECGRequest.model_json_schema()["properties"]
    signal, fs = properties["signal"], properties["fs"]
    leads, samples = signal["minItems"], signal["items"]["minItems"]
    assert (leads, signal["maxItems"]) == (12, 12)
    assert FS_PARAMETER["schema"] | {"type": "number"} == {
        "type": "number",
        "minimum": fs["minimum"],
        "maximum": fs["maximum"],
    }
    wave = [[float(i % 7) for i in range(samples)] for _ in range(leads)]
    preprocess(wave, fs["minimum"], None, max_duration_s=600)  # the shortest record at the lowest rate passes
    preprocess([lead * 50 for lead in wave], fs["maximum"], None, max_duration_s=600)
    for bad_signal, bad_fs in ((wave[:11], fs["minimum"]), ([lead[:-1] for lead in wave], fs["minimum"])):
        with pytest.raises(ECGInputError):
            preprocess(bad_signal, bad_fs, None, max_duration_s=600)
    for bad_fs in (fs["minimum"] - 1, fs["maximum"] + 1):
        with pytest.raises(ECGInputError, match="fs must be between"):
            preprocess([lead * 60 for lead in wave], bad_fs, None, max_duration_s=600)
    names = properties["lead_names"]["anyOf"][0]
    assert (names["minItems"], names["maxItems"]) == (12, 12)


# ---- request IDs (RequestIdMiddleware) --------------------------------------------------------------------------


def answering(
    status: int, body: bytes, content_type: str = JSON_MEDIA_TYPE, extra: tuple = (), seen: list | None = None
):
    """An app that answers ``status`` with ``body`` (its length declared) and records the request ID it was given."""

    async def app(scope: dict, receive: object, send: object) -> None:
        if seen is not None:
            seen.append(REQUEST_ID.get())
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def with_id(app: object, given: bytes | None, path: str = "/clinical") -> tuple[int, list[tuple], bytes]:
    """(status, headers, body) of one request through RequestIdMiddleware(app), sending ``given`` as X-Request-ID."""
    sent: list[dict] = []
    headers = [(b"content-type", JSON_MEDIA_TYPE.encode())] + ([(b"x-request-id", given)] if given is not None else [])
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}

    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(RequestIdMiddleware(app)(scope, receive, send))
    assert [m["type"] for m in sent] == ["http.response.start"] + ["http.response.body"] * (len(sent) - 1)
    return sent[0]["status"], sent[0]["headers"], b"".join(m.get("body", b"") for m in sent[1:])


def ids_in(headers: list[tuple]) -> list[bytes]:
    return [value for key, value in headers if key.lower() == b"x-request-id"]


@pytest.mark.parametrize(
    "given", ["3f2a9c1e-77b4-4c1a-9d0e-5b6a8c7d9e01", "gw:1/a+b=c._-", "a", "x" * 128], ids=["uuid", "gw", "1", "128"]
)
def test_a_valid_x_request_id_is_kept_given_to_the_app_and_returned(given: str) -> None:
    seen: list = []
    status, headers, body = with_id(answering(200, b'{"ok": 1}', seen=seen), given.encode())
    assert (status, ids_in(headers), seen, body) == (200, [given.encode()], [given], b'{"ok": 1}')


def test_the_id_is_unset_once_the_request_is_answered() -> None:
    """Log lines written after a request (in the same task) must not carry its ID."""
    scope = {"type": "http", "method": "GET", "path": "/info", "headers": [(b"x-request-id", b"caller-0")]}

    async def send(message: dict) -> None:
        pass

    async def answer_then_look() -> list:
        seen: list = []
        await RequestIdMiddleware(answering(200, b"{}", seen=seen))(scope, None, send)
        return [*seen, REQUEST_ID.get()]

    assert asyncio.run(answer_then_look()) == ["caller-0", None]


@pytest.mark.parametrize(
    "given",
    [None, b"", b"x" * 129, b"two words", b"id\r\nSet-Cookie: a=b", b"<script>", "caf\u00e9".encode(), b"a;b"],
    ids=["absent", "empty", "129", "space", "crlf", "markup", "non-ascii", "semicolon"],
)
def test_a_missing_or_malformed_x_request_id_is_replaced_by_a_new_one(given: bytes | None) -> None:
    seen: list = []
    app = answering(200, b"{}", seen=seen)
    _, headers, _ = with_id(app, given)
    _, again, _ = with_id(app, given)
    (generated,) = ids_in(headers)
    assert re.fullmatch(rb"[0-9a-f]{32}", generated) and generated != given  # a new UUID, in hex
    assert seen[0] == generated.decode() and ids_in(again) != [generated]  # one per request


def test_the_apps_own_x_request_id_header_is_replaced_by_the_requests() -> None:
    _, headers, _ = with_id(answering(200, b"{}", extra=((b"X-Request-ID", b"from-the-app"),)), b"caller-1")
    assert ids_in(headers) == [b"caller-1"]


@pytest.mark.parametrize("status", [400, 422, 503])  # BentoML's own 400 (schema) and 503 (full queue) among them
def test_a_json_error_body_gets_the_request_id_and_its_new_length(status: int) -> None:
    got, headers, body = with_id(answering(status, b'{"error": "no signal"}'), b"caller-2")
    assert (got, json.loads(body)) == (status, {"error": "no signal", "request_id": "caller-2"})
    assert [v for k, v in headers if k == b"content-length"] == [str(len(body)).encode()]
    assert ids_in(headers) == [b"caller-2"]


def test_the_contracts_errors_from_a_guard_inside_carry_the_id_once() -> None:
    guarded = ApiKeyMiddleware(echo, keys=KeyRing("s3cret"), public_paths=PUBLIC_PATHS)
    status, headers, body = with_id(guarded, b"caller-3")
    error = "missing or wrong API key: send the header 'Authorization: Bearer <key>'"
    assert (status, json.loads(body)) == (401, {"error": error, "request_id": "caller-3"})
    assert [v for k, v in headers if k == b"content-length"] == [str(len(body)).encode()]


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (200, b'{"error": "not an error"}', JSON_MEDIA_TYPE),  # a success is never touched
        (500, b"Internal Server Error", "text/plain"),  # not JSON
        (400, b'{"error": "bad", "request_id": "set-by-the-app"}', JSON_MEDIA_TYPE),  # has one already
        (400, b'["a", "list"]', JSON_MEDIA_TYPE),  # not an object
        (400, b"{not json", JSON_MEDIA_TYPE),
    ],
    ids=["200", "text", "has-id", "list", "broken"],
)
def test_other_bodies_are_passed_on_unchanged_with_the_id_header(status: int, body: bytes, content_type: str) -> None:
    got, headers, sent = with_id(answering(status, body, content_type), b"caller-4")
    assert (got, sent, ids_in(headers)) == (status, body, [b"caller-4"])
    assert [v for k, v in headers if k == b"content-length"] == [str(len(body)).encode()]


def test_a_streamed_error_body_is_passed_on_as_it_comes() -> None:
    async def streams(scope: dict, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"error": ', "more_body": True})
        await send({"type": "http.response.body", "body": b'"busy"}', "more_body": False})

    status, headers, body = with_id(streams, b"caller-5")
    assert (status, body, ids_in(headers)) == (503, b'{"error": "busy"}', [b"caller-5"])


def test_a_non_http_scope_passes_through_without_an_id() -> None:
    seen: list = []

    async def lifespan_app(scope: dict, receive: object, send: object) -> None:
        seen.append((scope, REQUEST_ID.get()))

    scope = {"type": "lifespan"}
    asyncio.run(RequestIdMiddleware(lifespan_app)(scope, None, None))
    assert seen == [(scope, None)]


# ---- the middlewares as service.py registers them ----------------------------------------------------------------

# The paths that need no API key, as docs/security.md, docs/api.md and docs/ui.md list them: the probes, and the page
# at /ui with its files (they hold no data; every request the page makes carries the key).
DOCUMENTED_PUBLIC_PATHS = {
    "/health", "/livez", "/healthz", "/readyz", "/ui", "/ui/ui.js", "/ui/ecg.js", "/ui/ui.css", "/ui/favicon.svg"
}  # fmt: skip


def test_the_services_api_key_guard_lets_exactly_the_documented_public_paths_through() -> None:
    import service

    registered = [cls for cls, _ in service.ECGFMService.middlewares]
    (options,) = [options for cls, options in service.ECGFMService.middlewares if cls is ApiKeyMiddleware]
    assert options["keys"] is service.KEYS
    # outside the key guard, so that a 401 carries the request's ID too
    assert registered.index(RequestIdMiddleware) < registered.index(ApiKeyMiddleware)
    guarded = ApiKeyMiddleware(echo, **{**options, "keys": KeyRing("s3cret")})
    served = {*POST_MEDIA_TYPES, *GET_ROUTES, *service.UI_FILES, *service.SAMPLE_FILES}
    served |= {api.route for api in service.ECGFMService.apis.values()}
    served |= {"/", "/metrics", "/docs.json", "/docs", *(f"/docs/{page}" for page in DOCS_PAGES), "/favicon.ico"}
    near_misses = {"/ui/", "/ui/samples/", "/health/", "/HEALTH", "/ui/ui.js/", "/ui/../metrics", "/readyz/x"}
    candidates = served | near_misses | DOCUMENTED_PUBLIC_PATHS
    admitted = set()
    for path in sorted(candidates):
        for method in ("GET", "POST"):
            status = answer_of(run_asgi(guarded, path=path, method=method, headers={}))[0]
            assert status in (200, 401), (path, status)
            if status == 200:
                admitted.add(path)
    assert admitted == DOCUMENTED_PUBLIC_PATHS
    assert len(candidates - admitted) > 40  # the data: every route, every sample record, the metrics, the docs
    for path in sorted(candidates):  # with the key, everything
        assert answer_of(run_asgi(guarded, path=path, method="GET", headers=KEYED))[0] == 200, path
