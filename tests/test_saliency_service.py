"""``"saliency": true`` on the real server: the same object ``ecgfm predict --saliency`` prints, equal to
fairseq-signals' reduction (``shared/parity/saliency_reference.npz``), documented in ``/docs.json``."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest

from tests.conftest import PARITY_DIR

pytestmark = pytest.mark.server

SALIENCY_TOL = {"atol": 1e-6, "rtol": 1e-5}


@pytest.fixture(scope="module")
def client(server_url: str) -> httpx.Client:
    with httpx.Client(base_url=server_url, timeout=120) as http:
        yield http


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(PARITY_DIR / "saliency_reference.npz") as npz:
        return {key: npz[key] for key in ("x", "ft_attn_max_BT", "pt_saliency_BLTT")}


def _record(reference: dict) -> np.ndarray:
    """Two copies of the reference's standardised pseudo-ECG (preprocessing leaves it as it is): 10 s, 2 segments."""
    return np.concatenate([reference["x"][2], reference["x"][2]], axis=1).astype(np.float64)


def _assert_fairseq(saliency: dict, expected: np.ndarray) -> None:
    assert saliency["segment_start_s"] == [0.0, 5.0] and saliency["step_s"] == pytest.approx(0.032)
    np.testing.assert_allclose(np.array(saliency["values"]), np.stack([expected, expected]), **SALIENCY_TOL)


def test_clinical_with_saliency_equals_fairseq_per_segment(client, reference):
    body = {"signal": _record(reference).tolist(), "fs": 500, "saliency": True}
    answer = client.post("/clinical", json=body)
    assert answer.status_code == 200, answer.text
    _assert_fairseq(answer.json()["saliency"], reference["ft_attn_max_BT"][2])
    plain = client.post("/clinical", json={**body, "saliency": False}).json()
    assert "saliency" not in plain
    np.testing.assert_allclose(  # the explicit softmax moves the probabilities by ~1e-7 at most, as in fairseq
        list(answer.json()["probabilities"].values()), list(plain["probabilities"].values()), atol=1e-6
    )


def test_both_npy_with_the_query_parameter_gives_each_model_its_saliency(client, reference):
    buffer = io.BytesIO()
    np.save(buffer, _record(reference))
    headers = {"Content-Type": "application/octet-stream"}
    answer = client.post("/both/npy?fs=500&saliency=true", content=buffer.getvalue(), headers=headers)
    assert answer.status_code == 200, answer.text
    _assert_fairseq(answer.json()["clinical"]["saliency"], reference["ft_attn_max_BT"][2])
    _assert_fairseq(answer.json()["features"]["saliency"], reference["pt_saliency_BLTT"][2, -1].max(axis=1))
    wrong = client.post("/features/npy?fs=500&saliency=maybe", content=buffer.getvalue(), headers=headers)
    assert wrong.status_code == 400 and "saliency" in wrong.json()["error"]


def test_a_short_record_keeps_the_padded_steps_after_its_end(client, reference):
    signal = reference["x"][2][:, :2000].astype(np.float64).tolist()  # 4 s: padded to one 5 s segment
    answer = client.post("/features", json={"signal": signal, "fs": 500, "saliency": True}).json()
    assert answer["padded"] and answer["duration_s"] == 4.0
    assert len(answer["saliency"]["values"]) == 1 and len(answer["saliency"]["values"][0]) == 156


def test_docs_json_documents_the_request_flag_and_the_response_object(client):
    spec = client.get("/docs.json").json()
    for path in ("/clinical", "/features", "/both"):
        request = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert request["properties"]["saliency"]["type"] == "boolean"
        assert "saliency" in {p["name"] for p in spec["paths"][f"{path}/npy"]["post"]["parameters"]}
        assert "saliency" in {p["name"] for p in spec["paths"][f"{path}/file"]["post"]["parameters"]}
    schemas = spec["components"]["schemas"]
    assert set(schemas["Saliency"]["properties"]) == {"values", "step_s", "segment_start_s"}
    assert "attention, not causation" in schemas["Saliency"]["description"]
