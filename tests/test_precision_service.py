"""A real ``bentoml serve`` with ``ECGFM_PRECISION=int8``: /info, /status and every response say the variant and its
self-check; answers stay within 0.01 of the fp32 reference on a held-out record; a checkpoint int8 cannot serve
within the bound ends start-up with one message and exit status 2, before any worker starts."""

from __future__ import annotations

import httpx
import numpy as np

from ecgfm.inference import Predictor, load_model
from ecgfm.precision import PROBABILITY_BOUND, SELF_CHECK_RECORDS
from ecgfm.records.readers import read_record
from tests.conftest import DATA_DIR, FINETUNED_CKPT, PRETRAINED_CKPT, bentoml_server, load_json_record
from tests.launcher import serve_until_it_ends
from tests.test_precision import write_outlier_checkpoint

INT8 = {"ECGFM_PRECISION": "int8", "ECGFM_POS_CONV": "fft"}
HELD_OUT_RECORD = "A0689.json"  # not one of the self-check's records


def test_an_int8_server_reports_its_self_check_and_answers_within_the_bound(tmp_path):
    env = {"ECGFM_PRETRAINED_CHECKPOINT": str(PRETRAINED_CKPT), "ECGFM_FINETUNED_CHECKPOINT": str(FINETUNED_CKPT)}
    assert HELD_OUT_RECORD not in SELF_CHECK_RECORDS
    record = load_json_record(HELD_OUT_RECORD)
    body = {key: record[key] for key in ("signal", "fs", "lead_names")}
    with bentoml_server(env | INT8, tmp_path / "server.log") as url:
        info = httpx.get(f"{url}/info", timeout=30).json()
        status = httpx.get(f"{url}/status", timeout=30).json()
        clinical = httpx.post(f"{url}/clinical", json=body, timeout=60)
        features = httpx.post(f"{url}/features", json=body, timeout=60)
    log = (tmp_path / "server.log").read_text()
    assert log.count("passed the self-check against fp32: ") == 2  # the start-up hook's check, both models
    # each model worker took the hook's measurement (SelfCheckHandoff) rather than loading an fp32 copy again
    assert log.count("worker: the finetuned model in int8+fft passed the self-check against fp32, as measured") == 1
    assert log.count("worker: the pretrained model in int8+fft passed the self-check against fp32, as measured") == 1

    for kind in ("finetuned", "pretrained"):
        precision = info["models"][kind]["precision"]
        assert precision["variant"] == "int8+fft" and precision["reference"] is False
        check = precision["self_check"]
        assert check["passed"] is True and check["records"] == list(SELF_CHECK_RECORDS) and check["segments"] > 0
        assert status["models"][kind]["variant"] == "int8+fft" and status["models"][kind]["self_check"] == check
    assert 0 < info["models"]["finetuned"]["precision"]["self_check"]["max_probability_difference"] <= 0.01
    assert info["models"]["pretrained"]["precision"]["self_check"]["min_embedding_cosine"] >= 0.999

    assert clinical.status_code == 200 and features.status_code == 200
    assert clinical.json()["checkpoint"]["precision"] == info["models"]["finetuned"]["precision"]
    assert features.json()["checkpoint"]["precision"]["variant"] == "int8+fft"
    reference = Predictor(finetuned=load_model("finetuned", str(FINETUNED_CKPT), "cpu", "fp32"))
    expected = reference.predict(read_record(DATA_DIR / HELD_OUT_RECORD))["clinical"]["probabilities"]
    served = clinical.json()["probabilities"]
    difference = max(abs(served[label] - expected[label]) for label in expected)
    assert 0 < difference <= PROBABILITY_BOUND
    assert np.isfinite(list(served.values())).all()


def test_a_checkpoint_int8_cannot_serve_ends_start_up_with_one_message(tmp_path):
    outlier = write_outlier_checkpoint(tmp_path / "finetuned.pt")
    env = {"ECGFM_PRETRAINED_CHECKPOINT": str(PRETRAINED_CKPT), "ECGFM_FINETUNED_CHECKPOINT": str(outlier)} | INT8
    ended = serve_until_it_ends(env, tmp_path / "bentoml_home", timeout_s=180)
    output = ended.output
    assert ended.returncode == 2, output
    assert ended.seconds < 120
    assert output.count("ecgfm-serve: cannot start:") == 1
    assert output.count("the finetuned model in int8+fft fails the self-check on these weights") == 1
    assert "Traceback" not in output and "Starting production" not in output, output
