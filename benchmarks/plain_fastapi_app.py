"""The original architecture, as the baseline of ``bench_served``: FastAPI, one forward per request, no batching.

    ECGFM_FINETUNED_CHECKPOINT=... uvicorn benchmarks.plain_fastapi_app:app --host 127.0.0.1 --port 3100

Same request body, validation, preprocessing and result as the BentoML service (``serving.contract.ECGRequest``,
``serving.decoding.prepare`` / ``decode_npy``, ``ecgfm.results.outputs.ClinicalOutput``); the finetuned model runs in
the API process, in a worker thread, one request at a time. Settings as for the service (``ecgfm.settings``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ecgfm.inference import decode_batch, load_model
from ecgfm.results.outputs import ClinicalOutput
from ecgfm.settings import Settings
from serving.contract import ANSWERED_ERRORS, ECGRequest, error_response
from serving.decoding import PreparedRequest, decode_npy, prepare

SETTINGS = Settings.from_env()
HANDLE = load_model("finetuned", weights=SETTINGS.weights, runtime=SETTINGS.runtime)
CHECKPOINT = HANDLE.checkpoint().public()
MODEL_LOCK = threading.Lock()  # one forward at a time, as the original service did
CALLS: list[tuple[int, float]] = []

app = FastAPI(title="ECG-FM, one forward per request (benchmark baseline)")


def _clinical(decode: Callable[..., PreparedRequest]) -> dict[str, Any]:
    prepared = decode(max_duration_s=SETTINGS.serving.max_duration_s)
    with MODEL_LOCK:
        started = time.perf_counter()
        probabilities = HANDLE.run(*decode_batch(prepared.batch))
        CALLS.append((prepared.record.n_segments, time.perf_counter() - started))
    return ClinicalOutput.from_segments(probabilities, prepared.record, CHECKPOINT, prepared.per_segment).to_json()


def _clinical_json(body: bytes) -> dict[str, Any]:
    request = ECGRequest.model_validate_json(body)
    return _clinical(partial(prepare, request.signal, request.fs, request.lead_names, request.per_segment))


async def _answer(fn: Callable[..., dict[str, Any]], *args: Any) -> Response:
    try:
        return JSONResponse(await anyio.to_thread.run_sync(fn, *args))
    except ANSWERED_ERRORS as exc:
        return error_response(exc)


@app.post("/clinical")
async def clinical(request: Request) -> Response:
    return await _answer(_clinical_json, await request.body())


@app.post("/clinical/npy")
async def clinical_npy(
    request: Request, fs: str | None = None, lead_names: str | None = None, per_segment: str | None = None
) -> Response:
    """The same with a ``.npy`` body, as the BentoML service's binary variant (``decoding.decode_npy``)."""
    return await _answer(_clinical, partial(decode_npy, await request.body(), fs, lead_names, per_segment))


@app.get("/status")
async def status() -> dict[str, Any]:
    sizes: dict[str, int] = {}
    for size, _ in CALLS:
        sizes[str(size)] = sizes.get(str(size), 0) + 1
    finetuned = {"calls": len(CALLS), "segments": sum(size for size, _ in CALLS), "batch_sizes": sizes,
                 "busy_s": sum(seconds for _, seconds in CALLS)}  # fmt: skip
    return {"models": {"finetuned": finetuned}}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
