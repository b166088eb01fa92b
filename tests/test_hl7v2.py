"""HL7 v2.5.1 ORU^R01 output (ecgfm.results.hl7v2), read back with an independent reader (the ``hl7`` package): the
module on the interpreter's real output, ``ecgfm predict --format hl7v2``, and the real server on loopback with every
Accept on /clinical, /both/npy, /clinical/file (hospital files whose patient fields must not travel) and /interpret."""

from __future__ import annotations

import io
import json
from pathlib import Path

import hl7
import httpx
import numpy as np
import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle

from ecgfm.labels import LABELS
from ecgfm.results.hl7v2 import PatientIdentity, PatientIdentityError, escape, oru_r01
from tests.conftest import DATA_DIR, FINETUNED_CKPT, SERVER_LOG
from tests.test_terminology import challenge_code_of

HL7V2 = "x-application/hl7-v2+er7"
FORMATS = DATA_DIR / "formats"
NM_ROUNDING = 5e-15  # an NM value has 14 decimals (ecgfm.results.hl7v2.NM_DECIMALS)
INTERPRETATIONS = {"present": "POS", "possible": "IND", "discordant": "IND"}


def component(segment: hl7.Segment, field: int, number: int = 1) -> str:
    """One component of a field, as the ``hl7`` package reads it ('' when absent)."""
    value = segment[field]
    if not isinstance(value, hl7.Field) or not value or not isinstance(value[0], hl7.Repetition):
        return str(value) if number == 1 else ""
    components = value[0]
    return str(components[number - 1]) if number <= len(components) else ""


def parse(text: str) -> hl7.Message:
    """The message as the ``hl7`` package reads it, checked to be an ORU^R01 of v2.5.1 from ecgfm-serve."""
    message = hl7.parse(text)
    msh = message.segment("MSH")
    assert [component(msh, 9, i) for i in (1, 2, 3)] == ["ORU", "R01", "ORU_R01"]
    assert str(msh[12]) == "2.5.1" and str(msh[3]) == "ecgfm-serve"
    obr = message.segment("OBR")
    assert (component(obr, 4, 1), component(obr, 4, 3), str(obr[25])) == ("11524-6", "LN", "P")
    assert "Research use only" in message.unescape(str(message.segment("NTE")[3]))
    assert all(str(obx[11]) == "P" for obx in message.segments("OBX"))  # preliminary
    return message


def label_observations(message: hl7.Message) -> dict[str, float]:
    """label -> probability of the label OBX segments, each OBX-3 checked against the challenge's files."""
    found = {}
    for obx in message.segments("OBX"):
        if str(obx[2]) != "NM" or component(obx, 3, 3) == "LN":
            continue
        coded = component(obx, 3, 3) == "SCT"
        label = message.unescape(component(obx, 3, 5 if coded else 2))
        expected = challenge_code_of(label)
        assert ((component(obx, 3, 1), component(obx, 3, 2)) if coded else None) == expected, label
        assert (component(obx, 6, 1), component(obx, 6, 3)) == ("1", "UCUM")
        found[label] = float(str(obx[5]))
    assert list(found) == list(LABELS)
    return found


def assert_same_probabilities(message: hl7.Message, probabilities: dict[str, float]) -> None:
    for label, value in label_observations(message).items():
        assert abs(value - probabilities[label]) <= NM_ROUNDING, label


def test_free_text_is_escaped_as_the_hl7_reader_unescapes_it() -> None:
    text = "a|b^c&d~e\\f"
    message = hl7.parse("MSH|^~\\&|ecgfm-serve\rNTE|1||" + escape(text))
    assert len(message.segment("NTE")) == 4  # one field: no separator left unescaped
    assert message.unescape(str(message.segment("NTE")[3])) == text


def test_pid_carries_only_the_identity_the_caller_gives() -> None:
    message = parse(oru_r01(probabilities=dict.fromkeys(LABELS, 0.5)))
    with pytest.raises(KeyError):
        message.segment("PID")
    identity = PatientIdentity("12345^^^HOSP&1.2.3&ISO^MR", "Zoë^Jürgen")
    pid = parse(oru_r01(probabilities=dict.fromkeys(LABELS, 0.5), patient=identity)).segment("PID")
    assert (component(pid, 3, 1), component(pid, 3, 5)) == ("12345", "MR")
    assert (component(pid, 5, 1), component(pid, 5, 2)) == ("Zoë", "Jürgen")


@pytest.mark.parametrize(
    ("identifier", "name"),
    [("", ""), ("a|b", ""), ("1~2", ""), ("1\\2", ""), ("1\n2", ""), ("x" * 251, ""), ("1^2^3^4^5^6^7^8^9^10^11", ""),
     ("12345", "A^B^C^D^E^F^G^H^I^J^K^L^M^N^O^P"), ("12345", "DOE|JANE")],
)  # fmt: skip
def test_a_patient_identity_that_cannot_go_into_pid_is_refused(identifier: str, name: str) -> None:
    with pytest.raises(PatientIdentityError) as error:
        PatientIdentity(identifier, name)
    assert identifier[:3] not in str(error.value) or not identifier  # the message never quotes the value


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, hl7.Message]]:
    """``python -m interpreter report`` on real records with the parity checkpoint: the JSON report (the interpreter's
    real output) and the message of the same run's ``--format hl7v2``."""
    from interpreter.cli import main

    out = tmp_path_factory.mktemp("interpreted")
    names = ("JS01048", "JS06908", "E05526")  # 50, 127 and 49 bpm
    records = [str(DATA_DIR / f"{name}.json") for name in names]
    for kind in ("reports", "hl7v2"):
        args = ["report", *records, "--finetuned", str(FINETUNED_CKPT), "--out", str(out), "--format", kind, "--quiet"]
        assert main(args) == 0
    return {
        name: (
            json.loads((out / f"{name}.json").read_text()),
            parse((out / f"{name}.hl7").read_bytes().decode("utf-8")),
        )
        for name in names
    }


def test_the_interpreter_message_carries_its_real_heart_rate_findings_and_probabilities(interpreted: dict) -> None:
    statuses = set()
    for report, message in interpreted.values():
        assert_same_probabilities(message, report["probabilities"])
        rates = [obx for obx in message.segments("OBX") if component(obx, 3, 1) == "8867-4"]
        assert len(rates) == 1 and str(rates[0][2]) == "NM"
        assert (component(rates[0], 6, 1), component(rates[0], 6, 3)) == ("/min", "UCUM")
        assert float(str(rates[0][5])) == round(report["heart_rate"]["heart_rate_bpm"], 1)
        impressions = [obx for obx in message.segments("OBX") if component(obx, 3, 1) == "8601-7"]
        assert len(impressions) == len(report["findings"]) > 0
        for sub_id, (obx, finding) in enumerate(zip(impressions, report["findings"], strict=True), 1):
            statuses.add((finding["source"], finding["status"]))
            assert str(obx[2]) == "CWE" and str(obx[4]) == str(sub_id)
            by_rate = finding["source"] == "heart_rate"
            expected = challenge_code_of(finding["label"])
            if by_rate:
                expected = challenge_code_of("Bradycardia") if finding["label"] == "Bradycardia" else None
            if expected:
                assert (component(obx, 5, 1), component(obx, 5, 2), component(obx, 5, 3)) == (*expected, "SCT")
            text = component(obx, 5, 9 if expected else 2)
            assert text == finding["label"] + (" (measured heart rate)" if by_rate else "")
            assert str(obx[8]) == INTERPRETATIONS[finding["status"]]
            assert abs(float(str(obx[9])) - finding["probability"]) <= NM_ROUNDING
    assert {("heart_rate", "present"), ("model", "possible")} <= statuses, statuses


def test_cli_predict_format_hl7v2(capsys) -> None:
    from ecgfm.cli import main

    paths = [DATA_DIR / "A0689.json", FORMATS / "dicom" / "ecgtoolkit_Example.dcm"]
    assert main(["predict", *map(str, paths), "--format", "hl7v2", "--finetuned", str(FINETUNED_CKPT)]) == 0
    messages = [text for text in capsys.readouterr().out.split("\n") if text]
    assert len(messages) == 2
    control_ids = set()
    for text in messages:
        message = parse(text)
        label_observations(message)
        control_ids.add(str(message.segment("MSH")[10]))
        with pytest.raises(KeyError):
            message.segment("PID")
    assert len(control_ids) == 2
    with pytest.raises(SystemExit):  # an embedding has no place in the message
        main(["predict", str(paths[0]), "--format", "hl7v2", "--only", "features"])


# ---- the real server ---------------------------------------------------------------------------------------------

MARKERS = ("ZZPATIENTNAME", "ZZGIVENNAME", "ZZID-99173", "19070203")


def dicom_with_markers(path: Path) -> bytes:
    """A real DICOM ECG with its patient fields set to markers that must never come back."""
    dataset = pydicom.dcmread(path)
    dataset.PatientName, dataset.PatientID, dataset.PatientBirthDate = (
        "ZZPATIENTNAME^ZZGIVENNAME",
        "ZZID-99173",
        "19070203",
    )
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


def patient_values(path: Path) -> tuple[str, ...]:
    """The patient fields the real file carries (each checked to be in it)."""
    if path.suffix == ".dcm":
        dataset = pydicom.dcmread(path)
        values = (str(dataset.PatientName), str(dataset.PatientID), str(dataset.PatientBirthDate))
    else:
        values = {
            "hl7_Example_aECG.xml": ("Clark", "SBJ-123", "19530508"),
            "ecgtoolkit_Example.scp": ("Clark", "SBJ-123"),
            "sierra_3191723_ZZDEMOPTONLY_1-04_orig.xml": ("ZZDEMOPTONLY", "1950-01-01"),
            "ecg2dcm_guangxi_teaching_sinus_rhythm.xml": ("Anonymous", "01-01-1900"),
        }[path.name]
        data = path.read_bytes()
        text = data.decode("utf-16") if data[:2] in (b"\xff\xfe", b"\xfe\xff") else data.decode("latin-1")
        assert all(value in text for value in values), path
    return values


FILES = [
    FORMATS / "dicom" / "ecgtoolkit_Example.dcm",
    FORMATS / "dicom" / "pydicom_waveform_ecg.dcm",
    FORMATS / "hl7_aecg" / "hl7_Example_aECG.xml",
    FORMATS / "scp_ecg" / "ecgtoolkit_Example.scp",
    FORMATS / "philips_sierra" / "sierra_3191723_ZZDEMOPTONLY_1-04_orig.xml",
    FORMATS / "ge_muse" / "ecg2dcm_guangxi_teaching_sinus_rhythm.xml",
]


def post(url: str, body: bytes, content_type: str, accept: str, **headers: str) -> httpx.Response:
    headers = {"Content-Type": content_type, "Accept": accept, **headers}
    return httpx.post(url, content=body, headers=headers, timeout=120)


@pytest.mark.server
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_clinical_file_with_every_accept(server_url: str, path: Path) -> None:
    """JSON, FHIR and HL7 v2 of one hospital file: the same probabilities, SNOMED CT codes as the challenge gives
    them, the control ID the X-Request-ID, and none of the file's patient fields in either message."""
    body = path.read_bytes()
    url = f"{server_url}/clinical/file"
    answer = post(url, body, "application/octet-stream", "application/json")
    assert answer.status_code == 200
    probabilities = answer.json()["probabilities"]
    fhir = post(url, body, "application/octet-stream", "application/fhir+json")
    assert fhir.status_code == 200 and fhir.headers["content-type"].startswith("application/fhir+json")
    Bundle.model_validate(fhir.json())
    fhir_values = {e["resource"]["code"]["text"]: e["resource"] for e in fhir.json()["entry"][1:]}
    for label, p in probabilities.items():
        assert fhir_values[label]["valueQuantity"]["value"] == p
        expected = challenge_code_of(label)
        codings = [(c["code"], c["display"]) for c in fhir_values[label]["code"].get("coding", [])]
        assert codings == ([expected] if expected else [])
    request_id = f"ecg-{path.stem[:12]}".replace("_", "-")
    hl7v2 = post(url, body, "application/octet-stream", HL7V2, **{"X-Request-ID": request_id})
    assert hl7v2.status_code == 200 and hl7v2.headers["content-type"].startswith(HL7V2)
    message = parse(hl7v2.content.decode("utf-8"))
    assert str(message.segment("MSH")[10]) == request_id == hl7v2.headers["x-request-id"]
    assert_same_probabilities(message, probabilities)
    with pytest.raises(KeyError):
        message.segment("PID")
    for value in patient_values(path):
        assert value not in hl7v2.text and value not in fhir.text, value


@pytest.mark.server
def test_patient_markers_of_a_file_never_travel_and_pid_is_the_callers(server_url: str) -> None:
    body = dicom_with_markers(FILES[0])
    url = f"{server_url}/clinical/file"
    fhir = post(url, body, "application/dicom", "application/fhir+json")
    plain = post(url, body, "application/dicom", HL7V2)
    caller = {"X-Patient-ID": "QQ-4471^^^QQHOSP^MR", "X-Patient-Name": "QQFAMILY^QQGIVEN"}
    given = post(url, body, "application/dicom", HL7V2, **caller)
    assert fhir.status_code == plain.status_code == given.status_code == 200
    for marker in MARKERS:
        assert marker not in fhir.text and marker not in plain.text and marker not in given.text
    pid = parse(given.text).segment("PID")
    assert (component(pid, 3, 1), component(pid, 3, 4), component(pid, 3, 5)) == ("QQ-4471", "QQHOSP", "MR")
    assert (component(pid, 5, 1), component(pid, 5, 2)) == ("QQFAMILY", "QQGIVEN")
    log = Path(SERVER_LOG["path"]).read_text(errors="replace")
    for value in (*MARKERS, "QQ-4471", "QQFAMILY", "QQGIVEN"):
        assert value not in log


@pytest.mark.server
def test_json_and_npy_bodies_answer_hl7v2_and_fhir(server_url: str) -> None:
    data = json.loads((DATA_DIR / "A0689.json").read_text())
    fields = {"signal": data["signal"], "fs": data["fs"]}
    answer = httpx.post(f"{server_url}/clinical", json=fields, timeout=120)
    assert answer.status_code == 200
    probabilities = answer.json()["probabilities"]
    as_json = httpx.post(f"{server_url}/clinical", json=fields, headers={"Accept": HL7V2}, timeout=120)
    assert as_json.status_code == 200 and as_json.headers["content-type"].startswith(HL7V2)
    message = parse(as_json.text)
    assert str(message.segment("MSH")[10]) == as_json.headers["x-request-id"]  # generated when not sent
    assert_same_probabilities(message, probabilities)
    fhir = httpx.post(f"{server_url}/clinical", json=fields, headers={"Accept": "application/fhir+json"}, timeout=120)
    Bundle.model_validate(fhir.json())
    for entry in fhir.json()["entry"][1:]:
        label, expected = entry["resource"]["code"]["text"], challenge_code_of(entry["resource"]["code"]["text"])
        assert entry["resource"]["valueQuantity"]["value"] == probabilities[label]
        codings = [(c["system"], c["code"], c["display"]) for c in entry["resource"]["code"].get("coding", [])]
        assert codings == ([("http://snomed.info/sct", *expected)] if expected else []), label
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(data["signal"], dtype=np.float64))
    npy = post(f"{server_url}/both/npy?fs={data['fs']}", buffer.getvalue(), "application/octet-stream", HL7V2)
    assert npy.status_code == 200
    assert_same_probabilities(parse(npy.text), probabilities)  # /both: the labels (an embedding has no place)


@pytest.mark.server
def test_interpret_answers_its_report_as_fhir_and_hl7v2(server_url: str) -> None:
    """POST /interpret (the interpreter ran on the server): the same heart rate, findings and probabilities in the JSON
    report, the FHIR Bundle and the HL7 v2 message."""
    data = json.loads((DATA_DIR / "JS06908.json").read_text())  # 127 bpm
    fields = {"signal": data["signal"], "fs": data["fs"]}
    probabilities = httpx.post(f"{server_url}/clinical", json=fields, timeout=120).json()["probabilities"]
    body = {**fields, "probabilities": probabilities, "record": "JS06908"}
    report = httpx.post(f"{server_url}/interpret", json=body, timeout=120).json()
    bpm = round(report["heart_rate"]["heart_rate_bpm"], 1)
    assert report["findings"] and bpm > 100
    fhir = httpx.post(f"{server_url}/interpret", json=body, headers={"Accept": "application/fhir+json"}, timeout=120)
    assert fhir.status_code == 200
    Bundle.model_validate(fhir.json())
    observations = [entry["resource"] for entry in fhir.json()["entry"][1:]]
    assert observations[0]["code"]["coding"][0]["code"] == "8867-4" and observations[0]["valueQuantity"]["value"] == bpm
    impressions = [o for o in observations if o["code"].get("coding", [{}])[0].get("code") == "8601-7"]
    assert [o["component"][0]["valueQuantity"]["value"] for o in impressions] == [
        f["probability"] for f in report["findings"]
    ]
    hl7v2 = httpx.post(f"{server_url}/interpret", json=body, headers={"Accept": HL7V2}, timeout=120)
    assert hl7v2.status_code == 200 and hl7v2.headers["content-type"].startswith(HL7V2)
    message = parse(hl7v2.text)
    assert str(message.segment("MSH")[10]) == hl7v2.headers["x-request-id"]
    assert_same_probabilities(message, probabilities)
    rate = [obx for obx in message.segments("OBX") if component(obx, 3, 1) == "8867-4"]
    assert [(float(str(obx[5])), component(obx, 6, 1)) for obx in rate] == [(bpm, "/min")]
    findings = [obx for obx in message.segments("OBX") if component(obx, 3, 1) == "8601-7"]
    assert [str(obx[8]) for obx in findings] == [INTERPRETATIONS[f["status"]] for f in report["findings"]]


@pytest.mark.server
def test_refusals_are_clear_4xx(server_url: str) -> None:
    data = json.loads((DATA_DIR / "A0689.json").read_text())
    fields = {"signal": data["signal"], "fs": data["fs"]}
    features = httpx.post(f"{server_url}/features", json=fields, headers={"Accept": HL7V2}, timeout=120)
    assert features.status_code == 406 and "label probabilities" in features.json()["error"]
    bad = httpx.post(
        f"{server_url}/clinical", json=fields, headers={"Accept": HL7V2, "X-Patient-ID": "QQ|7"}, timeout=120
    )
    assert bad.status_code == 400 and "X-Patient-ID" in bad.json()["error"] and "QQ|7" not in bad.text
    name_only = httpx.post(f"{server_url}/clinical", json=fields, headers={"Accept": HL7V2, "X-Patient-Name": "A^B"},
                           timeout=120)  # fmt: skip
    assert name_only.status_code == 400 and "X-Patient-ID" in name_only.json()["error"]
    ignored = httpx.post(f"{server_url}/clinical", json=fields, headers={"X-Patient-ID": "QQ|7"}, timeout=120)
    assert ignored.status_code == 200 and "QQ" not in ignored.text  # JSON: the headers are not read


@pytest.mark.server
def test_the_openapi_document_lists_the_answer_media_types(server_url: str) -> None:
    spec = httpx.get(f"{server_url}/docs.json", timeout=30).json()
    for route in ("/clinical", "/clinical/npy", "/clinical/file", "/both", "/interpret"):
        content = spec["paths"][route]["post"]["responses"]["200"]["content"]
        assert {"application/json", "application/fhir+json", HL7V2} <= set(content), route
    assert "406" in spec["paths"]["/features"]["post"]["responses"]
