"""ecgfm-serve: ECG-FM behind HTTP with BentoML 1.4 (``bentoml serve service:ECGFMService``).

Three services, in the shape of BentoML's ``examples/inference-graph``:

* :class:`Pretrained` and :class:`Finetuned` each load one checkpoint once (:mod:`ecgfm.hub` resolves it:
  ``ECGFM_PRETRAINED_CHECKPOINT`` / ``ECGFM_FINETUNED_CHECKPOINT``, demo weights only with ``ECGFM_DEMO=1``,
  else the Hugging Face Hub) and expose one adaptive-batching API over preprocessed segments
  ``float32 [N, 12, 2500]`` (padded samples as NaN, see :mod:`contract`).
* :class:`ECGFMService` validates and preprocesses each request once, calls the model services concurrently,
  and builds the bodies with :func:`ecgfm.inference.clinical_response` / :func:`~ecgfm.inference.features_response`
  (the same bodies ``ecgfm predict`` prints). GET endpoints live on a mounted FastAPI app.

A request: JSON -> :class:`contract.ECGRequest` -> :func:`contract.prepare` (ecgfm.preprocess) ->
``Finetuned.classify`` / ``Pretrained.embed`` (batched across requests) -> ecgfm.inference.*_response -> JSON.
The HTTP contract (fields, limits, status codes) is in ``contract.py``; nothing here logs signal values.
"""

from __future__ import annotations

import asyncio
import os
import platform
import time
from functools import partial
from typing import Any

import aiohttp
import anyio
import bentoml
import numpy as np
import torch
from bentoml.exceptions import ServiceUnavailable
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse

import ecgfm
from contract import (
    INVALID_INPUT_STATUS,
    NPY_MEDIA_TYPE,
    BadRequestError,
    BothResponse,
    ClinicalResponse,
    ECGRequest,
    ErrorResponse,
    FeaturesResponse,
    HealthResponse,
    Hz,
    InfoResponse,
    Signal,
    StatusResponse,
    decode_segments,
    input_contract,
    prepare,
    read_binary_request,
)
from ecgfm.inference import (
    ModelHandle,
    classify_segments,
    clinical_response,
    embed_segments,
    features_response,
    load_model,
    warm_up,
)
from ecgfm.labels import AGGREGATION, LABELS
from ecgfm.preprocess import ECGInputError, PreprocessedECG
from serving import REQUEST_STATS, BatchStats, GuardMiddleware, RequestStatsMiddleware, rss_mb

CUDA = torch.cuda.is_available()
# Adaptive batching of the model services. MAX_BATCH_SIZE counts segments (5 s each) per model call, across
# requests: 8 on CPU (full-size ECG-FM peaks there, ~5.5 segments/s on 2 cores; 32 is 3x slower), 32 on GPU.
# MAX_LATENCY_MS is how long a request may queue before BentoML refuses it with 503; it must exceed a full batch
# on the slowest hardware served plus the queue ahead of it. Measurements: docs/performance.md, "Batching defaults".
MAX_BATCH_SIZE = int(os.environ.get("ECGFM_MAX_BATCH_SIZE", "32" if CUDA else "8"))
MAX_LATENCY_MS = int(os.environ.get("ECGFM_MAX_LATENCY_MS", "120000"))
REQUEST_TIMEOUT_S = int(os.environ.get("ECGFM_REQUEST_TIMEOUT_S", "300"))  # a 600 s record on CPU takes ~1 min
PROBE_TIMEOUT_S = 3.0  # /health, /info, /status and /readyz give up on a model service after this long
MODEL_RESOURCES: dict[str, Any] = {"gpu": 1} if CUDA else {"cpu": "1"}
OVERLOADED = "the model service is overloaded or not available; retry after the Retry-After seconds (see /health)"
CONNECTION_RETRIES = 2  # see call_model
STARTED_AT = time.time()


def run_model(fn: Any, handle: ModelHandle, encoded: np.ndarray, stats: BatchStats) -> np.ndarray:
    """Run ``classify_segments`` / ``embed_segments`` on one batch from the dispatcher.

    Unpadded segments run together without a mask (exactly as ``ecgfm predict`` runs them); padded ones run
    with their padding mask recovered from the NaNs.
    """
    started = time.perf_counter()
    segments, mask = decode_segments(encoded)
    padded = mask.any(axis=1)
    if not padded.any():
        out = fn(handle, segments, batch_size=MAX_BATCH_SIZE)
    else:
        whole = fn(handle, segments[~padded], batch_size=MAX_BATCH_SIZE) if (~padded).any() else None
        short = fn(handle, segments[padded], mask[padded], batch_size=MAX_BATCH_SIZE)
        out = np.empty((len(segments), short.shape[1]), dtype=short.dtype)
        out[padded] = short
        if whole is not None:
            out[~padded] = whole
    stats.observe(len(encoded), time.perf_counter() - started)
    return out


async def call_model(method: Any, *args: Any) -> Any:
    """Call a model service, retrying when a pooled keep-alive connection was closed under us.

    BentoML's client reuses idle connections that the model service may have closed meanwhile; aiohttp then
    fails with "Cannot write to closing transport" before anything was sent. Model calls are pure functions of
    their input, so a retry cannot do anything twice that matters.
    """
    for attempt in range(CONNECTION_RETRIES + 1):
        try:
            return await method(*args)
        except aiohttp.ClientConnectionError as exc:
            if attempt == CONNECTION_RETRIES:  # the model service is down or restarting: 503, not 500
                raise ServiceUnavailable("a model service is not reachable; see /health") from exc
    raise AssertionError("unreachable")


async def answer(build: Any, signal: Signal, fs: Hz, lead_names: list[str] | None) -> JSONResponse:
    """Preprocess a request (422 with the message when it is not a usable ECG), then ``await build(prep, segments)``
    (503 with Retry-After, from :class:`GuardMiddleware`, when a model service refuses or is down)."""
    try:
        prep, segments = await anyio.to_thread.run_sync(prepare, signal, fs, lead_names)
    except ECGInputError as exc:
        return JSONResponse({"error": str(exc)}, status_code=INVALID_INPUT_STATUS)
    try:
        return JSONResponse(await build(prep, segments))
    except ServiceUnavailable:
        return JSONResponse({"error": OVERLOADED}, status_code=503)


async def answer_binary(
    body_of: Any, request: Request, fs: str | None, lead_names: str | None, per_segment: str | None
) -> JSONResponse:
    """:func:`answer` for a ``.npy`` body (400 with the message when the body or a query parameter is unreadable)."""
    try:
        signal, fs_hz, names, per_segment_flag = read_binary_request(await request.body(), fs, lead_names, per_segment)
    except BadRequestError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return await answer(partial(body_of, per_segment=per_segment_flag), signal, fs_hz, names)


def describe(handle: ModelHandle, stats: BatchStats) -> dict[str, Any]:
    """What a model service tells ``/health``, ``/info`` and ``/status`` (no inputs)."""
    cuda_mb = round(torch.cuda.memory_allocated(handle.device) / 2**20, 1) if handle.device.type == "cuda" else None
    device = handle.runtime()
    return {
        "loaded": True,
        "checkpoint": handle.info(),
        **device,
        "stats": {**device, **stats.to_dict(), "rss_mb": rss_mb(), "cuda_memory_mb": cuda_mb},
    }


@bentoml.service(name="Pretrained", workers=1, resources=MODEL_RESOURCES, traffic={"timeout": REQUEST_TIMEOUT_S})
class Pretrained:
    """The pretrained ECG-FM encoder: segments -> embeddings ``[N, D]``."""

    def __init__(self) -> None:
        self.handle = load_model("pretrained")
        warm_up(self.handle)
        self.stats = BatchStats()

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def embed(self, segments: np.ndarray) -> np.ndarray:
        return run_model(embed_segments, self.handle, segments, self.stats)

    @bentoml.api
    async def describe(self) -> dict[str, Any]:  # async: answers on the event loop, even while a batch runs
        return describe(self.handle, self.stats)


@bentoml.service(name="Finetuned", workers=1, resources=MODEL_RESOURCES, traffic={"timeout": REQUEST_TIMEOUT_S})
class Finetuned:
    """The finetuned ECG-FM classifier: segments -> probabilities ``[N, 17]``."""

    def __init__(self) -> None:
        self.handle = load_model("finetuned")
        warm_up(self.handle)
        self.stats = BatchStats()

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def classify(self, segments: np.ndarray) -> np.ndarray:
        return run_model(classify_segments, self.handle, segments, self.stats)

    @bentoml.api
    async def describe(self) -> dict[str, Any]:  # async: answers on the event loop, even while a batch runs
        return describe(self.handle, self.stats)


app = FastAPI(title="ecgfm-serve GET endpoints and binary (.npy) POST variants")
NPY_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "description": "numpy.save of a [leads, samples] numeric array (12 leads in I..V6 order unless lead_names)",
        "content": {NPY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    }
}


@bentoml.service(name="ECGFMService", workers=1, traffic={"timeout": REQUEST_TIMEOUT_S})
@bentoml.asgi_app(app, path="/")
class ECGFMService:
    """ECG-FM: clinical label probabilities (/clinical), embeddings (/features), or both (/both)."""

    pretrained = bentoml.depends(Pretrained)
    finetuned = bentoml.depends(Finetuned)

    def __init__(self) -> None:
        self.checkpoints: dict[str, dict[str, Any]] = {}

    @bentoml.api(route="/clinical", input_spec=ECGRequest)
    async def clinical(
        self, signal: Signal, fs: Hz, lead_names: list[str] | None = None, per_segment: bool = False
    ) -> ClinicalResponse:
        """Probabilities of the 17 ECG-FM labels (finetuned model); raw outputs, no thresholds."""
        return await answer(partial(self._clinical_body, per_segment=per_segment), signal, fs, lead_names)

    @bentoml.api(route="/features", input_spec=ECGRequest)
    async def features(
        self, signal: Signal, fs: Hz, lead_names: list[str] | None = None, per_segment: bool = False
    ) -> FeaturesResponse:
        """The record's embedding from the pretrained encoder."""
        return await answer(partial(self._features_body, per_segment=per_segment), signal, fs, lead_names)

    @bentoml.api(route="/both", input_spec=ECGRequest)
    async def both(
        self, signal: Signal, fs: Hz, lead_names: list[str] | None = None, per_segment: bool = False
    ) -> BothResponse:
        """/clinical and /features of one record; the two models run at the same time."""
        return await answer(partial(self._both_body, per_segment=per_segment), signal, fs, lead_names)

    @app.post("/clinical/npy", response_model=ClinicalResponse, openapi_extra=NPY_REQUEST_BODY)
    async def clinical_npy(
        self, request: Request, fs: str | None = None, lead_names: str | None = None, per_segment: str | None = None
    ) -> JSONResponse:
        """``/clinical`` with the signal as a NumPy ``.npy`` body ``[leads, samples]``; fields as query parameters."""
        return await answer_binary(self._clinical_body, request, fs, lead_names, per_segment)

    @app.post("/features/npy", response_model=FeaturesResponse, openapi_extra=NPY_REQUEST_BODY)
    async def features_npy(
        self, request: Request, fs: str | None = None, lead_names: str | None = None, per_segment: str | None = None
    ) -> JSONResponse:
        """``/features`` with the signal as a NumPy ``.npy`` body ``[leads, samples]``; fields as query parameters."""
        return await answer_binary(self._features_body, request, fs, lead_names, per_segment)

    @app.post("/both/npy", response_model=BothResponse, openapi_extra=NPY_REQUEST_BODY)
    async def both_npy(
        self, request: Request, fs: str | None = None, lead_names: str | None = None, per_segment: str | None = None
    ) -> JSONResponse:
        """``/both`` with the signal as a NumPy ``.npy`` body ``[leads, samples]``; fields as query parameters."""
        return await answer_binary(self._both_body, request, fs, lead_names, per_segment)

    @app.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
    async def health(self) -> JSONResponse:
        """200 when both model services have their model loaded, else 503."""
        body = health_body(await self._describe_models())
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @app.get("/info", response_model=InfoResponse, responses={503: {"model": ErrorResponse}})
    async def info(self) -> JSONResponse:
        """Models, checkpoints, labels, input contract, batching settings and versions."""
        return build_or_503(info_body, await self._describe_models())

    @app.get("/status", response_model=StatusResponse, responses={503: {"model": ErrorResponse}})
    async def status(self) -> JSONResponse:
        """Uptime, request/error counts, latency percentiles, observed batch sizes, devices and memory."""
        return build_or_503(status_body, await self._describe_models())

    async def __is_ready__(self) -> bool:
        return health_body(await self._describe_models())["status"] == "ok"

    async def _clinical_body(self, prep: PreprocessedECG, segments: np.ndarray, per_segment: bool) -> dict[str, Any]:
        probabilities, info = await self._classify(segments)
        return clinical_response(probabilities, prep, info, per_segment)

    async def _features_body(self, prep: PreprocessedECG, segments: np.ndarray, per_segment: bool) -> dict[str, Any]:
        embeddings, info = await self._embed(segments)
        return features_response(embeddings, prep, info, per_segment)

    async def _both_body(self, prep: PreprocessedECG, segments: np.ndarray, per_segment: bool) -> dict[str, Any]:
        clinical, features = await asyncio.gather(
            self._clinical_body(prep, segments, per_segment), self._features_body(prep, segments, per_segment)
        )
        return {"clinical": clinical, "features": features}

    async def _classify(self, segments: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        return await asyncio.gather(
            call_model(self.finetuned.to_async.classify, segments), self._checkpoint("finetuned")
        )

    async def _embed(self, segments: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        return await asyncio.gather(
            call_model(self.pretrained.to_async.embed, segments), self._checkpoint("pretrained")
        )

    async def _checkpoint(self, kind: str) -> dict[str, Any]:
        """The model service's checkpoint info, asked once and then kept (it never changes)."""
        if kind not in self.checkpoints:
            self.checkpoints[kind] = (await call_model(getattr(self, kind).to_async.describe))["checkpoint"]
        return self.checkpoints[kind]

    async def _describe_models(self) -> dict[str, dict[str, Any] | BaseException]:
        """Each model service's ``describe()``, or the exception when it did not answer within PROBE_TIMEOUT_S."""
        kinds = ("pretrained", "finetuned")
        answers = await asyncio.gather(
            *(asyncio.wait_for(call_model(getattr(self, kind).to_async.describe), PROBE_TIMEOUT_S) for kind in kinds),
            return_exceptions=True,
        )
        return dict(zip(kinds, answers, strict=True))


ECGFMService.add_asgi_middleware(RequestStatsMiddleware)  # outermost of the two: counts 401/413/415/429 too
ECGFMService.add_asgi_middleware(GuardMiddleware)


def health_body(described: dict[str, dict[str, Any] | BaseException]) -> dict[str, Any]:
    """The ``/health`` body: which model services answer, on which device, with demo weights or not."""
    models = {
        kind: {
            "loaded": False,
            "error": f"not available (still loading, or failed: see the server log): {type(answer).__name__}",
        }
        if isinstance(answer, BaseException)
        else {
            "loaded": True,
            "demo": answer["checkpoint"]["demo"],
            "device": answer["device"],
            "precision": answer["precision"],
        }
        for kind, answer in described.items()
    }
    ok = all(model["loaded"] for model in models.values())
    return {"status": "ok" if ok else "unavailable", "models": models}


def build_or_503(build: Any, described: dict[str, dict[str, Any] | BaseException]) -> JSONResponse:
    """``build(pretrained, finetuned)`` as JSON, or 503 naming the model services that did not answer."""
    missing = [kind for kind, answer in described.items() if isinstance(answer, BaseException)]
    if missing:
        error = f"the {' and '.join(missing)} model service is not available (still loading or failed); see /health"
        return JSONResponse({"error": error}, status_code=503)
    return JSONResponse(build(described["pretrained"], described["finetuned"]))


def info_body(pretrained: dict[str, Any], finetuned: dict[str, Any]) -> dict[str, Any]:
    return {
        "service": "ECGFMService",
        "demo": pretrained["checkpoint"]["demo"] or finetuned["checkpoint"]["demo"],
        "models": {"pretrained": pretrained["checkpoint"], "finetuned": finetuned["checkpoint"]},
        "labels": list(LABELS),
        "aggregation": dict(AGGREGATION),
        "feature_dim": pretrained["checkpoint"]["embed_dim"],
        "input": input_contract(),
        "batching": batching_settings(),
        "versions": versions(),
    }


def status_body(pretrained: dict[str, Any], finetuned: dict[str, Any]) -> dict[str, Any]:
    return {
        "uptime_s": round(time.time() - STARTED_AT, 3),
        "demo": pretrained["checkpoint"]["demo"] or finetuned["checkpoint"]["demo"],
        "endpoints": REQUEST_STATS.to_dict(),
        "models": {"pretrained": pretrained["stats"], "finetuned": finetuned["stats"]},
        "batching": batching_settings(),
        "rss_mb": rss_mb(),
    }


def batching_settings() -> dict[str, int]:
    return {"max_batch_size": MAX_BATCH_SIZE, "max_latency_ms": MAX_LATENCY_MS}


def versions() -> dict[str, str]:
    return {
        "ecgfm-serve": ecgfm.__version__,  # the Bento ships the source, not an installed distribution
        "bentoml": bentoml.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
