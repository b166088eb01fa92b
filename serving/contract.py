"""The HTTP contract of ecgfm-serve: routes, request and response schemas, and every error status.

Routes (served by ``service.ECGFMService``):

==============  ======  ==========================  ===============================================================
path            method  request                     response (200)
==============  ======  ==========================  ===============================================================
/clinical       POST    :class:`ECGRequest`         :class:`ClinicalResponse` (finetuned model, 17 labels)
/features       POST    :class:`ECGRequest`         :class:`FeaturesResponse` (pretrained model, D floats)
/both           POST    :class:`ECGRequest`         :class:`BothResponse` (both models, run concurrently)
/<post>/npy     POST    ``numpy.save`` body         the same as ``/<post>``; fields as query parameters
/<post>/file    POST    a hospital ECG file         the same as ``/<post>`` plus ``conversion`` (how the file was
                        (raw body or multipart      read); DICOM, HL7 aECG, Philips, GE MUSE, SCP-ECG, told by
                        field ``file``)             the content (:mod:`ecgfm.records.formats`)
/health         GET     -                           :class:`HealthResponse` (503 with the same body when not ready)
/info           GET     -                           :class:`InfoResponse` (503 :class:`ErrorResponse` when a model
                                                    is down)
/status         GET     -                           :class:`StatusResponse` (503 :class:`ErrorResponse` likewise)
/decode         POST    a record file (multipart    :class:`DecodedRecordResponse`: the signal, fs and leads the
                        field ``file``; WFDB: .hea  service reads from it, and the conversion report (for /ui)
                        and signal files)
/interpret      POST    :class:`InterpretRequest`   :class:`InterpretationResponse`: heart rate, grouped findings,
                                                    severity and rule identifiers (:mod:`interpreter`)
/probes         GET     -                           :class:`ProbesResponse`: the probes loaded from
                                                    ``ECGFM_PROBES_DIR``, with their training summary
/probes/<name>  POST    as ``/features``; ``/npy``  :class:`ProbeResponse`: the probe's target probabilities from
                        and ``/file`` variants      the record's embedding (404 for a probe not loaded)
==============  ======  ==========================  ===============================================================

200 bodies are raw model outputs (probabilities / embeddings): no thresholds, no diagnosis. Their schemas are
the typed results of :mod:`ecgfm.results.outputs` (the CLI prints the same objects). Every error is one row of
:data:`ERRORS` (exception -> status -> description): the handlers answer from it (:func:`error_response`) and
``/docs.json`` documents it (``serving.openapi.OpenAPIDocumentMiddleware``). The body is ``{"error": "<message>"}``, the
message says what to fix; the one exception is BentoML's own 400 for a JSON body that does not match
:class:`ECGRequest` (:class:`ValidationErrorResponse`, which adds ``detail``; posted values are never echoed).
A 500 is a bug (see the server log).
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from bentoml.exceptions import ServiceUnavailable
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError, model_validator
from starlette.responses import JSONResponse

from ecgfm.labels import AGGREGATION, LABELS
from ecgfm.records.formats import FormatError
from ecgfm.records.preprocess import (
    LEAD_ORDER,
    MAX_FS,
    MIN_DURATION_S,
    MIN_FS,
    SEGMENT_SAMPLES,
    TARGET_FS,
    ECGInputError,
)
from ecgfm.results.hl7v2 import HL7V2_MEDIA_TYPE, PatientIdentityError
from ecgfm.results.outputs import (
    BothOutput,
    ClinicalOutput,
    ConversionReport,
    FeaturesOutput,
    LoadedCheckpoint,
    ProbeOutput,
    SelfCheck,
)

SERVICE_NAME = "ecgfm-serve"
RESEARCH_USE = "Research use only — ECG-FM and this service are not a diagnostic device."
SERVICE_DESCRIPTION = (
    "The reference deployment of ECG-FM, a foundation model for the electrocardiogram: send a 12-lead ECG and get "
    "ECG-FM's raw outputs back, the 17 clinical label probabilities of the finetuned model (/clinical) and the "
    "embedding of the pretrained model (/features), for clinicians' tools, research pipelines and hospital "
    "integrations. Outputs are probabilities, not diagnoses."
)
DOCS_PAGES = (
    "api.md",
    "deployment.md",
    "security.md",
    "clinical_methodology.md",
    "model.md",
    "architecture.md",
    "integration.md",
    "evaluation.md",
    "probes.md",
)
JSON_MEDIA_TYPE = "application/json"
NPY_MEDIA_TYPE = "application/octet-stream"
# POST routes and the body each takes. The /npy variants carry the signal as a binary NumPy .npy body and the
# other fields as query parameters: decoding is ~16x cheaper than JSON (docs/performance.md, "Request path").
JSON_POST_ROUTES = ("/clinical", "/features", "/both")
NPY_POST_ROUTES = tuple(f"{path}/npy" for path in JSON_POST_ROUTES)
# The /file variants take a hospital ECG file as the raw body (any of FILE_MEDIA_TYPES) or as the field `file` of a
# multipart/form-data body; the format is told by the content. Their media type is checked by their decoder.
FILE_POST_ROUTES = tuple(f"{path}/file" for path in JSON_POST_ROUTES)
MULTIPART_MEDIA_TYPE = "multipart/form-data"
FILE_MEDIA_TYPES = (
    NPY_MEDIA_TYPE,
    "application/dicom",
    "application/xml",
    "text/xml",
    "application/hl7-v3+xml",
    "application/scp-ecg",
    MULTIPART_MEDIA_TYPE,
)
FILE_FIELD = "file"
# The page at /ui (serving/web/, docs/ui.md) asks what the service reads from a record file (/decode: multipart,
# field `file`, a WFDB record as its .hea and signal files; checked by its decoder) and what the interpreter makes
# of it (/interpret).
DECODE_ROUTE = "/decode"
INTERPRET_ROUTE = "/interpret"
# Probes (ecgfm.probes, docs/probes.md): one per file of ECGFM_PROBES_DIR, each at POST /probes/<name> with the
# bodies of /features. The middlewares match exact paths: they are given each loaded probe's (probe_post_routes);
# /docs.json documents the templates.
PROBES_ROUTE = "/probes"
PROBE_ROUTE = "/probes/{name}"
PROBE_NPY_ROUTE = f"{PROBE_ROUTE}/npy"
PROBE_FILE_ROUTE = f"{PROBE_ROUTE}/file"
PROBE_MEDIA_TYPES = {PROBE_ROUTE: JSON_MEDIA_TYPE, PROBE_NPY_ROUTE: NPY_MEDIA_TYPE, PROBE_FILE_ROUTE: NPY_MEDIA_TYPE}
POST_MEDIA_TYPES: dict[str, str] = (
    dict.fromkeys(JSON_POST_ROUTES, JSON_MEDIA_TYPE)
    | dict.fromkeys(NPY_POST_ROUTES, NPY_MEDIA_TYPE)
    | dict.fromkeys(FILE_POST_ROUTES, NPY_MEDIA_TYPE)
    | {DECODE_ROUTE: MULTIPART_MEDIA_TYPE, INTERPRET_ROUTE: JSON_MEDIA_TYPE}
    | PROBE_MEDIA_TYPES
)


def probe_post_routes(names: list[str] | tuple[str, ...]) -> dict[str, str]:
    """The POST paths of the loaded probes and the media type of each (for the middlewares, which match paths)."""
    return {route.format(name=name): media for name in names for route, media in PROBE_MEDIA_TYPES.items()}


def file_routes(routes: dict[str, str]) -> tuple[str, ...]:
    """The ``/file`` routes among ``routes`` (their decoder checks their several media types)."""
    return tuple(route for route in routes if route.endswith("/file"))


FHIR_MEDIA_TYPE = "application/fhir+json"  # Accept: application/fhir+json on a POST answers a FHIR R4 Bundle
# Accept: x-application/hl7-v2+er7 on a POST with labels answers an HL7 v2.5.1 ORU^R01 message (ecgfm.results.hl7v2);
# its PID carries only these headers, when the caller sends them (never logged, never read from the input file).
ANSWER_MEDIA_TYPES = (JSON_MEDIA_TYPE, FHIR_MEDIA_TYPE, HL7V2_MEDIA_TYPE)
PATIENT_ID_HEADER = "X-Patient-ID"  # PID-3, ER7 CX components, e.g. 12345^^^HOSP^MR
PATIENT_NAME_HEADER = "X-Patient-Name"  # PID-5, ER7 XPN components, e.g. DOE^JANE
GET_ROUTES = ("/health", "/info", "/status", PROBES_ROUTE)
# With ECGFM_API_KEY set, "Authorization: Bearer <key>" is required on every path but these probes.
PUBLIC_PATHS = ("/health", "/livez", "/healthz", "/readyz")  # /healthz is BentoML's alias of /livez
RETRY_AFTER_S = 2  # the Retry-After of every 429 and 503
REQUEST_ID_HEADER = "X-Request-ID"  # accepted or generated, and returned (serving.middleware.RequestIdMiddleware)
# The ID of the request being answered: set by serving.middleware.RequestIdMiddleware, read by error bodies and log
# lines.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
# The name of the request's API key (never the key): set by serving.ApiKeyMiddleware, read by log lines.
KEY_NAME: ContextVar[str | None] = ContextVar("key_name", default=None)


# ---- errors ---------------------------------------------------------------------------------------------------


class BadRequestError(ValueError):
    """A ``.npy`` or ``/file`` request whose body or query parameters cannot be read."""


class MissingAPIKeyError(Exception):
    """No or a wrong ``Authorization: Bearer <key>`` while ``ECGFM_API_KEY`` is set."""


class UnsupportedMediaTypeError(Exception):
    """A POST body without the route's ``Content-Type``."""


class BodyTooLargeError(Exception):
    """A POST body over ``ECGFM_MAX_BODY_BYTES``."""


class TooManyRequestsError(Exception):
    """More than ``ECGFM_MAX_CONCURRENCY`` POSTs in flight."""


class NotAcceptableError(Exception):
    """``Accept`` asks for a format the route's result has no place in (HL7 v2 for an embedding)."""


class ProbeNotFoundError(LookupError):
    """``POST /probes/<name>`` for a probe that is not loaded; the message lists those that are."""


class ModelsUnavailableError(Exception):
    """A model service did not answer a probe (``/info``, ``/status``); the message names it."""


@dataclass(frozen=True)
class ErrorStatus:
    """How one kind of error is answered: its status, what it means and which operations ``/docs.json`` lists it
    on (``"post"``: the six POST routes; ``"get"``: every other protected operation), and the message sent instead
    of the exception's own text when that is not for callers."""

    status: int
    description: str
    documented_on: tuple[str, ...] = ("post",)
    message: str | None = None


# exception -> status -> description, the one place a status code is decided (BentoML's own 400 aside).
ERRORS: dict[type[Exception], ErrorStatus] = {
    BadRequestError: ErrorStatus(
        400,
        "The body is not an .npy array, a multipart body has no 'file' field, or a query parameter is wrong; or, with "
        f"Accept: {HL7V2_MEDIA_TYPE}, an {PATIENT_ID_HEADER} or {PATIENT_NAME_HEADER} header that cannot go into PID",
    ),
    PatientIdentityError: ErrorStatus(  # documented with the 400 above
        400,
        f"With Accept: {HL7V2_MEDIA_TYPE}, an {PATIENT_ID_HEADER} or {PATIENT_NAME_HEADER} header that cannot go into "
        "PID (not UTF-8, over 250 characters, holding | ~ \\ or a control character, or not valid HL7 v2.5.1 "
        "components: CX for the ID, XPN for the name), or X-Patient-Name without X-Patient-ID",
        documented_on=(),
    ),
    MissingAPIKeyError: ErrorStatus(
        401, "Missing or wrong API key (only when ECGFM_API_KEY or ECGFM_API_KEYS_FILE is set)", ("post", "get")
    ),
    BodyTooLargeError: ErrorStatus(413, "Body larger than ECGFM_MAX_BODY_BYTES"),
    UnsupportedMediaTypeError: ErrorStatus(
        415,
        "Content-Type is not application/json (application/octet-stream for the /npy variants; for the /file "
        f"variants one of {', '.join(FILE_MEDIA_TYPES)})",
    ),
    NotAcceptableError: ErrorStatus(  # declared on the /features routes (serving.openapi)
        406,
        f"Accept: {HL7V2_MEDIA_TYPE} on a /features route: an HL7 v2 message carries label probabilities",
        documented_on=(),
    ),
    ECGInputError: ErrorStatus(
        422,
        "Well-formed, but not a usable ECG; for /file also: not a readable DICOM, HL7 aECG, Philips, GE MUSE or "
        "SCP-ECG file (truncated, corrupt, no waveform, XML that is not an ECG or declares entities); the message "
        "says which",
    ),
    FormatError: ErrorStatus(422, "A file that is not a readable ECG file (documented with the 422 above)", ()),
    ProbeNotFoundError: ErrorStatus(  # declared on the probe routes
        404, "No probe of that name is loaded (GET /probes lists them)", documented_on=()
    ),
    TooManyRequestsError: ErrorStatus(429, "Too many requests in flight (ECGFM_MAX_CONCURRENCY); see Retry-After"),
    ModelsUnavailableError: ErrorStatus(  # declared on the routes of /info and /status
        503, "A model service is not loaded (still loading or failed); see /health", documented_on=()
    ),
    ServiceUnavailable: ErrorStatus(
        503,
        "A model service is not loaded or is overloaded; see Retry-After",
        message="the model service is overloaded or not available; retry after the Retry-After seconds (see /health)",
    ),
}
ANSWERED_ERRORS = tuple(ERRORS)  # what a handler catches and answers from ERRORS
RETRY_AFTER_STATUSES = (429, 503)


def error_status(exc: Exception) -> ErrorStatus:
    """The row of :data:`ERRORS` for ``exc`` (its class or the nearest base class listed)."""
    return next(row for kind, row in ERRORS.items() if isinstance(exc, kind))


def error_body(exc: Exception) -> dict[str, str]:
    """``{"error": <message>, "request_id": <the request's X-Request-ID>}`` (the ID while a request is answered)."""
    body = {"error": error_status(exc).message or str(exc)}
    if (request_id := REQUEST_ID.get()) is not None:
        body["request_id"] = request_id
    return body


def error_headers(status: int) -> dict[str, str]:
    """Retry-After on 429 and 503; ``WWW-Authenticate`` on 401."""
    if status in RETRY_AFTER_STATUSES:
        return {"Retry-After": str(RETRY_AFTER_S)}
    return {"WWW-Authenticate": "Bearer"} if status == 401 else {}


def error_response(exc: Exception) -> JSONResponse:
    """The HTTP answer to an error of :data:`ERRORS`."""
    status = error_status(exc).status
    return JSONResponse(error_body(exc), status_code=status, headers=error_headers(status))


# ---- requests -------------------------------------------------------------------------------------------------

_JSON_NAMES = {bool: "a boolean", str: "a string", type(None): "null", list: "a list", dict: "an object"}


def _samples_are_numbers(signal: Any) -> Any:
    """One clear error for the first sample that is not a JSON number (instead of one error per sample)."""
    if not isinstance(signal, list):
        return signal  # the type check says what is wrong
    for i, lead in enumerate(signal):
        if isinstance(lead, list) and not set(map(type, lead)) <= {int, float}:
            j, value = next((j, v) for j, v in enumerate(lead) if type(v) not in (int, float))
            kind = _JSON_NAMES.get(type(value), type(value).__name__)
            raise ValueError(f"signal[{i}][{j}] is {kind}: every sample must be a number")
    return signal


# JSON numbers only: ints are accepted, booleans, strings and null are not.
Signal = Annotated[list[list[float]], BeforeValidator(_samples_are_numbers)]
Hz = Annotated[float, Strict()]


class ECGRequest(BaseModel):
    """The body of ``POST /clinical``, ``/features`` and ``/both``. Unknown fields are rejected (400)."""

    model_config = ConfigDict(
        extra="forbid",
        hide_input_in_errors=True,  # never echo signal values in errors or logs
    )

    # The schema says what validation checks (a record off it is a 422 with a message, as documented, not a 400):
    # 12 leads of at least MIN_DURATION_S at the lowest fs, fs within [MIN_FS, MAX_FS], 12 lead names.
    signal: Signal = Field(
        description=(
            "One list of samples per lead, all of the same length, in any unit (each lead is standardised). "
            f"12 leads in the order {', '.join(LEAD_ORDER)} unless lead_names says otherwise."
        ),
        json_schema_extra={
            "minItems": len(LEAD_ORDER),
            "maxItems": len(LEAD_ORDER),
            "items": {"type": "array", "items": {"type": "number"}, "minItems": int(MIN_DURATION_S * MIN_FS)},
        },
    )
    fs: Hz = Field(
        description=f"Sampling rate in Hz, {MIN_FS:g} to {MAX_FS:g}; resampled to {TARGET_FS} Hz.",
        json_schema_extra={"minimum": MIN_FS, "maximum": MAX_FS},
    )
    lead_names: list[Annotated[str, Strict()]] | None = Field(
        default=None,
        description="Name of each row of signal (case-insensitive, e.g. 'avr'); default: the standard order.",
        json_schema_extra={
            "anyOf": [{"type": "array", "items": {"type": "string"}, "minItems": 12, "maxItems": 12}, {"type": "null"}]
        },
    )
    per_segment: Annotated[bool, Strict()] = Field(
        default=False, description="Also return the outputs of every 5 s segment under 'segments'."
    )
    saliency: Annotated[bool, Strict()] = Field(
        default=False,
        description="Also return 'saliency': per 5 s segment, where in the tracing the model attended (the last "
        "attention layer, for each 32 ms step its largest weight on any step). It shows attention, not causation.",
    )


# ---- responses ------------------------------------------------------------------------------------------------


class ErrorResponse(BaseModel):
    """A 400 (``.npy``), 401, 413, 415, 422, 429 or 503 body: one message an integrator can act on."""

    error: str = Field(description="What is wrong with the request and how to fix it.")
    request_id: str | None = Field(default=None, description="The request's X-Request-ID (quote it to operators).")


class ValidationErrorResponse(BaseModel):
    """A 400 body for JSON (written by BentoML from pydantic's errors; the posted values are never included)."""

    error: str = Field(description="'<n> validation error(s) for ...'")
    detail: list[dict[str, Any]] = Field(description="One item per problem: loc (where), msg (what), type.")
    request_id: str | None = Field(default=None, description="The request's X-Request-ID (quote it to operators).")


# The 200 bodies of the POSTs are the typed results of ecgfm.results.outputs.
ClinicalResponse = ClinicalOutput
FeaturesResponse = FeaturesOutput
BothResponse = BothOutput
ProbeResponse = ProbeOutput


class ProbeDescription(BaseModel):
    """A loaded probe (``GET /probes``, ``/info``): what it answers and how it was fit."""

    name: str = Field(description="POST /probes/<name>; its file is <name>.probe in ECGFM_PROBES_DIR.")
    targets: list[str]
    embed_dim: int
    pretrained_sha256: str = Field(description="The pretrained checkpoint it was fit on (the one served).")
    demo: bool = Field(description="True when it was fit on embeddings of random demo weights: meaningless.")
    summary: dict[str, Any] = Field(
        description="Training records, positives, cross-validated AUROC with its bootstrap interval per target, C, "
        "method, date and command (ecgfm probe fit)."
    )


class ProbesResponse(BaseModel):
    """``GET /probes``: the probes loaded from ``ECGFM_PROBES_DIR`` (none when it is unset)."""

    probes: list[ProbeDescription]


class ModelState(BaseModel):
    loaded: bool
    demo: bool | None = None
    device: str | None = None
    precision: str | None = Field(
        default=None, description="fp32 (the reference), bf16, fp16 or int8 (ECGFM_PRECISION)."
    )
    error: str | None = None


class ModelServiceStats(BaseModel):
    device: str
    precision: str
    pos_conv: str = Field(description="conv (the reference) or fft (ECGFM_POS_CONV).")
    compiled: bool = Field(description="Whether the model runs through torch.compile (ECGFM_COMPILE).")
    variant: str = Field(description="fp32 (the reference) or the variant served, e.g. int8+fft.")
    self_check: SelfCheck | None = Field(
        default=None, description="The variant's deviation from fp32, measured at load on the weights served."
    )
    calls: int = Field(description="Model calls (batches) so far.")
    segments: int = Field(description="Segments run so far.")
    max_batch_size_observed: int = Field(description="Most segments in one model call so far.")
    batch_sizes: dict[str, int] = Field(description="Histogram: segments per model call -> number of calls.")
    busy_s: float = Field(description="Seconds spent in model calls so far (utilisation = its rate of change).")
    rss_mb: float
    cuda_memory_mb: float | None = None


class ModelDescription(BaseModel):
    """What a model service says about itself (``describe``): the source of /health, /info and /status."""

    checkpoint: LoadedCheckpoint
    device: str
    precision: str
    stats: ModelServiceStats


# What a model service answered, or the exception when it did not answer in time.
Described = dict[str, ModelDescription | BaseException]


class HealthResponse(BaseModel):
    """``GET /health``: 200 when both models are loaded, else 503 with the same body."""

    status: Literal["ok", "unavailable"]
    models: dict[str, ModelState]

    @classmethod
    def of(cls, described: Described) -> HealthResponse:
        models = {
            kind: ModelState(loaded=True, demo=answer.checkpoint.demo, device=answer.device, precision=answer.precision)
            if isinstance(answer, ModelDescription)
            else ModelState(
                loaded=False,
                error=f"not available (still loading, or failed: see the server log): {type(answer).__name__}",
            )
            for kind, answer in described.items()
        }
        return cls(status="ok" if all(m.loaded for m in models.values()) else "unavailable", models=models)


class InputContract(BaseModel):
    lead_order: list[str]
    sample_rate_hz: int = Field(description="Model sample rate; other rates are resampled linearly.")
    segment_samples: int
    segment_seconds: float
    min_fs: float
    max_fs: float
    min_duration_s: float
    max_duration_s: float
    padding: str

    @classmethod
    def of(cls, max_duration_s: float) -> InputContract:
        return cls(
            lead_order=list(LEAD_ORDER),
            sample_rate_hz=TARGET_FS,
            segment_samples=SEGMENT_SAMPLES,
            segment_seconds=SEGMENT_SAMPLES / TARGET_FS,
            min_fs=MIN_FS,
            max_fs=MAX_FS,
            min_duration_s=MIN_DURATION_S,
            max_duration_s=max_duration_s,
            padding="records shorter than one segment are zero-padded to 5 s and the padding is masked",
        )


class BatchingSettings(BaseModel):
    max_batch_size: int = Field(description="Most segments in one model call (across requests).")
    max_latency_ms: int = Field(description="Longest a queued request may wait before it is refused (503).")


class ThresholdsInForce(BaseModel):
    """The interpreter's thresholds that ``POST /interpret`` applies (``ECGFM_THRESHOLDS``)."""

    source: str = Field(description="`default` (interpreter/thresholds.yaml) or the file set by ECGFM_THRESHOLDS.")
    provenance: dict[str, Any] | None = Field(
        description="the file's `provenance:` block: how, when and on which data (counts) its thresholds were chosen "
        "(`ecgfm evaluate`); null for the defaults or a file without one."
    )


class InfoResponse(BaseModel):
    """``GET /info``: what is being served, and the effective settings (the API key only as set / not set)."""

    service: str
    demo: bool = Field(description="True when any model has random demo weights.")
    models: dict[str, LoadedCheckpoint]
    labels: list[str]
    aggregation: dict[str, Literal["max", "mean"]]
    feature_dim: int
    input: InputContract
    batching: BatchingSettings
    settings: dict[str, dict[str, Any]] = Field(
        description="weights, runtime, serving and interpreter settings (ecgfm.settings)."
    )
    thresholds: ThresholdsInForce
    versions: dict[str, str]
    probes: dict[str, ProbeDescription] = Field(
        default_factory=dict, description="The loaded probes by name, with their training summary (GET /probes)."
    )

    @classmethod
    def of(
        cls, pretrained: ModelDescription, finetuned: ModelDescription, settings: dict[str, dict[str, Any]], **rest: Any
    ) -> InfoResponse:
        return cls(
            service="ECGFMService",
            demo=pretrained.checkpoint.demo or finetuned.checkpoint.demo,
            models={"pretrained": pretrained.checkpoint, "finetuned": finetuned.checkpoint},
            labels=list(LABELS),
            aggregation=dict(AGGREGATION),
            feature_dim=pretrained.checkpoint.embed_dim,
            input=InputContract.of(settings["serving"]["max_duration_s"]),
            batching=BatchingSettings(
                max_batch_size=settings["serving"]["max_batch_size"],
                max_latency_ms=settings["serving"]["max_latency_ms"],
            ),
            settings=settings,
            **rest,
        )


class EndpointStats(BaseModel):
    requests: int
    errors: int = Field(description="Responses with a status >= 400.")
    latency_ms: dict[str, float | None] = Field(description="p50, p90, p99 and max over the last requests.")


class StatusResponse(BaseModel):
    """``GET /status``: counters only, never signal values or request bodies."""

    uptime_s: float
    demo: bool
    endpoints: dict[str, EndpointStats]
    models: dict[str, ModelServiceStats]
    batching: BatchingSettings
    rss_mb: float = Field(description="Resident memory of the API process.")

    @classmethod
    def of(
        cls, pretrained: ModelDescription, finetuned: ModelDescription, started_at: float, **rest: Any
    ) -> StatusResponse:
        return cls(
            uptime_s=round(time.time() - started_at, 3),
            demo=pretrained.checkpoint.demo or finetuned.checkpoint.demo,
            models={"pretrained": pretrained.stats, "finetuned": finetuned.stats},
            **rest,
        )


def models_unavailable(described: Described) -> ModelsUnavailableError | None:
    """The error naming the model services that did not answer, or None when both did."""
    missing = [kind for kind, answer in described.items() if not isinstance(answer, ModelDescription)]
    if not missing:
        return None
    return ModelsUnavailableError(
        f"the {' and '.join(missing)} model service is not available (still loading or failed); see /health"
    )


# ---- the page at /ui: what a file is read as, and what the interpreter makes of a record -------------------------


class InterpretRequest(BaseModel):
    """The body of ``POST /interpret``: a record's 17 probabilities (``/clinical``'s) and, for the heart rate, the
    record itself (as for ``/clinical``). Unknown fields are rejected (400)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    probabilities: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        description="Probability of each of the 17 labels (the 'probabilities' of /clinical)."
    )
    signal: Signal | None = Field(default=None, description="As for /clinical; without it no heart rate (rule H8).")
    fs: Hz | None = Field(default=None, description="Sampling rate in Hz, required with signal.")
    lead_names: list[Annotated[str, Strict()]] | None = Field(default=None, description="As for /clinical.")
    record: Annotated[str, Strict(), Field(max_length=200)] = Field(default="", description="A name for the report.")

    @model_validator(mode="after")
    def _complete(self) -> InterpretRequest:
        missing = [label for label in LABELS if label not in self.probabilities]
        unknown = [label for label in self.probabilities if label not in LABELS]
        if missing or unknown:
            raise ValueError(
                f"probabilities must have exactly the 17 labels of /info; missing {missing}, unknown {unknown}"
            )
        if self.signal is not None and self.fs is None:
            raise ValueError("fs (Hz) is required with signal")
        return self


def validation_error_response(exc: ValidationError) -> JSONResponse:
    """A 400 of :class:`ValidationErrorResponse`'s shape for a body parsed here (never echoing the values)."""
    detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors(include_input=False)]
    body = {
        "error": f"{len(detail)} validation error{'s' if len(detail) > 1 else ''} for {exc.title}",
        "detail": detail,
    }
    return JSONResponse(body, status_code=400)


class DecodedRecordResponse(BaseModel):
    """``POST /decode``: the record the service reads from a file, as the model is given it (leads beyond the 12
    left out), before preprocessing: the signal the page at /ui draws and sends to /clinical."""

    name: str = Field(description="The record's name (the file's stem unless the file names it).")
    format: str = Field(description="json, csv, npy, wfdb, or the hospital format (conversion.format).")
    fs: float = Field(description="Sampling rate in Hz, as in the file.")
    lead_names: list[str]
    signal: list[list[float]] = Field(description="One list per lead of lead_names, as stored (usually mV).")
    n_samples: int
    duration_s: float
    conversion: ConversionReport | None = Field(description="How a hospital file was read; null for the others.")

    @classmethod
    def of(cls, record: Any, kind: str) -> DecodedRecordResponse:
        """From an :class:`ecgfm.records.record.ECGRecord` and its format."""
        signal, lead_names = record.model_input()
        return cls(
            name=record.name,
            format=kind,
            fs=record.fs,
            lead_names=lead_names,
            signal=signal.tolist(),
            n_samples=signal.shape[1],
            duration_s=round(signal.shape[1] / record.fs, 6),
            conversion=record.conversion,
        )


class InterpretedFinding(BaseModel):
    label: str
    group: str
    probability: float | None
    threshold: float
    status: Literal["present", "possible", "discordant"]
    severity: Literal["normal", "borderline", "abnormal", "critical"]
    source: str = Field(description="model, heart_rate or model+heart_rate.")
    rules: list[str] = Field(description="The identifiers of the rules applied (docs/clinical_methodology.md).")
    notes: list[str]


class InterpretationResponse(BaseModel):
    """``POST /interpret``: the JSON report of ``python -m interpreter report`` for one record."""

    disclaimer: str
    record: str
    severity: Literal["normal", "borderline", "abnormal", "critical"] = Field(description="The overall severity.")
    severity_reasons: list[str] = Field(description="Why, each reason led by its rule or finding.")
    findings: list[InterpretedFinding] = Field(description="The reported findings (status other than absent).")
    groups: dict[str, list[str]] = Field(description="Rhythm, Conduction, Ischemia, Structural, Other -> labels.")
    group_notes: dict[str, str]
    heart_rate: dict[str, Any] | None = Field(description="heart_rate_bpm, r_peaks, quality, ... (null: no signal).")
    rate_severity: str | None
    discordances: list[str]
    notes: list[str]
    probabilities: dict[str, float]
    thresholds_source: str
    source: dict[str, Any]
