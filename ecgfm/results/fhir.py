"""ECG-FM results as FHIR R4: a Bundle (``collection``, or ``transaction`` to post to a FHIR server) holding one
DiagnosticReport and its Observations. Every code comes from :mod:`ecgfm.terminology`.

* DiagnosticReport: LOINC 11524-6 "EKG study", category EC (v2-0074), status ``preliminary`` (raw research output,
  not reviewed), ``conclusion`` the research-use statement, ``result`` the Observations.
* One Observation per label of ``/clinical``: ``code.coding`` the label's SNOMED CT concept where the terminology table
  has one, ``code.text`` the label name, ``valueQuantity`` its probability (UCUM ``1``), no interpretation or threshold
  (raw outputs).
* ``/features``: one Observation "ECG-FM embedding" whose ``valueSampledData`` holds the D floats.
* ``/probes/<name>``: one Observation per target of the probe, ``code.text`` the target name, ``valueQuantity``
  its probability (UCUM ``1``), the probe named in the note.
* From the interpreter (:func:`bundle` with ``heart_rate_bpm`` / ``findings``): heart rate (LOINC 8867-4, ``/min``)
  and one "EKG impression" Observation (LOINC 8601-7) per reported finding: ``valueCodeableConcept`` the finding's
  SNOMED CT concept (or text only), ``interpretation`` POS for present and IND for possible or discordant, the model's
  probability as a ``component``.

Nothing that identifies a patient is copied: there is no ``subject``. Only the resources' shapes shared by R4 and
R4B are used (the tests validate each with ``fhir.resources``' R4B models).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from ecgfm.terminology import (
    ECG_STUDY_LOINC,
    EKG_IMPRESSION_LOINC,
    FINDING_INTERPRETATION,
    HEART_RATE_LOINC,
    INTERPRETATION_SYSTEM,
    LOINC_SYSTEM,
    SNOMED_SYSTEM,
    Concept,
    finding_terminology,
    label_code,
)

FHIR_MEDIA_TYPE = "application/fhir+json"
BUNDLE_TYPES = ("collection", "transaction")
BundleType = Literal["collection", "transaction"]
LOINC = LOINC_SYSTEM
UCUM = "http://unitsofmeasure.org"
EKG_STUDY = {"system": LOINC, "code": ECG_STUDY_LOINC[0], "display": ECG_STUDY_LOINC[1]}
HEART_RATE = {"system": LOINC, "code": HEART_RATE_LOINC[0], "display": HEART_RATE_LOINC[1]}
EKG_IMPRESSION = {"system": LOINC, "code": EKG_IMPRESSION_LOINC[0], "display": EKG_IMPRESSION_LOINC[1]}
CATEGORY_EC = {
    "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
    "code": "EC",
    "display": "Electrocardiac (e.g., EKG, EEC, Holter)",
}
OBSERVATION_CATEGORY = {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "procedure"}
RESEARCH_USE = "Research use only: ECG-FM is not a diagnostic device; a qualified clinician must review the ECG."


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _observation(code: dict[str, Any], value: dict[str, Any], note: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "preliminary",
        "category": [{"coding": [OBSERVATION_CATEGORY]}],
        "code": code,
        **value,
    }
    if note:
        resource["note"] = [{"text": note}]
    return resource


def snomed_concept(concept: Concept | None, text: str) -> dict[str, Any]:
    """A CodeableConcept: the SNOMED CT coding when there is a concept, and always ``text``."""
    if concept is None:
        return {"text": text}
    return {"coding": [{"system": SNOMED_SYSTEM, "code": concept.code, "display": concept.term}], "text": text}


def _probability(p: float) -> dict[str, Any]:
    return {"value": float(p), "unit": "probability", "system": UCUM, "code": "1"}


def label_observations(probabilities: Mapping[str, float]) -> list[dict[str, Any]]:
    """One Observation per label: its SNOMED CT code (where there is one), its probability as ``valueQuantity`` (no
    threshold applied)."""
    return [
        _observation(
            snomed_concept(label_code(label), label),
            {"valueQuantity": _probability(p)},
            "ECG-FM finetuned model output (sigmoid), aggregated over 5 s segments; raw, not a diagnosis.",
        )
        for label, p in probabilities.items()
    ]


def embedding_observation(features: Sequence[float]) -> dict[str, Any]:
    data = " ".join(f"{float(v):.8g}" for v in features)
    sampled = {"origin": {"value": 0}, "period": 1, "dimensions": 1, "data": data}
    return _observation(
        {"text": f"ECG-FM embedding ({len(features)}-d)"},
        {"valueSampledData": sampled},
        "The pretrained ECG-FM encoder's embedding (mean over frames and segments); period carries no meaning.",
    )


def probe_observations(probe: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One Observation per target of a probe's result (``{"name", "targets", "probabilities"}``), as for labels."""
    note = (
        f"ECG-FM probe '{probe['name']}': a logistic regression on the pretrained encoder's embedding, fit by the "
        "site (ecgfm probe fit); raw, not a diagnosis."
    )
    quantity = {"unit": "probability", "system": UCUM, "code": "1"}
    return [
        _observation({"text": target}, {"valueQuantity": {"value": float(p), **quantity}}, note)
        for target, p in probe["probabilities"].items()
    ]


def heart_rate_observation(bpm: float) -> dict[str, Any]:
    return _observation(
        {"coding": [HEART_RATE], "text": "Heart rate"},
        {"valueQuantity": {"value": round(float(bpm), 1), "unit": "/min", "system": UCUM, "code": "/min"}},
        "Measured from the ECG by the interpreter's R-peak detector.",
    )


def finding_observation(finding: Mapping[str, Any]) -> dict[str, Any]:
    """A reported finding of the interpreter (:class:`interpreter.findings.Finding` as a dict: ``label``, ``source``,
    ``status``, ``probability``, ``group``, ``severity``, ``rules``, ``notes``) as an "EKG impression": its concept
    as the value, its status as the interpretation, the model's probability as a component."""
    row = finding_terminology(str(finding["label"]), str(finding["source"]))
    code, display = FINDING_INTERPRETATION[str(finding["status"])]
    value: dict[str, Any] = {
        "valueCodeableConcept": snomed_concept(row.code, row.text),
        "interpretation": [
            {"coding": [{"system": INTERPRETATION_SYSTEM, "code": code, "display": display}], "text": finding["status"]}
        ],
    }
    if finding.get("probability") is not None:
        value["component"] = [
            {
                "code": {"text": f"ECG-FM probability of {row.label}"},
                "valueQuantity": _probability(finding["probability"]),
            }
        ]
    parts = [f"{key}: {finding[key]}" for key in ("status", "source", "group", "severity") if finding.get(key)]
    parts += [f"rules: {', '.join(finding['rules'])}"] if finding.get("rules") else []
    parts += list(finding.get("notes") or [])
    return _observation({"coding": [EKG_IMPRESSION], "text": f"ECG-FM interpreter finding: {row.text}"}, value,
                        "; ".join(parts))  # fmt: skip


def bundle(
    *,
    probabilities: Mapping[str, float] | None = None,
    features: Sequence[float] | None = None,
    heart_rate_bpm: float | None = None,
    findings: Sequence[Mapping[str, Any]] = (),
    probe: Mapping[str, Any] | None = None,
    demo: bool = False,
    now: datetime | None = None,
    bundle_type: BundleType = "collection",
) -> dict[str, Any]:
    """The Bundle: a DiagnosticReport (EKG study) whose ``result`` references every Observation. A ``transaction``
    Bundle (for a FHIR server's base URL) gives each entry ``request`` ``POST <resource type>``; the server resolves the
    ``urn:uuid:`` references between them."""
    observations: list[dict[str, Any]] = []
    if heart_rate_bpm is not None:
        observations.append(heart_rate_observation(heart_rate_bpm))
    observations += [finding_observation(f) for f in findings]
    if probabilities is not None:
        observations += label_observations(probabilities)
    if features is not None:
        observations.append(embedding_observation(features))
    if probe is not None:
        observations += probe_observations(probe)
    issued = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    urls = [_urn() for _ in observations]
    conclusion = RESEARCH_USE + (" DEMO weights (random): the outputs are meaningless." if demo else "")
    report = {
        "resourceType": "DiagnosticReport",
        "status": "preliminary",
        "category": [{"coding": [CATEGORY_EC]}],
        "code": {"coding": [EKG_STUDY], "text": "EKG study"},
        "issued": issued,
        "result": [{"reference": url} for url in urls],
        "conclusion": conclusion,
    }
    if bundle_type not in BUNDLE_TYPES:
        raise ValueError(f"bundle_type must be one of {BUNDLE_TYPES}, not {bundle_type!r}")
    entries = [{"fullUrl": _urn(), "resource": report}]
    entries += [{"fullUrl": url, "resource": obs} for url, obs in zip(urls, observations, strict=True)]
    if bundle_type == "transaction":
        for entry in entries:
            entry["request"] = {"method": "POST", "url": entry["resource"]["resourceType"]}
    return {"resourceType": "Bundle", "type": bundle_type, "timestamp": issued, "entry": entries}


def bundle_for_result(result: Mapping[str, Any], bundle_type: BundleType = "collection") -> dict[str, Any]:
    """A Bundle for one JSON result: ``/clinical`` (probabilities), ``/features`` (features), ``/both``, an
    ``ecgfm predict`` line (``clinical`` and/or ``features``), or a probe's (``/probes/<name>``, ``probe``)."""
    clinical = result.get("clinical") if isinstance(result.get("clinical"), Mapping) else None
    features = result.get("features") if isinstance(result.get("features"), Mapping) else None
    if clinical is None and "probabilities" in result:
        clinical = result
    if features is None and isinstance(result.get("features"), list):
        features = result
    probe = result.get("probe") if isinstance(result.get("probe"), Mapping) else None
    demo = any(bool(part.get("demo")) for part in (clinical, features) if part is not None)
    return bundle(
        probabilities=clinical["probabilities"] if clinical else None,
        features=features["features"] if features else None,
        probe=probe,
        demo=demo or (probe is not None and bool(result.get("demo"))),
        bundle_type=bundle_type,
    )
