"""The original architecture, as the baseline of ``bench_served``: FastAPI, one forward per request, no batching.

    ECGFM_CHECKPOINT=... uvicorn benchmarks.plain_fastapi_app:app --host 127.0.0.1 --port 3100

Same request body, validation and preprocessing as the BentoML service (``contract.ECGRequest``,
``contract.prepare``; ``POST /clinical/npy`` as the service's binary variant); the finetuned model runs in the
API process, in a worker thread, one request at a time.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import anyio
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from contract import BadRequestError, ECGRequest, prepare, read_binary_request
from ecgfm.inference import classify_segments, clinical_response, load_model
from ecgfm.preprocess import ECGInputError

CHECKPOINT = os.environ.get("ECGFM_CHECKPOINT") or os.environ.get("ECGFM_FINETUNED_CHECKPOINT")
HANDLE = load_model("finetuned", CHECKPOINT, device=os.environ.get("ECGFM_DEVICE"))
MODEL_LOCK = threading.Lock()  # one forward at a time, as the original service did
CALLS: list[int] = []

app = FastAPI(title="ECG-FM, one forward per request (benchmark baseline)")


def _clinical(signal: Any, fs: float, lead_names: list[str] | None, per_segment: bool) -> tuple[int, dict[str, Any]]:
    try:
        prep, _ = prepare(signal, fs, lead_names)
    except ECGInputError as exc:
        return 422, {"error": str(exc)}
    with MODEL_LOCK:
        started = time.perf_counter()
        probabilities = classify_segments(HANDLE, prep.segments, prep.padding_mask)
        CALLS.append((prep.n_segments, time.perf_counter() - started))
    return 200, clinical_response(probabilities, prep, HANDLE.info(), per_segment)


def _clinical_json(body: bytes) -> tuple[int, dict[str, Any]]:
    request = ECGRequest.model_validate_json(body)
    return _clinical(request.signal, request.fs, request.lead_names, request.per_segment)


@app.post("/clinical")
async def clinical(request: Request) -> Response:
    status, body = await anyio.to_thread.run_sync(_clinical_json, await request.body())
    return JSONResponse(body, status_code=status)


@app.post("/clinical/npy")
async def clinical_npy(
    request: Request, fs: str | None = None, lead_names: str | None = None, per_segment: str | None = None
) -> Response:
    """The same with a ``.npy`` body, as the BentoML service's binary variant (``contract.read_binary_request``)."""
    try:
        signal, fs_hz, names, per_segment_flag = read_binary_request(await request.body(), fs, lead_names, per_segment)
    except BadRequestError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    status, body = await anyio.to_thread.run_sync(_clinical, signal, fs_hz, names, per_segment_flag)
    return JSONResponse(body, status_code=status)


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
