"""Report files (text, JSON, HTML with PNG, CSV) and the ``report`` command on real records."""

from __future__ import annotations

import base64
import csv
import io
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import pytest

from ecgfm.labels import LABELS
from interpreter import DISCLAIMER
from interpreter.cli import load_results, main

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
FINETUNED_CKPT = REPO.parent / "shared" / "parity" / "ckpt" / "ecgfm_small_finetuned.pt"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not checked out")


def probabilities(**high: float) -> dict[str, float]:
    p = dict.fromkeys(LABELS, 0.02)
    p.update({k.replace("_", " "): v for k, v in high.items()})
    return p


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])


def _write_jsonl(path: Path, entries: dict[str, dict[str, float]]) -> Path:
    lines = [
        json.dumps({"record": name, "clinical": {"model": "finetuned", "probabilities": p}})
        for name, p in entries.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_report_from_jsonl_results_writes_parsable_reports(tmp_path: Path) -> None:
    results = _write_jsonl(
        tmp_path / "results.jsonl",
        {
            "JS06908": probabilities(Sinus_rhythm=0.9, Tachycardia=0.9),
            "JS01048": probabilities(Sinus_rhythm=0.9, Tachycardia=0.8),
        },
    )
    out = tmp_path / "out"
    code = main(
        [
            "report",
            str(DATA / "JS06908.json"),
            str(DATA / "JS01048.json"),
            "--results",
            str(results),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    for name in ("JS06908", "JS01048"):
        parser = _Images()
        page = (out / f"{name}.html").read_text()
        parser.feed(page)
        parser.close()
        assert "html" in parser.tags
        assert DISCLAIMER in page.replace("&#x27;", "'")
        png = base64.b64decode(parser.images[0].split(",", 1)[1])
        image = matplotlib.image.imread(io.BytesIO(png), format="png")
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert DISCLAIMER in (out / f"{name}.txt").read_text()
        assert json.loads((out / f"{name}.json").read_text())["disclaimer"] == DISCLAIMER


def test_summary_csv_has_one_row_per_record_with_hr_and_probabilities(tmp_path: Path) -> None:
    results = _write_jsonl(
        tmp_path / "results.jsonl",
        {
            "JS06908": probabilities(Sinus_rhythm=0.9, Tachycardia=0.9),
            "JS01048": probabilities(Sinus_rhythm=0.9, Tachycardia=0.8),
        },
    )
    main(
        [
            "report",
            str(DATA / "JS06908.json"),
            str(DATA / "JS01048.json"),
            "--results",
            str(results),
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    rows = {r["record"]: r for r in csv.DictReader((tmp_path / "summary.csv").open())}
    assert set(rows) == {"JS06908", "JS01048"}
    assert float(rows["JS06908"]["heart_rate_bpm"]) > 100  # sinus tachycardia
    assert float(rows["JS01048"]["heart_rate_bpm"]) < 60  # sinus bradycardia
    assert "Tachycardia (discordant" in rows["JS01048"]["findings"]
    assert float(rows["JS06908"]["p_Tachycardia"]) == pytest.approx(0.9)
    assert "Sinus rhythm" in rows["JS06908"]["group_Rhythm"]


def test_report_from_csv_results_and_wfdb_record(tmp_path: Path) -> None:
    p = probabilities(Sinus_rhythm=0.9)
    with (tmp_path / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["record", *LABELS])
        writer.writeheader()
        writer.writerow({"record": "JS36330", **p})
    assert load_results(tmp_path / "results.csv")["JS36330"]["probabilities"] == pytest.approx(p)
    code = main(
        [
            "report",
            str(DATA / "DeepPSP_cinc2021" / "JS36330.hea"),
            "--results",
            str(tmp_path / "results.csv"),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "out" / "JS36330.json").read_text())
    assert report["severity"] == "normal"
    assert 60 < report["heart_rate"]["heart_rate_bpm"] < 100


def test_report_without_a_result_for_a_record_fails_clearly(tmp_path: Path, capsys) -> None:
    results = _write_jsonl(tmp_path / "results.jsonl", {"other": probabilities()})
    code = main(["report", str(DATA / "JS36330.json"), "--results", str(results), "--out", str(tmp_path)])
    assert code == 2
    assert "JS36330" in capsys.readouterr().err


def test_report_from_a_running_server_url(tmp_path: Path, server_url: str) -> None:
    """``--url`` against the real service: the report holds exactly the probabilities /clinical answers."""
    import httpx

    record = json.loads((DATA / "JS01048.json").read_text())
    body = {"signal": record["signal"], "fs": record["fs"], "lead_names": record["lead_names"]}
    clinical = httpx.post(f"{server_url}/clinical", json=body, timeout=120).json()
    code = main(["report", str(DATA / "JS01048.json"), "--url", server_url, "--out", str(tmp_path), "--quiet"])
    assert code == 0
    report = json.loads((tmp_path / "JS01048.json").read_text())
    assert report["probabilities"] == pytest.approx(clinical["probabilities"], abs=0, rel=1e-12)
    assert report["source"]["demo"] is False and report["source"]["n_segments"] == clinical["n_segments"] == 2
    assert report["heart_rate"]["heart_rate_bpm"] == pytest.approx(49.7, abs=0.1)  # measured from the record


def test_report_command_shows_progress_on_stderr(tmp_path: Path) -> None:
    results = _write_jsonl(
        tmp_path / "results.jsonl",
        {"JS36330": probabilities(Sinus_rhythm=0.9), "JS01048": probabilities(Sinus_rhythm=0.9)},
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "interpreter",
            "report",
            str(DATA / "JS36330.json"),
            str(DATA / "JS01048.json"),
            "--results",
            str(results),
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "2/2" in proc.stderr
    assert (tmp_path / "out" / "summary.csv").is_file()


def test_report_from_a_local_finetuned_checkpoint_alone(tmp_path: Path, monkeypatch) -> None:
    from ecgfm.inference import Predictor
    from ecgfm.records import read_record

    for name in ("ECGFM_PRETRAINED_CHECKPOINT", "ECGFM_DEMO"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the pretrained model is not needed, so nothing is downloaded
    out = tmp_path / "out"
    args = ["report", str(DATA / "JS06908.json"), "--finetuned", str(FINETUNED_CKPT), "--out", str(out), "--quiet"]
    assert main(args) == 0
    report = json.loads((out / "JS06908.json").read_text())
    expected = Predictor.from_paths(finetuned=str(FINETUNED_CKPT), load_pretrained=False).predict(
        read_record(DATA / "JS06908.json")
    )["clinical"]["probabilities"]
    assert report["probabilities"] == pytest.approx(expected)
    assert report["heart_rate"]["heart_rate_bpm"] > 100  # sinus tachycardia, measured from the signal
