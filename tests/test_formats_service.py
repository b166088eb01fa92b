"""POST /<route>/file on the real server: hospital files as the raw body or multipart, bad files as 4xx."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from ecgfm.cli import main
from tests.conftest import DATA_DIR, FINETUNED_CKPT, PRETRAINED_CKPT, SERVER_LOG

FORMATS_DIR = DATA_DIR / "formats"
DICOM = FORMATS_DIR / "dicom" / "pydicom_waveform_ecg.dcm"
PHILIPS = FORMATS_DIR / "philips_sierra" / "sierra_129DYPRG.XML"
MUSE = FORMATS_DIR / "ge_muse" / "ecg2dcm_guangxi_teaching_sinus_rhythm.xml"


def post(url: str, body: bytes, content_type: str, accept: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": content_type, **({"Accept": accept} if accept else {})}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def multipart(data: bytes, field: str = "file") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="ecg.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("cli") / "out.jsonl"
    files = [str(DICOM), str(PHILIPS), str(MUSE)]
    assert main(["predict", *files, "-o", str(out), "--pretrained", str(PRETRAINED_CKPT), "--finetuned",
                 str(FINETUNED_CKPT)]) == 0  # fmt: skip
    return {row["record"]: row for row in map(json.loads, out.read_text().splitlines())}


@pytest.mark.parametrize(
    ("path", "content_type"),
    [(DICOM, "application/dicom"), (PHILIPS, "application/octet-stream"), (MUSE, "application/xml")],
    ids=lambda v: getattr(v, "name", v),
)
def test_file_upload_answers_as_the_cli_does(server_url: str, cli_results, path: Path, content_type: str) -> None:
    status, body = post(f"{server_url}/clinical/file", path.read_bytes(), content_type)
    assert status == 200, body
    cli = cli_results[path.stem]
    assert body["conversion"] == cli["conversion"]
    for label, p in cli["clinical"]["probabilities"].items():
        assert body["probabilities"][label] == pytest.approx(p, abs=1e-5)
    assert body["n_segments"] == cli["clinical"]["n_segments"]


def test_multipart_upload_and_both(server_url: str, cli_results) -> None:
    body, content_type = multipart(MUSE.read_bytes())
    status, answer = post(f"{server_url}/both/file", body, content_type)
    assert status == 200, answer
    assert answer["features"]["conversion"]["derived_leads"] == ["III", "aVR", "aVL", "aVF"]
    cli = cli_results[MUSE.stem]["features"]["features"]
    assert answer["features"]["features"] == pytest.approx(cli, abs=1e-4)


def test_multipart_without_the_file_field_is_400(server_url: str) -> None:
    body, content_type = multipart(MUSE.read_bytes(), field="upload")
    status, answer = post(f"{server_url}/features/file", body, content_type)
    assert status == 400 and "'file'" in answer["error"]


def test_a_json_content_type_is_415(server_url: str) -> None:
    status, answer = post(f"{server_url}/clinical/file", MUSE.read_bytes(), "application/json")
    assert status == 415 and "application/dicom" in answer["error"]


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        ("truncated DICOM", DICOM.read_bytes()[:5000], "DICOM"),
        ("not an ECG", b"<?xml version='1.0'?><invoice/>", "not an ECG"),
        ("entity bomb", b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><r>&b;</r>',
         "entities"),
        ("random bytes", bytes(range(256)) * 4, "not a supported ECG file"),
        ("empty", b"", "empty"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 20 else "",
)  # fmt: skip
def test_bad_files_are_4xx_naming_the_problem(server_url: str, name: str, body: bytes, message: str) -> None:
    status, answer = post(f"{server_url}/clinical/file", body, "application/octet-stream")
    assert 400 <= status < 500, (name, status, answer)
    assert message in answer["error"]


def test_corrupt_base64_is_422_and_nothing_of_the_file_is_logged(server_url: str) -> None:
    text = MUSE.read_text(encoding="utf-8").replace("<PatientID>00000000<", "<PatientID>SECRETPATIENT42<")
    start = text.index("<WaveFormData>", text.index("<WaveformType>Rhythm")) + 30
    status, answer = post(f"{server_url}/clinical/file", (text[:start] + "*%*" + text[start:]).encode(), "text/xml")
    assert status == 422 and "base64" in answer["error"]
    status, _ = post(f"{server_url}/clinical/file", text.encode(), "text/xml")
    assert status == 200
    assert "SECRETPATIENT42" not in Path(SERVER_LOG["path"]).read_text(errors="replace")


def test_file_routes_are_in_the_openapi_document_with_multipart(server_url: str) -> None:
    with urllib.request.urlopen(f"{server_url}/docs.json", timeout=30) as response:
        spec = json.loads(response.read())
    for route in ("/clinical/file", "/features/file", "/both/file"):
        content = spec["paths"][route]["post"]["requestBody"]["content"]
        assert "multipart/form-data" in content and "application/dicom" in content
        assert content["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary"
        assert "422" in spec["paths"][route]["post"]["responses"]
