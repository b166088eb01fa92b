"""The HTTP service, end to end: a real ``bentoml serve`` on loopback with the parity checkpoints, real records.

``/clinical`` and ``/features`` must return exactly what ``ecgfm predict`` (its engine, :class:`Predictor`)
returns for the same record; the rest checks the contract in ``serving/contract.py``.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from ecgfm.inference import Predictor
from ecgfm.labels import LABELS
from ecgfm.records.readers import read_record
from tests.conftest import (
    DATA_DIR,
    FINETUNED_CKPT,
    PRETRAINED_CKPT,
    REPO_DIR,
    SERVER_LOG,
    TWELVE_LEAD_RECORDS,
    bentoml_server,
    load_json_record,
)
from tests.launcher import serve_until_it_ends

pytestmark = pytest.mark.server

TOLERANCE = 1e-6  # batching across requests may change float rounding; it has not so far (differences are 0.0)
SIX_ENDPOINTS = ("/clinical", "/features", "/both", "/health", "/info", "/status")
BURST_SIZE = 32


@pytest.fixture(scope="module")
def client(server_url: str) -> httpx.Client:
    with httpx.Client(base_url=server_url, timeout=120) as http:
        yield http


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_paths(str(PRETRAINED_CKPT), str(FINETUNED_CKPT), device="cpu")


def request_body(name: str, **extra: object) -> dict:
    record = load_json_record(name)
    return {"signal": record["signal"], "fs": record["fs"], **extra}


def assert_same(actual: object, expected: object, path: str = "body") -> None:
    """Equal structure and strings; numbers equal within TOLERANCE."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), path
        for key in expected:
            assert_same(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), path
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{path}[{i}]")
    elif isinstance(expected, float) and not isinstance(expected, bool):
        assert actual == pytest.approx(expected, abs=TOLERANCE, rel=0), path
    else:
        assert actual == expected, path


@pytest.mark.parametrize("name", TWELVE_LEAD_RECORDS)
def test_clinical_equals_ecgfm_predict(client: httpx.Client, predictor: Predictor, name: str) -> None:
    expected = predictor.predict(read_record(DATA_DIR / name))["clinical"]
    response = client.post("/clinical", json=request_body(name))
    assert response.status_code == 200
    assert_same(response.json(), expected)


@pytest.mark.parametrize("name", TWELVE_LEAD_RECORDS)
def test_features_equals_ecgfm_predict(client: httpx.Client, predictor: Predictor, name: str) -> None:
    expected = predictor.predict(read_record(DATA_DIR / name))["features"]
    response = client.post("/features", json=request_body(name))
    assert response.status_code == 200
    assert_same(response.json(), expected)


def test_both_with_per_segment_equals_ecgfm_predict_cli(client: httpx.Client) -> None:
    name = "A5215.json"  # 20 s: 4 segments
    cli = subprocess.run(
        [sys.executable, "-m", "ecgfm", "predict", "--per-segment", str(DATA_DIR / name)],
        env={"ECGFM_PRETRAINED_CHECKPOINT": str(PRETRAINED_CKPT), "ECGFM_FINETUNED_CHECKPOINT": str(FINETUNED_CKPT)},
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        check=True,
    )
    expected = json.loads(cli.stdout)
    response = client.post("/both", json=request_body(name, per_segment=True))
    assert response.status_code == 200
    assert_same(response.json(), {"clinical": expected["clinical"], "features": expected["features"]})


def test_per_segment_returns_one_row_per_segment(client: httpx.Client) -> None:
    body = client.post("/both", json=request_body("A1041.json", per_segment=True)).json()  # 17 s: 3 segments
    assert body["clinical"]["n_segments"] == 3
    assert np.asarray(body["clinical"]["segments"]).shape == (3, len(LABELS))
    assert np.asarray(body["features"]["segments"]).shape == (3, body["features"]["dim"])


def test_segments_are_absent_without_per_segment(client: httpx.Client) -> None:
    body = client.post("/both", json=request_body("A1041.json")).json()
    assert "segments" not in body["clinical"] and "segments" not in body["features"]


def test_every_prediction_says_whether_weights_are_demo(client: httpx.Client) -> None:
    body = client.post("/both", json=request_body("JS06908.json")).json()
    assert body["clinical"]["demo"] is False and body["features"]["demo"] is False
    assert body["clinical"]["checkpoint"]["demo"] is False


def test_lead_names_reorder_the_leads(client: httpx.Client) -> None:
    record = load_json_record("JS06908.json")
    ordered = client.post("/clinical", json=request_body("JS06908.json")).json()
    reversed_body = {
        "signal": record["signal"][::-1],
        "fs": record["fs"],
        "lead_names": [name.lower() for name in record["lead_names"][::-1]],
    }
    shuffled = client.post("/clinical", json=reversed_body).json()
    assert_same(shuffled, ordered)


def test_short_record_is_padded_and_equals_ecgfm_predict(client: httpx.Client, predictor: Predictor) -> None:
    record = read_record(DATA_DIR / "E05526.json")
    record.signal = record.signal[:, : int(3.2 * record.fs)]  # 3.2 s: shorter than one 5 s segment
    expected = predictor.predict(record)
    body = {"signal": record.signal.tolist(), "fs": record.fs}
    response = client.post("/both", json=body)
    assert response.status_code == 200
    assert response.json()["clinical"]["padded"] is True
    assert_same(response.json(), {"clinical": expected["clinical"], "features": expected["features"]})


def test_two_lead_record_is_rejected_with_422_naming_the_unknown_lead(client: httpx.Client) -> None:
    record = load_json_record("mitdb_100_first60s.json")
    body = {"signal": record["signal"], "fs": record["fs"], "lead_names": record["lead_names"]}
    response = client.post("/clinical", json=body)
    assert response.status_code == 422
    assert response.json()["error"].startswith(f"unknown lead name {record['lead_names'][0]!r}")


def test_record_longer_than_the_limit_is_rejected_with_422(client: httpx.Client) -> None:
    body = {"signal": [[0.0, 1.0] * 30_100] * 12, "fs": 100}  # 602 s > 600 s
    response = client.post("/features", json=body)
    assert response.status_code == 422
    assert "at most 600 s" in response.json()["error"]


def test_boolean_sample_is_rejected_with_400_and_one_message(client: httpx.Client) -> None:
    body = request_body("JS06908.json")
    body["signal"][3][7] = True
    response = client.post("/clinical", json=body)
    assert response.status_code == 400
    assert [error["msg"] for error in response.json()["detail"]] == [
        "Value error, signal[3][7] is a boolean: every sample must be a number"
    ]


@pytest.mark.parametrize("bad", [{"fs": "500"}, {"fs": None}, {"per_segment": "yes"}, {"lead_names": [1] * 12}])
def test_wrongly_typed_field_is_rejected_with_400(client: httpx.Client, bad: dict) -> None:
    response = client.post("/clinical", json={**request_body("JS06908.json"), **bad})
    assert response.status_code == 400
    assert response.json()["detail"][0]["loc"][0] == next(iter(bad))


def test_unknown_field_is_rejected_with_400(client: httpx.Client) -> None:
    response = client.post("/clinical", json=request_body("JS06908.json", sampling_rate=500))
    assert response.status_code == 400
    assert response.json()["detail"][0]["type"] == "extra_forbidden"


def test_server_log_holds_no_signal_values(client: httpx.Client) -> None:
    sentinel = 987.654321
    body = request_body("JS06908.json")
    body["signal"][0][0] = sentinel
    assert client.post("/clinical", json=body).status_code == 200
    body["signal"][0][1] = "not a number"
    assert client.post("/clinical", json=body).status_code == 400
    assert str(sentinel) not in SERVER_LOG["path"].read_text()


def test_health_is_200_with_both_models_loaded(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["models"]["pretrained"]["loaded"] and response.json()["models"]["finetuned"]["loaded"]
    assert client.get("/readyz").status_code == 200


def test_info_describes_checkpoints_labels_contract_and_batching(client: httpx.Client) -> None:
    info = client.get("/info").json()
    assert info["demo"] is False
    assert Path(info["models"]["finetuned"]["path"]).resolve() == FINETUNED_CKPT.resolve()  # ../shared may be a link
    assert len(info["models"]["pretrained"]["sha256"]) == 64
    assert info["labels"] == list(LABELS)
    assert info["aggregation"]["Poor data quality"] == "max"
    assert info["feature_dim"] == 64
    assert info["input"]["lead_order"][3] == "aVR" and info["input"]["max_duration_s"] == 600
    assert info["batching"]["max_batch_size"] > 1
    assert info["versions"]["bentoml"] == "1.4.40"
    assert info["thresholds"] == {"source": "default", "provenance": None}  # no ECGFM_THRESHOLDS: the interpreter's


def test_responses_name_the_checkpoint_file_but_never_the_servers_path(client: httpx.Client) -> None:
    body = client.post("/both", json=request_body("JS06908.json")).json()
    for kind, expected in (("clinical", FINETUNED_CKPT), ("features", PRETRAINED_CKPT)):
        checkpoint = body[kind]["checkpoint"]
        assert "path" not in checkpoint and checkpoint["filename"] == expected.name and len(checkpoint["sha256"]) == 64
    assert str(FINETUNED_CKPT.parent) not in json.dumps(body) and str(
        FINETUNED_CKPT.resolve().parent
    ) not in json.dumps(body)


def test_info_reports_the_effective_settings(client: httpx.Client) -> None:
    settings = client.get("/info").json()["settings"]
    assert settings["serving"]["api_key_set"] is False and "api_key" not in settings["serving"]
    assert settings["serving"]["max_batch_size"] == client.get("/info").json()["batching"]["max_batch_size"]
    assert settings["runtime"] == {"device": "auto", "precision": "fp32", "pos_conv": "conv", "compile": False,
                                   "weights_cache_dir": None}  # fmt: skip
    assert Path(settings["weights"]["finetuned_checkpoint"]).resolve() == FINETUNED_CKPT.resolve()


def test_status_counts_requests_and_errors(client: httpx.Client) -> None:
    before_status = client.get("/status").json()
    before, before_models = before_status["endpoints"]["/features"], before_status["models"]
    client.post("/features", json=request_body("JS06908.json"))
    client.post("/features", json={"signal": [[1.0] * 10] * 12, "fs": 500})
    after = client.get("/status").json()
    assert after["endpoints"]["/features"]["requests"] == before["requests"] + 2
    assert after["endpoints"]["/features"]["errors"] == before["errors"] + 1
    assert after["endpoints"]["/features"]["latency_ms"]["p50"] > 0
    assert after["models"]["pretrained"]["device"] == "cpu" and after["models"]["pretrained"]["precision"] == "fp32"
    assert after["models"]["pretrained"]["pos_conv"] == "conv" and after["models"]["pretrained"]["compiled"] is False
    assert after["models"]["pretrained"]["busy_s"] > before_models["pretrained"]["busy_s"]  # one model call ran
    assert after["rss_mb"] > 0


@pytest.fixture(scope="module")
def burst(client: httpx.Client, server_url: str) -> dict:
    """BURST_SIZE concurrent /clinical requests of a 10 s record (2 segments each), with /status around them."""
    body = request_body("JS06908.json")

    async def post_all() -> list[int]:
        async with httpx.AsyncClient(base_url=server_url, timeout=120) as http:
            responses = await asyncio.gather(*(http.post("/clinical", json=body) for _ in range(BURST_SIZE)))
        return [response.status_code for response in responses]

    before = client.get("/status").json()["models"]["finetuned"]["batch_sizes"]
    statuses = asyncio.run(post_all())
    after = client.get("/status").json()["models"]["finetuned"]["batch_sizes"]
    return {"statuses": statuses, "before": before, "after": after, "metrics": client.get("/metrics").text}


def test_concurrent_burst_succeeds(burst: dict) -> None:
    assert burst["statuses"] == [200] * BURST_SIZE


def test_status_shows_batches_of_several_requests_after_a_burst(burst: dict) -> None:
    new_calls = {int(size): burst["after"][size] - burst["before"].get(size, 0) for size in burst["after"]}
    assert max(size for size, calls in new_calls.items() if calls > 0) > 2  # > 2 segments: several requests


def test_metrics_show_adaptive_batches_of_several_requests_after_a_burst(burst: dict) -> None:
    pattern = r'bentoml_service_adaptive_batch_size_{}{{{}method_name="classify".*}} (\S+)'
    single = float(re.search(pattern.format("bucket", 'le="1.0",'), burst["metrics"]).group(1))
    total = float(re.search(pattern.format("count", ""), burst["metrics"]).group(1))
    assert total > single  # some batch held more than one request


def test_openapi_describes_the_six_endpoints_with_schemas(client: httpx.Client) -> None:
    spec = client.get("/docs.json").json()
    for path in SIX_ENDPOINTS:
        method = "get" if path in ("/health", "/info", "/status") else "post"
        operation = spec["paths"][path][method]
        assert operation["responses"]["200"]["content"]["application/json"]["schema"], path
    request_schema = spec["paths"]["/clinical"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(request_schema["properties"]) == {"signal", "fs", "lead_names", "per_segment", "saliency"}
    assert request_schema["additionalProperties"] is False


def test_sync_http_client_gets_clinical_probabilities(server_url: str, predictor: Predictor) -> None:
    import bentoml

    expected = predictor.predict(read_record(DATA_DIR / "JS23463.json"))["clinical"]
    with bentoml.SyncHTTPClient(server_url) as ecgfm:
        result = ecgfm.clinical(**request_body("JS23463.json"))
    assert_same(result["probabilities"], expected["probabilities"])


def test_generated_openapi_client_gets_clinical_probabilities(
    client: httpx.Client, server_url: str, predictor: Predictor, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "openapi.json").write_text(client.get("/docs.json").text)
    (tmp_path / "config.yaml").write_text("post_hooks: []\n")
    generator = str(REPO_DIR / ".venv" / "bin" / "openapi-python-client")
    options = ["--path", "openapi.json", "--meta", "none", "--config", "config.yaml", "--output-path", "ecgfm_client"]
    subprocess.run(
        [generator, "generate", *options],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    generated = importlib.import_module("ecgfm_client")
    clinical = importlib.import_module("ecgfm_client.api.service_ap_is.ecgfm_service_clinical")
    models = importlib.import_module("ecgfm_client.models")

    api = generated.Client(base_url=server_url, timeout=httpx.Timeout(120))
    result = clinical.sync(
        client=api, body=models.EcgfmServiceClinicalECGRequestIODescriptor(**request_body("JS01048.json"))
    )
    expected = predictor.predict(read_record(DATA_DIR / "JS01048.json"))["clinical"]
    assert_same(result.probabilities.additional_properties, expected["probabilities"])


def test_non_finite_sample_is_rejected_with_422(client: httpx.Client) -> None:
    body = request_body("JS06908.json")
    body["signal"][4][10] = float("nan")
    text = json.dumps(body)  # Python writes NaN, which is not standard JSON, but some clients send it
    response = client.post("/clinical", content=text.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"].startswith("non-finite values")


def test_demo_weights_are_reported_by_info_and_every_response(tmp_path) -> None:
    env = {"ECGFM_DEMO": "1", "ECGFM_DEMO_SIZE": "small", "ECGFM_DEMO_DIR": str(tmp_path / "demo")}
    with bentoml_server(env, tmp_path / "server.log") as url, httpx.Client(base_url=url, timeout=120) as demo:
        info = demo.get("/info").json()
        body = demo.post("/both", json=request_body("JS06908.json")).json()
    assert info["demo"] is True and info["models"]["finetuned"]["origin"] == "demo"
    assert body["clinical"]["demo"] is True and body["features"]["demo"] is True


def test_health_is_503_and_names_the_model_that_failed_to_load(tmp_path) -> None:
    truncated = tmp_path / "truncated.pt"  # exists (start-up goes on), but its worker cannot load it
    truncated.write_bytes(FINETUNED_CKPT.read_bytes()[:1000])
    env = {"ECGFM_PRETRAINED_CHECKPOINT": str(PRETRAINED_CKPT), "ECGFM_FINETUNED_CHECKPOINT": str(truncated)}
    with bentoml_server(env, tmp_path / "server.log", ready_path="/livez") as url:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the pretrained service may still be loading
            health = httpx.get(f"{url}/health", timeout=30)
            if health.json()["models"]["pretrained"]["loaded"]:
                break
            time.sleep(0.5)
        ready, info = httpx.get(f"{url}/readyz", timeout=30), httpx.get(f"{url}/info", timeout=30)
    assert health.status_code == 503
    assert health.json()["models"]["pretrained"]["loaded"] is True
    assert health.json()["models"]["finetuned"]["loaded"] is False
    assert ready.status_code == 503
    assert info.status_code == 503 and "finetuned model service is not available" in info.json()["error"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ECGFM_PRETRAINED_CHECKPOINT": str(PRETRAINED_CKPT), "ECGFM_FINETUNED_CHECKPOINT": "/nowhere/f.pt"},
         "finetuned checkpoint /nowhere/f.pt does not exist (ECGFM_FINETUNED_CHECKPOINT)"),
        ({"HF_HUB_OFFLINE": "1"}, "Set ECGFM_PRETRAINED_CHECKPOINT to a local .pt file"),
    ],
    ids=["missing-file", "no-hub"],
)  # fmt: skip
def test_start_up_without_weights_ends_at_once_with_one_message(tmp_path, env: dict, message: str) -> None:
    """No worker starts (and restarts forever): ``bentoml serve`` exits 2 with the message once, no traceback."""
    ended = serve_until_it_ends(env | {"HF_HOME": str(tmp_path / "hf")}, tmp_path / "bentoml_home", timeout_s=120)
    output = ended.output
    assert ended.returncode == 2, output
    assert ended.seconds < 60
    assert output.count(message) == 1 and output.count("ecgfm-serve: cannot start:") == 1
    assert "Traceback" not in output and len(output.strip().splitlines()) <= 3, output


def test_the_landing_page_says_what_this_is_and_loads_nothing_from_elsewhere(client: httpx.Client) -> None:
    import ecgfm

    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    assert "ecgfm-serve" in text and f"version {ecgfm.__version__}" in text and "Research use only" in text
    assert "/clinical" in text and 'href="/docs/api.md"' in text and 'href="/docs.json"' in text
    assert "BentoML" not in text and "googletagmanager" not in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # no resource from another host
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "http" not in policy and "'unsafe-inline'" not in policy


def test_the_landing_pages_icon_is_served_so_a_browser_does_not_ask_for_favicon_ico(client: httpx.Client) -> None:
    """Without an icon link a browser asks for /favicon.ico, which the service does not have (a 404 and a console
    error on every visit); the link names the page at /ui's icon, which the landing page's policy allows."""
    page = client.get("/")
    (href,) = re.findall(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">', page.text)
    icon = client.get(href)
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
    assert icon.content == (REPO_DIR / "serving" / "web" / "favicon.svg").read_bytes()
    assert href.startswith("/") and "img-src 'self'" in page.headers["content-security-policy"]


def test_the_openapi_document_describes_this_service(client: httpx.Client) -> None:
    import ecgfm

    info = client.get("/docs.json").json()["info"]
    assert info["title"] == "ecgfm-serve" and info["version"] == ecgfm.__version__
    assert "ECG-FM" in info["description"] and "Research use only" in info["description"]
    assert "BentoML" not in json.dumps(info)


def test_the_docs_linked_from_the_landing_page_are_served(client: httpx.Client) -> None:
    for link in re.findall(r'href="(/docs/[^"]+)"', client.get("/").text):
        response = client.get(link)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/markdown"), link
    assert client.get("/docs/api.md").text == (REPO_DIR / "docs" / "api.md").read_text()
    assert client.get("/docs/../service.py").status_code == 404
    assert client.get("/docs/secret.md").status_code == 404
