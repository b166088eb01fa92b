"""Probes (``ecgfm/probes``, ``ecgfm probe``, ``POST /probes/<name>``), end to end with real parts.

Records: every 12-lead record of ``../shared/data`` cut into its whole 5 s windows (21 records); labels: the
records' own labels from the PhysioNet headers, ``AF`` (atrial fibrillation: 5 windows) and ``SB`` (sinus
bradycardia: 4 windows). Weights: the parity checkpoints (``../shared/parity``), and small demo checkpoints for
the demo flag. The probe is fit once by ``ecgfm probe fit`` and checked against scikit-learn fit independently,
against ``ecgfm probe predict`` through a real ``bentoml serve``, and as a file.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ecgfm.cli.main import main
from ecgfm.network.checkpoint import file_sha256
from ecgfm.probes.probe import ProbeFileError, load_probe, save_probe
from tests.conftest import (
    DATA_DIR,
    FINETUNED_CKPT,
    PARITY_DIR,
    PRETRAINED_CKPT,
    REPO_DIR,
    TWELVE_LEAD_RECORDS,
    bentoml_server,
)
from tests.launcher import serve_until_it_ends

TOLERANCE = 1e-6
TARGETS = ("AF", "SB")
FIT_OPTIONS = ["--folds", "3", "--bootstrap", "200"]  # small folds: 21 records, 4 or 5 positive


def write_windows(folder: Path) -> tuple[list[Path], Path]:
    """The 5 s windows of the shared 12-lead records as JSON records, and labels.csv (record, AF, SB)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, rows = [], []
    for name in TWELVE_LEAD_RECORDS:
        data = json.loads((DATA_DIR / name).read_text())
        n = int(5 * data["fs"])
        for k in range(len(data["signal"][0]) // n):
            record = f"{data['record']}_w{k}"
            body = {"record": record, "fs": data["fs"], "lead_names": data["lead_names"]}
            body["signal"] = [lead[k * n : (k + 1) * n] for lead in data["signal"]]
            paths.append(folder / f"{record}.json")
            paths[-1].write_text(json.dumps(body))
            rows.append(f"{record},{int('AF' in data['labels'])},{int('SB' in data['labels'])}\n")
    labels = folder / "labels.csv"
    labels.write_text("record,AF,SB\n" + "".join(rows))
    return paths, labels


@pytest.fixture(scope="module")
def windows(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    return write_windows(tmp_path_factory.mktemp("windows"))


@pytest.fixture(scope="module")
def fitted(windows, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ecgfm probe fit`` on the windows' embeddings (parity pretrained checkpoint) into a probes folder."""
    paths, labels = windows
    out = tmp_path_factory.mktemp("probes") / "rhythm.probe"
    argv = ["probe", "fit", "--embeddings", *map(str, paths), "--labels", str(labels), "--out", str(out)]
    assert main([*argv, "--pretrained", str(PRETRAINED_CKPT), *FIT_OPTIONS]) == 0
    return out


@pytest.fixture(scope="module")
def embeddings(windows) -> np.ndarray:
    """The windows' embeddings, computed here as ``ecgfm predict --only features`` does (``Predictor``)."""
    from ecgfm.inference import Predictor
    from ecgfm.records.readers import read_record

    predictor = Predictor.from_paths(str(PRETRAINED_CKPT), None, load_finetuned=False, device="cpu")
    return np.array([predictor.predict(read_record(path))["features"]["features"] for path in windows[0]])


def labels_matrix(labels: Path) -> np.ndarray:
    lines = labels.read_text().splitlines()[1:]
    return np.array([[int(v) for v in line.split(",")[1:]] for line in lines])


def predict_lines(probe: Path, records: list[Path], out: Path, *extra: str) -> list[dict]:
    argv = ["probe", "predict", str(probe), *map(str, records), "-o", str(out), "--pretrained", str(PRETRAINED_CKPT)]
    assert main([*argv, *extra]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


# --- fitting ---------------------------------------------------------------------------------------------------


def test_the_probe_is_scikit_learns_logistic_regression_fit_independently(fitted, windows, embeddings) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    probe = load_probe(fitted)
    y = labels_matrix(windows[1])
    scaler = StandardScaler().fit(embeddings)
    np.testing.assert_allclose(probe.mean, scaler.mean_, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(probe.scale, scaler.scale_, rtol=1e-9)
    method = probe.summary["method"]
    for t, target in enumerate(TARGETS):
        c = probe.summary["targets"][target]["C"]
        assert c in method["C_grid"]
        model = LogisticRegression(
            C=c, class_weight="balanced", solver=method["solver"], max_iter=method["max_iter"], tol=method["tol"]
        ).fit(scaler.transform(embeddings), y[:, t])
        np.testing.assert_allclose(probe.coef[t], model.coef_[0], rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(probe.intercept[t], model.intercept_[0], rtol=0, atol=TOLERANCE)
        expected = model.predict_proba(scaler.transform(embeddings))[:, 1]
        np.testing.assert_allclose(probe.probabilities(embeddings)[:, t], expected, rtol=0, atol=TOLERANCE)


def test_the_summary_says_on_what_and_how_well_with_a_bootstrap_interval(fitted, windows) -> None:
    probe = load_probe(fitted)
    y = labels_matrix(windows[1])
    summary = probe.summary
    assert probe.targets == TARGETS and probe.name == "rhythm" and not probe.demo
    assert probe.pretrained_sha256 == file_sha256(PRETRAINED_CKPT)
    assert summary["records"] == len(y) == 21 and summary["embed_dim"] == probe.embed_dim
    assert "ecgfm probe fit" in summary["command"] and summary["fitted_at"]
    for t, target in enumerate(TARGETS):
        figures = summary["targets"][target]
        assert (figures["positives"], figures["negatives"]) == (y[:, t].sum(), len(y) - y[:, t].sum())
        low, high = figures["cv_auroc_95ci"]
        assert 0 <= low <= figures["cv_auroc"] <= high <= 1 and figures["outer_folds"] == 3
        assert 0 < figures["bootstrap_resamples"] <= 200


def test_fit_refuses_labels_it_cannot_use(windows, tmp_path: Path, capsys) -> None:
    paths = windows[0]
    few = tmp_path / "few.csv"
    few.write_text("record,rare\n" + "".join(f"{p.stem},{int(i < 2)}\n" for i, p in enumerate(paths[:6])))
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("record,AF\nnot_a_record,1\n")
    for csv_path, message in ((few, "target rare: 2 positive"), (unknown, "1 labelled records have no embedding")):
        argv = ["probe", "fit", "--embeddings", *map(str, paths[:6]), "--labels", str(csv_path)]
        assert main([*argv, "--out", str(tmp_path / "x.probe"), "--pretrained", str(PRETRAINED_CKPT)]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.probe").exists()


# --- the file --------------------------------------------------------------------------------------------------


def test_a_probe_file_is_safetensors_data_that_round_trips(fitted, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    probe = load_probe(fitted)
    assert set(load_file(str(fitted))) == {"coef", "intercept", "mean", "scale"}  # data only
    copy = save_probe(probe, tmp_path)
    again = load_probe(copy)
    assert again.targets == probe.targets and again.summary == probe.summary
    np.testing.assert_array_equal(again.coef, probe.coef)


def test_a_pickle_renamed_probe_is_refused_without_being_unpickled(tmp_path: Path) -> None:
    class Payload:
        def __init__(self, marker: Path) -> None:
            self.marker = marker

        def __reduce__(self):  # unpickling this creates the marker file
            return (Path.touch, (self.marker,))

    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(Payload(proof)))
    assert proof.exists()  # the payload really does act when unpickled
    marker = tmp_path / "unpickled"
    renamed = tmp_path / "evil.probe"
    renamed.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ProbeFileError, match="a Python pickle, not a probe file"):
        load_probe(renamed)
    folder = tmp_path / "served"
    folder.mkdir()
    shutil.copy(renamed, folder / "evil.probe")
    with pytest.raises(ProbeFileError, match="pickle"):
        from ecgfm.probes.probe import load_probe_dir

        load_probe_dir(folder)
    assert not marker.exists()


def test_a_damaged_or_altered_probe_file_is_refused_saying_what_is_wrong(fitted, tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.numpy import save_file

    probe = load_probe(fitted)
    truncated = tmp_path / "truncated.probe"
    truncated.write_bytes(fitted.read_bytes()[:-100])
    with pytest.raises(ProbeFileError, match=r"truncated\.probe: not a readable probe file"):
        load_probe(truncated)
    torch_file = tmp_path / "model.probe"
    shutil.copy(PRETRAINED_CKPT, torch_file)
    with pytest.raises(ProbeFileError, match="zip archive"):
        load_probe(torch_file)
    with safe_open(str(fitted), framework="numpy") as file:
        tensors, metadata = {key: file.get_tensor(key) for key in file.keys()}, file.metadata()  # noqa: SIM118
    altered = {
        "scale must be positive": ({**tensors, "scale": -tensors["scale"]}, metadata),
        "coef is float64": ({**tensors, "coef": tensors["coef"][:, :10]}, metadata),
        "coef is float32": ({**tensors, "coef": tensors["coef"].astype(np.float32)}, metadata),
        "holds the tensors": ({**tensors, "extra": tensors["mean"]}, metadata),
        "NaN or infinite": ({**tensors, "intercept": np.full_like(tensors["intercept"], np.nan)}, metadata),
        "pretrained_sha256 is not a sha256": (tensors, {**metadata, "pretrained_sha256": "abc"}),
        "format 'other/1'": (tensors, {**metadata, "format": "other/1"}),
        "a target is named twice": (tensors, {**metadata, "targets": json.dumps(["AF", "AF"])}),
    }
    for message, (values, meta) in altered.items():
        path = tmp_path / "rhythm.probe"
        save_file(values, str(path), meta)
        with pytest.raises(ProbeFileError, match=re.escape(message)):
            load_probe(path)
    with pytest.raises(ProbeFileError, match="scale must be positive"):  # nor is such a probe ever written
        save_probe(dataclasses.replace(probe, scale=-probe.scale), tmp_path)
    with pytest.raises(ProbeFileError, match="name"):
        load_probe(tmp_path / "Bad Name.probe")


# --- applying it: the command line and the service -------------------------------------------------------------


def test_predict_writes_one_line_per_record_in_the_documented_shape(fitted, windows, embeddings, tmp_path) -> None:
    lines = predict_lines(fitted, windows[0], tmp_path / "out.jsonl")
    probe = load_probe(fitted)
    expected = probe.probabilities(embeddings)
    assert [line["record"] for line in lines] == [p.stem for p in windows[0]]
    for line, row in zip(lines, expected, strict=True):
        assert line["probe"]["name"] == "rhythm" and line["probe"]["targets"] == list(TARGETS)
        assert line["checkpoint"]["sha256"] == probe.pretrained_sha256 and line["checkpoint"]["demo"] is False
        got = [line["probe"]["probabilities"][t] for t in TARGETS]
        np.testing.assert_allclose(got, row, rtol=0, atol=TOLERANCE)


def test_predict_refuses_a_probe_of_other_weights_naming_both_sha256(fitted, windows, capsys) -> None:
    other = PARITY_DIR / "ckpt" / "ecgfm_small_pretrained_fsHEAD.pt"  # the same weights, another file
    code = main(["probe", "predict", str(fitted), str(windows[0][0]), "--pretrained", str(other)])
    err = capsys.readouterr().err
    assert code == 2 and file_sha256(other) in err and load_probe(fitted).pretrained_sha256 in err


@pytest.fixture(scope="module")
def served(fitted, tmp_path_factory: pytest.TempPathFactory):
    env = {
        "ECGFM_PRETRAINED_CHECKPOINT": str(PRETRAINED_CKPT),
        "ECGFM_FINETUNED_CHECKPOINT": str(FINETUNED_CKPT),
        "ECGFM_PROBES_DIR": str(fitted.parent),
    }
    log_path = tmp_path_factory.mktemp("probe_server") / "server.log"
    with bentoml_server(env, log_path) as url, httpx.Client(base_url=url, timeout=120) as client:
        yield client


def test_the_served_probe_equals_ecgfm_probe_predict_on_every_record(served, fitted, windows, tmp_path) -> None:
    lines = predict_lines(fitted, windows[0], tmp_path / "out.jsonl", "--per-segment")
    for path, line in zip(windows[0], lines, strict=True):
        record = json.loads(path.read_text())
        body = {key: record[key] for key in ("signal", "fs", "lead_names")}
        answer = served.post("/probes/rhythm", json={**body, "per_segment": True})
        assert answer.status_code == 200, answer.text
        got = answer.json()
        for target in TARGETS:
            assert abs(got["probe"]["probabilities"][target] - line["probe"]["probabilities"][target]) <= TOLERANCE
        np.testing.assert_allclose(got["segments"], line["segments"], rtol=0, atol=TOLERANCE)
        assert got["checkpoint"] == line["checkpoint"] and got["n_segments"] == line["n_segments"] == 1
        assert got["demo"] is False and got["model"] == "probe"


def test_the_npy_and_file_variants_answer_as_ecgfm_probe_predict(served, fitted, tmp_path) -> None:
    npy, xml = REPO_DIR / "sample_data" / "JS36330.npy", REPO_DIR / "sample_data" / "hl7_Example_aECG.xml"
    by_npy = served.post("/probes/rhythm/npy?fs=500", content=npy.read_bytes(),
                         headers={"content-type": "application/octet-stream"})  # fmt: skip
    by_file = served.post("/probes/rhythm/file", files={"file": xml.read_bytes()})
    expected_npy = predict_lines(fitted, [npy], tmp_path / "npy.jsonl", "--fs", "500")[0]
    expected_file = predict_lines(fitted, [xml], tmp_path / "file.jsonl")[0]
    for answer, expected in ((by_npy, expected_npy), (by_file, expected_file)):
        assert answer.status_code == 200, answer.text
        for target in TARGETS:
            got = answer.json()["probe"]["probabilities"][target]
            assert abs(got - expected["probe"]["probabilities"][target]) <= TOLERANCE
    assert by_file.json()["conversion"] == expected_file["conversion"] and expected_file["conversion"]["format"]


def test_probes_are_listed_in_get_probes_and_info_with_their_summary(served, fitted) -> None:
    summary = load_probe(fitted).summary
    listed = served.get("/probes").json()["probes"]
    assert [p["name"] for p in listed] == ["rhythm"] and listed[0]["summary"] == summary
    info = served.get("/info").json()
    assert info["probes"]["rhythm"]["targets"] == list(TARGETS)
    assert info["probes"]["rhythm"]["pretrained_sha256"] == info["models"]["pretrained"]["sha256"]


def test_an_unknown_probe_is_a_404_and_the_middlewares_cover_the_probe_routes(served, windows) -> None:
    record = json.loads(windows[0][0].read_text())
    body = {key: record[key] for key in ("signal", "fs")}
    unknown = served.post("/probes/nope", json=body)
    assert unknown.status_code == 404 and "rhythm" in unknown.json()["error"]
    assert (
        served.post("/probes/rhythm", content=json.dumps(body), headers={"content-type": "text/plain"}).status_code
        == 415
    )
    assert served.post("/probes/rhythm", json={"fs": 500}).status_code == 400
    assert (
        served.post("/probes/rhythm/npy", content=b"x", headers={"content-type": "application/json"}).status_code == 415
    )


def test_probe_answers_are_counted_under_their_own_routes_in_the_metrics(served, windows) -> None:
    """``ecgfm_records_scored_total`` has a series per loaded probe route (output ``probe``), at 0 from the start."""

    def scored() -> dict[tuple[str, str], float]:
        families = text_string_to_metric_families(served.get("/metrics").text)
        samples = [sample for family in families for sample in family.samples]
        return {
            (sample.labels["endpoint"], sample.labels["output"]): sample.value
            for sample in samples
            if sample.name == "ecgfm_records_scored_total"
        }

    before = scored()
    routes = ("/probes/rhythm", "/probes/rhythm/npy", "/probes/rhythm/file")
    assert {(route, "probe") for route in routes} <= set(before)
    record = json.loads(windows[0][0].read_text())
    body = {key: record[key] for key in ("signal", "fs")}
    assert served.post("/probes/rhythm", json=body).status_code == 200
    assert served.post("/probes/nope", json=body).status_code == 404
    after = scored()
    assert after[("/probes/rhythm", "probe")] == before[("/probes/rhythm", "probe")] + 1
    assert after.get(("other", "other"), 0) == before.get(("other", "other"), 0)
    assert not any(endpoint == "/probes/nope" for endpoint, _ in after)


def test_fhir_of_a_probe_names_its_targets(served, windows) -> None:
    record = json.loads(windows[0][0].read_text())
    body = {key: record[key] for key in ("signal", "fs")}
    answer = served.post("/probes/rhythm", json=body, headers={"accept": "application/fhir+json"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/fhir+json")
    observations = [e["resource"] for e in answer.json()["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert [o["code"]["text"] for o in observations] == list(TARGETS)
    assert all(0 <= o["valueQuantity"]["value"] <= 1 for o in observations)


def test_a_probe_fit_on_other_weights_stops_start_up_naming_both_sha256(fitted, tmp_path: Path) -> None:
    other = PARITY_DIR / "ckpt" / "ecgfm_small_pretrained_fsHEAD.pt"  # bitwise the same weights, another file
    folder = tmp_path / "probes"
    folder.mkdir()
    shutil.copy(fitted, folder / "rhythm.probe")
    env = {
        "ECGFM_PRETRAINED_CHECKPOINT": str(other),
        "ECGFM_FINETUNED_CHECKPOINT": str(FINETUNED_CKPT),
        "ECGFM_PROBES_DIR": str(folder),
    }
    ended = serve_until_it_ends(env, tmp_path / "bentoml_home", timeout_s=180)
    output = ended.output
    assert ended.returncode == 2, output
    assert file_sha256(other) in output and load_probe(fitted).pretrained_sha256 in output
    assert "ecgfm-serve: cannot start: probe rhythm" in output and "Traceback" not in output


def test_a_probe_on_demo_weights_is_served_only_with_the_demo_flag(windows, tmp_path: Path) -> None:
    assert main(["demo-checkpoints", "--out", str(tmp_path / "demo"), "--size", "small"]) == 0
    demo_pretrained = tmp_path / "demo" / "pretrained.pt"
    folder = tmp_path / "probes"
    folder.mkdir()
    paths, labels = windows
    argv = ["probe", "fit", "--embeddings", *map(str, paths), "--labels", str(labels), "--targets", "AF"]
    assert (
        main([*argv, "--out", str(folder / "demo_af.probe"), "--pretrained", str(demo_pretrained), *FIT_OPTIONS]) == 0
    )
    assert load_probe(folder / "demo_af.probe").demo
    env = {
        "ECGFM_PRETRAINED_CHECKPOINT": str(demo_pretrained),
        "ECGFM_FINETUNED_CHECKPOINT": str(tmp_path / "demo" / "finetuned.pt"),
        "ECGFM_PROBES_DIR": str(folder),
    }
    record = json.loads(paths[0].read_text())
    with bentoml_server(env, tmp_path / "server.log") as url:
        answer = httpx.post(f"{url}/probes/demo_af", json={"signal": record["signal"], "fs": record["fs"]}, timeout=120)
        listed = httpx.get(f"{url}/probes", timeout=30).json()["probes"]
    assert answer.status_code == 200, answer.text
    assert answer.json()["demo"] is True and answer.json()["checkpoint"]["demo"] is True
    assert listed[0]["demo"] is True


# --- ecgfm batch --probe, and fitting from its output ------------------------------------------------------------


@pytest.fixture(scope="module")
def batch_with_probe(fitted, windows, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ecgfm batch --only features --probe rhythm.probe`` over the windows and a file that is no record."""
    from tests.test_batch import run_ecgfm

    broken = tmp_path_factory.mktemp("broken") / "broken.json"
    broken.write_text('{"signal": [[1, 2')
    output = tmp_path_factory.mktemp("batch") / "out"
    done = run_ecgfm(
        "batch", "--only", "features", "--pretrained", str(PRETRAINED_CKPT), "--probe", str(fitted),
        "--records-per-batch", "8", "--no-progress", "--output", str(output), *map(str, windows[0]), str(broken),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return output


def test_batch_probe_columns_equal_ecgfm_probe_predict(batch_with_probe, fitted, windows, tmp_path) -> None:
    import pyarrow.dataset as pads

    from ecgfm.archive.parts import committed_parts, read_metadata

    table = pads.dataset(batch_with_probe, format="parquet").to_table().to_pylist()
    rows = {row["record"] or Path(row["path"]).stem: row for row in table}  # a file that is no record has no name
    lines = predict_lines(fitted, windows[0], tmp_path / "out.jsonl")
    for line in lines:
        for target in TARGETS:
            got = rows[line["record"]][f"probe_rhythm_{target}"]
            assert abs(got - line["probe"]["probabilities"][target]) <= TOLERANCE  # float32 in Parquet
    assert rows["broken"]["error"] and rows["broken"]["probe_rhythm_AF"] is None
    metadata = read_metadata(committed_parts(batch_with_probe)[0])
    assert metadata["probes"] == [{"name": "rhythm", "targets": list(TARGETS), "sha256": file_sha256(fitted)}]


def test_batch_refuses_a_probe_of_other_weights_and_a_resume_with_other_probes(batch_with_probe, fitted, windows):
    from tests.test_batch import run_ecgfm

    other = PARITY_DIR / "ckpt" / "ecgfm_small_pretrained_fsHEAD.pt"
    args = ["batch", "--only", "features", "--no-progress", *map(str, windows[0][:2])]
    wrong = run_ecgfm(*args, "--pretrained", str(other), "--probe", str(fitted), "--output", str(batch_with_probe))
    assert wrong.returncode == 2 and file_sha256(other) in wrong.stderr and file_sha256(PRETRAINED_CKPT) in wrong.stderr
    resumed = run_ecgfm(*args, "--pretrained", str(PRETRAINED_CKPT), "--resume", "--output", str(batch_with_probe))
    assert resumed.returncode == 2 and "probes" in resumed.stderr


def test_a_probe_fit_on_an_ecgfm_batch_output_is_the_one_fit_on_its_records(batch_with_probe, fitted, windows) -> None:
    out = batch_with_probe.parent / "af.probe"
    argv = ["probe", "fit", "--embeddings", str(batch_with_probe), "--labels", str(windows[1]), "--targets", "AF"]
    assert main([*argv, "--out", str(out), *FIT_OPTIONS]) == 0
    from_batch, from_records = load_probe(out), load_probe(fitted)
    assert from_batch.pretrained_sha256 == from_records.pretrained_sha256 and from_batch.summary["records"] == 21
    assert from_batch.summary["targets"]["AF"]["C"] == from_records.summary["targets"]["AF"]["C"]
    x = from_records.mean + from_records.scale * np.random.default_rng(0).normal(size=(5, from_records.embed_dim))
    # float32 features in Parquet against float64 ones: the same fit up to float32 rounding
    np.testing.assert_allclose(from_batch.probabilities(x)[:, 0], from_records.probabilities(x)[:, 0], atol=1e-4)
