"""``ecgfm predict`` and friends, run as a user runs them (a subprocess), on real records and parity checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ecgfm.inference import Predictor
from ecgfm.labels import LABELS
from ecgfm.records.readers import read_record
from tests.conftest import DATA_DIR, FINETUNED_CKPT, PRETRAINED_CKPT, REPO_DIR

CHECKPOINT_ARGS = ["--pretrained", str(PRETRAINED_CKPT), "--finetuned", str(FINETUNED_CKPT)]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ecgfm", *args],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_paths(str(PRETRAINED_CKPT), str(FINETUNED_CKPT), device="cpu")


def test_predict_writes_one_json_line_per_record_in_every_input_format(tmp_path):
    record = read_record(DATA_DIR / "JS36330.json")
    npy = tmp_path / "JS36330.npy"
    np.save(npy, record.signal)
    result = run_cli(
        "predict",
        *CHECKPOINT_ARGS,
        "--fs",
        "500",
        str(DATA_DIR / "JS36330.json"),
        str(DATA_DIR / "JS36330.csv"),
        str(npy),
        str(DATA_DIR / "DeepPSP_cinc2021" / "JS36330.hea"),
        "--output",
        str(tmp_path / "out.jsonl"),
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["record"] for line in lines] == ["JS36330"] * 4
    for line in lines:
        assert list(line["clinical"]["probabilities"]) == list(LABELS)
        assert line["features"]["dim"] == 64 and len(line["features"]["features"]) == 64
        assert line["clinical"]["n_segments"] == line["features"]["n_segments"] == 2
    # JSON (3 decimals), CSV, .npy and the original WFDB file hold the same signal, so the outputs agree.
    reference = lines[0]["clinical"]["probabilities"]
    for line in lines[1:]:
        for label in LABELS:
            assert line["clinical"]["probabilities"][label] == pytest.approx(reference[label], abs=1e-5)


def test_predict_equals_the_python_api(predictor, tmp_path):
    result = run_cli("predict", *CHECKPOINT_ARGS, "--per-segment", str(DATA_DIR / "A1041.json"))
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout)
    expected = predictor.predict(read_record(DATA_DIR / "A1041.json"), per_segment=True)
    assert line == json.loads(json.dumps(expected))
    assert len(line["clinical"]["segments"]) == 3 and len(line["features"]["segments"]) == 3


def test_a_bad_file_is_reported_and_skipped_without_stopping_the_batch(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"signal": [[1, 2], [3]], "fs": 500}')
    result = run_cli("predict", *CHECKPOINT_ARGS, str(bad), str(DATA_DIR / "A0689.json"), str(tmp_path / "none.json"))
    assert result.returncode == 2  # bad input, as everywhere in the CLI; the readable record is still written
    assert [json.loads(line)["record"] for line in result.stdout.splitlines()] == ["A0689"]
    assert "skipped" in result.stderr and "broken.json: ragged leads" in result.stderr
    assert "none.json: no such file" in result.stderr
    assert "2 of 3 records skipped" in result.stderr


def test_a_georgia_header_that_wfdb_rejects_is_still_read():
    record = read_record(DATA_DIR / "DeepPSP_cinc2021" / "E05526.hea")
    reference = read_record(DATA_DIR / "E05526.json")
    assert record.fs == 500 and record.lead_names == reference.lead_names
    np.testing.assert_allclose(record.signal, reference.signal, atol=1e-3)


@pytest.mark.parametrize(
    "name", ["MIT-LCP_wfdb-python/100", "MIT-LCP_wfdb-python/100.dat", "DeepPSP_cinc2021/A0689.mat"]
)
def test_a_wfdb_record_can_be_named_without_its_header_suffix(name):
    record = read_record(DATA_DIR / name)
    expected = read_record((DATA_DIR / name).with_suffix(".hea"))
    assert record.fs == expected.fs and record.lead_names == expected.lead_names
    np.testing.assert_array_equal(record.signal, expected.signal)


def test_only_clinical_runs_the_finetuned_model_alone():
    result = run_cli("predict", "--finetuned", str(FINETUNED_CKPT), "--only", "clinical", str(DATA_DIR / "A0689.json"))
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout)
    assert "clinical" in line and "features" not in line


def test_without_weights_offline_the_error_says_which_variables_to_set(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "ECGFM_DEMO": ""}
    env.update({"ECGFM_PRETRAINED_CHECKPOINT": "", "ECGFM_FINETUNED_CHECKPOINT": ""})
    result = run_cli("predict", str(DATA_DIR / "A0689.json"), env=env)
    assert result.returncode == 2
    assert "ECGFM_PRETRAINED_CHECKPOINT" in result.stderr and "ECGFM_DEMO=1" in result.stderr
    assert "wanglab/ecg-fm" in result.stderr
    assert result.stdout == ""


def test_demo_checkpoints_are_only_used_when_asked_and_then_say_demo(tmp_path):
    written = run_cli("demo-checkpoints", "--out", str(tmp_path), "--size", "small")
    assert written.returncode == 0 and "DEMO" in written.stdout
    result = run_cli(
        "predict",
        "--pretrained",
        str(tmp_path / "pretrained.pt"),
        "--finetuned",
        str(tmp_path / "finetuned.pt"),
        str(DATA_DIR / "A0689.json"),
    )
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout)
    assert line["clinical"]["demo"] is True and line["features"]["demo"] is True
    assert line["clinical"]["checkpoint"]["demo"] is True
    assert "DEMO (random) weights" in result.stderr


def test_demo_mode_from_the_environment_generates_and_flags_demo_weights(tmp_path):
    env = {"ECGFM_DEMO": "1", "ECGFM_DEMO_DIR": str(tmp_path), "ECGFM_DEMO_SIZE": "small", "HF_HUB_OFFLINE": "1"}
    env.update({"ECGFM_PRETRAINED_CHECKPOINT": "", "ECGFM_FINETUNED_CHECKPOINT": ""})
    result = run_cli("predict", str(DATA_DIR / "A0689.json"), env=env)
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout)
    assert line["clinical"]["checkpoint"]["origin"] == "demo" and line["features"]["demo"] is True


def test_inspect_describes_a_checkpoint():
    result = run_cli("inspect", str(FINETUNED_CKPT))
    summary = json.loads(result.stdout)
    assert summary["kind"] == "finetuned" and summary["parameters"] == 93_793
    assert summary["config"]["embed_dim"] == 64 and summary["config"]["num_labels"] == 17
