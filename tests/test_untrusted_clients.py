"""Clients that are not curl, end to end on loopback: every refusal read by urllib and requests under load, named
API keys rotated while requests flow, and the audit trail (one line per POST, under load and on SIGTERM).

One server (``hardened``) has a default key, a keys file with two named keys, an audit log file, 8 POSTs in
flight (above the clients of one load) and a 2 MB body limit; the SIGTERM test starts its own.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import io
import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import requests

from tests.conftest import FINETUNED_CKPT, PRETRAINED_CKPT, load_json_record
from tests.launcher import ServerProcess, bentoml_command, free_port, serve_until_it_ends, server_env

pytestmark = pytest.mark.server

DEFAULT_KEY = "default-key-0123456789"
WARD_KEY = "ward-7-key-abcdefghijklmnop"
RESEARCH_KEY = "research-key-qrstuvwxyz0123"
MAX_CONCURRENCY = 8  # above THREADS: the 401/413/415 loads never meet a 429
MAX_BODY_BYTES = 2_000_000
THREADS = 6  # concurrent clients per refusal
ATTEMPTS = 4  # requests per client
SENTINEL = 123.456789  # every sample of the audit-hygiene record is +-SENTINEL


def keys_text(**keys: str) -> str:
    return "# name:key\n" + "".join(f"{name}:{key}\n" for name, key in keys.items())


def start_server(directory: Path, extra_env: dict[str, str] | None = None) -> ServerProcess:
    port = free_port()
    env = {
        "ECGFM_PRETRAINED_CHECKPOINT": str(PRETRAINED_CKPT),
        "ECGFM_FINETUNED_CHECKPOINT": str(FINETUNED_CKPT),
        "ECGFM_API_KEY": DEFAULT_KEY,
        "ECGFM_API_KEYS_FILE": str(directory / "keys.txt"),
        "ECGFM_AUDIT_LOG": str(directory / "audit.jsonl"),
        "ECGFM_MAX_CONCURRENCY": str(MAX_CONCURRENCY),
        "ECGFM_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        **(extra_env or {}),
    }
    environ = server_env(env, bentoml_home=directory / "bentoml_home")
    return ServerProcess(bentoml_command(port), environ, directory / "server.log", port).start()


@pytest.fixture(scope="module")
def hardened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    directory = tmp_path_factory.mktemp("hardened")
    (directory / "keys.txt").write_text(keys_text(ward=WARD_KEY, research=RESEARCH_KEY))
    server = start_server(directory)
    try:
        yield {"url": server.url, "dir": directory, "server": server}
    finally:
        server.stop()


def json_body(repeats: int = 1) -> bytes:
    """JS06908 (10 s at 500 Hz, about 450 KB of JSON), its leads repeated ``repeats`` times."""
    record = load_json_record("JS06908.json")
    return json.dumps({"signal": [lead * repeats for lead in record["signal"]], "fs": record["fs"]}).encode()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def audit_lines(directory: Path) -> list[dict]:
    path = directory / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ---- every refusal is readable by a client that writes its whole body first ----------------------------------


def post_with_urllib(url: str, body: bytes, headers: dict[str, str]) -> int | str:
    """The status urllib reads (it sends the whole body, then reads), or the name of the error it met instead."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        return type(getattr(exc, "reason", exc)).__name__


def post_with_requests(url: str, body: bytes, headers: dict[str, str]) -> int | str:
    try:
        return requests.post(url, data=body, headers=headers, timeout=60).status_code
    except requests.RequestException as exc:
        return type(exc).__name__


POSTERS: dict[str, Callable[[str, bytes, dict[str, str]], int | str]] = {
    "urllib": post_with_urllib,
    "requests": post_with_requests,
}


def under_load(post: Callable[[], int | str]) -> list[int | str]:
    """``post`` from THREADS clients at once, ATTEMPTS times each: every outcome."""
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(post) for _ in range(THREADS * ATTEMPTS)]
        return [future.result() for future in futures]


# A body larger than what the loopback socket buffers hold while the server does not read: without the drain
# (serving.middleware.drain_body) urllib meets ConnectionResetError on every one of these (checked).
LONG_RECORD_REPEATS = 16  # 160 s, about 7 MB of JSON
REFUSALS = {
    # status: (path, content type, headers, body): each refused by a middleware before it reads the body
    401: ("/clinical", "application/json", bearer("not-a-key-0000000000"), "long record"),
    415: ("/clinical", "text/plain", bearer(WARD_KEY), "long record"),
    413: ("/clinical", "application/json", bearer(WARD_KEY), "4 x the limit"),
}


@pytest.mark.parametrize("client", POSTERS)
@pytest.mark.parametrize("status", REFUSALS)
def test_a_refusal_is_read_by_a_client_that_sends_its_whole_body_first(hardened: dict, status: int, client: str):
    path, content_type, headers, kind = REFUSALS[status]
    body = json_body(LONG_RECORD_REPEATS) if kind == "long record" else b" " * (MAX_BODY_BYTES * 4)
    outcomes = under_load(
        lambda: POSTERS[client](hardened["url"] + path, body, {**headers, "content-type": content_type})
    )
    assert outcomes == [status] * len(outcomes)


@pytest.mark.parametrize("client", POSTERS)
def test_a_413_of_a_body_far_over_the_limit_is_read_too(hardened: dict, client: str) -> None:
    """48 MB, 24 x the limit: past the socket buffers and past what a small drain bound would read."""
    headers = {**bearer(WARD_KEY), "content-type": "application/json"}
    body = b" " * (48 * 10**6)
    assert POSTERS[client](hardened["url"] + "/clinical", body, headers) == 413


class HeldSlots:
    """``MAX_CONCURRENCY`` POSTs whose bodies trickle in (a byte every 0.2 s): they hold every in-flight slot."""

    def __init__(self, url: str) -> None:
        self.url, self.stop, self.sockets = url, threading.Event(), []

    def __enter__(self) -> HeldSlots:
        host, port = self.url.removeprefix("http://").split(":")
        for _ in range(MAX_CONCURRENCY):
            sock = socket.create_connection((host, int(port)))
            head = f"POST /clinical HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            head += f"Authorization: Bearer {WARD_KEY}\r\nContent-Length: 100000\r\n\r\n"
            sock.sendall(head.encode())
            self.sockets.append(sock)
        self.thread = threading.Thread(target=self.trickle, daemon=True)
        self.thread.start()
        time.sleep(1.0)  # the server has both in flight
        return self

    def trickle(self) -> None:
        while not self.stop.wait(0.2):
            for sock in self.sockets:
                sock.sendall(b" ")

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()
        for sock in self.sockets:
            sock.close()


@pytest.mark.parametrize("client", POSTERS)
def test_a_429_is_read_by_a_client_that_sends_its_whole_body_first(hardened: dict, client: str) -> None:
    body, headers = json_body(), {**bearer(WARD_KEY), "content-type": "application/json"}
    with HeldSlots(hardened["url"]):
        outcomes = under_load(lambda: POSTERS[client](hardened["url"] + "/clinical", body, headers))
    assert outcomes == [429] * len(outcomes)
    assert httpx.post(hardened["url"] + "/clinical", content=body, headers=headers, timeout=120).status_code == 200


# ---- named API keys --------------------------------------------------------------------------------------------


def api_worker(server: ServerProcess) -> psutil.Process:
    """The API service's worker process (``--service-name ECGFMService``), where the keys are checked."""
    for child in psutil.Process(server.process.pid).children(recursive=True):
        command = child.cmdline()
        if "--service-name" in command and command[command.index("--service-name") + 1] == "ECGFMService":
            return child
    raise AssertionError("no ECGFMService worker in the server's process tree")


def replace_keys_file(directory: Path, text: str) -> None:
    """Rotate the way an operator (or a secret mount) does: a new file moved over the old one."""
    fresh = directory / "keys.txt.new"
    fresh.write_text(text)
    os.replace(fresh, directory / "keys.txt")


def test_each_named_key_and_the_default_key_pass_and_only_the_name_is_logged(hardened: dict) -> None:
    body = json_body()
    for name, key in (("default", DEFAULT_KEY), ("ward", WARD_KEY), ("research", RESEARCH_KEY)):
        headers = {**bearer(key), "content-type": "application/json", "x-request-id": f"key-name-{name}"}
        assert httpx.post(hardened["url"] + "/clinical", content=body, headers=headers, timeout=120).status_code == 200
    time.sleep(1)  # the access log lines are flushed
    log = hardened["server"].log_tail(1_000_000)
    for name in ("default", "ward", "research"):
        assert f"(request_id=key-name-{name}, key={name})" in log
    assert not any(key in log for key in (DEFAULT_KEY, WARD_KEY, RESEARCH_KEY))


def test_a_key_rotated_while_requests_flow_refuses_none_that_should_pass(hardened: dict) -> None:
    """Two named keys; ward's key is rotated in the file while both keep sending: research is never refused, ward's
    old key is refused from the first request after the file was replaced, and its new key passes from then on."""
    url, new_ward_key = hardened["url"], "ward-7-rotated-key-5f6e7d8c"
    body, stop, outcomes = json_body(), threading.Event(), []

    def flow(key: str, path: str) -> None:
        with httpx.Client(base_url=url, headers=bearer(key), timeout=120) as http:
            while not stop.is_set():
                if path == "/clinical":
                    status = http.post(path, content=body, headers={"content-type": "application/json"}).status_code
                else:
                    status = http.get(path).status_code
                outcomes.append((key, status))

    threads = [
        threading.Thread(target=flow, args=args) for args in ((RESEARCH_KEY, "/clinical"), (RESEARCH_KEY, "/docs.json"))
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2)
        assert httpx.get(url + "/docs.json", headers=bearer(WARD_KEY), timeout=30).status_code == 200
        replace_keys_file(hardened["dir"], keys_text(ward=new_ward_key, research=RESEARCH_KEY))
        after_old = [httpx.get(url + "/docs.json", headers=bearer(WARD_KEY), timeout=30).status_code for _ in range(5)]
        after_new = [
            httpx.get(url + "/docs.json", headers=bearer(new_ward_key), timeout=30).status_code for _ in range(5)
        ]
        scored_with_new = httpx.post(
            url + "/clinical",
            content=body,
            headers={**bearer(new_ward_key), "content-type": "application/json", "x-request-id": "rotated-key-post"},
            timeout=120,
        )
        time.sleep(2)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        replace_keys_file(hardened["dir"], keys_text(ward=WARD_KEY, research=RESEARCH_KEY))
    assert (after_old, after_new) == ([401] * 5, [200] * 5)
    assert scored_with_new.status_code == 200 and len(scored_with_new.json()["probabilities"]) == 17
    assert len(outcomes) > 5 and {status for _, status in outcomes} == {200}


def test_sighup_to_the_api_worker_reloads_the_keys_file(hardened: dict) -> None:
    """A change that keeps the file's size, mtime and inode is seen only after SIGHUP."""
    url, path = hardened["url"], hardened["dir"] / "keys.txt"
    same_size_key = WARD_KEY[:-1] + ("x" if WARD_KEY[-1] != "x" else "y")
    assert httpx.get(url + "/docs.json", headers=bearer(WARD_KEY), timeout=30).status_code == 200  # file in force
    before = path.stat()
    with path.open("r+") as handle:  # in place: the same inode and size
        handle.write(keys_text(ward=same_size_key, research=RESEARCH_KEY))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    try:
        assert httpx.get(url + "/docs.json", headers=bearer(WARD_KEY), timeout=30).status_code == 200  # not seen yet
        api_worker(hardened["server"]).send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert httpx.get(url + "/docs.json", headers=bearer(WARD_KEY), timeout=30).status_code == 401
        assert httpx.get(url + "/docs.json", headers=bearer(same_size_key), timeout=30).status_code == 200
        assert httpx.get(url + "/health", timeout=30).status_code == 200  # the worker lives on
    finally:
        replace_keys_file(hardened["dir"], keys_text(ward=WARD_KEY, research=RESEARCH_KEY))


def test_a_bad_keys_file_stops_start_up_with_one_message(tmp_path: Path) -> None:
    (tmp_path / "keys.txt").write_text("ward:short\n")
    env = {"ECGFM_DEMO": "1", "ECGFM_DEMO_SIZE": "small", "ECGFM_API_KEYS_FILE": str(tmp_path / "keys.txt")}
    ended = serve_until_it_ends(env, tmp_path / "bentoml_home", timeout_s=120)
    assert ended.returncode == 2
    assert "line 1: the key of 'ward' must be at least 16 characters" in ended.stderr
    assert "Traceback" not in ended.stderr


# ---- the audit trail -------------------------------------------------------------------------------------------


def npy_bytes(signal: list[list[float]]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(signal, dtype=np.float32))
    return buffer.getvalue()


ONE_LEAD = b'{"signal": [[1.5, 2.5]], "fs": 500}'  # valid JSON, not a usable ECG: 422


def test_the_audit_trail_has_one_line_per_request_under_load_and_no_values(hardened: dict) -> None:
    signal = [[SENTINEL, -SENTINEL] * 2500 for _ in range(12)]  # 10 s at 500 Hz
    sentinel_json = json.dumps({"signal": signal, "fs": 500}).encode()
    json_headers = {"content-type": "application/json"}
    kinds = {  # name: (path, body, headers, expected status, key name, record duration)
        "json": ("/clinical", sentinel_json, {**bearer(WARD_KEY), **json_headers}, 200, "ward", 10.0),
        "npy": ("/features/npy?fs=500", npy_bytes(signal), {**bearer(RESEARCH_KEY)}, 200, "research", 10.0),
        "both": ("/both", sentinel_json, {**bearer(DEFAULT_KEY), **json_headers}, 200, "default", 10.0),
        "422": (
            "/clinical",
            b'{"signal": [[1.5, 2.5]], "fs": 500}',
            {**bearer(WARD_KEY), **json_headers},
            422,
            "ward",
            None,
        ),
        "401": ("/clinical", sentinel_json, {**bearer("wrong-key-0000000000"), **json_headers}, 401, None, None),
        "415": ("/clinical", sentinel_json, {**bearer(WARD_KEY), "content-type": "text/plain"}, 415, "ward", None),
    }
    jobs = [(f"audit-{kind}-{n}", kind) for n in range(4) for kind in kinds]

    def send(request_id: str, kind: str) -> int:
        path, body, headers, *_ = kinds[kind]
        headers = {**headers, "x-request-id": request_id}
        if path.endswith("/npy?fs=500"):
            headers["content-type"] = "application/octet-stream"
        return httpx.post(hardened["url"] + path, content=body, headers=headers, timeout=120).status_code

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        statuses = dict(zip(jobs, pool.map(lambda job: send(*job), jobs), strict=True))
    assert statuses == {job: kinds[job[1]][3] for job in jobs}
    lines = [line for line in audit_lines(hardened["dir"]) if str(line["request_id"]).startswith("audit-")]
    assert sorted(line["request_id"] for line in lines) == sorted(request_id for request_id, _ in jobs)
    for line in lines:
        kind = line["request_id"].split("-")[1]
        path, body, _, status, key_name, duration_s = kinds[kind]
        assert set(line) == {
            "time",
            "request_id",
            "key_name",
            "route",
            "media_type",
            "status",
            "duration_s",
            "body_bytes",
            "body_sha256",
        }
        assert (line["route"], line["status"], line["key_name"]) == (path.split("?")[0], status, key_name)
        assert line["duration_s"] == duration_s
        assert (line["body_bytes"], line["body_sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
    text = (hardened["dir"] / "audit.jsonl").read_text()
    assert "123.456" not in text and not any(key in text for key in (DEFAULT_KEY, WARD_KEY, RESEARCH_KEY))


def test_the_audit_trail_has_the_requests_in_flight_at_sigterm(tmp_path: Path) -> None:
    """SIGTERM to the server's main process (what Kubernetes does) while four 60 s records are scored: each is
    answered, and each has its line with the status its client read."""
    (tmp_path / "keys.txt").write_text(keys_text(ward=WARD_KEY))
    server = start_server(tmp_path)
    record = load_json_record("JS06908.json")
    body = npy_bytes([lead * 6 for lead in record["signal"]])  # 60 s: 12 segments per model
    headers = {**bearer(WARD_KEY), "content-type": "application/octet-stream"}

    def post(request_id: str) -> int | str:
        try:
            sent = {**headers, "x-request-id": request_id}
            return httpx.post(server.url + "/both/npy?fs=500", content=body, headers=sent, timeout=120).status_code
        except httpx.HTTPError as exc:
            return type(exc).__name__

    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            request_ids = [f"sigterm-{n}" for n in range(4)]
            futures = [pool.submit(post, request_id) for request_id in request_ids]
            time.sleep(2)  # the bodies are sent, the batches are running
            server.process.send_signal(signal.SIGTERM)
            statuses = dict(zip(request_ids, [future.result() for future in futures], strict=True))
        server.process.wait(timeout=60)
    finally:
        server.stop()
    assert statuses == dict.fromkeys(request_ids, 200)
    lines = {line["request_id"]: line for line in audit_lines(tmp_path)}
    assert {request_id: lines[request_id]["status"] for request_id in request_ids} == statuses
    assert {lines[request_id]["duration_s"] for request_id in request_ids} == {60.0}
