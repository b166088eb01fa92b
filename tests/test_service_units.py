"""Pieces of the service that need no server: the NaN padding convention and the model-call retry."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import pytest
from bentoml.exceptions import ServiceUnavailable

from contract import decode_segments, encode_segments
from ecgfm.preprocess import preprocess
from service import CONNECTION_RETRIES, call_model


def test_padding_travels_as_nan_and_comes_back_as_the_mask() -> None:
    rng = np.random.default_rng(0)
    prep = preprocess(rng.standard_normal((12, 1500)), 500)  # 3 s: padded to one 5 s segment
    segments, mask = decode_segments(encode_segments(prep))
    np.testing.assert_array_equal(mask, prep.padding_mask)
    np.testing.assert_array_equal(segments, prep.segments)


def test_unpadded_segments_travel_unchanged_with_an_all_false_mask() -> None:
    prep = preprocess(np.random.default_rng(1).standard_normal((12, 5000)), 500)
    segments, mask = decode_segments(encode_segments(prep))
    assert not mask.any()
    np.testing.assert_array_equal(segments, prep.segments)


def test_model_call_is_retried_after_a_closed_keep_alive_connection() -> None:
    attempts = []

    async def flaky(value: int) -> int:
        attempts.append(value)
        if len(attempts) <= CONNECTION_RETRIES:
            raise aiohttp.ClientOSError("Can not write request body")
        return value * 2

    assert asyncio.run(call_model(flaky, 21)) == 42
    assert len(attempts) == CONNECTION_RETRIES + 1


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
        return {"checkpoint": {"demo": False}, "device": "cpu", "precision": "fp32"}


def test_both_calls_the_two_model_services_at_the_same_time() -> None:
    from service import ECGFMService
    from tests.conftest import load_json_record

    events: list[tuple[str, str]] = []
    api = ECGFMService.inner()
    api.__dict__["finetuned"] = _SlowModelService("finetuned", 17, events)
    api.__dict__["pretrained"] = _SlowModelService("pretrained", 64, events)
    record = load_json_record("JS06908.json")
    response = asyncio.run(api.both(signal=record["signal"], fs=record["fs"]))
    assert response.status_code == 200
    assert [kind for kind, _ in events[:2]] == ["start", "start"]  # both started before either finished
