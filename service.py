"""ecgfm-serve: ECG-FM behind HTTP with BentoML 1.4 (``bentoml serve service:ECGFMService``).

Three services, in the shape of BentoML's ``examples/inference-graph``:

* :class:`Pretrained` and :class:`Finetuned` (one base, :class:`ModelService`) each load one checkpoint once and
  expose one adaptive-batching API over segments ``float32 [N, 12, 2500]`` (padding encoded as in
  :func:`ecgfm.inference.encode_batch`) that calls :meth:`ecgfm.inference.ModelHandle.run`.
* :class:`ECGFMService` decodes and preprocesses each request once (:mod:`serving.decoding`), calls the model
  services concurrently and answers with the typed results of :mod:`ecgfm.results.outputs` (the objects
  ``ecgfm predict`` prints; :mod:`serving.answers` by ``Accept``) or an error of :data:`serving.contract.ERRORS`.
  GET routes and the ``.npy`` and file variants live on a mounted FastAPI app; each POST route is one line.

A request: JSON -> :class:`serving.contract.ECGRequest` -> :func:`serving.decoding.prepare` -> ``Finetuned.classify``
(batched across requests) -> ``ModelHandle.run`` -> :meth:`ecgfm.results.outputs.ClinicalOutput.from_segments` -> JSON
(docs/architecture.md). Everything else is in :mod:`serving` (the HTTP layer). Settings: :mod:`ecgfm.settings`, read
once here. Nothing here logs signal values.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import anyio
import bentoml
import numpy as np
import torch
from bentoml.exceptions import ServiceUnavailable
from fastapi import FastAPI, Request
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response

import ecgfm
from ecgfm.inference import check_line, decode_batch, load_model
from ecgfm.network.checkpoint import CheckpointError, ModelKind, file_sha256
from ecgfm.network.hub import WeightsNotFoundError, resolve_all
from ecgfm.precision import SelfCheckHandoff
from ecgfm.probes.probe import Probe, ProbeFileError, load_probe_dir
from ecgfm.results.outputs import BothOutput, CheckpointInfo, ClinicalOutput, FeaturesOutput, ProbeOutput, RecordOutput
from ecgfm.settings import Settings
from interpreter.api import interpret_record
from interpreter.findings import ConfigError, load_config
from serving import audit, metrics
from serving.answers import answer_for
from serving.contract import (
    ANSWERED_ERRORS,
    DECODE_ROUTE,
    DOCS_PAGES,
    FILE_POST_ROUTES,
    GET_ROUTES,
    INTERPRET_ROUTE,
    JSON_POST_ROUTES,
    NPY_POST_ROUTES,
    POST_MEDIA_TYPES,
    PROBE_FILE_ROUTE,
    PROBE_NPY_ROUTE,
    PROBE_ROUTE,
    PROBES_ROUTE,
    PUBLIC_PATHS,
    BothResponse,
    ClinicalResponse,
    DecodedRecordResponse,
    ECGRequest,
    ErrorResponse,
    FeaturesResponse,
    HealthResponse,
    InfoResponse,
    InterpretationResponse,
    InterpretRequest,
    ModelDescription,
    ProbeDescription,
    ProbeNotFoundError,
    ProbeResponse,
    ProbesResponse,
    StatusResponse,
    error_response,
    file_routes,
    models_unavailable,
    probe_post_routes,
    validation_error_response,
)
from serving.decoding import (
    Decoder,
    PreparedRequest,
    decode_record_files,
    file_decoder,
    json_decoder,
    npy_decoder,
    uploaded_files,
)
from serving.keys import KeyFileError, KeyRing
from serving.lifecycle import defer_sigterm, rss_mb, worker_alive
from serving.logs import install_log_filter, install_request_id_logging
from serving.middleware import (
    ApiKeyMiddleware,
    AuditMiddleware,
    BatchStats,
    BodySizeLimitMiddleware,
    ConcurrencyLimitMiddleware,
    MediaTypeMiddleware,
    RequestIdMiddleware,
    RequestStats,
    RequestStatsMiddleware,
    RetryAfterMiddleware,
    UnknownProbeMiddleware,
)
from serving.openapi import (
    DECODE_REQUEST_BODY,
    FILE_OPERATION,
    INTERPRET_REQUEST_BODY,
    NPY_OPERATION,
    OPENAPI_INFO,
    PROBE_NOT_FOUND,
    PROBE_REQUEST_BODY,
    OpenAPIDocumentMiddleware,
)
from serving.pages import (
    LANDING_PAGE,
    REPO_DIR,
    SAMPLE_FILES,
    UI_FILES,
    LandingPageMiddleware,
    StaticFilesMiddleware,
)
from serving.tracing import tracing_config

SETTINGS = Settings.from_env()  # every ECGFM_* variable, read once (docs/deployment.md)
SERVING = SETTINGS.serving
CUDA = torch.cuda.is_available()
MODEL_RESOURCES: dict[str, Any] = {"gpu": 1} if CUDA else {"cpu": "1"}
TRACING = tracing_config(SERVING.otlp_endpoint, SERVING.trace_sample_rate)  # {} (off) unless ECGFM_OTLP_ENDPOINT
SERVICE_CONFIG: dict[str, Any] = {"traffic": {"timeout": SERVING.request_timeout_s}, "tracing": TRACING}
MODEL_SERVICE_CONFIG: dict[str, Any] = {"workers": 1, "resources": MODEL_RESOURCES, **SERVICE_CONFIG}
# Adaptive batching: most segments per model call across requests, and how long a request may queue before
# BentoML refuses it with 503 (it must exceed a full batch on the slowest hardware plus the queue ahead of it).
BATCHING: dict[str, Any] = {"max_batch_size": SERVING.max_batch_size, "max_latency_ms": SERVING.max_latency_ms}
PROBE_TIMEOUT_S = 3.0  # /health, /info, /status and /readyz give up on a model service after this long
CONNECTION_RETRIES = 2  # see call_model
DRAIN_MARGIN_S = 5  # a model worker outlives the API worker's drain by at most this (ModelService.drain_before_exit)
STARTED_AT = time.time()
# The probes of ECGFM_PROBES_DIR (docs/probes.md), checked against the served weights before any worker starts
# (ECGFMService.resolve_weights); a file that cannot be used stops start-up there, with its message.
try:
    PROBES: dict[str, Probe] = load_probe_dir(SERVING.probes_dir)
    PROBES_PROBLEM: ProbeFileError | None = None
except ProbeFileError as problem:
    PROBES, PROBES_PROBLEM = {}, problem
PROBE_POST_ROUTES = probe_post_routes(tuple(PROBES))  # the loaded probes' paths, for the middlewares
ADMITTED_POSTS = POST_MEDIA_TYPES | PROBE_POST_ROUTES
KEYS = KeyRing(SERVING.api_key, SERVING.api_keys_file)  # ECGFM_API_KEY ("default") and ECGFM_API_KEYS_FILE
AUDIT_LOG = audit.AuditLog(SERVING.audit_log) if SERVING.audit_log else None  # ECGFM_AUDIT_LOG
REQUEST_STATS = RequestStats((*JSON_POST_ROUTES, *GET_ROUTES, *NPY_POST_ROUTES, *FILE_POST_ROUTES, *PROBE_POST_ROUTES))
OUTPUTS: dict[ModelKind, type[ClinicalOutput] | type[FeaturesOutput]] = {
    "finetuned": ClinicalOutput,
    "pretrained": FeaturesOutput,
}


async def call_model(method: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Call a model service, retrying when a pooled keep-alive connection was closed under us.

    BentoML's client reuses idle connections that the model service may have closed meanwhile; aiohttp then
    fails with "Cannot write to closing transport" before anything was sent. A model worker that dies while it
    answers cuts its response short (``ClientPayloadError``). Model calls are pure functions of their input, so a
    retry cannot do anything twice that matters.
    """
    for attempt in range(CONNECTION_RETRIES + 1):
        try:
            return await method(*args)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            if attempt == CONNECTION_RETRIES:  # the model service is down or restarting: 503, not 500
                raise ServiceUnavailable("a model service is not reachable; see /health") from exc
    raise AssertionError("unreachable")


def current_request() -> Request:
    """The HTTP request being answered: BentoML's context middleware keeps it for every route. The JSON APIs read
    it here rather than take a ``ctx`` argument: BentoML gives the response of an API that takes one the status of
    ``ctx.response`` (200 unless set), which would turn a 422 from ``_answer`` into a 200."""
    return ECGFMService.context.request


class ModelService:
    """One ECG-FM model in its own worker: loaded once, run on batches of segments from many requests."""

    kind: ClassVar[ModelKind]

    def __init__(self) -> None:
        self.handle = load_model(
            self.kind,
            weights=SETTINGS.weights,
            runtime=SETTINGS.runtime,
            handoff=SelfCheckHandoff.of_the_parent_server(),
        )
        if self.handle.self_check is not None:
            print(f"ecgfm-serve: worker: {check_line(self.handle)}", file=sys.stderr, flush=True)
        self.handle.warm_up()
        self.stats = BatchStats()
        metrics.start_model_series(self.kind)

    def run_batch(self, encoded: np.ndarray, saliency: bool = False) -> np.ndarray:
        """Outputs ``[N, 17]`` or ``[N, D]`` for one batch from the dispatcher (padding decoded from NaNs); with
        ``saliency``, each row followed by the segment's T saliency values (``[N, 17 + T]`` or ``[N, D + T]``)."""
        started = time.perf_counter()
        if saliency:
            outputs, reduced = self.handle.run_with_saliency(*decode_batch(encoded), batch_size=SERVING.max_batch_size)
            out = np.concatenate([outputs, reduced], axis=1)
        else:
            out = self.handle.run(*decode_batch(encoded), batch_size=SERVING.max_batch_size)
        seconds = time.perf_counter() - started
        self.stats.observe(len(encoded), seconds)
        metrics.observe_batch(self.kind, saliency, len(encoded), seconds)
        return out

    @bentoml.on_startup
    async def drain_before_exit(self) -> None:  # async: runs on the main thread, where signal handlers are set
        """On SIGTERM, stay until the API worker has answered its requests in flight (they may still need this
        model), at most ECGFM_REQUEST_TIMEOUT_S plus a margin (docs/operations.md, "Shutdown")."""
        defer_sigterm(lambda: not worker_alive("ECGFMService"), SERVING.request_timeout_s + DRAIN_MARGIN_S)

    @bentoml.api
    async def describe(self) -> dict[str, Any]:  # async: answers on the event loop, even while a batch runs
        """The checkpoint, device and statistics (a :class:`contract.ModelDescription`; no inputs)."""
        handle = self.handle
        cuda_mb = round(torch.cuda.memory_allocated(handle.device) / 2**20, 1) if handle.device.type == "cuda" else None
        runtime = handle.runtime()
        stats = {**runtime, **self.stats.to_dict(), "rss_mb": rss_mb(), "cuda_memory_mb": cuda_mb}
        return ModelDescription(checkpoint=handle.checkpoint(), **runtime, stats=stats).model_dump(mode="json")


@bentoml.service(name="Pretrained", **MODEL_SERVICE_CONFIG)
class Pretrained(ModelService):
    """The pretrained ECG-FM encoder: segments -> embeddings ``[N, D]``."""

    kind = "pretrained"

    @bentoml.api(batchable=True, **BATCHING)
    def embed(self, segments: np.ndarray) -> np.ndarray:
        return self.run_batch(segments)

    @bentoml.api(batchable=True, **BATCHING)
    def embed_with_saliency(self, segments: np.ndarray) -> np.ndarray:
        """``[N, D + T]``: the embeddings, then the saliency (its own API, so batches never mix the two paths)."""
        return self.run_batch(segments, saliency=True)


@bentoml.service(name="Finetuned", **MODEL_SERVICE_CONFIG)
class Finetuned(ModelService):
    """The finetuned ECG-FM classifier: segments -> probabilities ``[N, 17]``."""

    kind = "finetuned"

    @bentoml.api(batchable=True, **BATCHING)
    def classify(self, segments: np.ndarray) -> np.ndarray:
        return self.run_batch(segments)

    @bentoml.api(batchable=True, **BATCHING)
    def classify_with_saliency(self, segments: np.ndarray) -> np.ndarray:
        """``[N, 17 + T]``: the probabilities, then the saliency (its own API, so batches never mix the two paths)."""
        return self.run_batch(segments, saliency=True)


# FastAPI's own /docs, /redoc and /openapi.json are off: they load scripts from a CDN, and /docs.json documents all.
app = FastAPI(
    title="ecgfm-serve GET endpoints and binary (.npy) POST variants", docs_url=None, redoc_url=None, openapi_url=None
)


@bentoml.service(name="ECGFMService", workers=1, **SERVICE_CONFIG)
@bentoml.asgi_app(app, path="/")
class ECGFMService:
    """ECG-FM: clinical label probabilities (/clinical), embeddings (/features), or both (/both)."""

    pretrained = bentoml.depends(Pretrained)
    finetuned = bentoml.depends(Finetuned)

    def __init__(self) -> None:
        install_log_filter(ECGRequest.model_fields)
        install_request_id_logging()
        self.checkpoints: dict[str, CheckpointInfo] = {}
        self.thresholds = load_config(SETTINGS.interpreter.thresholds)  # checked by resolve_weights before start
        metrics.start_api_series(PROBE_POST_ROUTES)

    @bentoml.on_deployment
    def resolve_weights() -> None:
        """Before any worker starts: check the API keys file and the audit log, find, download or write both
        checkpoints, check every probe against the pretrained one, read the interpreter's thresholds file
        (``ECGFM_THRESHOLDS``) and, for a variant other than the fp32 reference (``ECGFM_PRECISION=int8`` ...), pass
        its self-check on both models (:mod:`ecgfm.precision`); or end ``bentoml serve`` at once with one message and
        exit status 2 (the traceback only at DEBUG), instead of workers failing and restarting or a probe answering
        for other weights. The self-check's result is handed to the model workers (:class:`SelfCheckHandoff`): a worker
        that loads the same file as the same variant reports it; any other worker measures again."""
        try:
            KEYS.check()
            if AUDIT_LOG is not None:
                AUDIT_LOG.check()
            load_config(SETTINGS.interpreter.thresholds)
            pretrained = resolve_all(SETTINGS.weights)["pretrained"]
            if PROBES_PROBLEM is not None:
                raise PROBES_PROBLEM
            served = pretrained.sha256 or file_sha256(pretrained.path) if PROBES else ""
            for probe in PROBES.values():
                probe.check_checkpoint(served, f"the served pretrained checkpoint ({Path(pretrained.path).name})")
            if not SETTINGS.runtime.is_reference():
                for kind in ("finetuned", "pretrained"):
                    check = load_model(
                        kind,  # type: ignore[arg-type]
                        weights=SETTINGS.weights,
                        runtime=SETTINGS.runtime,
                        handoff=SelfCheckHandoff.of_this_server(),
                    )
                    print(f"ecgfm-serve: {check_line(check)}", file=sys.stderr, flush=True)
                    del check
        except (
            KeyFileError,
            audit.AuditLogError,
            WeightsNotFoundError,
            ProbeFileError,
            ConfigError,
            CheckpointError,
            ValueError,
        ) as exc:
            logging.getLogger(__name__).debug("cannot start", exc_info=True)
            print(f"ecgfm-serve: cannot start: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    @bentoml.api(route="/clinical", input_spec=ECGRequest)
    async def clinical(self, **fields: Any) -> ClinicalResponse:
        """Probabilities of the 17 ECG-FM labels (finetuned model); raw outputs, no thresholds."""
        return await self._answer(self._clinical, json_decoder(fields), current_request())

    @bentoml.api(route="/features", input_spec=ECGRequest)
    async def features(self, **fields: Any) -> FeaturesResponse:
        """The record's embedding from the pretrained encoder."""
        return await self._answer(self._features, json_decoder(fields), current_request())

    @bentoml.api(route="/both", input_spec=ECGRequest)
    async def both(self, **fields: Any) -> BothResponse:
        """/clinical and /features of one record; the two models run at the same time."""
        return await self._answer(self._both, json_decoder(fields), current_request())

    @app.post("/clinical/npy", response_model=ClinicalResponse, openapi_extra=NPY_OPERATION)
    async def clinical_npy(self, request: Request) -> Response:
        """``/clinical`` with the signal as a NumPy ``.npy`` body ``[leads, samples]``; fields as query parameters."""
        return await self._answer(self._clinical, await npy_decoder(request), request)

    @app.post("/features/npy", response_model=FeaturesResponse, openapi_extra=NPY_OPERATION)
    async def features_npy(self, request: Request) -> Response:
        """``/features`` with the signal as a NumPy ``.npy`` body ``[leads, samples]``; fields as query parameters."""
        return await self._answer(self._features, await npy_decoder(request), request)

    @app.post("/both/npy", response_model=BothResponse, openapi_extra=NPY_OPERATION)
    async def both_npy(self, request: Request) -> Response:
        """``/both`` with the signal as a NumPy ``.npy`` body ``[leads, samples]``; fields as query parameters."""
        return await self._answer(self._both, await npy_decoder(request), request)

    @app.post("/clinical/file", response_model=ClinicalResponse, openapi_extra=FILE_OPERATION)
    async def clinical_file(self, request: Request) -> Response:
        """``/clinical`` for an uploaded ECG file (DICOM, HL7 aECG, Philips, GE MUSE, SCP-ECG)."""
        return await self._answer(self._clinical, await file_decoder(request), request)

    @app.post("/features/file", response_model=FeaturesResponse, openapi_extra=FILE_OPERATION)
    async def features_file(self, request: Request) -> Response:
        """``/features`` for an uploaded ECG file (DICOM, HL7 aECG, Philips, GE MUSE, SCP-ECG)."""
        return await self._answer(self._features, await file_decoder(request), request)

    @app.post("/both/file", response_model=BothResponse, openapi_extra=FILE_OPERATION)
    async def both_file(self, request: Request) -> Response:
        """``/both`` for an uploaded ECG file (DICOM, HL7 aECG, Philips, GE MUSE, SCP-ECG)."""
        return await self._answer(self._both, await file_decoder(request), request)

    @app.post(PROBE_ROUTE, response_model=ProbeResponse, responses=PROBE_NOT_FOUND, openapi_extra=PROBE_REQUEST_BODY)
    async def probe(self, name: str, request: Request) -> Response:
        """A probe's target probabilities (``ECGFM_PROBES_DIR``, docs/probes.md) for the record of a ``/features``
        body, from its embedding (the Pretrained service's batched ``embed``)."""
        if name not in PROBES:
            return error_response(probe_not_found(name))
        try:
            fields = ECGRequest.model_validate_json(await request.body()).model_dump()
        except ValidationError as exc:
            return validation_error_response(exc)
        return await self._answer(partial(self._probe, PROBES[name]), json_decoder(fields), request)

    @app.post(PROBE_NPY_ROUTE, response_model=ProbeResponse, responses=PROBE_NOT_FOUND, openapi_extra=NPY_OPERATION)
    async def probe_npy(self, name: str, request: Request) -> Response:
        """``/probes/<name>`` with the signal as a NumPy ``.npy`` body ``[leads, samples]``; fields as query
        parameters."""
        if name not in PROBES:
            return error_response(probe_not_found(name))
        return await self._answer(partial(self._probe, PROBES[name]), await npy_decoder(request), request)

    @app.post(PROBE_FILE_ROUTE, response_model=ProbeResponse, responses=PROBE_NOT_FOUND, openapi_extra=FILE_OPERATION)
    async def probe_file(self, name: str, request: Request) -> Response:
        """``/probes/<name>`` for an uploaded ECG file (DICOM, HL7 aECG, Philips, GE MUSE, SCP-ECG)."""
        if name not in PROBES:
            return error_response(probe_not_found(name))
        return await self._answer(partial(self._probe, PROBES[name]), await file_decoder(request), request)

    @app.get(PROBES_ROUTE, response_model=ProbesResponse)
    async def probes(self) -> Response:
        """The probes loaded from ``ECGFM_PROBES_DIR``: targets, the pretrained checkpoint, the training summary."""
        return JSONResponse(ProbesResponse(probes=list(probe_descriptions().values())).model_dump(mode="json"))

    @app.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
    async def health(self) -> Response:
        """200 when both model services have their model loaded, else 503."""
        health = HealthResponse.of(await self._describe_models())
        return JSONResponse(health.model_dump(mode="json"), status_code=200 if health.status == "ok" else 503)

    @app.get("/info", response_model=InfoResponse, responses={503: {"model": ErrorResponse}})
    async def info(self) -> Response:
        """Models, checkpoints, labels, input contract, batching, effective settings and versions."""
        described = await self._describe_models()
        if error := models_unavailable(described):
            return error_response(error)
        thresholds = {"source": self.thresholds["source"], "provenance": self.thresholds["provenance"]}
        info = InfoResponse.of(
            **described,
            settings=SETTINGS.to_dict(),
            versions=versions(),
            probes=probe_descriptions(),
            thresholds=thresholds,
        )
        return JSONResponse(info.model_dump(mode="json"))

    @app.get("/status", response_model=StatusResponse, responses={503: {"model": ErrorResponse}})
    async def status(self) -> Response:
        """Uptime, request/error counts, latency percentiles, observed batch sizes, devices and memory."""
        described = await self._describe_models()
        if error := models_unavailable(described):
            return error_response(error)
        status = StatusResponse.of(
            **described, started_at=STARTED_AT, endpoints=REQUEST_STATS.to_dict(), batching=BATCHING, rss_mb=rss_mb()
        )
        return JSONResponse(status.model_dump(mode="json"))

    @app.get("/docs/{page}", include_in_schema=False)
    async def docs_page(self, page: str) -> Response:
        """The documentation shipped with the service (Markdown), linked from the landing page."""
        if page not in DOCS_PAGES or not (REPO_DIR / "docs" / page).is_file():
            return JSONResponse({"error": f"no such page; the pages are {', '.join(DOCS_PAGES)}"}, status_code=404)
        return Response((REPO_DIR / "docs" / page).read_bytes(), media_type="text/markdown; charset=utf-8")

    @app.post(DECODE_ROUTE, response_model=DecodedRecordResponse, openapi_extra=DECODE_REQUEST_BODY)
    async def decode(self, request: Request, fs: str | None = None, lead_names: str | None = None) -> Response:
        """The record the service reads from an uploaded file: signal, fs, leads and how it was converted."""
        try:
            files = await uploaded_files(request)
            record, kind = await anyio.to_thread.run_sync(partial(decode_record_files, files, fs, lead_names))
            audit.note(duration_s=round(record.duration_s, 3))
        except ANSWERED_ERRORS as exc:
            return error_response(exc)
        return JSONResponse(DecodedRecordResponse.of(record, kind).model_dump(mode="json"))

    @app.post(INTERPRET_ROUTE, response_model=InterpretationResponse, openapi_extra=INTERPRET_REQUEST_BODY)
    async def interpret(self, request: Request) -> Response:
        """The interpreter's report of a record: heart rate from its signal, findings from its probabilities."""
        try:
            answer = answer_for(request.headers)  # the JSON report, or FHIR / HL7 v2 of it
            body = InterpretRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            return validation_error_response(exc)
        except ANSWERED_ERRORS as exc:
            return error_response(exc)
        fields = body.model_dump(exclude={"probabilities"})
        report = partial(
            interpret_record,
            body.probabilities,
            **fields,
            max_duration_s=SERVING.max_duration_s,
            config=self.thresholds,
        )
        try:
            return answer.interpretation_response(await anyio.to_thread.run_sync(report))
        except ANSWERED_ERRORS as exc:
            return error_response(exc)

    async def __is_ready__(self) -> bool:
        return HealthResponse.of(await self._describe_models()).status == "ok"

    async def _answer(
        self,
        build: Callable[[PreparedRequest], Awaitable[RecordOutput | BothOutput]],
        decode: Decoder,
        request: Request,
    ) -> Response:
        """Decode and preprocess on a worker thread, then ``build`` the result for ``request`` (its route is
        counted, its ``Accept`` read: :func:`serving.answers.answer_for`); an error of the contract is answered from
        ``contract.ERRORS`` (400, 406, 422, 503 with Retry-After)."""
        try:
            answer = answer_for(request.headers)  # JSON, FHIR or HL7 v2 (a bad X-Patient-* header: 400 here)
            prepared = await anyio.to_thread.run_sync(partial(decode, max_duration_s=SERVING.max_duration_s))
            audit.note(duration_s=round(prepared.record.duration_s, 3))
            response = answer.response(await build(prepared))
        except ANSWERED_ERRORS as exc:
            return error_response(exc)
        metrics.record_scored(request.scope["path"])
        return response

    async def _clinical(self, prepared: PreparedRequest) -> ClinicalOutput:
        return await self._output("finetuned", prepared)  # type: ignore[return-value]

    async def _features(self, prepared: PreparedRequest) -> FeaturesOutput:
        return await self._output("pretrained", prepared)  # type: ignore[return-value]

    async def _both(self, prepared: PreparedRequest) -> BothOutput:
        clinical, features = await asyncio.gather(self._clinical(prepared), self._features(prepared))
        return BothOutput(clinical=clinical, features=features)

    async def _probe(self, probe: Probe, prepared: PreparedRequest) -> ProbeOutput:
        return probe.output(await self._features(prepared))

    async def _output(self, kind: ModelKind, prepared: PreparedRequest) -> RecordOutput:
        """One model's result for a record: the batched model call and the (cached) checkpoint, concurrently."""
        values, checkpoint = await asyncio.gather(self._score(kind, prepared), self._checkpoint(kind))
        reduced = None
        if prepared.saliency:  # [N, out + T]: the outputs, then the saliency
            width = checkpoint.num_labels or checkpoint.embed_dim
            values, reduced = values[:, :width], values[:, width:]
        output = OUTPUTS[kind].from_segments(values, prepared.record, checkpoint, prepared.per_segment, reduced)
        output.conversion = prepared.conversion
        return output

    async def _score(self, kind: ModelKind, prepared: PreparedRequest) -> np.ndarray:
        """The model service's outputs for the record's segments: one call, batched there with other requests'."""
        with metrics.model_call(kind, prepared.saliency, len(prepared.batch)):
            return await call_model(MODEL_APIS[kind, prepared.saliency](self), prepared.batch)

    async def _checkpoint(self, kind: ModelKind) -> CheckpointInfo:
        """The model service's checkpoint as responses carry it, asked once and then kept (it never changes)."""
        if kind not in self.checkpoints:
            description = ModelDescription.model_validate(await call_model(getattr(self, kind).to_async.describe))
            self.checkpoints[kind] = description.checkpoint.public()
        return self.checkpoints[kind]

    async def _describe_models(self) -> dict[str, ModelDescription | BaseException]:
        """Each model service's description, or the exception when it did not answer within PROBE_TIMEOUT_S (its
        readiness, ``ecgfm_model_ready``, set from the answer)."""
        kinds = ("pretrained", "finetuned")
        answers = await asyncio.gather(
            *(asyncio.wait_for(call_model(getattr(self, kind).to_async.describe), PROBE_TIMEOUT_S) for kind in kinds),
            return_exceptions=True,
        )
        for kind, answer in zip(kinds, answers, strict=True):
            metrics.set_ready(kind, not isinstance(answer, BaseException))
        return {
            kind: answer if isinstance(answer, BaseException) else ModelDescription.model_validate(answer)
            for kind, answer in zip(kinds, answers, strict=True)
        }


# The model service API a request needs: with saliency, the separate batchable *_with_saliency APIs.
MODEL_APIS: dict[tuple[ModelKind, bool], Callable[[ECGFMService], Callable[..., Awaitable[Any]]]] = {
    ("finetuned", False): lambda service: service.finetuned.to_async.classify,
    ("finetuned", True): lambda service: service.finetuned.to_async.classify_with_saliency,
    ("pretrained", False): lambda service: service.pretrained.to_async.embed,
    ("pretrained", True): lambda service: service.pretrained.to_async.embed_with_saliency,
}

# Outermost first (serving/middleware.py says what each does).
ECGFMService.add_asgi_middleware(RequestIdMiddleware)
ECGFMService.add_asgi_middleware(AuditMiddleware, audit_log=AUDIT_LOG, paths=ADMITTED_POSTS)
ECGFMService.add_asgi_middleware(RequestStatsMiddleware, stats=REQUEST_STATS)
ECGFMService.add_asgi_middleware(ApiKeyMiddleware, keys=KEYS, public_paths=(*PUBLIC_PATHS, *UI_FILES))
ECGFMService.add_asgi_middleware(RetryAfterMiddleware)
ECGFMService.add_asgi_middleware(
    OpenAPIDocumentMiddleware, info=OPENAPI_INFO, media_types=POST_MEDIA_TYPES, public_paths=PUBLIC_PATHS
)
ECGFMService.add_asgi_middleware(LandingPageMiddleware, html=LANDING_PAGE)
ECGFMService.add_asgi_middleware(StaticFilesMiddleware, files=UI_FILES | SAMPLE_FILES)
ECGFMService.add_asgi_middleware(
    UnknownProbeMiddleware,
    prefix=f"{PROBES_ROUTE}/",
    paths=PROBE_POST_ROUTES,
    refuse=lambda name: probe_not_found(name),  # defined below, with the module's other helpers
)
# The /file routes take several media types: their decoder checks them (decoding.file_media_type).
ECGFMService.add_asgi_middleware(
    MediaTypeMiddleware,
    media_types={k: v for k, v in ADMITTED_POSTS.items() if k not in (*file_routes(ADMITTED_POSTS), DECODE_ROUTE)},
)
ECGFMService.add_asgi_middleware(
    ConcurrencyLimitMiddleware, paths=ADMITTED_POSTS, max_concurrency=SERVING.max_concurrency
)
ECGFMService.add_asgi_middleware(BodySizeLimitMiddleware, paths=ADMITTED_POSTS, max_body_bytes=SERVING.max_body_bytes)


def probe_descriptions() -> dict[str, ProbeDescription]:
    return {name: ProbeDescription.model_validate(probe.describe()) for name, probe in PROBES.items()}


def probe_not_found(name: str) -> ProbeNotFoundError:
    loaded = ", ".join(PROBES) or "none (set ECGFM_PROBES_DIR to a folder of .probe files)"
    return ProbeNotFoundError(f"no probe named {name[:64]!r} is loaded; the probes are: {loaded}")


def versions() -> dict[str, str]:
    return {
        "ecgfm-serve": ecgfm.__version__,  # the Bento ships the source, not an installed distribution
        "bentoml": bentoml.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
