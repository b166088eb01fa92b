"""The settings (``ecgfm.settings``): one typed object per concern, read from the environment in one place."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from ecgfm.settings import (
    TABLE_END,
    TABLE_START,
    RuntimeSettings,
    ServingSettings,
    Settings,
    SettingsError,
    WeightsSettings,
    markdown_table,
    variables,
)
from tests.conftest import REPO_DIR

PRODUCT_CODE = [
    "service.py",
    "serving",
    "ecgfm",
    "interpreter",
]


def test_defaults_with_an_empty_environment() -> None:
    settings = Settings.from_env({})
    assert settings.weights == WeightsSettings()
    assert settings.weights.hf_revision == "main" and settings.weights.demo is False
    assert settings.runtime == RuntimeSettings(device="auto", precision="fp32", pos_conv="conv", compile=False)
    serving = settings.serving
    assert (serving.max_duration_s, serving.max_concurrency, serving.max_latency_ms) == (600, 64, 120_000)
    assert serving.request_timeout_s == 300 and serving.api_key == ""
    assert serving.max_body_bytes == 600 * 1000 * 12 * 24  # the longest record at 1000 Hz as JSON
    assert serving.max_batch_size == 8  # CPU (this machine has no CUDA)
    assert settings.interpreter.thresholds is None  # the interpreter's defaults (interpreter/thresholds.yaml)


def test_each_variable_sets_its_field() -> None:
    environ = {
        "ECGFM_FINETUNED_CHECKPOINT": "/models/f.pt",
        "ECGFM_FINETUNED_SHA256": "AB" * 32,
        "ECGFM_DEMO": "yes",
        "ECGFM_DEMO_SIZE": "SMALL",
        "ECGFM_PRECISION": "bf16",
        "ECGFM_POS_CONV": "fft",
        "ECGFM_COMPILE": "1",
        "ECGFM_DEVICE": "cpu",
        "ECGFM_MAX_DURATION_S": "30",
        "ECGFM_MAX_BATCH_SIZE": " 16 ",
        "ECGFM_API_KEY": "s3cret",
        "ECGFM_THRESHOLDS": "/site/thresholds.yaml",
        "ECGFM_PROBES_DIR": "/srv/probes",
    }
    settings = Settings.from_env(environ)
    assert (
        settings.weights.checkpoint("finetuned") == "/models/f.pt" and settings.weights.checkpoint("pretrained") is None
    )
    assert settings.weights.sha256("finetuned") == "ab" * 32 and settings.weights.demo
    assert settings.weights.demo_size == "small"
    assert settings.runtime == RuntimeSettings(device="cpu", precision="bf16", pos_conv="fft", compile=True)
    assert settings.serving.max_batch_size == 16 and settings.serving.api_key == "s3cret"
    assert settings.serving.probes_dir == "/srv/probes"
    assert settings.serving.max_body_bytes == 30 * 1000 * 12 * 24  # follows the duration limit when unset
    assert settings.interpreter.thresholds == "/site/thresholds.yaml"
    assert settings.to_dict()["interpreter"] == {"thresholds": "/site/thresholds.yaml"}  # what /info shows


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("ECGFM_MAX_BATCH_SIZE", "abc", "ECGFM_MAX_BATCH_SIZE='abc': expected an integer ≥ 2"),
        ("ECGFM_MAX_BATCH_SIZE", "1", "ECGFM_MAX_BATCH_SIZE='1': expected an integer ≥ 2"),
        ("ECGFM_MAX_CONCURRENCY", "2.5", "ECGFM_MAX_CONCURRENCY='2.5': expected an integer ≥ 1"),
        ("ECGFM_MAX_DURATION_S", "nan", "ECGFM_MAX_DURATION_S='nan': expected a number ≥ 1"),
        ("ECGFM_PRECISION", "int4", "ECGFM_PRECISION='int4': expected one of fp32, bf16, fp16, int8, auto"),
        ("ECGFM_POS_CONV", "fftw", "ECGFM_POS_CONV='fftw': expected one of conv, fft"),
        ("ECGFM_COMPILE", "2", "ECGFM_COMPILE='2': expected 1 or 0"),
        ("ECGFM_DEMO", "maybe", "ECGFM_DEMO='maybe': expected 1 or 0"),
        ("ECGFM_PRETRAINED_SHA256", "123", "ECGFM_PRETRAINED_SHA256='123': expected a sha256"),
        ("ECGFM_DEVICE", "gpu7", "ECGFM_DEVICE='gpu7': expected auto or a torch device"),
    ],
)
def test_a_bad_value_is_refused_with_one_message_naming_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({variable: value})
    assert str(raised.value).startswith(message)


def test_the_api_key_never_appears_in_messages_reprs_or_reports() -> None:
    settings = Settings.from_env({"ECGFM_API_KEY": "s3cret-key"})
    assert "s3cret-key" not in repr(settings) and "s3cret-key" not in str(settings.to_dict())
    assert settings.to_dict()["serving"]["api_key_set"] is True and "api_key" not in settings.to_dict()["serving"]
    assert Settings.from_env({}).to_dict()["serving"]["api_key_set"] is False


def test_unset_and_empty_variables_keep_the_defaults() -> None:
    assert ServingSettings.from_env({"ECGFM_MAX_BATCH_SIZE": "", "ECGFM_API_KEY": "  "}) == ServingSettings.from_env({})


def test_every_variable_has_a_documented_meaning_and_a_unique_name() -> None:
    names = [row["env"] for row in variables()]
    assert len(names) == len(set(names)) == 26
    assert all(name.startswith("ECGFM_") for name in names)
    assert all(row["doc"] and row["default"] for row in variables())


def test_the_deployment_doc_table_is_the_generated_one() -> None:
    doc = (REPO_DIR / "docs" / "deployment.md").read_text()
    table = doc[doc.index(TABLE_START) : doc.index(TABLE_END) + len(TABLE_END)]
    assert table == markdown_table(), "regenerate it: .venv/bin/python -m ecgfm.settings"
    printed = subprocess.run([sys.executable, "-m", "ecgfm.settings"], capture_output=True, text=True, check=True)
    assert printed.stdout.strip() == markdown_table()


def test_no_module_but_the_settings_reads_an_ecgfm_variable() -> None:
    """Each variable is read in exactly one place: no other product module touches the environment for one."""
    reads = re.compile(r"os\.environ|os\.getenv|environ\.get")
    offenders = []
    for entry in PRODUCT_CODE:
        path = REPO_DIR / entry
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            if file.name != "settings.py" and reads.search(file.read_text()):
                offenders.append(str(file.relative_to(REPO_DIR)))
    assert offenders == []


def test_every_variable_the_product_names_is_a_setting() -> None:
    """An ``ECGFM_*`` name in the product's code that is not in the table would be a setting nobody reads."""
    known = {row["env"] for row in variables()}
    named = set()
    for entry in PRODUCT_CODE:
        path = REPO_DIR / entry
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            named |= set(re.findall(r"\bECGFM_[A-Z0-9_]*[A-Z0-9]\b", file.read_text()))
    assert named - known == set()
