"""FHIR R4 output (ecgfm.results.fhir): every resource validated with the fhir.resources models."""

from __future__ import annotations

import json

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

from ecgfm.labels import LABELS
from ecgfm.results.fhir import bundle, bundle_for_result
from tests.conftest import DATA_DIR, FINETUNED_CKPT, PRETRAINED_CKPT


def validate(body: dict) -> tuple[DiagnosticReport, list[Observation]]:
    Bundle.model_validate(body)
    resources = [entry["resource"] for entry in body["entry"]]
    report = DiagnosticReport.model_validate(resources[0])
    observations = [Observation.model_validate(r) for r in resources[1:]]
    refs = [r.reference for r in report.result]
    assert refs == [entry["fullUrl"] for entry in body["entry"][1:]]
    return report, observations


def test_a_clinical_result_is_a_report_with_one_observation_per_label() -> None:
    probabilities = {label: i / 20 for i, label in enumerate(LABELS)}
    report, observations = validate(bundle_for_result({"probabilities": probabilities, "demo": False}))
    assert report.code.coding[0].system == "http://loinc.org" and report.code.coding[0].code == "11524-6"
    assert "Research use only" in report.conclusion
    assert [o.code.text for o in observations] == list(LABELS)
    assert [float(o.valueQuantity.value) for o in observations] == list(probabilities.values())
    assert report.subject is None  # nothing identifies a patient


def test_heart_rate_and_findings_from_the_interpreter() -> None:
    findings = [{"statement": "Atrial fibrillation", "group": "rhythm", "severity": "major", "probability": 0.9}]
    _, observations = validate(bundle(heart_rate_bpm=72.04, findings=findings))
    rate = observations[0]
    assert rate.code.coding[0].code == "8867-4" and rate.valueQuantity.code == "/min"
    assert float(rate.valueQuantity.value) == 72.0
    assert observations[1].code.text == "Atrial fibrillation"


def test_demo_weights_are_said_in_the_conclusion() -> None:
    report, _ = validate(bundle_for_result({"probabilities": {"Poor data quality": 0.1}, "demo": True}))
    assert "DEMO" in report.conclusion


def test_cli_predict_format_fhir_on_a_hospital_file(tmp_path, capsys) -> None:
    from ecgfm.cli import main

    path = DATA_DIR / "formats" / "dicom" / "ecgtoolkit_Example.dcm"
    args = ["predict", str(path), "--format", "fhir", "--pretrained", str(PRETRAINED_CKPT), "--finetuned",
            str(FINETUNED_CKPT)]  # fmt: skip
    assert main(args) == 0
    body = json.loads(capsys.readouterr().out)
    _, observations = validate(body)
    assert len(observations) == len(LABELS) + 1  # the labels and the embedding
    assert observations[-1].valueSampledData.dimensions == 1


@pytest.mark.parametrize("route", ["/clinical", "/clinical/file", "/both/file", "/features/npy"])
def test_accept_fhir_json_on_the_server(server_url: str, route: str) -> None:
    import io
    import urllib.request

    import numpy as np

    content_type = "application/octet-stream"
    if route == "/clinical":
        data = json.loads((DATA_DIR / "A0689.json").read_text())
        body, url = json.dumps({"signal": data["signal"], "fs": data["fs"]}).encode(), server_url + route
        content_type = "application/json"
    elif route.endswith("/npy"):
        data = json.loads((DATA_DIR / "A0689.json").read_text())
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(data["signal"], dtype=np.float32))
        body, url = buffer.getvalue(), f"{server_url}{route}?fs={data['fs']}"
    else:
        body, url = (DATA_DIR / "formats" / "hl7_aecg" / "hl7_Example_aECG.xml").read_bytes(), server_url + route
    headers = {"Content-Type": content_type, "Accept": "application/fhir+json"}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.headers["Content-Type"].startswith("application/fhir+json")
        answer = json.loads(response.read())
    _, observations = validate(answer)
    expected = {"/clinical": len(LABELS), "/clinical/file": len(LABELS), "/both/file": len(LABELS) + 1}
    assert len(observations) == expected.get(route, 1)


def test_the_interpreter_writes_a_fhir_bundle_with_heart_rate_findings_and_probabilities(tmp_path) -> None:
    """``python -m interpreter report --format fhir``: heart rate measured from the record, the reported findings
    with the interpreter's words, and the 17 probabilities, every resource valid."""
    from interpreter.cli import main

    results = tmp_path / "results.jsonl"
    probabilities = dict.fromkeys(LABELS, 0.02) | {"Sinus rhythm": 0.9, "Bradycardia": 0.8}
    results.write_text(json.dumps({"record": "JS01048", "clinical": {"probabilities": probabilities}}) + "\n")
    record = str(DATA_DIR / "JS01048.json")
    assert main(["report", record, "--results", str(results), "--out", str(tmp_path / "out"), "--format", "fhir",
                 "--quiet"]) == 0  # fmt: skip
    assert not (tmp_path / "out" / "JS01048.html").exists()
    report, observations = validate(json.loads((tmp_path / "out" / "JS01048.fhir.json").read_text()))
    rate, *rest = observations
    assert rate.code.coding[0].code == "8867-4" and float(rate.valueQuantity.value) == pytest.approx(49.7, abs=0.1)
    findings = [o.code.text for o in rest[: len(rest) - len(LABELS)]]
    assert "Sinus rhythm: present" in findings and "Bradycardia: present" in findings
    assert [o.code.text for o in rest[-len(LABELS) :]] == list(LABELS)
    assert "Research use only" in report.conclusion
