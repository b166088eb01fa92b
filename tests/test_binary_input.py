"""The binary variants ``POST /{clinical,features,both}/npy``: a NumPy .npy body answers exactly like the JSON body."""

from __future__ import annotations

import io
import pickle

import httpx
import numpy as np
import pytest

from tests.conftest import load_json_record

pytestmark = pytest.mark.server
NPY = {"content-type": "application/octet-stream"}


@pytest.fixture(scope="module")
def client(server_url: str):
    with httpx.Client(base_url=server_url, timeout=120) as http:
        yield http


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("endpoint", ["/clinical", "/features", "/both"])
def test_an_npy_body_gives_the_same_answer_as_the_json_body(client, endpoint):
    record = load_json_record("A1041.json")
    json_answer = client.post(endpoint, json={"signal": record["signal"], "fs": record["fs"], "per_segment": True})
    binary = client.post(
        f"{endpoint}/npy",
        params={"fs": record["fs"], "per_segment": "true"},
        content=npy_bytes(np.asarray(record["signal"])),
        headers=NPY,
    )
    assert binary.status_code == json_answer.status_code == 200
    assert binary.json() == json_answer.json()


def test_float32_npy_with_lead_names_in_another_order(client):
    record = load_json_record("ptbdb_s0010_re_first10s.json")  # 1000 Hz: resampled like the JSON path
    signal = np.asarray(record["signal"], dtype=np.float32)
    order = [11, 0, 5, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    names = ",".join(record["lead_names"][i] for i in order)
    binary = client.post(
        "/clinical/npy", params={"fs": 1000, "lead_names": names}, content=npy_bytes(signal[order]), headers=NPY
    )
    reference = client.post("/clinical", json={"signal": signal.astype(float).tolist(), "fs": 1000})
    assert binary.status_code == 200
    expected = reference.json()["probabilities"]
    assert binary.json()["probabilities"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("params", "body", "message"),
    [
        ({}, npy_bytes(np.zeros((12, 5000))), "fs (sampling rate in Hz) is required"),
        ({"fs": "fast"}, npy_bytes(np.zeros((12, 5000))), "fs must be a number"),
        ({"fs": 500, "per_segment": "maybe"}, npy_bytes(np.zeros((12, 5000))), "per_segment must be true or false"),
        ({"fs": 500}, b"{'signal': []}", "not a NumPy .npy array"),
        ({"fs": 500}, npy_bytes(np.array([["a"] * 5000] * 12)), "must hold numbers"),
        ({"fs": 500}, pickle.dumps(np.zeros((12, 5000))), "not a NumPy .npy array"),
    ],
    ids=["no-fs", "fs-text", "per-segment", "not-npy", "strings", "pickle"],
)
def test_an_unreadable_binary_request_is_a_400_saying_why(client, params, body, message):
    response = client.post("/clinical/npy", params=params, content=body, headers=NPY)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_an_npy_that_is_not_a_usable_ecg_is_a_422_like_json(client):
    signal = np.asarray(load_json_record("JS36330.json")["signal"])
    signal[6, 10] = np.nan
    response = client.post("/features/npy", params={"fs": 500}, content=npy_bytes(signal), headers=NPY)
    assert response.status_code == 422
    assert "lead V1" in response.json()["error"]


def test_an_object_array_is_refused_without_unpickling(client):
    body = npy_bytes(np.array([[object()] * 10] * 12, dtype=object))  # written with allow_pickle=True
    response = client.post("/clinical/npy", params={"fs": 500}, content=body, headers=NPY)
    assert response.status_code == 400


def test_the_binary_endpoints_need_the_octet_stream_content_type(client):
    response = client.post("/clinical/npy", params={"fs": 500}, json={"signal": [[0.0]], "fs": 500})
    assert response.status_code == 415
    assert "application/octet-stream" in response.json()["error"]


def test_the_binary_endpoints_are_in_the_openapi_document_and_in_status(client):
    spec = client.get("/docs.json").json()
    for endpoint in ("/clinical/npy", "/features/npy", "/both/npy"):
        operation = spec["paths"][endpoint]["post"]
        assert "application/octet-stream" in operation["requestBody"]["content"]
        assert {"200", "400", "413", "415", "422"} <= set(operation["responses"])
    client.post("/clinical/npy", params={"fs": 500}, content=b"x", headers=NPY)
    assert client.get("/status").json()["endpoints"]["/clinical/npy"]["requests"] >= 1
