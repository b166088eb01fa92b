"""Operations, end to end on loopback: no usage analytics, request IDs, model-worker faults under load, draining on
SIGTERM, slow clients, the operator's metrics and tracing (docs/operations.md).

Every test that needs a server starts its own (small held-out models) through :class:`tests.launcher.ServerProcess`;
loops are bounded in time and requests.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_DIR

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
