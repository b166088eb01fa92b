"""The original architecture, as the baseline of ``bench_served``: FastAPI, one forward per request, no batching.

    ECGFM_CHECKPOINT=... uvicorn benchmarks.plain_fastapi_app:app --host 127.0.0.1 --port 3100

Same request body, validation and preprocessing as the BentoML service (``contract.ECGRequest``,
``contract.prepare``); the finetuned model runs in the API process, in a worker thread, one request at a time.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import anyio
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from contract import ECGRequest, prepare
from ecgfm.inference import classify_segments, clinical_response, load_model
from ecgfm.preprocess import ECGInputError

CHECKPOINT = os.environ.get("ECGFM_CHECKPOINT") or os.environ.get("ECGFM_FINETUNED_CHECKPOINT")
HANDLE = load_model("finetuned", CHECKPOINT, device=os.environ.get("ECGFM_DEVICE"))
MODEL_LOCK = threading.Lock()  # one forward at a time, as the original service did
CALLS: list[int] = []

app = FastAPI(title="ECG-FM, one forward per request (benchmark baseline)")


def _clinical(body: bytes) -> tuple[int, dict[str, Any]]:
    request = ECGRequest.model_validate_json(body)
    try:
        prep, _ = prepare(request.signal, request.fs, request.lead_names)
    except ECGInputError as exc:
        return 422, {"error": str(exc)}
    with MODEL_LOCK:
        CALLS.append(prep.n_segments)
        probabilities = classify_segments(HANDLE, prep.segments, prep.padding_mask)
    return 200, clinical_response(probabilities, prep, HANDLE.info(), request.per_segment)


@app.post("/clinical")
async def clinical(request: Request) -> Response:
    status, body = await anyio.to_thread.run_sync(_clinical, await request.body())
    return JSONResponse(body, status_code=status)


@app.get("/status")
async def status() -> dict[str, Any]:
    sizes: dict[str, int] = {}
    for size in CALLS:
        sizes[str(size)] = sizes.get(str(size), 0) + 1
    return {"models": {"finetuned": {"calls": len(CALLS), "batch_sizes": sizes}}}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
