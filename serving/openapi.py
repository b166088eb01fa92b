"""The OpenAPI document at ``/docs.json``: BentoML's, with this service's description, the errors of
``contract.ERRORS`` on every operation, the answers ``Accept`` can ask for (FHIR, HL7 v2), and the request bodies
that ``@app.post`` routes cannot declare themselves (``.npy``, hospital files, ``/decode``, ``/interpret``)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import ecgfm
from ecgfm.records.preprocess import MAX_FS, MIN_FS
from serving.contract import (
    ERRORS,
    FHIR_MEDIA_TYPE,
    FILE_FIELD,
    FILE_MEDIA_TYPES,
    FILE_POST_ROUTES,
    HL7V2_MEDIA_TYPE,
    INTERPRET_ROUTE,
    JSON_MEDIA_TYPE,
    JSON_POST_ROUTES,
    MULTIPART_MEDIA_TYPE,
    NPY_MEDIA_TYPE,
    NPY_POST_ROUTES,
    PATIENT_ID_HEADER,
    PATIENT_NAME_HEADER,
    RESEARCH_USE,
    SERVICE_DESCRIPTION,
    SERVICE_NAME,
    ECGRequest,
    ErrorResponse,
    InterpretRequest,
    NotAcceptableError,
    ValidationErrorResponse,
)
from serving.middleware import ASGIApp, Message, Receive, Scope, Send


def document_error_responses(
    spec: dict[str, Any], media_types: dict[str, str], public_paths: Iterable[str]
) -> dict[str, Any]:
    """Add ``contract.ERRORS`` to BentoML's OpenAPI document (``@bentoml.api`` cannot declare them).

    The POSTs of ``media_types`` get every error documented on ``"post"``; their 400 is
    :class:`~contract.ValidationErrorResponse` for JSON (BentoML documents ``detail`` as a string, but sends a
    list) and their 422 is the contract's (not FastAPI's own). Every other operation outside ``public_paths``
    gets the errors documented on ``"get"``. ``spec`` is changed in place and returned.
    """
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for model in (ErrorResponse, ValidationErrorResponse):
        schemas[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")

    def response(description: str, model: type) -> dict[str, Any]:
        schema = {"$ref": f"#/components/schemas/{model.__name__}"}
        return {"description": description, "content": {JSON_MEDIA_TYPE: {"schema": schema}}}

    public = frozenset(public_paths)
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            if method == "post" and path in media_types:
                on = "post"
            elif path not in public:
                on = "get"
            else:
                continue
            responses = operation.setdefault("responses", {})
            for row in ERRORS.values():
                if on not in row.documented_on:
                    continue
                if on == "post" and row.status in (400, 422):  # replace FastAPI's and BentoML's own
                    json_400 = row.status == 400 and media_types[path] == JSON_MEDIA_TYPE
                    responses[str(row.status)] = (
                        response("Not JSON, or does not match the request schema", ValidationErrorResponse)
                        if json_400
                        else response(row.description, ErrorResponse)
                    )
                else:
                    responses.setdefault(str(row.status), response(row.description, ErrorResponse))
    return spec


SCORING_ROUTES = (*JSON_POST_ROUTES, *NPY_POST_ROUTES, *FILE_POST_ROUTES, INTERPRET_ROUTE)
ANSWER_CONTENT = {
    FHIR_MEDIA_TYPE: {
        "schema": {
            "type": "object",
            "description": "With Accept: application/fhir+json: a FHIR R4 Bundle (collection) of a DiagnosticReport "
            "and its Observations, SNOMED CT coded (/docs/integration.md).",
        }
    },
    HL7V2_MEDIA_TYPE: {
        "schema": {
            "type": "string",
            "description": f"With Accept: {HL7V2_MEDIA_TYPE} (not /features): an HL7 v2.5.1 ORU^R01 message, ER7, "
            f"UTF-8; MSH-10 the X-Request-ID; PID only from the request headers {PATIENT_ID_HEADER} (PID-3) and "
            f"{PATIENT_NAME_HEADER} (PID-5) (/docs/integration.md).",
        }
    },
}


def document_answer_media_types(spec: dict[str, Any], routes: Iterable[str] = SCORING_ROUTES) -> dict[str, Any]:
    """Add the answers ``Accept`` can ask for (serving.answers) to each scoring route's 200, and the 406 of an HL7 v2
    answer to the /features routes. ``spec`` is changed in place and returned."""
    not_acceptable = ERRORS[NotAcceptableError]
    for route in routes:
        responses = spec.get("paths", {}).get(route, {}).get("post", {}).get("responses")
        if responses is None:
            continue
        if "200" in responses:
            content = responses["200"].setdefault("content", {})
            for media_type, entry in ANSWER_CONTENT.items():
                if media_type == HL7V2_MEDIA_TYPE and route.startswith("/features"):
                    continue
                content.setdefault(media_type, entry)
        if route.startswith("/features"):
            schema = {"$ref": f"#/components/schemas/{ErrorResponse.__name__}"}
            responses[str(not_acceptable.status)] = {
                "description": not_acceptable.description,
                "content": {JSON_MEDIA_TYPE: {"schema": schema}},
            }
    return spec


class OpenAPIDocumentMiddleware:
    """``GET /docs.json`` leaves with ``info`` (title, version, description: this service, not BentoML's generic
    text) and the contract's error responses added (:func:`document_error_responses`)."""

    def __init__(
        self, app: ASGIApp, info: dict[str, Any], media_types: dict[str, str], public_paths: Iterable[str]
    ) -> None:
        self.app, self.info, self.media_types, self.public_paths = app, info, media_types, tuple(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "GET" or scope.get("path") != "/docs.json":
            await self.app(scope, receive, send)
            return
        start: Message = {}
        chunks: list[bytes] = []

        async def send_documented(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            if start["status"] == 200:
                spec = document_error_responses(json.loads(body), self.media_types, self.public_paths)
                spec = document_answer_media_types(spec)
                spec["info"] = dict(self.info)
                body = json.dumps(spec).encode()
            headers = [(key, value) for key, value in start.get("headers", []) if key.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, send_documented)


# ---- this service's document: its description, and the request bodies @app.post routes cannot declare ----------

OPENAPI_INFO = {
    "title": SERVICE_NAME,
    "version": ecgfm.__version__,
    "description": f"{SERVICE_DESCRIPTION}\n\n**{RESEARCH_USE}**\n\nDocumentation: /docs/api.md (the API), "
    "/docs/deployment.md (settings), /docs/security.md.",
}


def query_parameter(name: str, description: str, required: bool = False) -> dict[str, Any]:
    """An OpenAPI query parameter: the ``.npy`` and file routes read theirs from the request (decoding.py)."""
    return {"name": name, "in": "query", "required": required, "description": description, "schema": {"type": "string"}}


FS_PARAMETER = query_parameter("fs", f"sampling rate in Hz, {MIN_FS:g} to {MAX_FS:g}", required=True)
FS_PARAMETER["schema"] = {"type": "number", "minimum": MIN_FS, "maximum": MAX_FS}  # as strict as validation
LEAD_NAMES_PARAMETER = query_parameter("lead_names", "comma-separated lead names, one per row (default: I..V6)")
PER_SEGMENT_PARAMETER = query_parameter("per_segment", "true: also each 5 s segment's output (default false)")
SALIENCY_PARAMETER = query_parameter("saliency", "true: also where the model attended, per segment (default false)")


DECODE_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "description": f"The record file as the field '{FILE_FIELD}' of multipart/form-data (a WFDB record: its .hea "
        "and the signal files it names, each as a 'file' field): JSON, CSV, .npy, WFDB, or a hospital file (DICOM, HL7 "
        "aECG, Philips, GE MUSE, SCP-ECG, told by the content). Query parameters fs and lead_names for .csv/.npy.",
        "content": {
            MULTIPART_MEDIA_TYPE: {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {FILE_FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            }
        },
    }
}
PROBE_NOT_FOUND = {404: {"model": ErrorResponse, "description": "No probe of that name is loaded (GET /probes)"}}
PROBE_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "description": "As for /features.",
        "content": {JSON_MEDIA_TYPE: {"schema": ECGRequest.model_json_schema(mode="validation")}},
    }
}
INTERPRET_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": InterpretRequest.model_json_schema(mode="validation")}},
    }
}
FILE_OPERATION = {
    "parameters": [PER_SEGMENT_PARAMETER, SALIENCY_PARAMETER],
    "requestBody": {
        "required": True,
        "description": "A hospital ECG file (DICOM waveform, HL7 aECG, Philips Sierra/PageWriter XML, GE MUSE XML, "
        f"SCP-ECG), as the raw body or as the field '{FILE_FIELD}' of multipart/form-data; the format is told by the "
        "content. Leads beyond the standard 12 are kept out of the model; the response's 'conversion' says how the "
        "file was read (units, derived leads, trimmed calibration pulse).",
        "content": {
            **{
                media_type: {"schema": {"type": "string", "format": "binary"}}
                for media_type in FILE_MEDIA_TYPES
                if media_type != MULTIPART_MEDIA_TYPE
            },
            MULTIPART_MEDIA_TYPE: {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {FILE_FIELD: {"type": "string", "format": "binary"}},
                },
                "encoding": {
                    FILE_FIELD: {"contentType": ", ".join(m for m in FILE_MEDIA_TYPES if "multipart" not in m)}
                },
            },
        },
    },
}
NPY_OPERATION = {
    "parameters": [FS_PARAMETER, LEAD_NAMES_PARAMETER, PER_SEGMENT_PARAMETER, SALIENCY_PARAMETER],
    "requestBody": {
        "required": True,
        "description": "numpy.save of a [leads, samples] numeric array (12 leads in I..V6 order unless lead_names)",
        "content": {NPY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    },
}
