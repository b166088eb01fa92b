"""A thresholds file written by ``ecgfm evaluate`` in the real server (``ECGFM_THRESHOLDS``): ``POST /interpret``
reports each finding as the file's numbers say, ``/info`` names the file and its provenance, and a bad file stops
``bentoml serve`` at start with one message (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from ecgfm.labels import LABELS
from tests.conftest import FINETUNED_CKPT, PRETRAINED_CKPT, bentoml_server
from tests.launcher import serve_until_it_ends
from tests.test_evaluation import evaluate, synthetic, write_labels, write_predictions

pytestmark = pytest.mark.server
WEIGHTS = {"ECGFM_PRETRAINED_CHECKPOINT": str(PRETRAINED_CKPT), "ECGFM_FINETUNED_CHECKPOINT": str(FINETUNED_CKPT)}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("evaluated")
    names, truth, probabilities = synthetic(150, seed=21)
    predictions = write_predictions(folder / "predictions.jsonl", names, probabilities)
    labels = write_labels(folder / "labels.csv", names, truth)
    out = folder / "out"
    assert evaluate(predictions, "--labels", labels, "--out", out, "--bootstrap", 10, "--target-sensitivity", 0.9) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "names": names,
        "truth": truth,
        "p": probabilities,
        "thresholds": out / "thresholds.yaml",
        "metrics": metrics,
    }


def test_the_server_interprets_with_the_thresholds_file_and_says_so_in_info(
    evaluated: dict[str, Any], tmp_path: Path
) -> None:
    thresholds = evaluated["thresholds"]
    env = WEIGHTS | {"ECGFM_THRESHOLDS": str(thresholds)}
    with bentoml_server(env, tmp_path / "server.log") as url, httpx.Client(base_url=url, timeout=60) as client:
        info = client.get("/info").json()
        present: dict[str, set[str]] = {label: set() for label in LABELS}
        for name, row in zip(evaluated["names"], evaluated["p"], strict=True):
            answer = client.post(
                "/interpret", json={"record": name, "probabilities": dict(zip(LABELS, row.tolist(), strict=True))}
            )
            assert answer.status_code == 200, answer.text
            report = answer.json()
            assert report["thresholds_source"] == str(thresholds)
            for finding in report["findings"]:
                if finding["status"] == "present":
                    present[finding["label"]].add(name)
    written = yaml.safe_load(thresholds.read_text())
    assert info["thresholds"] == {"source": str(thresholds), "provenance": written["provenance"]}
    assert info["thresholds"]["provenance"]["method"] == "target_sensitivity"
    assert info["thresholds"]["provenance"]["n_records"] == 150
    assert info["settings"]["interpreter"] == {"thresholds": str(thresholds)}
    for label, entry in evaluated["metrics"]["labels"].items():
        if not entry["evaluable"]:
            continue
        known = set(np.array(evaluated["names"])[~np.isnan(evaluated["truth"][:, LABELS.index(label)])])
        chosen = entry["thresholds"]["chosen"]
        assert chosen["sensitivity"] >= 0.9
        assert len(present[label] & known) == chosen["tp"] + chosen["fp"], label  # as metrics.json counts them
        assert written["labels"][label]["threshold"] == chosen["threshold"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot be read"),
        ("labels: [unclosed", "not valid YAML"),
        ("labels:\n  Infarction: {threshold: 1.5}\n", "labels.Infarction.threshold must be a number in (0, 1]"),
        ("provenance: from a study\n", "provenance must be a mapping"),
    ],
    ids=["missing", "not-yaml", "out-of-range", "bad-provenance"],
)
def test_a_bad_thresholds_file_stops_the_server_at_start_with_one_message(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "thresholds.yaml"
    if content is not None:
        path.write_text(content)
    ended = serve_until_it_ends(WEIGHTS | {"ECGFM_THRESHOLDS": str(path)}, tmp_path / "bentoml_home", timeout_s=120)
    output = ended.output
    assert ended.returncode == 2, output
    assert ended.seconds < 60
    assert output.count("ecgfm-serve: cannot start:") == 1 and message in output and str(path) in output, output
    assert "Traceback" not in output, output
