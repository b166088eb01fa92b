"""``service.py``'s wiring without a server: the model-call retry and ``/both`` calling both models at once."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import pytest
from bentoml.exceptions import ServiceUnavailable
from starlette.requests import Request

from service import CONNECTION_RETRIES, call_model


def test_model_call_is_retried_after_a_closed_keep_alive_connection() -> None:
    attempts = []

    async def flaky(value: int) -> int:
        attempts.append(value)
        if len(attempts) <= CONNECTION_RETRIES:
            raise aiohttp.ClientOSError("Can not write request body")
        return value * 2

    assert asyncio.run(call_model(flaky, 21)) == 42
    assert len(attempts) == CONNECTION_RETRIES + 1


def test_a_response_cut_short_by_a_dying_worker_is_retried() -> None:
    attempts = []

    async def dies_mid_answer() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise aiohttp.ClientPayloadError("Response payload is not completed")
        return "answer"

    assert asyncio.run(call_model(dies_mid_answer)) == "answer" and len(attempts) == 2


def test_model_call_gives_up_after_the_retries_with_503() -> None:
    async def broken() -> None:
        raise aiohttp.ServerDisconnectedError()

    with pytest.raises(ServiceUnavailable):
        asyncio.run(call_model(broken))


class _SlowModelService:
    """Stands in for a model service's client to observe call timing (the outputs are not looked at)."""

    def __init__(self, name: str, width: int, events: list[tuple[str, str]]) -> None:
        self.name, self.width, self.events = name, width, events
        self.to_async = self

    async def _run(self, segments: np.ndarray) -> np.ndarray:
        self.events.append(("start", self.name))
        await asyncio.sleep(0.2)
        self.events.append(("end", self.name))
        return np.zeros((len(segments), self.width), np.float32)

    classify = embed = _run

    async def describe(self) -> dict:
        from ecgfm.inference import load_model
        from tests.conftest import FINETUNED_CKPT

        handle = load_model("finetuned", str(FINETUNED_CKPT), device="cpu")
        stats = {**handle.runtime(), "calls": 0, "segments": 0, "max_batch_size_observed": 0, "batch_sizes": {},
                 "busy_s": 0.0, "rss_mb": 1.0}  # fmt: skip
        return {"checkpoint": handle.checkpoint().model_dump(), **handle.runtime(), "stats": stats}


def test_both_calls_the_two_model_services_at_the_same_time() -> None:
    from service import ECGFMService
    from tests.conftest import load_json_record

    events: list[tuple[str, str]] = []
    api = ECGFMService.inner()
    api.__dict__["finetuned"] = _SlowModelService("finetuned", 17, events)
    api.__dict__["pretrained"] = _SlowModelService("pretrained", 64, events)
    record = load_json_record("JS06908.json")
    request = Request({"type": "http", "method": "POST", "path": "/both", "headers": []})
    with ECGFMService.context.in_request(request):  # as BentoML's context middleware does for every request
        response = asyncio.run(api.both(signal=record["signal"], fs=record["fs"]))
    assert response.status_code == 200
    assert [kind for kind, _ in events[:2]] == ["start", "start"]  # both started before either finished
