"""The HTTP contract of ecgfm-serve: every request field, limit, response body and status code.

Endpoints (served by ``service.ECGFMService``):

=========  ======  ==========================  =====================================================
path       method  request                     response (200)
=========  ======  ==========================  =====================================================
/clinical  POST    :class:`ECGRequest`         :class:`ClinicalResponse` (finetuned model, 17 labels)
/features  POST    :class:`ECGRequest`         :class:`FeaturesResponse` (pretrained model, D floats)
/both      POST    :class:`ECGRequest`         :class:`BothResponse` (both models, run concurrently)
/health    GET     -                           :class:`HealthResponse` (503 with the same body when not ready)
/info      GET     -                           :class:`InfoResponse` (503 :class:`ErrorResponse` when a model is down)
/status    GET     -                           :class:`StatusResponse` (503 :class:`ErrorResponse` likewise)
=========  ======  ==========================  =====================================================

Status codes of the POST endpoints:

* 200: the body above. Outputs are raw model outputs (probabilities / embeddings): no thresholds, no diagnosis.
* 400: the body is not valid JSON or does not match :class:`ECGRequest` (wrong types, a bool or string or null
  among the samples, an unknown extra field, a missing field). BentoML's body:
  ``{"error": "<n> validation error for ...", "detail": [{"loc": [...], "msg": ..., "type": ...}]}`` (the
  offending values are never echoed).
* 422: the body is well-formed but is not a usable ECG (:class:`ErrorResponse`, ``{"error": "<message>"}``):
  a missing/duplicate/unknown lead, ragged leads, NaN/infinite samples, fs outside ``[MIN_FS, MAX_FS]``,
  shorter than ``MIN_DURATION_S`` or longer than ``MAX_DURATION_S``. The message says what to fix.
* 401: ``ECGFM_API_KEY`` is set and the request lacks ``Authorization: Bearer <key>`` (every path but
  ``/health``, ``/livez`` and ``/readyz``).
* 413: the body is larger than ``ECGFM_MAX_BODY_BYTES`` (:data:`MAX_BODY_BYTES`); refused before it is read whole.
* 415: the body is not declared ``Content-Type: application/json``.
* 429: more than ``ECGFM_MAX_CONCURRENCY`` POSTs are in flight; ``Retry-After`` says when to try again.
* 503: a model service is not loaded yet, or a request queued for a model longer than ``ECGFM_MAX_LATENCY_MS``
  (retry later; ``Retry-After`` is set); 500: a bug (see the server log).

Every 4xx/5xx body above is ``{"error": "<message>"}`` (the 400 adds ``detail``); :func:`document_error_responses`
adds them to the OpenAPI document BentoML generates (``/docs.json``).

Inside the service (not part of the public contract, but documented here because it is the one place the
padding convention lives): the API service sends each model service one ``float32`` array ``[N, 12, 2500]``.
Records shorter than one 5 s segment (at least ``MIN_DURATION_S``) are padded; their padded samples are sent as
``NaN`` (:data:`PAD_VALUE`) in every lead. Preprocessing guarantees real samples are finite, so the model service
recovers the padding mask as ``np.isnan(x[:, 0, :])`` and sets the padded samples back to 0 before the model runs.
"""

from __future__ import annotations

import io
import os
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict

from ecgfm.labels import LABELS
from ecgfm.preprocess import (
    DEFAULT_MAX_DURATION_S,
    LEAD_ORDER,
    MAX_FS,
    MIN_DURATION_S,
    MIN_FS,
    SEGMENT_SAMPLES,
    TARGET_FS,
    PreprocessedECG,
    preprocess,
)

ENDPOINTS = ("/clinical", "/features", "/both", "/health", "/info", "/status")
POST_ENDPOINTS = ENDPOINTS[:3]
# The same three with the signal as a binary NumPy .npy body (application/octet-stream) and the other fields as
# query parameters: decoding is ~16x cheaper than JSON (docs/performance.md, "Request path").
BINARY_ENDPOINTS = tuple(f"{path}/npy" for path in POST_ENDPOINTS)
# ECGFM_API_KEY, when set, is required as "Authorization: Bearer <key>" on every path but these probes.
API_KEY_ENV_VAR = "ECGFM_API_KEY"
PUBLIC_PATHS = ("/health", "/livez", "/healthz", "/readyz")  # /healthz is BentoML's alias of /livez
MAX_DURATION_ENV_VAR = "ECGFM_MAX_DURATION_S"
MAX_DURATION_S = float(os.environ.get(MAX_DURATION_ENV_VAR, DEFAULT_MAX_DURATION_S))
# The default body limit fits the longest record at 1000 Hz written by Python's json (a float64 takes at most
# 24 bytes: 17 significant digits, sign, point, exponent, ", "): 600 s * 1000 Hz * 12 leads * 24 B = 172.8 MB.
# Higher rates are accepted (up to MAX_FS) for shorter records; raise ECGFM_MAX_BODY_BYTES for long ones.
BODY_SIZING_FS = 1000
BYTES_PER_JSON_SAMPLE = 24
MAX_BODY_BYTES = int(
    os.environ.get("ECGFM_MAX_BODY_BYTES", MAX_DURATION_S * BODY_SIZING_FS * len(LEAD_ORDER) * BYTES_PER_JSON_SAMPLE)
)
MAX_CONCURRENCY = int(os.environ.get("ECGFM_MAX_CONCURRENCY", "64"))  # POSTs in flight in the API process; 429 above
RETRY_AFTER_S = 2  # the Retry-After of every 429 and 503
JSON_MEDIA_TYPE = "application/json"
NPY_MEDIA_TYPE = "application/octet-stream"
PAD_VALUE = float("nan")  # padded samples in the model-service input; see the module docstring
INVALID_INPUT_STATUS = 422  # a well-formed request that is not a usable ECG

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

    signal: Signal = Field(
        description=(
            "One list of samples per lead, all of the same length, in any unit (each lead is standardised). "
            f"12 leads in the order {', '.join(LEAD_ORDER)} unless lead_names says otherwise."
        ),
    )
    fs: Hz = Field(
        description=f"Sampling rate in Hz, {MIN_FS:g} to {MAX_FS:g}; resampled to {TARGET_FS} Hz.",
    )
    lead_names: list[Annotated[str, Strict()]] | None = Field(
        default=None,
        description="Name of each row of signal (case-insensitive, e.g. 'avr'); default: the standard order.",
    )
    per_segment: Annotated[bool, Strict()] = Field(
        default=False, description="Also return the outputs of every 5 s segment under 'segments'."
    )


class ErrorResponse(BaseModel):
    """A 401, 413, 415, 422, 429 or 503 body: one message an integrator can act on."""

    error: str = Field(description="What is wrong with the request and how to fix it.")


class ValidationErrorResponse(BaseModel):
    """A 400 body (written by BentoML from pydantic's errors; the posted values are never included)."""

    error: str = Field(description="'<n> validation error(s) for ...'")
    detail: list[dict[str, Any]] = Field(description="One item per problem: loc (where), msg (what), type.")


# Statuses every POST may answer besides 200 and 400 (see the module docstring), and what each means.
POST_ERROR_STATUSES: dict[int, str] = {
    401: "Missing or wrong API key (only when ECGFM_API_KEY is set)",
    413: "Body larger than ECGFM_MAX_BODY_BYTES",
    415: "Content-Type is not application/json (application/octet-stream for the /npy variants)",
    INVALID_INPUT_STATUS: "Well-formed, but not a usable ECG",
    429: "Too many requests in flight (ECGFM_MAX_CONCURRENCY); see Retry-After",
    503: "A model service is not loaded or is overloaded; see Retry-After",
}
GET_ERROR_STATUSES: dict[int, str] = {401: "Missing or wrong API key (only when ECGFM_API_KEY is set)"}


class CheckpointInfo(BaseModel):
    """Which weights produced a response."""

    kind: Literal["pretrained", "finetuned"]
    model_type: str
    demo: bool = Field(description="True when the weights are random demo weights: outputs are meaningless.")
    path: str
    origin: Literal["local", "huggingface", "demo"]
    repo_id: str | None = None
    revision: str | None = None
    filename: str | None = None
    sha256: str
    parameters: int
    embed_dim: int
    layers: int
    num_labels: int | None = None


class _RecordFields(BaseModel):
    demo: bool = Field(description="True when the model has random demo weights.")
    n_segments: int = Field(description="Number of 5 s segments the record was cut into.")
    duration_s: float = Field(description="Duration of the posted record.")
    used_duration_s: float = Field(description="Seconds covered by the segments (a tail shorter than 5 s is dropped).")
    padded: bool = Field(description="True when the record was shorter than 5 s and was padded (with a mask).")
    constant_leads: list[str] = Field(description="Leads that were constant (e.g. disconnected) and set to 0.")
    checkpoint: CheckpointInfo


class ClinicalResponse(_RecordFields):
    """``POST /clinical``: sigmoid outputs of the finetuned model, aggregated over segments."""

    model: Literal["finetuned"]
    probabilities: dict[str, float] = Field(
        description=f"One probability per label, in label order ({len(LABELS)} labels; see /info for "
        "how each label aggregates over segments: max or mean). Raw outputs, no thresholds.",
    )
    segments: list[list[float]] | None = Field(
        default=None, description="Only with per_segment: [n_segments][17] probabilities in label order."
    )


class FeaturesResponse(_RecordFields):
    """``POST /features``: the pretrained encoder's embedding (mean over frames, then over segments)."""

    model: Literal["pretrained"]
    features: list[float] = Field(description="The record's embedding, dim floats.")
    dim: int
    segments: list[list[float]] | None = Field(
        default=None, description="Only with per_segment: [n_segments][dim] embeddings."
    )


class BothResponse(BaseModel):
    """``POST /both``: both bodies; the two models run at the same time."""

    clinical: ClinicalResponse
    features: FeaturesResponse


class ModelState(BaseModel):
    loaded: bool
    demo: bool | None = None
    device: str | None = None
    precision: str | None = Field(default=None, description="fp32 (the reference), bf16 or fp16 (ECGFM_PRECISION).")
    error: str | None = None


class HealthResponse(BaseModel):
    """``GET /health``: 200 when both models are loaded, else 503 with the same body."""

    status: Literal["ok", "unavailable"]
    models: dict[str, ModelState]


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


class BatchingSettings(BaseModel):
    max_batch_size: int = Field(description="Most segments in one model call (across requests).")
    max_latency_ms: int = Field(description="Longest a queued request may wait before it is refused (503).")


class InfoResponse(BaseModel):
    """``GET /info``: what is being served."""

    service: str
    demo: bool = Field(description="True when any model has random demo weights.")
    models: dict[str, CheckpointInfo]
    labels: list[str]
    aggregation: dict[str, Literal["max", "mean"]]
    feature_dim: int
    input: InputContract
    batching: BatchingSettings
    versions: dict[str, str]


class EndpointStats(BaseModel):
    requests: int
    errors: int = Field(description="Responses with a status >= 400.")
    latency_ms: dict[str, float | None] = Field(description="p50, p90, p99 and max over the last requests.")


class ModelServiceStats(BaseModel):
    device: str
    precision: str
    pos_conv: str = Field(description="conv (the reference) or fft (ECGFM_POS_CONV).")
    compiled: bool = Field(description="Whether the model runs through torch.compile (ECGFM_COMPILE).")
    calls: int = Field(description="Model calls (batches) so far.")
    segments: int = Field(description="Segments run so far.")
    max_batch_size_observed: int = Field(description="Most segments in one model call so far.")
    batch_sizes: dict[str, int] = Field(description="Histogram: segments per model call -> number of calls.")
    busy_s: float = Field(description="Seconds spent in model calls so far (utilisation = its rate of change).")
    rss_mb: float
    cuda_memory_mb: float | None = None


class StatusResponse(BaseModel):
    """``GET /status``: counters only, never signal values or request bodies."""

    uptime_s: float
    demo: bool
    endpoints: dict[str, EndpointStats]
    models: dict[str, ModelServiceStats]
    batching: BatchingSettings
    rss_mb: float = Field(description="Resident memory of the API process.")


def prepare(
    signal: list[list[float]] | np.ndarray, fs: float, lead_names: list[str] | None = None
) -> tuple[PreprocessedECG, np.ndarray]:
    """Validate and preprocess a request's ECG once; returns the record and the model-service input.

    Raises:
        ECGInputError: the message goes back to the caller with status 422.
    """
    prep = preprocess(signal, fs, lead_names, max_duration_s=MAX_DURATION_S)
    return prep, encode_segments(prep)


class BadRequestError(ValueError):
    """A binary request whose body or query parameters cannot be read (status 400); the message says why."""


def read_binary_request(
    body: bytes, fs: str | None, lead_names: str | None, per_segment: str | None
) -> tuple[np.ndarray, float, list[str] | None, bool]:
    """Decode a ``POST /<endpoint>/npy`` request: the body is ``np.save`` of a ``[leads, samples]`` numeric array.

    Query parameters: ``fs`` (required, Hz), ``lead_names`` (comma-separated, optional), ``per_segment``
    (``true``/``false``, optional). Returns what :func:`prepare` takes, plus ``per_segment``.

    Raises:
        BadRequestError: not an ``.npy`` array, a pickled object array, or unreadable query parameters.
    """
    if fs is None:
        raise BadRequestError("the query parameter fs (sampling rate in Hz) is required, e.g. ?fs=500")
    try:
        fs_hz = float(fs)
    except ValueError:
        raise BadRequestError("the query parameter fs must be a number (Hz)") from None
    flags = {"true": True, "1": True, "false": False, "0": False, None: False}
    if per_segment is not None and per_segment.lower() not in flags:
        raise BadRequestError("the query parameter per_segment must be true or false")
    names = [name.strip() for name in lead_names.split(",")] if lead_names else None
    try:
        signal = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BadRequestError(
            f"the body is not a NumPy .npy array written by numpy.save ({type(exc).__name__})"
        ) from None
    if not isinstance(signal, np.ndarray) or signal.dtype.kind not in "iuf":
        raise BadRequestError("the .npy array must hold numbers (integer or float)")
    return signal, fs_hz, names, flags[per_segment.lower() if per_segment else None]


def encode_segments(prep: PreprocessedECG) -> np.ndarray:
    """``[N, 12, 2500]`` float32 with padded samples set to :data:`PAD_VALUE` (NaN)."""
    segments = prep.segments
    if prep.padding_mask is not None and prep.padding_mask.any():
        segments = segments.copy()
        segments[np.broadcast_to(prep.padding_mask[:, None, :], segments.shape)] = PAD_VALUE
    return segments


def decode_segments(segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`encode_segments` for a batch: finite segments and the padding mask ``[N, 2500]``."""
    segments = np.asarray(segments, dtype=np.float32)
    mask = np.isnan(segments[:, 0, :])
    if mask.any():
        segments = np.where(np.isnan(segments), np.float32(0.0), segments)
    return segments, mask


def input_contract() -> dict[str, Any]:
    """The ``input`` section of ``/info``."""
    return {
        "lead_order": list(LEAD_ORDER),
        "sample_rate_hz": TARGET_FS,
        "segment_samples": SEGMENT_SAMPLES,
        "segment_seconds": SEGMENT_SAMPLES / TARGET_FS,
        "min_fs": MIN_FS,
        "max_fs": MAX_FS,
        "min_duration_s": MIN_DURATION_S,
        "max_duration_s": MAX_DURATION_S,
        "padding": "records shorter than one segment are zero-padded to 5 s and the padding is masked",
    }


def document_error_responses(spec: dict[str, Any], post_paths: tuple[str, ...], public_paths: tuple[str, ...]) -> dict:
    """Add the error responses of the contract to BentoML's OpenAPI document (``@bentoml.api`` cannot declare them).

    POSTs get :data:`POST_ERROR_STATUSES` with :class:`ErrorResponse` and their 400 becomes
    :class:`ValidationErrorResponse` (BentoML documents ``detail`` as a string, but sends a list); every other
    operation outside ``public_paths`` gets :data:`GET_ERROR_STATUSES`. ``spec`` is changed in place and returned.
    """
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for model in (ErrorResponse, ValidationErrorResponse):
        schemas[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")

    def response(description: str, model: type[BaseModel]) -> dict[str, Any]:
        schema = {"$ref": f"#/components/schemas/{model.__name__}"}
        return {"description": description, "content": {JSON_MEDIA_TYPE: {"schema": schema}}}

    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            if method == "post" and path in post_paths:
                responses["400"] = response("Not JSON, or does not match the request schema", ValidationErrorResponse)
                extra = POST_ERROR_STATUSES
            elif method == "post" and path in BINARY_ENDPOINTS:
                responses["400"] = response(
                    "The body is not an .npy array, or a query parameter is wrong", ErrorResponse
                )
                responses["422"] = response(POST_ERROR_STATUSES[422], ErrorResponse)  # not FastAPI's own 422
                extra = POST_ERROR_STATUSES
            elif path not in public_paths:
                extra = GET_ERROR_STATUSES
            else:
                continue
            for status, description in extra.items():
                responses.setdefault(str(status), response(description, ErrorResponse))
    return spec
