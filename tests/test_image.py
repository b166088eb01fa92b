"""The CPU OCI image: ``scripts/build_image.sh --cpu`` builds it with buildah, and the server inside it answers
``/health``, ``/info`` and ``/clinical`` exactly as ``bentoml serve`` outside the image does.

The Bento tests (no image) run with the suite. The image tests are slow (a build takes minutes) and run only when
asked for: ``ECGFM_RUN_IMAGE_TEST=1 ./run.sh test tests/test_image.py`` or ``./run.sh test -m slow``. On a machine
without a registry for base images and with a TLS-re-signing proxy (the build machines of this project), add
``ECGFM_IMAGE_SANDBOX=1``: local stand-in base image, vfs storage, chroot isolation, host CA bundle in the build.

The server inside the image runs with ``buildah run`` (no container engine needed), on loopback, with the parity
checkpoints of ``../shared/parity/ckpt`` mounted read-only at ``/ckpt``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CKPT_DIR, DATA_DIR, FINETUNED_CKPT, PRETRAINED_CKPT, REPO_DIR
from tests.launcher import free_port

BUILD_SCRIPT = REPO_DIR / "scripts" / "build_image.sh"
BUILD_TIMEOUT_S = 1800  # vfs copies the ~2.4 GB of layers; about 4-5 min on 2 cores
START_TIMEOUT_S = 180
STOP_TIMEOUT_S = 30
SANDBOX = os.environ.get("ECGFM_IMAGE_SANDBOX") == "1"
TORCH_CPU = "2.13.0+cpu"
RECORD = "JS36330.json"


def _script_env(bentoml_home: Path) -> dict[str, str]:
    return {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "true"}


def _buildah_env() -> dict[str, str]:
    """What ``build_image.sh --sandbox`` exports, so that ``buildah from/run`` see the same image store."""
    if not SANDBOX:
        return dict(os.environ)
    conf = REPO_DIR / "build" / "image" / "storage-vfs.conf"
    return {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf), "BUILDAH_ISOLATION": "chroot"}


def _image_tests_requested(config: pytest.Config) -> bool:
    markexpr = config.getoption("markexpr") or ""
    return os.environ.get("ECGFM_RUN_IMAGE_TEST") == "1" or ("slow" in markexpr and "not slow" not in markexpr)


# --- the CPU Bento (seconds; runs with the suite) ---------------------------------------------------------------------


def test_cpu_bentofile_packs_the_same_code_as_the_gpu_bentofile() -> None:
    import yaml

    gpu, cpu = (yaml.safe_load((REPO_DIR / name).read_text()) for name in ("bentofile.yaml", "bentofile.cpu.yaml"))
    for key in ("service", "include", "exclude", "description"):
        assert cpu[key] == gpu[key], key
    assert cpu["docker"]["python_version"] == gpu["docker"]["python_version"]
    assert cpu["docker"]["env"] == gpu["docker"]["env"]
    assert "cuda_version" not in cpu["docker"]


@pytest.fixture(scope="module")
def cpu_bento_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CPU Bento as ``build_image.sh --cpu --bento-only`` builds it into a fresh BENTOML_HOME."""
    home = tmp_path_factory.mktemp("bentoml_home_cpu")
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--cpu", "--bento-only"],
        cwd=REPO_DIR,
        env=_script_env(home),
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return Path(result.stdout.strip().splitlines()[-1])


def test_cpu_bento_requirements_leave_torch_to_the_carried_wheel(cpu_bento_dir: Path) -> None:
    requirements = (cpu_bento_dir / "env" / "python" / "requirements.txt").read_text().splitlines()
    assert not [line for line in requirements if line.startswith("torch")]
    assert "bentoml==1.4.40" in requirements


def test_cpu_bento_carries_the_torch_cpu_wheel(cpu_bento_dir: Path) -> None:
    wheels = [path.name for path in (cpu_bento_dir / "env" / "python" / "wheels").glob("*.whl")]
    assert wheels == ["torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"]


def test_cpu_bento_dockerfile_starts_from_python_3_11_slim(cpu_bento_dir: Path) -> None:
    dockerfile = (cpu_bento_dir / "env" / "docker" / "Dockerfile").read_text().splitlines()
    assert next(line for line in dockerfile if line.startswith("FROM")) == "FROM python:3.11-slim as base-container"


def test_cpu_bento_serves_the_same_service_as_the_gpu_bento(cpu_bento_dir: Path) -> None:
    import yaml

    bento = yaml.safe_load((cpu_bento_dir / "bento.yaml").read_text())
    assert bento["service"] == "service:ECGFMService"
    assert {service["name"] for service in bento["services"]} == {"ECGFMService", "Pretrained", "Finetuned"}


# --- the CPU image, served by buildah run (minutes; slow) -------------------------------------------------------------


@pytest.fixture(scope="module")
def cpu_image(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``build_image.sh --cpu`` (``--sandbox`` with ECGFM_IMAGE_SANDBOX=1); yields the image name, removes it after."""
    if not _image_tests_requested(request.config):
        pytest.skip("image build takes minutes: set ECGFM_RUN_IMAGE_TEST=1 or select -m slow")
    if shutil.which("buildah") is None:
        pytest.skip("buildah is not installed (apt-get install buildah)")
    home = tmp_path_factory.mktemp("bentoml_home_image")
    command = ["bash", str(BUILD_SCRIPT), "--cpu"] + (["--sandbox"] if SANDBOX else [])
    log_path = home / "build.log"
    started = time.monotonic()
    with open(log_path, "w") as log:
        result = subprocess.run(
            command, cwd=REPO_DIR, env=_script_env(home), stdout=subprocess.PIPE, stderr=log, text=True,
            timeout=BUILD_TIMEOUT_S,
        )  # fmt: skip
    if result.returncode != 0:
        pytest.fail(f"build_image.sh failed ({result.returncode}):\n{log_path.read_text()[-4000:]}")
    image = result.stdout.strip().splitlines()[-1]
    print(f"\nimage {image} built in {time.monotonic() - started:.0f} s")
    yield image
    subprocess.run(["buildah", "rmi", image], env=_buildah_env(), capture_output=True, timeout=300)


def _stop_buildah_run(process: subprocess.Popen) -> None:
    """SIGTERM to ``bentoml serve`` inside (it stops its workers), then whatever is left of the process tree.

    Killing ``buildah run`` itself would orphan the workers: they run in process groups of their own.
    """
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        tree = psutil.Process(process.pid).children(recursive=True)
        for child in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                if "serve" in child.cmdline() and any("bentoml" in part for part in child.cmdline()):
                    child.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=STOP_TIMEOUT_S)
        for child in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def image_url(cpu_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The image's entry point (``bentoml serve``) under ``buildah run``, on a free loopback port; yields its URL."""
    import httpx

    env = _buildah_env()
    container = subprocess.run(
        ["buildah", "from", cpu_image], env=env, check=True, capture_output=True, text=True, timeout=300
    ).stdout.strip()
    port = free_port()
    log_path = tmp_path_factory.mktemp("image_server") / "server.log"
    command = ["buildah", "run", "--network", "host", "--volume", f"{CKPT_DIR.resolve()}:/ckpt:ro"]
    command += ["--env", f"ECGFM_PRETRAINED_CHECKPOINT=/ckpt/{PRETRAINED_CKPT.name}"]
    command += ["--env", f"ECGFM_FINETUNED_CHECKPOINT=/ckpt/{FINETUNED_CKPT.name}"]
    command += ["--env", "BENTOML_DO_NOT_TRACK=true"]
    command += [container, "--", "/home/bentoml/bento/env/docker/entrypoint.sh", "--host", "127.0.0.1"]
    command += ["--port", str(port)]
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"buildah run exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() - started > START_TIMEOUT_S:
                pytest.fail(f"server in the image not ready after {START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        print(f"\nserver in {cpu_image} ready (/readyz) {time.monotonic() - started:.1f} s after buildah run")
        yield url
    finally:
        _stop_buildah_run(process)
        subprocess.run(["buildah", "rm", container], env=env, capture_output=True, timeout=120)


def _get(url: str, path: str) -> tuple[int, dict]:
    import httpx

    response = httpx.get(f"{url}{path}", timeout=30)
    return response.status_code, response.json()


def _clinical(url: str) -> tuple[int, dict]:
    import httpx

    record = json.loads((DATA_DIR / RECORD).read_text())
    body = {"signal": record["signal"], "fs": record["fs"], "lead_names": record["lead_names"]}
    response = httpx.post(f"{url}/clinical", json=body, timeout=120)
    return response.status_code, response.json()


def _without_paths(info: dict) -> dict:
    """``/info`` less what differs by construction: checkpoint paths (``/ckpt`` inside) and package versions."""
    info = json.loads(json.dumps(info))
    for model in info["models"].values():
        model.pop("path")
    info.pop("versions")
    return info


@pytest.mark.slow
def test_image_health_equals_health_outside_the_image(image_url: str, server_url: str) -> None:
    assert _get(image_url, "/health") == _get(server_url, "/health")


@pytest.mark.slow
def test_image_info_equals_info_outside_the_image(image_url: str, server_url: str) -> None:
    (image_status, image_info), (status, info) = _get(image_url, "/info"), _get(server_url, "/info")
    assert image_status == status == 200
    assert _without_paths(image_info) == _without_paths(info)


@pytest.mark.slow
def test_image_serves_the_mounted_checkpoints(image_url: str, server_url: str) -> None:
    _, info = _get(image_url, "/info")
    _, outside = _get(server_url, "/info")
    assert {kind: model["path"] for kind, model in info["models"].items()} == {
        "pretrained": f"/ckpt/{PRETRAINED_CKPT.name}",
        "finetuned": f"/ckpt/{FINETUNED_CKPT.name}",
    }
    assert {kind: model["sha256"] for kind, model in info["models"].items()} == {
        kind: model["sha256"] for kind, model in outside["models"].items()
    }


@pytest.mark.slow
def test_image_runs_the_torch_cpu_build_and_pinned_bentoml(image_url: str) -> None:
    _, info = _get(image_url, "/info")
    assert info["versions"]["torch"] == TORCH_CPU
    assert info["versions"]["bentoml"] == "1.4.40"


@pytest.mark.slow
def test_image_clinical_equals_clinical_outside_the_image(image_url: str, server_url: str) -> None:
    (image_status, image_body), (status, body) = _clinical(image_url), _clinical(server_url)
    assert image_status == status == 200
    assert image_body.pop("probabilities") == pytest.approx(body.pop("probabilities"), abs=1e-6)
    assert image_body["checkpoint"].pop("path") == f"/ckpt/{FINETUNED_CKPT.name}"
    body["checkpoint"].pop("path")
    assert image_body == body
