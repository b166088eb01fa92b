"""Hardening pieces that need no server: pinned checkpoint hashes, and the error responses in the OpenAPI document."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from contract import POST_ENDPOINTS, POST_ERROR_STATUSES, PUBLIC_PATHS, document_error_responses
from ecgfm import hub
from tests.conftest import FINETUNED_CKPT


@pytest.fixture()
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "weights.pt"
    path.write_bytes(b"pretend weights")
    return path


def test_local_checkpoint_with_the_pinned_sha256_resolves(weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECGFM_FINETUNED_CHECKPOINT", str(weights))
    monkeypatch.setenv("ECGFM_FINETUNED_SHA256", hashlib.sha256(weights.read_bytes()).hexdigest().upper())
    assert hub.resolve_checkpoint("finetuned").path == str(weights.resolve())


def test_local_checkpoint_with_another_sha256_fails_naming_file_and_pin(
    weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECGFM_FINETUNED_CHECKPOINT", str(weights))
    monkeypatch.setenv("ECGFM_FINETUNED_SHA256", "0" * 64)
    with pytest.raises(hub.ChecksumError, match=r"weights\.pt: sha256 is .* ECGFM_FINETUNED_SHA256 expects 0{64}"):
        hub.resolve_checkpoint("finetuned")


def test_hub_download_is_checked_against_the_known_hash_table(weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ECGFM_FINETUNED_CHECKPOINT", raising=False)
    monkeypatch.delenv("ECGFM_FINETUNED_SHA256", raising=False)
    monkeypatch.delenv("ECGFM_DEMO", raising=False)
    downloaded = hub.CheckpointSource(str(weights), "huggingface", hub.HF_REPO_ID, "abc123", "x.pt")
    monkeypatch.setattr(hub, "_hub_checkpoint", lambda kind: downloaded)
    monkeypatch.setitem(hub.HF_FILE_SHA256, "finetuned", "f" * 64)
    with pytest.raises(hub.ChecksumError, match="truncated, corrupt or another version"):
        hub.resolve_checkpoint("finetuned")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    monkeypatch.setitem(hub.HF_FILE_SHA256, "finetuned", digest)
    assert hub.resolve_checkpoint("finetuned") == dataclasses.replace(downloaded, sha256=digest)


def test_real_checkpoint_without_a_pin_is_not_hashed_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECGFM_FINETUNED_CHECKPOINT", str(FINETUNED_CKPT))
    monkeypatch.delenv("ECGFM_FINETUNED_SHA256", raising=False)
    monkeypatch.setattr(hub, "file_sha256", lambda path: pytest.fail("hashed without a pin"))
    assert hub.resolve_checkpoint("finetuned").origin == "local"


def openapi_fragment() -> dict:
    ok = {"200": {"description": "ok"}}
    return {
        "paths": {
            "/clinical": {"post": {"responses": {**ok, "400": {"description": "BentoML's"}}}},
            "/info": {"get": {"responses": dict(ok)}},
            "/readyz": {"get": {"responses": dict(ok)}},
        }
    }


def test_openapi_gets_every_post_error_status_with_the_error_schema() -> None:
    spec = document_error_responses(openapi_fragment(), POST_ENDPOINTS, PUBLIC_PATHS)
    responses = spec["paths"]["/clinical"]["post"]["responses"]
    assert {str(status) for status in POST_ERROR_STATUSES} <= set(responses)
    assert responses["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ValidationErrorResponse")
    assert spec["components"]["schemas"]["ValidationErrorResponse"]["properties"]["detail"]["type"] == "array"


def test_openapi_gets_401_on_protected_gets_only() -> None:
    spec = document_error_responses(openapi_fragment(), POST_ENDPOINTS, PUBLIC_PATHS)
    assert "401" in spec["paths"]["/info"]["get"]["responses"]
    assert set(spec["paths"]["/readyz"]["get"]["responses"]) == {"200"}


def run_asgi(app: object, path: str = "/clinical", headers: dict[str, str] | None = None) -> list[dict]:
    """One POST through an ASGI app; the messages it sent."""
    import asyncio

    sent: list[dict] = []
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(k.encode(), v.encode()) for k, v in (headers or {"content-type": "application/json"}).items()],
    }

    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_a_503_from_behind_the_guard_gets_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    from serving import GuardMiddleware

    monkeypatch.delenv("ECGFM_API_KEY", raising=False)

    async def overloaded(scope: dict, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b'{"error": "busy"}'})

    start = run_asgi(GuardMiddleware(overloaded))[0]
    assert (b"retry-after", b"2") in start["headers"]


def test_a_validation_traceback_is_logged_as_a_summary_without_body_keys() -> None:
    import logging

    from pydantic import ValidationError

    from contract import ECGRequest
    from serving import ValidationTracebackFilter

    try:
        ECGRequest.model_validate_json('{"signal": [[1.0]], "fs": 500, "Jane Doe": 1}')
    except ValidationError as exc:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "Exception on /clinical [POST]", (), (ValidationError, exc, None)
        )
    ValidationTracebackFilter().filter(record)
    assert record.exc_info is None
    assert (
        record.getMessage()
        == "Exception on /clinical [POST]: 400, 1 validation error(s) ['extra_forbidden'] in fields ['-']"
    )


def test_a_pinned_checkpoint_is_hashed_once_from_resolution_to_the_loaded_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ecgfm import checkpoint, inference

    digest = hashlib.sha256(FINETUNED_CKPT.read_bytes()).hexdigest()
    monkeypatch.setenv("ECGFM_FINETUNED_SHA256", digest)
    calls = []
    real_sha256 = checkpoint.file_sha256
    counting = lambda path: calls.append(path) or real_sha256(path)  # noqa: E731
    monkeypatch.setattr(hub, "file_sha256", counting)
    monkeypatch.setattr(inference, "file_sha256", counting)
    handle = inference.load_model("finetuned", str(FINETUNED_CKPT), device="cpu")
    assert handle.sha256 == digest and len(calls) == 1
