"""A result (a scored record, or ``/interpret``'s report) as the client asked for it (``Accept``): the JSON of
:mod:`ecgfm.results.outputs`, a FHIR R4 Bundle
(``application/fhir+json``, :mod:`ecgfm.results.fhir`) or an HL7 v2.5.1 ORU^R01 message (``x-application/hl7-v2+er7``,
:mod:`ecgfm.results.hl7v2`; its PID from the ``X-Patient-ID`` / ``X-Patient-Name`` headers only, its control ID the
request ID). A new exchange format is one more branch here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response

from ecgfm.results.fhir import bundle, bundle_for_result
from ecgfm.results.hl7v2 import PatientIdentity, PatientIdentityError, message_for_result, oru_r01
from ecgfm.results.outputs import BothOutput, FeaturesOutput, RecordOutput
from interpreter.report import reliable_heart_rate
from serving.contract import (
    FHIR_MEDIA_TYPE,
    HL7V2_MEDIA_TYPE,
    JSON_MEDIA_TYPE,
    PATIENT_ID_HEADER,
    PATIENT_NAME_HEADER,
    REQUEST_ID,
    NotAcceptableError,
)


@dataclass(frozen=True)
class Answer:
    """What the client asked for: the media type, and for HL7 v2 the patient identity it sent for PID."""

    media_type: str = JSON_MEDIA_TYPE
    patient: PatientIdentity | None = None

    def response(self, output: RecordOutput | BothOutput) -> Response:
        """The response for a scored record (:class:`NotAcceptableError` for HL7 v2 of an embedding alone)."""
        if self.media_type == FHIR_MEDIA_TYPE:
            return JSONResponse(bundle_for_result(output.to_json()), media_type=FHIR_MEDIA_TYPE)
        if self.media_type == HL7V2_MEDIA_TYPE:
            if isinstance(output, FeaturesOutput):
                raise NotAcceptableError(
                    f"an HL7 v2 message carries label probabilities: ask /clinical or /both for {HL7V2_MEDIA_TYPE}, "
                    "or /features for JSON or FHIR"
                )
            message = message_for_result(output.to_json(), control_id=REQUEST_ID.get(), patient=self.patient)
            return hl7v2_response(message)
        return JSONResponse(output.to_json())

    def interpretation_response(self, report: dict[str, Any]) -> Response:
        """The response for ``POST /interpret``'s report (:func:`interpreter.api.interpret_record`): its JSON, or
        FHIR / HL7 v2 of its 17 probabilities, reliable heart rate and reported findings."""
        if self.media_type == JSON_MEDIA_TYPE:
            return JSONResponse(report)
        content = {
            "probabilities": report["probabilities"],
            "heart_rate_bpm": reliable_heart_rate(report["heart_rate"]),
            "findings": report["findings"],
        }
        if self.media_type == FHIR_MEDIA_TYPE:
            return JSONResponse(bundle(**content), media_type=FHIR_MEDIA_TYPE)
        message = oru_r01(**content, control_id=REQUEST_ID.get(), patient=self.patient)
        return hl7v2_response(message)


def hl7v2_response(message: str) -> Response:
    """An ER7 message as the body of a response."""
    return Response(message.encode("utf-8"), media_type=f"{HL7V2_MEDIA_TYPE}; charset=utf-8")


def _header_text(headers: Headers, name: str) -> str:
    """A header's value as UTF-8 text (HTTP carries bytes; starlette reads them as Latin-1)."""
    try:
        return headers.get(name, "").encode("latin-1").decode("utf-8").strip()
    except UnicodeError:
        raise PatientIdentityError(f"the {name} header must be UTF-8 text") from None


def answer_for(headers: Headers) -> Answer:
    """What a request's headers ask for: HL7 v2 or FHIR when ``Accept`` names it, else JSON. With HL7 v2, the
    patient identity of ``X-Patient-ID`` and ``X-Patient-Name`` (:class:`PatientIdentityError`, 400, when it cannot go
    into PID); the headers are read for nothing else and never logged."""
    accept = headers.get("accept", "").lower()
    if HL7V2_MEDIA_TYPE in accept:
        identifier, name = _header_text(headers, PATIENT_ID_HEADER), _header_text(headers, PATIENT_NAME_HEADER)
        if name and not identifier:
            raise PatientIdentityError(f"{PATIENT_NAME_HEADER} needs {PATIENT_ID_HEADER}: PID-3 identifies the patient")
        return Answer(HL7V2_MEDIA_TYPE, PatientIdentity(identifier, name) if identifier else None)
    if FHIR_MEDIA_TYPE in accept:
        return Answer(FHIR_MEDIA_TYPE)
    return Answer()
