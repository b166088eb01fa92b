"""Shared test fixtures: paths to the real fixtures in ``../shared`` (parity checkpoints, PhysioNet records)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.launcher import ServerProcess, bentoml_command, free_port, server_env

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


@contextlib.contextmanager
def bentoml_server(
    env: dict[str, str], log_path: Path, ready_path: str = "/readyz", extra_args: tuple[str, ...] = ()
) -> Iterator[str]:
    """``bentoml serve service:ECGFMService`` (plus ``extra_args``) on a free loopback port with only ``env`` as
    ``ECGFM_*`` settings and a BentoML home of its own; yields its URL once ``ready_path`` answers 200 (with
    ``ECGFM_API_KEY`` in ``env``, ready_path must be public). Output goes to ``log_path``."""
    port = free_port()
    command = bentoml_command(port, *extra_args)
    environ = server_env(env, bentoml_home=log_path.parent / "bentoml_home")
    with ServerProcess(command, environ, log_path, port, ready_path, SERVER_START_TIMEOUT_S) as server:
        yield server.url


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real service with the parity checkpoints, shared by the whole session; ``SERVER_LOG["path"]`` is its log."""
    SERVER_LOG["path"] = tmp_path_factory.mktemp("server") / "server.log"
    env = {"ECGFM_PRETRAINED_CHECKPOINT": str(PRETRAINED_CKPT), "ECGFM_FINETUNED_CHECKPOINT": str(FINETUNED_CKPT)}
    with bentoml_server(env, SERVER_LOG["path"]) as url:
        yield url
