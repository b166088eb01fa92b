"""Operations, end to end on loopback: no usage analytics, request IDs, model-worker faults under load, draining on
SIGTERM, slow clients, the operator's metrics and tracing (docs/operations.md).

Every test that needs a server starts its own (small held-out models) through :class:`tests.launcher.ServerProcess`;
loops are bounded in time and requests.
"""

from __future__ import annotations

import collections
import io
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
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
    "415 from a middleware (serving.middleware.send_error)": ("/clinical", "text/plain", b"{}", 415),
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


# ---- faults under load ----------------------------------------------------------------------------------------

FAULT_TIMEOUT_S = 10  # ECGFM_REQUEST_TIMEOUT_S of the fault servers: no request may wait longer (plus slack)
SLACK_S = 5
STOPPED_S = 8  # how long the Pretrained worker stays SIGSTOPped
RECOVERY_BOUND_S = 60  # a SIGKILLed worker is restarted and its model loaded again within this
# SIGTERM to exit: the requests in flight finish (each bounded by ECGFM_REQUEST_TIMEOUT_S, 300 s by default), then
# the workers stop. docs/operations.md: terminationGracePeriodSeconds = ECGFM_REQUEST_TIMEOUT_S + 30.
GRACE_PERIOD_S = 30
SLOW_CLIENTS = 60


def model_worker(server: ServerProcess, service_name: str) -> psutil.Process:
    """The worker process of one BentoML service (``--service-name <name>`` in its command line)."""
    for child in psutil.Process(server.process.pid).children(recursive=True):
        command = child.cmdline()
        if "_bentoml_impl.worker.service" in command and command[command.index("--service-name") + 1] == service_name:
            return child
    raise AssertionError(f"no {service_name} worker in the server's process tree")


def npy_body(body: dict) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(body["signal"], dtype=np.float32))
    return buffer.getvalue()


class Load:
    """``clients`` threads posting /clinical (JSON), /features/npy and /both (JSON) in turn until stopped; every
    outcome is kept as (path, status or exception name, seconds)."""

    def __init__(self, url: str, body: dict, clients: int) -> None:
        json_body, npy = json.dumps(body).encode(), npy_body(body)
        self.requests = [
            ("/clinical", json_body, "application/json"),
            ("/features/npy?fs=500", npy, "application/octet-stream"),
            ("/both", json_body, "application/json"),
        ]
        self.url, self.stop, self.outcomes = url, threading.Event(), []
        self.threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(clients)]

    def client(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=FAULT_TIMEOUT_S + 3 * SLACK_S) as http:
            for n in range(10_000):
                if self.stop.is_set():
                    return
                path, content, content_type = self.requests[(index + n) % len(self.requests)]
                started = time.monotonic()
                try:
                    status: int | str = http.post(
                        path, content=content, headers={"content-type": content_type}
                    ).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.outcomes.append((path, status, time.monotonic() - started))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=FAULT_TIMEOUT_S + 4 * SLACK_S)


def seconds_until_ok(url: str, path: str, content: bytes, content_type: str, bound_s: float) -> float:
    """How long until a POST of ``path`` answers 200 (polled; fails after ``bound_s``)."""
    started = time.monotonic()
    while time.monotonic() - started < bound_s:
        try:
            response = httpx.post(url + path, content=content, headers={"content-type": content_type}, timeout=20)
            if response.status_code == 200:
                return round(time.monotonic() - started, 1)
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{path} did not answer 200 within {bound_s} s")


def health(url: str) -> tuple[int, dict, int]:
    """(/health status, its models, /readyz status). /readyz is asked first: a worker restarted between the two
    probes may make /readyz 200 just before /health says so, never the other way round."""
    ready = httpx.get(url + "/readyz", timeout=FAULT_TIMEOUT_S).status_code
    answer = httpx.get(url + "/health", timeout=FAULT_TIMEOUT_S)
    return answer.status_code, answer.json()["models"], ready


def test_a_killed_and_a_stopped_model_worker_never_cause_a_500_a_reset_or_a_hang(tmp_path: Path, body: dict) -> None:
    server = start_server(tmp_path, {"ECGFM_REQUEST_TIMEOUT_S": str(FAULT_TIMEOUT_S)})
    json_body = json.dumps(body).encode()
    try:
        with Load(server.url, body, clients=4) as load:
            time.sleep(3)
            finetuned = model_worker(server, "Finetuned")
            finetuned.send_signal(signal.SIGKILL)
            finetuned.wait(10)
            # The small model's worker is back within about a second: probe until both probes say ready again.
            readings = [health(server.url)]
            while readings[-1][0] != 200 or readings[-1][2] != 200:
                assert len(readings) < 200, readings[-3:]
                time.sleep(0.05)
                readings.append(health(server.url))
            assert any(status == 503 or ready == 503 for status, _, ready in readings)  # the outage was seen
            for status, models, _ in readings:  # whenever /health saw it, it named the killed model only
                if not models["finetuned"]["loaded"]:
                    assert status == 503 and models["pretrained"]["loaded"]
            kill_recovery_s = seconds_until_ok(server.url, "/clinical", json_body, "application/json", RECOVERY_BOUND_S)
            assert model_worker(server, "Finetuned").pid != finetuned.pid  # restarted, not the old one

            pretrained = model_worker(server, "Pretrained")
            pretrained.send_signal(signal.SIGSTOP)
            stopped_at = time.monotonic()
            try:
                status, models, ready = health(server.url)
                assert (status, models["pretrained"]["loaded"], models["finetuned"]["loaded"], ready) == (
                    503,
                    False,
                    True,
                    503,
                )
                time.sleep(max(0.0, STOPPED_S - (time.monotonic() - stopped_at)))
            finally:
                pretrained.send_signal(signal.SIGCONT)
            stop_recovery_s = seconds_until_ok(server.url, "/features", json_body, "application/json", 30)
            time.sleep(2)  # load after both recoveries
        outcomes = load.outcomes
    finally:
        server.stop()
    statuses = {status for _, status, _ in outcomes}
    assert statuses <= {200, 503, 504}, f"unexpected outcomes {statuses - {200, 503, 504}}"
    assert max(seconds for _, _, seconds in outcomes) <= FAULT_TIMEOUT_S + SLACK_S
    assert sum(status == 200 for _, status, _ in outcomes[-8:]) == 8, "not all 200 after recovery"
    assert kill_recovery_s <= RECOVERY_BOUND_S and stop_recovery_s <= 30
    print(
        f"faults: {len(outcomes)} requests {dict(collections.Counter(s for _, s, _ in outcomes))}, "
        f"SIGKILL recovery {kill_recovery_s} s, SIGSTOP recovery {stop_recovery_s} s"
    )


def test_sigterm_answers_the_requests_in_flight_refuses_new_ones_and_exits_within_the_grace_period(
    tmp_path: Path, body: dict
) -> None:
    """What Kubernetes does to a pod it stops: SIGTERM to the server's main process (PID 1 in the image)."""
    long_record = npy_body({"signal": np.tile(np.asarray(body["signal"]), 12)})  # 120 s: 24 segments per model
    server = start_server(tmp_path)
    answers: list[int | str] = []  # 200, else the error body or the exception's name

    def post() -> None:
        try:
            headers = {"content-type": "application/octet-stream"}
            response = httpx.post(server.url + "/both/npy?fs=500", content=long_record, headers=headers, timeout=60)
            answers.append(response.status_code if response.status_code == 200 else response.text)
        except httpx.HTTPError as exc:
            answers.append(type(exc).__name__)

    try:
        in_flight = [threading.Thread(target=post) for _ in range(6)]
        for thread in in_flight:
            thread.start()
        time.sleep(2)  # the bodies are sent, the batches are running (one such request takes 3 s or more here)
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(1.0)
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):  # no answer, no wait
            httpx.post(server.url + "/clinical", json=body, timeout=5)
        server.process.wait(timeout=GRACE_PERIOD_S)
        exited_s = time.monotonic() - signalled
        for thread in in_flight:
            thread.join(timeout=10)
    finally:
        server.stop()
    assert answers == [200] * 6
    assert exited_s < GRACE_PERIOD_S
    print(f"sigterm: 6 in flight answered, exit after {exited_s:.1f} s")


def test_slow_clients_trickling_a_body_do_not_hold_up_other_clients(server: ServerProcess, body: dict) -> None:
    content = json.dumps(body).encode()
    host, port = server.url.removeprefix("http://").split(":")
    slow: list[socket.socket] = []
    try:
        for _ in range(SLOW_CLIENTS):
            sock = socket.create_connection((host, int(port)), timeout=5)
            head = f"POST /clinical HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            sock.sendall(f"{head}Content-Length: {len(content)}\r\n\r\n".encode() + content[:1])
            slow.append(sock)
        latencies = []
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for i in range(10):
                for sock in slow:
                    sock.sendall(content[i + 1 : i + 2])  # one more byte each
                started = time.monotonic()
                assert (
                    http.post("/clinical", content=content, headers={"content-type": "application/json"}).status_code
                    == 200
                )
                latencies.append(time.monotonic() - started)
    finally:
        for sock in slow:
            sock.close()
    assert max(latencies) < 10, latencies


# ---- tracing --------------------------------------------------------------------------------------------------


class OtlpCollector:
    """An OpenTelemetry collector's OTLP/HTTP traces endpoint on loopback: keeps every span it is sent, decoded
    with OpenTelemetry's own protobuf messages, with its service's ``service.name``."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        self.spans: list[tuple[str, Any]] = []
        self.paths: list[str] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server calls it by this name
                message = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
                for resource_spans in message.resource_spans:
                    attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        collector.spans += [(attributes["service.name"], span) for span in scope_spans.spans]
                collector.paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trace(self, trace_id: bytes) -> list[tuple[str, Any]]:
        return [(service, span) for service, span in self.spans if span.trace_id == trace_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def attribute_text(span: Any) -> list[str]:
    """Every attribute value of ``span`` and of its events, as text."""
    values = [*span.attributes, *(attribute for event in span.events for attribute in event.attributes)]
    return [str(getattr(value.value, value.value.WhichOneof("value") or "string_value")) for value in values]


def test_tracing_is_off_unless_an_otlp_endpoint_is_set() -> None:
    from ecgfm.settings import ServingSettings, SettingsError
    from serving.tracing import tracing_config

    assert tracing_config(ServingSettings.from_env({}).otlp_endpoint, 1.0) == {}
    on = ServingSettings.from_env({"ECGFM_OTLP_ENDPOINT": "http://collector:4318", "ECGFM_TRACE_SAMPLE_RATE": "0.25"})
    assert on.otlp_endpoint == "http://collector:4318/v1/traces"  # the traces path added, as OpenTelemetry does
    assert tracing_config(on.otlp_endpoint, on.trace_sample_rate)["sample_rate"] == 0.25
    with pytest.raises(SettingsError, match="ECGFM_OTLP_ENDPOINT='collector:4318'"):
        ServingSettings.from_env({"ECGFM_OTLP_ENDPOINT": "collector:4318"})
    standard = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}  # OpenTelemetry's own variables
    assert ServingSettings.from_env(standard).otlp_endpoint == "http://collector:4318/v1/traces"
    traces = {**standard, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4318/custom"}
    assert ServingSettings.from_env(traces).otlp_endpoint == "http://traces:4318/custom"
    assert ServingSettings.from_env({**traces, "ECGFM_OTLP_ENDPOINT": "http://ours:4318"}).otlp_endpoint == (
        "http://ours:4318/v1/traces"
    )
    assert ServingSettings.from_env({**standard, "OTEL_SDK_DISABLED": "true"}).otlp_endpoint == ""
    assert ServingSettings.from_env({**standard, "OTEL_TRACES_EXPORTER": "none"}).otlp_endpoint == ""
    with pytest.raises(SettingsError, match="OTEL_EXPORTER_OTLP_PROTOCOL='grpc': ecgfm-serve exports OTLP over HTTP"):
        ServingSettings.from_env({**standard, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    with pytest.raises(SettingsError, match="OTEL_EXPORTER_OTLP_ENDPOINT='collector:4318/v1/traces'"):
        ServingSettings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"})
    with pytest.raises(SettingsError, match="without credentials; give them in OTEL_EXPORTER_OTLP_HEADERS"):
        ServingSettings.from_env({"ECGFM_OTLP_ENDPOINT": "https://user:token@collector:4318"})
    with pytest.raises(SettingsError, match="ECGFM_TRACE_SAMPLE_RATE='2': expected a number from 0 to 1"):
        ServingSettings.from_env({"ECGFM_TRACE_SAMPLE_RATE": "2"})


def test_one_request_is_one_trace_across_the_services_without_signal_values_or_bodies(tmp_path: Path) -> None:
    record = load_json_record("JS06908.json")  # 10 s at 500 Hz: two segments for each model
    body = {"signal": record["signal"], "fs": record["fs"]}
    content = json.dumps(body).encode()
    collector = OtlpCollector()
    # Spans leave each process in batches; a short delay keeps the test short (OpenTelemetry's own variable).
    env = {"ECGFM_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    try:
        server = start_server(tmp_path, env)
        try:
            headers = {"content-type": "application/json", "x-request-id": "trace-test-1"}
            response = httpx.post(server.url + "/both", content=content, headers=headers, timeout=60)
            assert response.status_code == 200, response.text
            httpx.get(server.url + "/readyz", timeout=10)  # a probe: not traced
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                roots = [s for service, s in collector.spans if service == "ECGFMService" and not s.parent_span_id]
                services = {service for root in roots for service, _ in collector.trace(root.trace_id)}
                if {"ECGFMService", "Finetuned", "Pretrained"} <= services:
                    break
                time.sleep(0.2)
        finally:
            server.stop()
    finally:
        collector.close()
    assert set(collector.paths) == {"/v1/traces"}
    (root,) = roots  # one request, one trace: the probe and the start-up's calls are not traced
    spans = collector.trace(root.trace_id)
    assert {service for service, _ in spans} == {"ECGFMService", "Finetuned", "Pretrained"}
    by_id = {span.span_id: (service, span) for service, span in spans}
    for service, span in spans:  # connected: every span's parent is in the trace, up to the API's request span
        chain = [service]
        while span.parent_span_id:
            service, span = by_id[span.parent_span_id]
            chain.append(service)
        assert span == root, chain
    root_attributes = {a.key: a.value.string_value for a in root.attributes}
    assert root_attributes["ecgfm.request_id"] == "trace-test-1"
    assert "/both" in root.name
    model_calls = {(service, span.name) for service, span in spans if service != "ECGFMService" and span.parent_span_id}
    assert any("classify" in name for _, name in model_calls) and any("embed" in name for _, name in model_calls)
    samples = {json.dumps(value) for lead in body["signal"] for value in lead[:50] if len(json.dumps(value)) >= 6}
    assert samples
    for service, span in spans:
        for text in attribute_text(span):
            assert len(text) < 300, (service, span.name, text[:80])  # no body or array
            assert not any(sample in text for sample in samples), (service, span.name, text[:80])
