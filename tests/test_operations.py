"""Operations, end to end on loopback: no usage analytics, request IDs, model-worker faults under load, draining on
SIGTERM, slow clients, the operator's metrics and tracing (docs/operations.md).

Every test that needs a server starts its own (small held-out models) through :class:`tests.launcher.ServerProcess`;
loops are bounded in time and requests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import FINETUNED_CKPT, PRETRAINED_CKPT, REPO_DIR, load_json_record
from tests.launcher import ServerProcess, bentoml_command, free_port, server_env

TELEMETRY_OFF = {"BENTOML_DO_NOT_TRACK": "true", "HF_HUB_DISABLE_TELEMETRY": "1", "RAY_USAGE_STATS_ENABLED": "0"}


# ---- no usage analytics ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bentofile", ["bentofile.yaml", "bentofile.cpu.yaml"])
def test_the_bento_and_its_image_send_no_usage_analytics(bentofile: str) -> None:
    config = yaml.safe_load((REPO_DIR / bentofile).read_text())
    assert {env["name"]: env["value"] for env in config["envs"]} == TELEMETRY_OFF
    assert {key: config["docker"]["env"][key] for key in TELEMETRY_OFF} == TELEMETRY_OFF


def test_run_sh_turns_usage_analytics_off_unless_set() -> None:
    """The exports of run.sh, run as run.sh runs them (without setting up the venv)."""
    exports = "\n".join(line for line in (REPO_DIR / "run.sh").read_text().splitlines() if line.startswith("export "))
    script = exports + '\nenv | grep -E "^(BENTOML_DO_NOT_TRACK|HF_HUB_DISABLE_TELEMETRY|RAY_USAGE_STATS_ENABLED)="'
    clean = {key: value for key, value in os.environ.items() if key not in TELEMETRY_OFF}
    shown = subprocess.run(["bash", "-c", script], env=clean, capture_output=True, text=True, check=True).stdout
    assert dict(line.split("=", 1) for line in shown.split()) == TELEMETRY_OFF
    opted_in = subprocess.run(
        ["bash", "-c", script], env={**clean, "BENTOML_DO_NOT_TRACK": "false"}, capture_output=True, text=True
    ).stdout
    assert "BENTOML_DO_NOT_TRACK=false" in opted_in.split()


def test_bentoml_reads_do_not_track_before_the_service_is_imported() -> None:
    """Why the variable must come from the environment (run.sh, the image), not from service.py: BentoML's CLI
    caches ``do_not_track()`` when the command starts."""
    from bentoml._internal.utils.analytics import usage_stats

    assert hasattr(usage_stats.do_not_track, "cache_info")  # lru_cache: read once per process
    source = Path(usage_stats.__file__).read_text()
    assert 'USAGE_TRACKING_URL = "https://t.bentoml.com"' in source


# ---- a server of our own --------------------------------------------------------------------------------------

SMALL_MODELS = {"ECGFM_PRETRAINED_CHECKPOINT": str(PRETRAINED_CKPT), "ECGFM_FINETUNED_CHECKPOINT": str(FINETUNED_CKPT)}


def start_server(tmp: Path, env: dict[str, str] | None = None, *extra_args: str, **options: float) -> ServerProcess:
    """``bentoml serve`` with the small held-out models on a free loopback port, BentoML home and log in ``tmp``."""
    port = free_port()
    environ = server_env({**SMALL_MODELS, **(env or {})}, bentoml_home=tmp / "bentoml_home")
    return ServerProcess(bentoml_command(port, *extra_args), environ, tmp / "server.log", port, **options).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the tests that do not hurt it (request IDs, metrics)."""
    running = start_server(tmp_path_factory.mktemp("operations"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def body() -> dict:
    record = load_json_record("JS06908.json")  # 10 s at 500 Hz
    return {"signal": record["signal"], "fs": record["fs"]}


# ---- request IDs ----------------------------------------------------------------------------------------------


def test_a_request_without_an_id_gets_one_back(server: ServerProcess) -> None:
    first, second = (httpx.get(server.url + "/health", timeout=10) for _ in range(2))
    assert re.fullmatch(r"[0-9a-f]{32}", first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_the_callers_request_id_is_returned(server: ServerProcess, body: dict) -> None:
    response = httpx.post(server.url + "/clinical", json=body, headers={"X-Request-ID": "gw-42:abc.DEF"}, timeout=60)
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "gw-42:abc.DEF"


@pytest.mark.parametrize("unsafe", ["a b", "x" * 129, "<script>", "id;rm"])
def test_an_unusable_request_id_is_replaced(server: ServerProcess, unsafe: str) -> None:
    response = httpx.get(server.url + "/health", headers={"X-Request-ID": unsafe}, timeout=10)
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


TOO_SHORT = json.dumps({"signal": [[0.0] * 900] * 12, "fs": 500}).encode()  # 1.8 s
ERROR_REQUESTS = {  # one of each writer of error bodies: (path, content type, body, status)
    "422 from the handler (contract.error_response)": ("/clinical", "application/json", TOO_SHORT, 422),
    "415 from a middleware (serving.send_error)": ("/clinical", "text/plain", b"{}", 415),
    "400 from BentoML's own validation": ("/clinical", "application/json", b'{"fs": 500}', 400),
    "400 from the .npy decoder": ("/clinical/npy", "application/octet-stream", b"not npy", 400),
}


@pytest.mark.parametrize("case", ERROR_REQUESTS, ids=list(ERROR_REQUESTS))
def test_error_bodies_carry_the_request_id(server: ServerProcess, case: str) -> None:
    path, content_type, content, status = ERROR_REQUESTS[case]
    headers = {"content-type": content_type, "X-Request-ID": f"err-{status}-{len(content)}"}
    response = httpx.post(server.url + path, content=content, headers=headers, timeout=60)
    assert response.status_code == status
    assert response.json()["request_id"] == response.headers["x-request-id"] == headers["X-Request-ID"]
    assert response.json()["error"]


def test_every_log_line_of_a_request_carries_its_id(server: ServerProcess, body: dict) -> None:
    request_id = "log-line-check-7c1e"
    response = httpx.post(server.url + "/features", json=body, headers={"X-Request-ID": request_id}, timeout=60)
    assert response.status_code == 200
    deadline = time.monotonic() + 10
    while f"(request_id={request_id})" not in server.log_tail(200_000) and time.monotonic() < deadline:
        time.sleep(0.2)
    lines = [line for line in server.log_tail(200_000).splitlines() if "path=/features" in line]
    assert lines, "no access log line for /features"
    assert all(f"(request_id={request_id})" in line for line in lines if "/features" in line and request_id in line)
    assert any(f"(request_id={request_id})" in line for line in lines)
