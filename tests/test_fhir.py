"""FHIR R4 output (ecgfm.results.fhir): every resource validated with the fhir.resources models; SNOMED CT codes as
the PhysioNet/CinC 2021 challenge's files give them; the interpreter's findings on its real output."""

from __future__ import annotations

import json

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

from ecgfm.labels import LABELS
from ecgfm.results.fhir import bundle_for_result
from tests.conftest import DATA_DIR, FINETUNED_CKPT, PRETRAINED_CKPT
from tests.test_terminology import challenge_code_of

SNOMED = "http://snomed.info/sct"
INTERPRETATIONS = {"present": "POS", "possible": "IND", "discordant": "IND"}


def validate(body: dict) -> tuple[DiagnosticReport, list[Observation]]:
    Bundle.model_validate(body)
    resources = [entry["resource"] for entry in body["entry"]]
    report = DiagnosticReport.model_validate(resources[0])
    observations = [Observation.model_validate(r) for r in resources[1:]]
    refs = [r.reference for r in report.result]
    assert refs == [entry["fullUrl"] for entry in body["entry"][1:]]
    return report, observations


def assert_label_observations(observations: list[Observation], probabilities: dict[str, float]) -> None:
    """One Observation per label, in order: its probability exactly, its SNOMED CT code as the challenge gives it
    (text only where the label has none)."""
    assert [o.code.text for o in observations] == list(probabilities)
    assert [float(o.valueQuantity.value) for o in observations] == list(probabilities.values())
    for observation in observations:
        expected = challenge_code_of(observation.code.text)
        codings = [(c.system, c.code, c.display) for c in observation.code.coding or []]
        assert codings == ([(SNOMED, *expected)] if expected else []), observation.code.text


def test_a_clinical_result_is_a_report_with_one_observation_per_label() -> None:
    probabilities = {label: i / 20 for i, label in enumerate(LABELS)}
    report, observations = validate(bundle_for_result({"probabilities": probabilities, "demo": False}))
    assert report.code.coding[0].system == "http://loinc.org" and report.code.coding[0].code == "11524-6"
    assert "Research use only" in report.conclusion
    assert_label_observations(observations, probabilities)
    assert report.subject is None  # nothing identifies a patient


def test_a_transaction_bundle_posts_every_resource() -> None:
    probabilities = {label: 0.5 for label in LABELS}
    body = bundle_for_result({"probabilities": probabilities}, bundle_type="transaction")
    _, observations = validate(body)
    assert body["type"] == "transaction" and len(observations) == len(LABELS)
    assert [(e["request"]["method"], e["request"]["url"]) for e in body["entry"]] == [("POST", "DiagnosticReport")] + [
        ("POST", "Observation")
    ] * len(LABELS)
    assert all(entry["fullUrl"].startswith("urn:uuid:") for entry in body["entry"])  # resolved by the server
    assert "request" not in bundle_for_result({"probabilities": probabilities})["entry"][0]  # collection by default


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
    assert body["type"] == "collection"


def test_cli_predict_fhir_bundle_transaction(capsys) -> None:
    from ecgfm.cli import main

    args = ["predict", str(DATA_DIR / "A0689.json"), "--format", "fhir", "--fhir-bundle", "transaction", "--only",
            "clinical", "--finetuned", str(FINETUNED_CKPT)]  # fmt: skip
    assert main(args) == 0
    body = json.loads(capsys.readouterr().out)
    _, observations = validate(body)
    assert body["type"] == "transaction" and all(e["request"]["method"] == "POST" for e in body["entry"])
    assert len(observations) == len(LABELS)
    with pytest.raises(SystemExit):  # a setting that would do nothing is refused
        main(["predict", str(DATA_DIR / "A0689.json"), "--fhir-bundle", "transaction"])


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


REAL_RECORDS = ("JS01048", "JS06908", "E05526", "A0689")  # 50, 127, 49 and 80 bpm: rate findings and model ones


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, dict]]:
    """``python -m interpreter report`` on real records with the parity checkpoint: per record, its JSON report (the
    interpreter's real output) and the FHIR Bundle of the same run's ``--format fhir``."""
    from interpreter.cli import main

    out = tmp_path_factory.mktemp("interpreted")
    records = [str(DATA_DIR / f"{name}.json") for name in REAL_RECORDS]
    for kind in ("reports", "fhir"):
        args = ["report", *records, "--finetuned", str(FINETUNED_CKPT), "--out", str(out), "--format", kind, "--quiet"]
        assert main(args) == 0
    return {
        name: (json.loads((out / f"{name}.json").read_text()), json.loads((out / f"{name}.fhir.json").read_text()))
        for name in REAL_RECORDS
    }


def test_the_interpreter_bundle_carries_its_real_heart_rate_findings_and_probabilities(interpreted: dict) -> None:
    """The values of every Observation are the interpreter's own on real records: heart rate in /min, each reported
    finding as an EKG impression (its SNOMED CT concept as the challenge gives it, POS/IND from its status, the model's
    probability unscaled), the 17 probabilities."""
    kinds = set()
    for name, (report, body) in interpreted.items():
        diagnostic, observations = validate(body)
        assert "Research use only" in diagnostic.conclusion
        rate, *rest = observations
        assert rate.code.coding[0].code == "8867-4" and rate.valueQuantity.code == "/min"
        assert float(rate.valueQuantity.value) == round(report["heart_rate"]["heart_rate_bpm"], 1)
        findings, labels = rest[: len(rest) - len(LABELS)], rest[-len(LABELS) :]
        assert len(findings) == len(report["findings"]) > 0, name
        for observation, finding in zip(findings, report["findings"], strict=True):
            kinds.add((finding["source"], finding["status"]))
            assert [(c.system, c.code) for c in observation.code.coding] == [("http://loinc.org", "8601-7")]
            value = observation.valueCodeableConcept
            expected = challenge_code_of(finding["label"])
            if finding["source"] == "heart_rate":  # the rate alone: bradycardia is the challenge's Brady, else text
                expected = challenge_code_of("Bradycardia") if finding["label"] == "Bradycardia" else None
                assert value.text == f"{finding['label']} (measured heart rate)"
            else:
                assert value.text == finding["label"]
            assert [(c.system, c.code, c.display) for c in value.coding or []] == ([(SNOMED, *expected)] if expected
                                                                                   else [])  # fmt: skip
            assert [c.code for c in observation.interpretation[0].coding] == [INTERPRETATIONS[finding["status"]]]
            assert float(observation.component[0].valueQuantity.value) == finding["probability"]
            assert observation.component[0].valueQuantity.code == "1"
        assert_label_observations(labels, report["probabilities"])
    # the records cover both kinds of source and both interpretations
    assert {("heart_rate", "present"), ("model", "possible")} <= kinds, kinds
