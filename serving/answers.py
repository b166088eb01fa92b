"""A result as the client asked for it (``Accept``): the JSON of :mod:`ecgfm.results.outputs`, or a FHIR R4 Bundle
(``application/fhir+json``, :mod:`ecgfm.results.fhir`). A new exchange format is one more branch here."""

from __future__ import annotations

from starlette.responses import JSONResponse, Response

from ecgfm.results.fhir import FHIR_MEDIA_TYPE, bundle_for_result
from ecgfm.results.outputs import BothOutput, RecordOutput


def result_response(output: RecordOutput | BothOutput, accept: str | None) -> Response:
    """The response for a scored record: FHIR when ``accept`` names it, else the result's JSON."""
    if FHIR_MEDIA_TYPE in (accept or "").lower():
        return JSONResponse(bundle_for_result(output.to_json()), media_type=FHIR_MEDIA_TYPE)
    return JSONResponse(output.to_json())
