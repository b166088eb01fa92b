"""Hardening, end to end on loopback: bad input, fuzzing, overload, API key, log hygiene, model faults.

The bad-input matrix and the fuzzing run against the session server (``server_url``); overload, the API key and
log hygiene share one extra server with a key and small limits (``guarded``); model faults start their own.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from serving.contract import PUBLIC_PATHS
from tests.conftest import FINETUNED_CKPT, PRETRAINED_CKPT, REPO_DIR, bentoml_server, load_json_record

pytestmark = pytest.mark.server

API_KEY = "test-key-7f3a"
GUARDED_MAX_BODY_BYTES = 2_000_000
GUARDED_MAX_CONCURRENCY = 2
BURST = 60
SENTINEL = 123.456789  # every sample of the log-hygiene record is +-SENTINEL
SECRET_LEAD = "LEADX_SECRET"


@pytest.fixture(scope="module")
def client(server_url: str) -> httpx.Client:
    with httpx.Client(base_url=server_url, timeout=120) as http:
        yield http


def body_with(**changes: object) -> dict:
    record = load_json_record("JS06908.json")  # 10 s at 500 Hz, the standard lead order
    return {"signal": record["signal"], "fs": record["fs"], **changes}


def twelve_leads(n_samples: int) -> list[list[float]]:
    return [[float(i % 7) for i in range(n_samples)] for _ in range(12)]


# Well-formed JSON that is not a usable ECG: 422, and the message says what is wrong.
UNUSABLE = {
    "eleven leads": ({"signal": twelve_leads(5000)[:11], "fs": 500}, "expected 12 leads"),
    "ragged leads": ({"signal": [*twelve_leads(5000)[:11], [0.0] * 4000], "fs": 500}, "ragged leads"),
    "empty signal": ({"signal": [], "fs": 500}, "the signal is empty"),
    "leads without samples": ({"signal": [[]] * 12, "fs": 500}, "the signal is empty"),
    "fs zero": ({"signal": twelve_leads(5000), "fs": 0}, "fs must be between 100 and 5000 Hz"),
    "fs negative": ({"signal": twelve_leads(5000), "fs": -500}, "fs must be between 100 and 5000 Hz"),
    "fs absurd": ({"signal": twelve_leads(5000), "fs": 1e9}, "fs must be between 100 and 5000 Hz"),
    "unknown lead name": (
        {"signal": twelve_leads(5000), "fs": 500, "lead_names": ["I", "II", "III", "aVR", "aVL", "aVF"] + ["V7"] * 6},
        "unknown lead name 'V7'",
    ),
    "duplicate lead name": (
        {"signal": twelve_leads(5000), "fs": 500, "lead_names": ["I"] * 12},
        "lead I appears more than once",
    ),
    "lead names count": ({"signal": twelve_leads(5000), "fs": 500, "lead_names": ["I", "II"]}, "2 lead names"),
    "too short": ({"signal": twelve_leads(900), "fs": 500}, "at least 2 s is needed"),
    "too long": ({"signal": twelve_leads(60_100), "fs": 100}, "at most 600 s is accepted"),
}


@pytest.mark.parametrize("case", UNUSABLE, ids=list(UNUSABLE))
def test_unusable_ecg_is_a_422_saying_what_is_wrong(client: httpx.Client, case: str) -> None:
    body, message = UNUSABLE[case]
    response = client.post("/clinical", json=body)
    assert response.status_code == 422
    assert message in response.json()["error"]


# Not JSON, or JSON of the wrong shape: 400 with pydantic's errors, naming where.
MALFORMED = {
    "string sample": ('"signal": [["1.0"]]', "signal"),
    "null sample": ('"signal": [[null]]', "signal"),
    "boolean sample": ('"signal": [[true]]', "signal"),
    "fs missing": (None, "fs"),
    "fs a string": ('"fs": "500"', "fs"),
    "unknown field": ('"sampling_rate": 500', "sampling_rate"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_wrongly_shaped_json_is_a_400_naming_the_field(client: httpx.Client, case: str) -> None:
    fragment, field = MALFORMED[case]
    body = body_with()
    if fragment is None:
        del body[field]
        text = json.dumps(body)
    else:
        text = json.dumps(body)[:-1] + ", " + fragment + "}"  # a later duplicate key wins in JSON parsers
    response = client.post("/clinical", content=text, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert field in {str(part) for error in response.json()["detail"] for part in error["loc"]}


def test_malformed_json_is_a_400(client: httpx.Client) -> None:
    response = client.post("/features", content=b'{"signal": [[1, 2,', headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["detail"][0]["type"] == "json_invalid"


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_json_nan_and_infinity_are_a_422_naming_the_lead(client: httpx.Client, token: str) -> None:
    body = body_with()
    body["signal"][6][10] = 424242.5  # a placeholder in lead V1, replaced by the bare token below
    text = json.dumps(body).replace("424242.5", token)
    response = client.post("/both", content=text, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"] == "non-finite values (NaN or infinity) in lead V1"


def test_wrong_content_type_is_a_415(client: httpx.Client) -> None:
    response = client.post("/clinical", content=json.dumps(body_with()), headers={"content-type": "text/plain"})
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]


def test_rejections_do_not_echo_signal_values(client: httpx.Client) -> None:
    signal = [[SENTINEL, -SENTINEL] * 50] * 11 + [["x", SENTINEL]]
    texts = [
        client.post("/clinical", json={"signal": signal, "fs": 500}).text,  # 400: a string sample
        client.post("/clinical", json={"signal": [[SENTINEL] * 5000] * 11, "fs": 500}).text,  # 422: 11 leads
        client.post("/clinical", json={"signal": [[SENTINEL] * 5000] * 12, "fs": SENTINEL * 1e6}).text,  # 422: fs
    ]
    assert not any(str(SENTINEL) in text or "123.45" in text for text in texts[:2])
    assert "fs must be between" in texts[2]  # fs is a setting, not patient data: echoing it helps


def test_openapi_documents_the_error_statuses_of_the_posts(client: httpx.Client) -> None:
    spec = client.get("/docs.json").json()
    for path in ("/clinical", "/features", "/both"):
        assert {"400", "401", "413", "415", "422", "429", "503"} <= set(spec["paths"][path]["post"]["responses"])


def test_fuzzing_finds_no_server_error_and_no_undocumented_response(server_url: str, tmp_path: Path) -> None:
    """schemathesis against /docs.json: every operation, bounded examples, deterministic."""
    checks = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
    command = [str(REPO_DIR / ".venv" / "bin" / "st"), "run", f"{server_url}/docs.json", "--checks", checks]
    command += ["--max-examples", "30", "--generation-deterministic", "--request-timeout", "60", "--no-color"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)  # its cache: tmp
    assert result.returncode == 0, result.stdout[-6000:]
    spec = httpx.get(f"{server_url}/docs.json", timeout=30).json()
    operations = sum(len(methods) for methods in spec["paths"].values())
    assert operations >= 18  # the POSTs (JSON, .npy, file), /decode, /interpret, the GETs and BentoML's probes
    assert f"{operations} selected / {operations} total" in result.stdout  # every operation was fuzzed


# --- one server with an API key and small limits ---------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A server with ECGFM_API_KEY, 2 POSTs in flight, a 2 MB body limit and BentoML's debug logging."""
    log_path = tmp_path_factory.mktemp("guarded") / "server.log"
    env = {
        "ECGFM_PRETRAINED_CHECKPOINT": str(PRETRAINED_CKPT),
        "ECGFM_FINETUNED_CHECKPOINT": str(FINETUNED_CKPT),
        "ECGFM_API_KEY": API_KEY,
        "ECGFM_MAX_CONCURRENCY": str(GUARDED_MAX_CONCURRENCY),
        "ECGFM_MAX_BODY_BYTES": str(GUARDED_MAX_BODY_BYTES),
        "ECGFM_MAX_LATENCY_MS": "2000",
    }
    with bentoml_server(env, log_path, extra_args=("--verbose",)) as url:
        yield {"url": url, "log": log_path, "auth": {"authorization": f"Bearer {API_KEY}"}}


def mounted_routes(routes: list) -> list:
    """The routes of a FastAPI app, those of included routers too (FastAPI wraps them in ``original_router``)."""
    found = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        found += mounted_routes(inner.routes) if inner is not None else [route] if hasattr(route, "methods") else []
    return found


def registered_routes(url: str, auth: dict[str, str]) -> set[tuple[str, str]]:
    """Every (method, path) the running service registers: its OpenAPI document (BentoML's routes, the probes,
    /metrics and every API), the mounted FastAPI app's routes (its /npy POSTs and GETs, its own /docs, /redoc,
    /openapi.json) and the two pages BentoML serves outside the document (the API explorer at / and /docs.json)."""
    from service import app

    spec = httpx.get(url + "/docs.json", headers=auth, timeout=30).json()
    routes = {(method.upper(), path) for path, operations in spec["paths"].items() for method in operations}
    routes |= {(method, route.path) for route in mounted_routes(app.routes) for method in route.methods or ()}
    return {(method, path) for method, path in routes if method in ("GET", "POST")} | {
        ("GET", "/"),
        ("GET", "/docs.json"),
    }


def test_every_registered_route_but_the_probes_needs_the_api_key(guarded: dict) -> None:
    routes = registered_routes(guarded["url"], guarded["auth"])
    assert {("POST", "/clinical/npy"), ("GET", "/docs/{page}"), ("GET", "/metrics")} <= routes  # the table is read
    protected = sorted(route for route in routes if route[1] not in PUBLIC_PATHS)
    statuses = {}
    for method, path in protected:
        response = httpx.request(method, guarded["url"] + path, json=body_with() if method == "POST" else None)
        statuses[(method, path)] = (response.status_code, response.headers.get("www-authenticate"))
    assert statuses == dict.fromkeys(protected, (401, "Bearer"))


def test_the_public_probes_answer_without_the_api_key(guarded: dict) -> None:
    routes = registered_routes(guarded["url"], guarded["auth"])
    probes = sorted(path for method, path in routes if path in PUBLIC_PATHS)
    assert probes == sorted(PUBLIC_PATHS)  # each public path is a route the service really has
    assert {path: httpx.get(guarded["url"] + path, timeout=30).status_code for path in probes} == dict.fromkeys(
        probes, 200
    )


def test_a_wrong_api_key_is_401(guarded: dict) -> None:
    response = httpx.get(guarded["url"] + "/info", headers={"authorization": f"Bearer {API_KEY}x"})
    assert response.status_code == 401
    response = httpx.get(guarded["url"] + "/info", headers={"authorization": API_KEY})  # no "Bearer "
    assert response.status_code == 401


def test_info_reports_that_a_key_is_set_but_never_the_key(guarded: dict) -> None:
    response = httpx.get(guarded["url"] + "/info", headers=guarded["auth"], timeout=30)
    assert response.json()["settings"]["serving"]["api_key_set"] is True
    assert response.json()["settings"]["serving"]["max_concurrency"] == GUARDED_MAX_CONCURRENCY
    assert API_KEY not in response.text


def test_with_the_api_key_every_endpoint_answers(guarded: dict) -> None:
    with httpx.Client(base_url=guarded["url"], headers=guarded["auth"], timeout=120) as http:
        assert http.post("/both", json=body_with()).status_code == 200
        assert [http.get(path).status_code for path in ("/info", "/status", "/metrics", "/docs.json")] == [200] * 4


def test_body_over_the_limit_is_a_413_by_content_length(guarded: dict) -> None:
    padded = b'{"fs": 500, "signal": [[1]]' + b" " * GUARDED_MAX_BODY_BYTES + b"}"
    headers = {**guarded["auth"], "content-type": "application/json"}
    response = httpx.post(guarded["url"] + "/clinical", content=padded, headers=headers, timeout=30)
    assert response.status_code == 413
    assert "ECGFM_MAX_BODY_BYTES" in response.json()["error"]


def test_chunked_body_over_the_limit_is_a_413(guarded: dict) -> None:
    def chunks():  # a generator: httpx sends it chunked, without Content-Length
        yield b'{"fs": 500, "signal": [[1]]'
        for _ in range(GUARDED_MAX_BODY_BYTES // 100_000 + 2):
            yield b" " * 100_000
        yield b"}"

    headers = {**guarded["auth"], "content-type": "application/json"}
    response = httpx.post(guarded["url"] + "/clinical", content=chunks(), headers=headers, timeout=30)
    assert response.status_code == 413


def test_burst_far_above_capacity_gets_429_with_retry_after_and_no_timeouts(guarded: dict) -> None:
    body = body_with()

    async def post_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=guarded["url"], headers=guarded["auth"], timeout=30) as http:
            return await asyncio.gather(*(http.post("/clinical", json=body) for _ in range(BURST)))

    responses = asyncio.run(post_all())  # a client timeout would raise here
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses.count(429) >= BURST // 2 and 200 in statuses
    assert all(int(r.headers["retry-after"]) > 0 for r in responses if r.status_code != 200)
    after = httpx.post(guarded["url"] + "/clinical", json=body, headers=guarded["auth"], timeout=60)
    assert after.status_code == 200  # answers normally right after the burst


def test_logs_and_status_never_show_signal_values_or_lead_names(guarded: dict) -> None:
    """BentoML's most verbose logging (--verbose: DEBUG in every service); accepted and rejected requests."""
    signal = [[SENTINEL, -SENTINEL] * 2500 for _ in range(12)]
    names = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", SECRET_LEAD]
    with httpx.Client(base_url=guarded["url"], headers=guarded["auth"], timeout=120) as http:
        assert http.post("/both", json={"signal": signal, "fs": 500}).status_code == 200
        assert http.post("/clinical", json={"signal": signal, "fs": 500, "lead_names": names}).status_code == 422
        assert http.post("/clinical", json={"signal": [*signal[:11], [SENTINEL, "x"]], "fs": 500}).status_code == 400
        assert http.post("/clinical", json={"signal": signal, "fs": 500, SECRET_LEAD: 1}).status_code == 400
        status = http.get("/status").text
    time.sleep(1)  # let the services flush their logs
    log = guarded["log"].read_text()
    assert "[DEBUG]" in log  # the most verbose level really was on
    for text in (log, status):
        assert "123.456" not in text and SECRET_LEAD not in text


# --- model faults ----------------------------------------------------------------------------------------------


def test_corrupt_or_wrong_kind_checkpoint_fails_start_up_naming_file_and_problem(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated_finetuned.pt"
    truncated.write_bytes(FINETUNED_CKPT.read_bytes()[: FINETUNED_CKPT.stat().st_size // 2])
    wrong_kind = tmp_path / "finetuned_given_as_pretrained.pt"
    shutil.copy(FINETUNED_CKPT, wrong_kind)
    env = {"ECGFM_PRETRAINED_CHECKPOINT": str(wrong_kind), "ECGFM_FINETUNED_CHECKPOINT": str(truncated)}
    log_path = tmp_path / "server.log"
    with bentoml_server(env, log_path, ready_path="/livez") as url:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            log = log_path.read_text()
            if f"{truncated}: not a readable" in log and f"{wrong_kind}: this is a finetuned" in log:
                break
            time.sleep(1)
        health = httpx.get(f"{url}/health", timeout=30)
    assert f"{truncated}: not a readable PyTorch checkpoint (truncated download or wrong file?)" in log
    assert f"{wrong_kind}: this is a finetuned checkpoint" in log and "a pretrained one was expected" in log
    assert health.status_code == 503


def test_the_interpreter_sends_the_api_key_from_the_environment(guarded: dict, tmp_path: Path) -> None:
    """``python -m interpreter report --url`` against the keyed server: with ECGFM_API_KEY it is let in (so the
    header arrived; with ``--saliency`` on both of its requests), without it the server's 401 is reported and the
    command fails."""
    record = str(REPO_DIR.parent / "shared" / "data" / "JS01048.json")
    command = [sys.executable, "-m", "interpreter", "report", record, "--url", guarded["url"], "--quiet"]
    environ = {key: value for key, value in os.environ.items() if key != "ECGFM_API_KEY"}
    keyed = subprocess.run(
        [*command, "--saliency", "--out", str(tmp_path / "keyed")], env={**environ, "ECGFM_API_KEY": API_KEY},
        cwd=REPO_DIR, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert keyed.returncode == 0, keyed.stderr
    assert json.loads((tmp_path / "keyed" / "JS01048.json").read_text())["source"]["model"] == "finetuned"
    assert 'id="saliency-note"' in (tmp_path / "keyed" / "JS01048.html").read_text()  # the second request got in
    unkeyed = subprocess.run(
        [*command, "--out", str(tmp_path / "unkeyed")], env=environ, cwd=REPO_DIR, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert unkeyed.returncode != 0 and "answered 401" in unkeyed.stderr
    assert not (tmp_path / "unkeyed" / "JS01048.json").exists()
