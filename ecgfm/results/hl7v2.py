"""ECG-FM results as an HL7 v2.5.1 ORU^R01 message (ER7 encoding), built and validated with hl7apy.

Segments (docs/integration.md has an example and every field):

* MSH: sending application ``ecgfm-serve``, message type ``ORU^R01^ORU_R01``, version 2.5.1, UTF-8, message control
  ID the request's ``X-Request-ID`` (a new UUID outside a request).
* PID, only when the caller sends a patient identity for it (:class:`PatientIdentity`; HTTP headers
  ``X-Patient-ID`` and ``X-Patient-Name``): nothing that identifies a patient is ever read from the input file.
* OBR: the ECG study, LOINC 11524-6, filler order number the control ID, result status ``P`` (preliminary), then an
  NTE with the research-use statement (and a DEMO warning with demo weights).
* One OBX per label: NM, the probability, units ``1`` (UCUM); OBX-3 the label's SNOMED CT concept (``SCT``) where
  :mod:`ecgfm.terminology` has one, else a local code of this service (``99ECGFM``) with the label as its text.
* From the interpreter: heart rate (NM, LOINC 8867-4, ``/min``) and one OBX per reported finding: CWE, OBX-3 LOINC
  8601-7 "EKG impression" with a sub-ID per finding, OBX-5 the finding's SNOMED CT concept (or its text only),
  OBX-8 POS (present) or IND (possible, discordant), OBX-9 the model's probability.
* Every OBX has result status ``P``: preliminary, raw research output that no clinician has reviewed.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Group, Message, Segment
from hl7apy.exceptions import HL7apyException

from ecgfm.terminology import (
    ECG_STUDY_LOINC,
    EKG_IMPRESSION_LOINC,
    FINDING_INTERPRETATION,
    HEART_RATE_LOINC,
    Concept,
    finding_terminology,
    label_code,
)

HL7V2_MEDIA_TYPE = "x-application/hl7-v2+er7"
VERSION = "2.5.1"
SENDING_APPLICATION = "ecgfm-serve"
SNOMED_CODING = "SCT"  # HL7 table 0396: SNOMED CT
LOINC_CODING = "LN"
UCUM_CODING = "UCUM"
LOCAL_CODING = "99ECGFM"  # a local coding system (HL7: 99zzz): ECG-FM's own label names
RESULT_STATUS = "P"  # preliminary (HL7 tables 0085 and 0123)
RESEARCH_USE = (
    "Research use only: ECG-FM is not a diagnostic device; raw model output, not reviewed; a qualified clinician must "
    "review the ECG."
)
SEGMENT_SEPARATOR = "\r"
# A patient identity's value: printable, no field or repetition separator nor escape (^ and & separate its components
# and subcomponents, as in ER7).
_PATIENT_VALUE = re.compile(r"[^|~\\\x00-\x1f\x7f]{1,250}")
_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))


class PatientIdentityError(ValueError):
    """A patient identity that cannot go into PID as sent; the message names the header, never the value."""


@dataclass(frozen=True)
class PatientIdentity:
    """What the caller sends for PID, as ER7 components: ``identifier`` PID-3 (CX, e.g. ``12345^^^HOSP^MR``),
    ``name`` PID-5 (XPN, e.g. ``DOE^JANE``; empty: PID-5 left empty). Never read from the input file."""

    identifier: str
    name: str = ""

    def __post_init__(self) -> None:
        for header, field, value in (
            ("X-Patient-ID", "pid_3", self.identifier),
            ("X-Patient-Name", "pid_5", self.name),
        ):
            if field == "pid_5" and not value:
                continue
            if not _PATIENT_VALUE.fullmatch(value):
                raise PatientIdentityError(
                    f"{header} must be 1 to 250 printable characters without | ~ \\ (^ separates components, & "
                    "subcomponents)"
                )
            try:  # hl7apy checks each component's type and length
                setattr(Segment("PID", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT), field, value)
            except (ValueError, HL7apyException) as exc:  # the message quotes the value: never passed on
                raise PatientIdentityError(
                    f"{header} is not a valid PID-{field[4:]} in HL7 v{VERSION} ({'CX' if field == 'pid_3' else 'XPN'} "
                    f"components; {type(exc).__name__})"
                ) from None


def escape(text: str) -> str:
    """Free text with HL7's escape sequences for its separators (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\)."""
    for char, sequence in _ESCAPES:
        text = text.replace(char, sequence)
    return text


def _coded(code: str, text: str, system: str) -> str:
    return f"{escape(code)}^{escape(text)}^{system}"


def _hl7_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def label_identifier(label: str) -> str:
    """OBX-3 of a label: its SNOMED CT concept, else a local code (``99ECGFM``) whose text is the label."""
    concept = label_code(label)
    local = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    if concept is None:
        return _coded(local, label, LOCAL_CODING)
    return f"{_coded(concept.code, concept.term, SNOMED_CODING)}^{escape(local)}^{escape(label)}^{LOCAL_CODING}"


def finding_value(concept: Concept | None, text: str) -> str:
    """OBX-5 of a finding (CWE): the SNOMED CT concept and the finding's text as original text (CWE-9), or the text
    only (CWE-2)."""
    if concept is None:
        return f"^{escape(text)}"
    return f"{_coded(concept.code, concept.term, SNOMED_CODING)}^^^^^^{escape(text)}"


def _observation(order: Group, set_id: int, value_type: str, identifier: str, value: str, **fields: str) -> None:
    obx = order.add_group("ORU_R01_OBSERVATION").obx
    obx.obx_1 = str(set_id)
    obx.obx_2 = value_type
    obx.obx_3 = identifier
    obx.obx_5 = value
    for name, field_value in fields.items():
        setattr(obx, name, field_value)
    obx.obx_11 = RESULT_STATUS


NM_DECIMALS = 14  # an NM value holds 16 characters: "0." and 14 decimals (float32 outputs resolve ~6e-8)


def _number(value: float) -> str:
    """An NM value: the shortest decimal with at most :data:`NM_DECIMALS` decimals that rounds to ``value``, never
    with an exponent (NM has none)."""
    return np.format_float_positional(float(value), precision=NM_DECIMALS, unique=True, fractional=True, trim="-")


def oru_r01(
    *,
    probabilities: Mapping[str, float] | None = None,
    heart_rate_bpm: float | None = None,
    findings: Sequence[Mapping[str, Any]] = (),
    demo: bool = False,
    control_id: str | None = None,
    patient: PatientIdentity | None = None,
    now: datetime | None = None,
) -> str:
    """The ORU^R01 message (ER7, segments ended by ``\\r``) of one ECG's results: the labels' ``probabilities``, the
    interpreter's ``heart_rate_bpm`` and reported ``findings`` (:class:`interpreter.findings.Finding` as dicts);
    validated against hl7apy's v2.5.1 structures (``hl7apy.exceptions.ValidationError`` if not)."""
    moment = _hl7_time(now or datetime.now(UTC))
    control_id = control_id or uuid.uuid4().hex
    message = Message("ORU_R01", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    message.msh.msh_3 = SENDING_APPLICATION
    message.msh.msh_7 = moment
    message.msh.msh_9 = "ORU^R01^ORU_R01"
    message.msh.msh_10 = escape(control_id)
    message.msh.msh_11 = "P"
    message.msh.msh_12 = VERSION
    message.msh.msh_18 = "UNICODE UTF-8"
    result = message.add_group("ORU_R01_PATIENT_RESULT")
    if patient is not None:
        pid = result.add_group("ORU_R01_PATIENT").pid
        pid.pid_1 = "1"
        pid.pid_3 = patient.identifier
        pid.add_field("PID_5").value = patient.name
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    order.obr.obr_1 = "1"
    order.obr.obr_3 = f"{escape(control_id)}^{SENDING_APPLICATION}"
    order.obr.obr_4 = _coded(*ECG_STUDY_LOINC, LOINC_CODING)
    order.obr.obr_7 = moment
    order.obr.obr_22 = moment
    order.obr.obr_25 = RESULT_STATUS
    note = order.add_segment("NTE")
    note.nte_1 = "1"
    note.nte_3 = escape(RESEARCH_USE + (" DEMO weights (random): the outputs are meaningless." if demo else ""))
    set_id = 0
    for label, p in (probabilities or {}).items():
        set_id += 1
        _observation(order, set_id, "NM", label_identifier(label), _number(p), obx_6=f"1^^{UCUM_CODING}")
    if heart_rate_bpm is not None:
        set_id += 1
        rate = _number(round(float(heart_rate_bpm), 1))
        _observation(order, set_id, "NM", _coded(*HEART_RATE_LOINC, LOINC_CODING), rate, obx_6=f"/min^^{UCUM_CODING}")
    for sub_id, finding in enumerate(findings, 1):
        set_id += 1
        row = finding_terminology(str(finding["label"]), str(finding["source"]))
        extra = {"obx_4": str(sub_id), "obx_8": FINDING_INTERPRETATION[str(finding["status"])][0]}
        if finding.get("probability") is not None:
            extra["obx_9"] = _number(finding["probability"])
        impression = _coded(*EKG_IMPRESSION_LOINC, LOINC_CODING)
        _observation(order, set_id, "CWE", impression, finding_value(row.code, row.text), **extra)
    message.validate()  # raises on a structure that is not v2.5.1's (table warnings aside: SCT, UCUM, CWE are newer)
    return message.to_er7() + SEGMENT_SEPARATOR


def message_for_result(
    result: Mapping[str, Any], control_id: str | None = None, patient: PatientIdentity | None = None
) -> str:
    """The message for one JSON result with labels: ``/clinical``, ``/both`` or an ``ecgfm predict`` line (its
    ``clinical`` part; an embedding has no place in it). ``ValueError`` for a result without probabilities."""
    clinical = result.get("clinical") if isinstance(result.get("clinical"), Mapping) else result
    if "probabilities" not in clinical:
        raise ValueError("an HL7 v2 message carries label probabilities: this result has none (only an embedding)")
    return oru_r01(
        probabilities=clinical["probabilities"],
        demo=bool(clinical.get("demo")),
        control_id=control_id,
        patient=patient,
    )
