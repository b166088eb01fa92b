"""``ecgfm evaluate`` (ecgfm/evaluation/): every figure of metrics.json against scikit-learn computed here on the same
numbers, intervals that hold their estimates and shrink with more data, the three label forms (PhysioNet 2021 headers
on real records predicted by ``ecgfm predict``), the batch and probe inputs, refused inputs, and a thresholds file
that changes the interpreter's findings as its numbers say."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from ecgfm.cli.main import main as ecgfm_main
from ecgfm.evaluation.metrics import Bootstrap
from ecgfm.labels import LABELS
from interpreter.cli import main as interpreter_main
from interpreter.findings import load_config
from tests.conftest import DATA_DIR, FINETUNED_CKPT, PRETRAINED_CKPT, REPO_DIR

CINC_DIR = DATA_DIR / "DeepPSP_cinc2021"
CHALLENGE_DIR = DATA_DIR / "physionetchallenges_evaluation-2021"
BOOTSTRAP = 100
RARE, ABSENT, ALWAYS, NO_SIGNAL, PARTLY = (
    "Ventricular tachycardia",  # a handful of positives
    "Poor data quality",  # no positive record: not evaluable
    "Sinus rhythm",  # no negative record: not evaluable
    "Electronic pacemaker",  # probabilities unrelated to the label
    "Infarction",  # a third of the records not labelled for it (empty cells)
)
Z = 1.959963984540054  # the 97.5th percentile of the standard normal distribution


def synthetic(n: int, seed: int, labels: Sequence[str] = LABELS) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Record names, 0/1 truth (NaN: not labelled) and probabilities with signal, rounded to 3 decimals (ties)."""
    rng = np.random.default_rng(seed)
    prevalence = {RARE: 0.02, ABSENT: 0.0, ALWAYS: 1.0}
    truth = np.stack([rng.random(n) < prevalence.get(label, 0.1 + 0.3 * rng.random()) for label in labels], 1)
    signal = np.array([0.0 if label == NO_SIGNAL else 1.0 + rng.random() for label in labels])
    logits = rng.normal(0.0, 1.0, truth.shape) + truth * signal * 2 - 1.5
    probabilities = np.round(1 / (1 + np.exp(-logits)), 3)
    truth = truth.astype(float)
    if PARTLY in labels:
        truth[: n // 3, list(labels).index(PARTLY)] = np.nan
    return [f"rec{i:05d}" for i in range(n)], truth, probabilities


def write_predictions(path: Path, names: list[str], probabilities: np.ndarray, labels: Sequence[str] = LABELS) -> Path:
    with path.open("w") as file:
        for name, row in zip(names, probabilities, strict=True):
            file.write(
                json.dumps(
                    {"record": name, "clinical": {"probabilities": dict(zip(labels, row.tolist(), strict=True))}}
                )
            )
            file.write("\n")
    return path


def write_probe_predictions(path: Path, names: list[str], probabilities: np.ndarray, targets: list[str]) -> Path:
    with path.open("w") as file:
        for name, row in zip(names, probabilities, strict=True):
            probe = {"name": "lvef", "targets": targets, "probabilities": dict(zip(targets, row.tolist(), strict=True))}
            file.write(json.dumps({"record": name, "probe": probe}) + "\n")
    return path


def write_labels(path: Path, names: list[str], truth: np.ndarray, labels: Sequence[str] = LABELS) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["record", *labels])
        for name, row in zip(names, truth, strict=True):
            writer.writerow([name, *("" if math.isnan(v) else int(v) for v in row)])
    return path


def evaluate(*args: str | Path) -> int:
    return ecgfm_main(["evaluate", *map(str, args), "--quiet"])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """400 synthetic records evaluated once: the files, the numbers, and what ecgfm evaluate wrote."""
    folder = tmp_path_factory.mktemp("site")
    names, truth, probabilities = synthetic(400, seed=7)
    predictions = write_predictions(folder / "predictions.jsonl", names, probabilities)
    labels = write_labels(folder / "labels.csv", names, truth)
    out = folder / "evaluation"
    assert evaluate(predictions, "--labels", labels, "--out", out, "--bootstrap", BOOTSTRAP, "--seed", 3) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    return {"names": names, "truth": truth, "p": probabilities, "out": out, "metrics": metrics,
            "predictions": predictions, "labels": labels}  # fmt: skip


def wilson(successes: int, trials: int) -> list[float]:
    """Wilson's score interval, closed form (Wilson, JASA 1927)."""
    p = successes / trials
    centre = (p + Z**2 / (2 * trials)) / (1 + Z**2 / trials)
    half = Z / (1 + Z**2 / trials) * math.sqrt(p * (1 - p) / trials + Z**2 / (4 * trials**2))
    return [centre - half, centre + half]


def labelled(site: dict[str, Any], label: str) -> tuple[np.ndarray, np.ndarray]:
    j = LABELS.index(label)
    known = ~np.isnan(site["truth"][:, j])
    return site["truth"][known, j].astype(int), site["p"][known, j]


def test_every_figure_is_scikit_learns_on_the_same_numbers(site: dict[str, Any]) -> None:
    defaults = load_config()
    evaluable = [label for label in LABELS if label not in (ABSENT, ALWAYS)]
    for label in evaluable:
        entry = site["metrics"]["labels"][label]
        y, p = labelled(site, label)
        assert entry["evaluable"] and (entry["n_positive"], entry["n_negative"]) == (y.sum(), len(y) - y.sum())
        assert entry["n_records"] == (400 - 400 // 3 if label == PARTLY else 400)
        assert entry["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert entry["auprc"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
        assert entry["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
        fraction, mean = calibration_curve(y, p, n_bins=10)
        assert [b["fraction_positive"] for b in entry["reliability"]] == pytest.approx(fraction.tolist())
        assert [b["mean_predicted"] for b in entry["reliability"]] == pytest.approx(mean.tolist())
        bins = np.searchsorted(np.linspace(0, 1, 11)[1:-1], p)  # calibration_curve's bins: (lower, upper]
        ece = sum((bins == b).sum() / len(p) * abs(y[bins == b].mean() - p[bins == b].mean()) for b in set(bins))
        assert entry["ece"] == pytest.approx(ece, abs=1e-12)
        assert entry["thresholds"]["interpreter"]["threshold"] == defaults["labels"][label]["threshold"]
        for point in entry["thresholds"].values():
            flagged = p >= point["threshold"]
            tn, fp, fn, tp = confusion_matrix(y, flagged).ravel()
            assert (point["tp"], point["fp"], point["tn"], point["fn"]) == (tp, fp, tn, fn)
            assert point["sensitivity"] == pytest.approx(recall_score(y, flagged))
            assert point["specificity"] == pytest.approx(recall_score(y, flagged, pos_label=0))
            assert point["npv"] == pytest.approx(precision_score(y, flagged, pos_label=0))
            assert point["f1"] == pytest.approx(f1_score(y, flagged))
            if tp + fp:
                assert point["ppv"] == pytest.approx(precision_score(y, flagged))
                assert point["ppv_ci"] == pytest.approx(wilson(tp, tp + fp))
            else:
                assert point["ppv"] is None and point["ppv_ci"] is None
            assert point["sensitivity_ci"] == pytest.approx(wilson(tp, tp + fn))
            assert point["specificity_ci"] == pytest.approx(wilson(tn, tn + fp))
        # Youden's J: no threshold does better on these records.
        chosen = entry["thresholds"]["chosen"]
        candidates = np.unique(p)  # every threshold that splits these records differently
        youden = (p[y == 1, None] >= candidates).mean(0) + (p[y == 0, None] < candidates).mean(0) - 1
        assert chosen["sensitivity"] + chosen["specificity"] - 1 == pytest.approx(youden.max())
    macro = site["metrics"]["macro"]
    assert macro["n_labels"] == len(evaluable)
    assert macro["auroc"] == pytest.approx(np.mean([roc_auc_score(*labelled(site, label)) for label in evaluable]))


def test_the_bootstrap_intervals_are_the_percentiles_of_scikit_learns_figures_on_the_seeded_resamples(
    site: dict[str, Any],
) -> None:
    entry = site["metrics"]["labels"][RARE]
    y, p = labelled(site, RARE)
    assert site["metrics"]["bootstrap"] == {
        "n_resamples": BOOTSTRAP,
        "seed": 3,
        "method": "percentile",
        "confidence": 0.95,
        "resampled": "records, with replacement",
    }
    aurocs, auprcs = [], []
    for index in Bootstrap(BOOTSTRAP, 3).indices(len(y)):
        if 0 < y[index].sum() < len(index):
            aurocs.append(roc_auc_score(y[index], p[index]))
            auprcs.append(average_precision_score(y[index], p[index]))
    assert entry["n_positive"] < 15 and entry["bootstrap_resamples_used"] == len(aurocs)  # a rare label
    assert entry["auroc_ci"] == pytest.approx(np.percentile(aurocs, [2.5, 97.5]).tolist(), abs=1e-12)
    assert entry["auprc_ci"] == pytest.approx(np.percentile(auprcs, [2.5, 97.5]).tolist(), abs=1e-12)


def test_labels_without_a_positive_or_a_negative_record_are_not_given_a_number(site: dict[str, Any]) -> None:
    for label, why in ((ABSENT, "no positive record"), (ALWAYS, "no negative record")):
        entry = site["metrics"]["labels"][label]
        assert entry["evaluable"] is False and why in entry["reason"]
        assert "auroc" not in entry and "thresholds" not in entry
    written = yaml.safe_load((site["out"] / "thresholds.yaml").read_text())
    assert ABSENT not in written["labels"] and set(written["provenance"]["kept_default"]) == {ABSENT, ALWAYS}
    rows = list(csv.DictReader((site["out"] / "metrics.csv").open()))
    assert [row["evaluable"] for row in rows if row["label"] == ABSENT] == ["False"]
    assert len(rows) == 2 + 15 * 2  # one row per label and threshold in use


def test_the_csv_and_the_html_say_what_the_json_says(site: dict[str, Any]) -> None:
    rows = list(csv.DictReader((site["out"] / "metrics.csv").open()))
    for row in rows:
        entry = site["metrics"]["labels"][row["label"]]
        if row["evaluable"] == "True":
            point = entry["thresholds"][row["threshold_kind"]]
            assert float(row["auroc"]) == entry["auroc"] and float(row["auroc_ci_low"]) == entry["auroc_ci"][0]
            assert float(row["threshold"]) == point["threshold"] and int(row["tp"]) == point["tp"]
            assert float(row["sensitivity_ci_high"]) == point["sensitivity_ci"][1]
    page = (site["out"] / "report.html").read_text()
    assert "Research use only" in page and "<b>400</b> records" in page
    assert page.count("data:image/png;base64,") == 15  # one figure per evaluable label
    assert not re.search(r"""(src|href)=["'](https?:)?//""", page)  # nothing loaded from elsewhere
    assert f"{BOOTSTRAP} resamples" in page and "not evaluable: no positive record" in page


def test_intervals_hold_their_estimates_and_shrink_with_more_records(tmp_path: Path) -> None:
    targets = ["reduced LVEF", "LV hypertrophy"]
    widths: dict[int, dict[str, float]] = {}
    for n in (150, 1200):
        names, truth, p = synthetic(n, seed=11, labels=targets)
        predictions = write_probe_predictions(tmp_path / f"probe{n}.jsonl", names, p, targets)
        labels = write_labels(tmp_path / f"labels{n}.csv", names, truth, targets)
        out = tmp_path / f"out{n}"
        assert evaluate(predictions, "--labels", labels, "--out", out, "--bootstrap", 200) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["predictions"]["kind"] == "probe lvef" and not (out / "thresholds.yaml").exists()
        widths[n] = {}
        for target in targets:
            entry = metrics["labels"][target]
            point = entry["thresholds"]["chosen"]
            assert "interpreter" not in entry["thresholds"]  # no interpreter threshold for a probe's target
            for key, value, interval in (
                ("auroc", entry["auroc"], entry["auroc_ci"]),
                ("auprc", entry["auprc"], entry["auprc_ci"]),
                *((key, point[key], point[f"{key}_ci"]) for key in ("sensitivity", "specificity", "ppv", "npv", "f1")),
            ):
                assert interval[0] <= value <= interval[1], (n, target, key)
                widths[n][f"{target} {key}"] = interval[1] - interval[0]
    for key, narrow in widths[1200].items():
        assert narrow < widths[150][key], key


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("duplicate prediction", "1 record(s) predicted more than once: 'rec00001'"),
        ("duplicate label", "1 record(s) labelled more than once: 'rec00002'"),
        ("unknown column", "unknown label column(s) ['Hypertrophy']"),
        ("probability above 1", "probabilit(ies) outside [0, 1] or not numbers, first 'rec00003' 'Atrial flutter'"),
        ("probability NaN", "probabilit(ies) outside [0, 1] or not numbers, first 'rec00003' 'Atrial flutter' = nan"),
        ("no common record", "no record is in both"),
        ("not 0 or 1", "record 'rec00004', column 'Atrial flutter': 'yes' is not 0, 1 or empty"),
        ("out not empty", "exists and is not an empty folder"),
    ],
)
def test_bad_input_is_refused_with_one_message_exit_2_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    names, truth, p = synthetic(40, seed=1)
    labels_rows = [["record", *LABELS]] + [[n, *(0 if math.isnan(v) else int(v) for v in row)] for n, row in
                                           zip(names, truth, strict=True)]  # fmt: skip
    lines = [{"record": n, "clinical": {"probabilities": dict(zip(LABELS, row.tolist(), strict=True))}}
             for n, row in zip(names, p, strict=True)]  # fmt: skip
    out = tmp_path / "out"
    if case == "duplicate prediction":
        lines.append(lines[1])
    elif case == "duplicate label":
        labels_rows.append(labels_rows[3])
    elif case == "unknown column":
        labels_rows = [[*row, "Hypertrophy" if i == 0 else 0] for i, row in enumerate(labels_rows)]
    elif case.startswith("probability"):
        lines[3]["clinical"]["probabilities"]["Atrial flutter"] = 1.2 if case.endswith("1") else float("nan")
    elif case == "no common record":
        labels_rows = [labels_rows[0]] + [[f"other{i}", *row[1:]] for i, row in enumerate(labels_rows[1:])]
    elif case == "not 0 or 1":
        labels_rows[5][1 + LABELS.index("Atrial flutter")] = "yes"
    elif case == "out not empty":
        out.mkdir()
        (out / "keep.txt").write_text("an earlier result")
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as file:
        csv.writer(file).writerows(labels_rows)
    assert evaluate(predictions, "--labels", labels, "--out", out, "--bootstrap", 10) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("ecgfm evaluate:") == 1, error
    if case == "out not empty":
        assert [path.name for path in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []  # no staging folder left


def test_records_in_one_file_only_are_listed_and_counted(tmp_path: Path) -> None:
    names, truth, p = synthetic(60, seed=2)
    predictions = write_predictions(tmp_path / "p.jsonl", names[:50], p[:50])
    labels = write_labels(tmp_path / "l.csv", names[5:], truth[5:])
    assert evaluate(predictions, "--labels", labels, "--out", tmp_path / "out", "--bootstrap", 10) == 0
    records = json.loads((tmp_path / "out" / "metrics.json").read_text())["records"]
    assert records["n_matched"] == 45
    assert records["only_in_predictions"] == {"count": 5, "records": names[:5]}
    assert records["only_in_labels"] == {"count": 10, "records": names[50:]}


def test_an_ecgfm_batch_dataset_is_read_with_its_failed_rows_counted(tmp_path: Path) -> None:
    import pyarrow as pa

    from ecgfm.archive.parts import PartWriter, job_metadata, output_schema

    names, truth, p = synthetic(120, seed=5)
    metadata = job_metadata(["finetuned"], False, {}, {"finetuned": {}})
    schema = output_schema(["finetuned"], False, metadata)
    rows = [{"path": f"/archive/{n}.hea", "record": n, "probabilities": row.tolist(), "error": None}
            for n, row in zip(names, p, strict=True)]  # fmt: skip
    rows.append({"path": "/archive/broken.hea", "record": "broken", "probabilities": None, "error": "unreadable"})
    table = pa.Table.from_pylist([{**{f.name: None for f in schema}, **row} for row in rows], schema=schema)
    writer = PartWriter(tmp_path / "batch", schema)
    writer.write(table.slice(0, 60))
    writer.write(table.slice(60))
    labels = write_labels(tmp_path / "labels.csv", [*names, "broken"], np.vstack([truth, truth[:1]]))
    assert evaluate(tmp_path / "batch", "--labels", labels, "--out", tmp_path / "out", "--bootstrap", 10) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["predictions"]["kind"] == "ecgfm batch" and metrics["records"]["n_matched"] == 120
    assert metrics["records"]["failed_in_batch"] == {"count": 1, "records": ["broken"]}
    assert metrics["records"]["only_in_labels"]["records"] == ["broken"]
    j = LABELS.index("Atrial fibrillation")
    stored = np.asarray(p[:, j], dtype=np.float32)  # the batch stores float32
    assert metrics["labels"]["Atrial fibrillation"]["auroc"] == pytest.approx(roc_auc_score(truth[:, j], stored))


def challenge_names() -> dict[str, str]:
    names = {}
    for file in ("dx_mapping_scored.csv", "dx_mapping_unscored.csv"):
        for row in csv.DictReader((CHALLENGE_DIR / file).open()):
            names.setdefault(row["SNOMEDCTCode"], re.sub(r"\s+", " ", row["Dx"]).strip())
    return names


def test_the_shipped_code_names_are_the_challenges() -> None:
    from ecgfm.evaluation.site_labels import challenge_names as shipped

    assert shipped() == challenge_names() and len(shipped()) > 130


def test_snomed_codes_map_to_labels_and_unmapped_codes_are_counted_by_name(tmp_path: Path) -> None:
    codes = {  # AF, RBBB+LAFB (bifascicular), sinus bradycardia (sinus rhythm, bradycardia), PAC (no label), unknown
        "a": "164889003",
        "b": "59118001; 445118002",
        "c": "426177001;284470004",
        "d": "284470004;999000111",
        "e": "",
        "f": "426783006",
    }
    _, _, p = synthetic(6, seed=3)
    predictions = write_predictions(tmp_path / "p.jsonl", list(codes), p)
    labels = tmp_path / "snomed.csv"
    labels.write_text("record,snomed\n" + "".join(f"{name},{value}\n" for name, value in codes.items()))
    measured = tmp_path / "last_year.yaml"  # --thresholds: the operating points of another file than the defaults
    measured.write_text("labels:\n  Sinus rhythm: {threshold: 0.7, borderline: 0.3}\n")
    out = tmp_path / "out"
    assert evaluate(predictions, "--labels", labels, "--out", out, "--bootstrap", 10, "--thresholds", measured) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["labels"]["Sinus rhythm"]["thresholds"]["interpreter"]["threshold"] == 0.7
    assert metrics["interpreter_thresholds"] == {"source": str(measured), "provenance": None}
    positives = {label: entry["n_positive"] for label, entry in metrics["labels"].items()}
    assert positives["Atrial fibrillation"] == 1 and positives["Bifascicular block"] == 1
    assert positives["Right bundle branch block"] == 1 and positives["Bradycardia"] == 1
    assert positives["Sinus rhythm"] == 2 and positives["Infarction"] == 0
    assert metrics["unmapped_codes"] == [
        {"code": "284470004", "name": challenge_names()["284470004"], "records": 2},
        {"code": "999000111", "name": None, "records": 1},
    ]
    assert "no SNOMED CT code implies" in metrics["labels"]["Poor data quality"]["reason"]
    assert metrics["reference"]["form"] == "SNOMED CT codes"


def test_physionet_2021_headers_of_real_records_predicted_by_ecgfm_predict(tmp_path: Path) -> None:
    headers = sorted(CINC_DIR.glob("*.hea"))
    predictions = tmp_path / "cinc.jsonl"
    subprocess.run(
        [sys.executable, "-m", "ecgfm", "predict", *map(str, headers), "-o", str(predictions), "--only", "clinical",
         "--finetuned", str(FINETUNED_CKPT), "--pretrained", str(PRETRAINED_CKPT)],
        cwd=REPO_DIR, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    out = tmp_path / "out"
    assert evaluate(predictions, "--labels", CINC_DIR, "--out", out, "--bootstrap", 50) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["records"]["n_matched"] == len(headers) and metrics["reference"]["form"] == "WFDB headers (# Dx:)"
    # The headers as the challenge's table reads them: the Dx codes, named by dx_mapping_*.csv.
    challenge = challenge_names()
    dx = {h.stem: re.search(r"^#\s*Dx:\s*(.*)$", h.read_text(), re.M)[1].split(",") for h in headers}
    af_records = sum(any(challenge[c] == "atrial fibrillation" for c in codes) for codes in dx.values())
    lbbb_records = sum(any("left bundle branch block" in challenge[c] for c in codes) for codes in dx.values())
    assert metrics["labels"]["Atrial fibrillation"]["n_positive"] == af_records > 0
    assert metrics["labels"]["Left bundle branch block"]["n_positive"] == lbbb_records > 0
    from ecgfm.terminology import mapped_codes

    unmapped = {c for codes in dx.values() for c in codes if c not in mapped_codes()}
    assert {entry["code"]: entry["name"] for entry in metrics["unmapped_codes"]} == {
        code: challenge[code] for code in unmapped
    }
    assert sum(entry["records"] for entry in metrics["unmapped_codes"]) == sum(
        len(unmapped & set(codes)) for codes in dx.values()
    )


def test_a_written_thresholds_file_changes_the_interpreters_findings_as_its_numbers_say(
    site: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m interpreter report --thresholds`` (or ``ECGFM_THRESHOLDS``): per label, the records reported
    present are the records at or above the chosen threshold (tp + fp of metrics.json), and without it those at or
    above the interpreter's."""
    thresholds = site["out"] / "thresholds.yaml"
    written = yaml.safe_load(thresholds.read_text())
    assert written["provenance"]["n_records"] == 400 and written["provenance"]["method"] == "youden"
    assert written["provenance"]["counts"][RARE] == {
        key: site["metrics"]["labels"][RARE][key] for key in ("n_positive", "n_negative")
    }
    present = {}
    runs = (("chosen", ["--thresholds", str(thresholds)], ""), ("interpreter", [], ""), ("setting", [], thresholds))
    for name, extra, setting in runs:
        monkeypatch.setenv("ECGFM_THRESHOLDS", str(setting))
        out = tmp_path / name
        assert interpreter_main(["report", "--results", str(site["predictions"]), "--out", str(out), "--quiet",
                                 "--format", "fhir", *extra]) == 0  # fmt: skip
        rows = list(csv.DictReader((out / "summary.csv").open()))
        present[name] = {label: {r["record"] for r in rows if f"{label} (present" in r["findings"]} for label in LABELS}
    assert present["setting"] == present["chosen"]  # ECGFM_THRESHOLDS is the same file as --thresholds
    changed = 0
    for label in (label for label in LABELS if label not in (ABSENT, ALWAYS)):  # no heart rate: the model's (H8)
        known = set(np.array(site["names"])[~np.isnan(site["truth"][:, LABELS.index(label)])])
        for kind in ("chosen", "interpreter"):
            point = site["metrics"]["labels"][label]["thresholds"][kind]
            assert len(present[kind][label] & known) == point["tp"] + point["fp"], (label, kind)
        changed += present["chosen"][label] != present["interpreter"][label]
    assert changed >= 10  # the chosen thresholds differ from the defaults for most labels
