"""``bentoml build`` packs the service into a Bento: code, pinned packages, a CUDA Dockerfile and the OpenAPI."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_DIR

SIX_ENDPOINTS = {"/clinical": "post", "/features": "post", "/both": "post"} | dict.fromkeys(
    ("/health", "/info", "/status"), "get"
)


@pytest.fixture(scope="module")
def bento_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Bento that ``bentoml build`` writes into a fresh BENTOML_HOME."""
    home = tmp_path_factory.mktemp("bentoml_home")
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    subprocess.run(
        [str(REPO_DIR / ".venv" / "bin" / "bentoml"), "build", "."],
        cwd=REPO_DIR,
        env=env,
        check=True,
        capture_output=True,
    )
    (bento_yaml,) = (home / "bentos" / "ecgfm-serve").glob("*/bento.yaml")
    return bento_yaml.parent


def test_bento_holds_the_service_code_and_no_tests(bento_dir: Path) -> None:
    source = bento_dir / "src"
    assert all(
        (source / name).is_file()
        for name in ("service.py", "serving/contract.py", "serving/middleware.py", "serving/web/ui.js")
    )
    assert (source / "ecgfm" / "inference.py").is_file()
    assert not (source / "tests").exists() and not (source / ".venv").exists()


def test_bento_entry_point_is_the_api_service(bento_dir: Path) -> None:
    bento = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    assert bento["service"] == "service:ECGFMService"
    assert {service["name"] for service in bento["services"]} == {"ECGFMService", "Pretrained", "Finetuned"}


def test_bento_pins_torch_and_bentoml(bento_dir: Path) -> None:
    requirements = (bento_dir / "env" / "python" / "requirements.txt").read_text().splitlines()
    assert "torch==2.13.0" in requirements and "bentoml==1.4.40" in requirements


def test_generated_dockerfile_uses_a_cuda_image_with_python_3_11(bento_dir: Path) -> None:
    dockerfile = (bento_dir / "env" / "docker" / "Dockerfile").read_text()
    assert dockerfile.splitlines()[
        next(i for i, line in enumerate(dockerfile.splitlines()) if line.startswith("FROM"))
    ] == ("FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 as base-container")
    assert "python3.11" in dockerfile and "EXPOSE 3000" in dockerfile
    assert "env/python/install.sh" in dockerfile


def test_bento_openapi_describes_the_six_endpoints(bento_dir: Path) -> None:
    spec = yaml.safe_load((bento_dir / "apis" / "openapi.yaml").read_text())
    for path, method in SIX_ENDPOINTS.items():
        responses = {str(code): response for code, response in spec["paths"][path][method]["responses"].items()}
        assert responses["200"]["content"]["application/json"]["schema"], path
