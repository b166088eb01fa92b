"""Shared test fixtures: paths to the real fixtures in ``../shared`` (parity checkpoints, PhysioNet records)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

REPO_DIR = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_DIR.parent / "shared"
PARITY_DIR = SHARED_DIR / "parity"
DATA_DIR = SHARED_DIR / "data"
CKPT_DIR = PARITY_DIR / "ckpt"
PRETRAINED_CKPT = CKPT_DIR / "ecgfm_small_pretrained.pt"
FINETUNED_CKPT = CKPT_DIR / "ecgfm_small_finetuned.pt"
TWELVE_LEAD_RECORDS = [
    entry["json"]
    for entry in json.loads((DATA_DIR / "index.json").read_text())["records"]
    if len(entry["lead_names"]) == 12
]

SERVER_START_TIMEOUT_S = 120
SERVER_LOG: dict[str, Path] = {}  # {"path": the running test server's log file}


@pytest.fixture(scope="session")
def reference() -> dict[str, np.ndarray]:
    """The real fairseq-signals models' inputs, outputs and intermediates (``reference_outputs.npz``)."""
    with np.load(PARITY_DIR / "reference_outputs.npz") as npz:
        return {key: npz[key] for key in npz.files}


def load_json_record(name: str) -> dict:
    """A record of ``../shared/data`` as its JSON dict (signal in mV, ``fs``, ``lead_names``, labels)."""
    return json.loads((DATA_DIR / name).read_text())


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def bentoml_server(
    env: dict[str, str], log_path: Path, ready_path: str = "/readyz", extra_args: tuple[str, ...] = ()
) -> Iterator[str]:
    """Run ``bentoml serve service:ECGFMService`` (plus ``extra_args``) on a free loopback port with ``env`` added;
    yield its URL once ``ready_path`` answers 200 (with ``ECGFM_API_KEY`` in ``env``, ready_path must be public);
    stop the whole process group afterwards. Output goes to ``log_path``."""
    import httpx

    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("ECGFM_")} | env
    env["BENTOML_DO_NOT_TRACK"] = "true"
    # Its own BentoML home: servers sharing one wipe each other's Prometheus files (/metrics) at start.
    env["BENTOML_HOME"] = str(log_path.parent / "bentoml_home")
    command = [str(REPO_DIR / ".venv" / "bin" / "bentoml"), "serve", "service:ECGFMService"]
    command += ["--host", "127.0.0.1", "--port", str(port), *extra_args]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}{ready_path}", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"bentoml serve not ready after {SERVER_START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real service with the parity checkpoints, shared by the whole session; ``SERVER_LOG["path"]`` is its log."""
    SERVER_LOG["path"] = tmp_path_factory.mktemp("server") / "server.log"
    env = {"ECGFM_PRETRAINED_CHECKPOINT": str(PRETRAINED_CKPT), "ECGFM_FINETUNED_CHECKPOINT": str(FINETUNED_CKPT)}
    with bentoml_server(env, SERVER_LOG["path"]) as url:
        yield url
