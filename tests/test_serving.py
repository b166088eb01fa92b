"""The HTTP plumbing (``serving.py``) on its own: each middleware, the OpenAPI error responses, the log filter.

The same behaviour through the real server is tested in ``tests/test_hardening.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from pydantic import ValidationError

from serving.contract import ERRORS, JSON_MEDIA_TYPE, POST_MEDIA_TYPES, PUBLIC_PATHS, ECGRequest
from serving.keys import KeyRing
from serving.logs import ValidationTracebackFilter, install_log_filter
from serving.middleware import (
    ApiKeyMiddleware,
    BodySizeLimitMiddleware,
    ConcurrencyLimitMiddleware,
    MediaTypeMiddleware,
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
