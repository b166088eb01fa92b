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
import numpy as np
import pytest

from ecgfm.labels import LABELS
from interpreter import DISCLAIMER, cli
from interpreter.cli import load_results, main
from interpreter.report import DEMO_BANNER, SALIENCY_NOTE, ecg_figure, is_demo

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
FINETUNED_CKPT = REPO.parent / "shared" / "parity" / "ckpt" / "ecgfm_small_finetuned.pt"
SALIENCY_ATOL = 1e-6  # two forwards of the same record (the server may batch them with others)

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


@pytest.mark.parametrize("checkpoint", ["missing.pt", "not_a_checkpoint.pt"])
def test_report_with_an_unusable_finetuned_checkpoint_fails_with_one_line(
    tmp_path: Path, capsys, checkpoint: str
) -> None:
    (tmp_path / "not_a_checkpoint.pt").write_text('{"not": "a checkpoint"}')
    path = tmp_path / checkpoint
    code = main(["report", str(DATA / "JS36330.json"), "--finetuned", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: {path}" if checkpoint != "missing.pt" else f"error: finetuned checkpoint {path}")
    assert "Traceback" not in err and "ECGFM_FINETUNED_CHECKPOINT" not in err  # the path came from --finetuned


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


def _spy_on_write_reports(monkeypatch) -> list[dict]:
    """The ``saliency`` each report was drawn with (the real write_reports still writes the files)."""
    drawn: list[dict] = []
    real = cli.write_reports

    def spy(*args, saliency=None, **kwargs):
        drawn.append(saliency)
        return real(*args, saliency=saliency, **kwargs)

    monkeypatch.setattr(cli, "write_reports", spy)
    return drawn


def _assert_saliency_report(page: str) -> None:
    parser = _Images()
    parser.feed(page)
    assert len(parser.images) == 1 and parser.images[0].startswith("data:image/png;base64,")
    assert f'<p id="saliency-note">{SALIENCY_NOTE}</p>' in page and "attention, not causation" in page


def test_report_with_saliency_from_a_running_server_url(tmp_path: Path, server_url: str, monkeypatch) -> None:
    """``--url --saliency``: the probabilities are still exactly the plain /clinical answer's; the drawing is the
    saliency a /clinical request with ``"saliency": true`` answers."""
    import httpx

    record = json.loads((DATA / "JS01048.json").read_text())
    body = {"signal": record["signal"], "fs": record["fs"], "lead_names": record["lead_names"]}
    plain = httpx.post(f"{server_url}/clinical", json=body, timeout=120).json()
    asked = httpx.post(f"{server_url}/clinical", json={**body, "saliency": True}, timeout=120).json()
    drawn = _spy_on_write_reports(monkeypatch)
    args = ["report", str(DATA / "JS01048.json"), "--url", server_url, "--out", str(tmp_path), "--quiet"]
    assert main([*args, "--saliency"]) == 0
    report = json.loads((tmp_path / "JS01048.json").read_text())
    assert report["probabilities"] == pytest.approx(plain["probabilities"], abs=0, rel=1e-12)
    [saliency] = drawn
    assert saliency["step_s"] == asked["saliency"]["step_s"] == pytest.approx(0.032)
    assert saliency["segment_start_s"] == asked["saliency"]["segment_start_s"] == [0.0, 5.0]
    np.testing.assert_allclose(saliency["values"], asked["saliency"]["values"], atol=SALIENCY_ATOL, rtol=0)
    _assert_saliency_report((tmp_path / "JS01048.html").read_text())
    assert main([*args, "--format", "fhir", "--saliency"]) == 2  # a Bundle has no drawing


def test_report_with_saliency_from_a_local_checkpoint_and_from_results(tmp_path: Path, monkeypatch) -> None:
    from ecgfm.cli import main as ecgfm_main
    from ecgfm.inference import Predictor
    from ecgfm.records.readers import read_record

    monkeypatch.delenv("ECGFM_DEMO", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    record_path = str(DATA / "A1041.json")
    predictor = Predictor.from_paths(finetuned=str(FINETUNED_CKPT), load_pretrained=False)
    plain = predictor.predict(read_record(record_path))["clinical"]
    asked = predictor.predict(read_record(record_path), saliency=True)["clinical"]
    drawn = _spy_on_write_reports(monkeypatch)
    local = ["report", record_path, "--finetuned", str(FINETUNED_CKPT), "--out", str(tmp_path / "local"), "--quiet"]
    assert main([*local, "--saliency"]) == 0
    report = json.loads((tmp_path / "local" / "A1041.json").read_text())
    assert report["probabilities"] == plain["probabilities"]  # the plain forward's, not the saliency forward's
    np.testing.assert_allclose(drawn[-1]["values"], asked["saliency"]["values"], atol=SALIENCY_ATOL, rtol=0)
    _assert_saliency_report((tmp_path / "local" / "A1041.html").read_text())

    # --results: the saliency ecgfm predict --saliency wrote with the results
    results = tmp_path / "results.jsonl"
    ecgfm_args = ["predict", record_path, "--only", "clinical", "--finetuned", str(FINETUNED_CKPT), "-o", str(results)]
    assert ecgfm_main([*ecgfm_args, "--saliency"]) == 0
    from_results = ["report", record_path, "--results", str(results), "--out", str(tmp_path / "res"), "--quiet"]
    assert main([*from_results, "--saliency"]) == 0
    assert drawn[-1] == json.loads(results.read_text())["clinical"]["saliency"]
    _assert_saliency_report((tmp_path / "res" / "A1041.html").read_text())
    assert main(from_results) == 0 and drawn[-1] is None  # without the flag nothing is drawn
    assert "saliency-note" not in (tmp_path / "res" / "A1041.html").read_text()
    assert ecgfm_main(ecgfm_args) == 0  # results without saliency: --saliency cannot draw it
    assert main([*from_results, "--saliency"]) == 2


def _axes(figure, gid: str):
    found = [ax for ax in figure.axes if ax.get_gid() == gid]
    return found[0] if found else None


@pytest.mark.parametrize(
    ("name", "seconds", "max_seconds"),
    [("A5215.json", None, 10.0), ("A1041.json", None, 20.0), ("A1041.json", 3.0, 10.0)],
    ids=["20s-record-10s-window", "17s-record-tail-dropped", "3s-record-padded"],
)
def test_the_rhythm_strip_and_its_band_draw_the_records_saliency_on_one_scale(name, seconds, max_seconds) -> None:
    """Real records and the parity checkpoint: lead II over the plotted window, under it a band whose steps are
    the response's values at their times (none past the record's end or the tail preprocessing dropped), on the
    colour scale of the whole record's min to max, shared with the lead panels' shading and shown by a colour bar."""
    from matplotlib import pyplot as plt

    from ecgfm.inference import Predictor
    from ecgfm.records.readers import read_record

    record = read_record(DATA / name)
    if seconds is not None:  # the first seconds only: one padded segment
        record.signal = record.signal[:, : int(seconds * record.fs)]
    clinical = Predictor.from_paths(finetuned=str(FINETUNED_CKPT), load_pretrained=False).predict(
        record, saliency=True
    )["clinical"]
    saliency = clinical["saliency"]
    duration = record.signal.shape[1] / record.fs
    window = min(duration, max_seconds)
    values = np.array(saliency["values"], dtype=np.float64)  # [n_segments, 156]
    starts = np.array(saliency["segment_start_s"])[:, None] + saliency["step_s"] * np.arange(values.shape[1])
    real = starts < duration  # padded steps of a short record are not the record's
    shown = starts[real] < window

    figure = ecg_figure(record.signal, record.fs, record.lead_names, max_seconds=max_seconds, saliency=saliency)
    try:
        strip, band = _axes(figure, "rhythm-strip"), _axes(figure, "saliency-band")
        colorbar = _axes(figure, "saliency-colorbar")
        assert strip is not None and band is not None and colorbar is not None
        [line] = strip.get_lines()
        lead_ii = record.signal[record.lead_names.index("II"), : int(window * record.fs)]
        np.testing.assert_array_equal(line.get_ydata(), lead_ii)
        [mesh] = band.collections
        np.testing.assert_array_equal(np.ravel(mesh.get_array()), values[real][shown])  # the response's, per step
        edges = mesh.get_coordinates()[0, :, 0]
        np.testing.assert_allclose(edges[:-1], starts[real][shown])
        assert edges[-1] <= window + 1e-12 and band.get_xlim() == strip.get_xlim() == (0.0, window)
        if seconds is not None:
            assert clinical["padded"] and edges[-1] == pytest.approx(seconds)  # stops at the end of the record
        if name == "A1041.json" and seconds is None:  # 17 s: 3 segments, the last 2 s dropped by preprocessing
            assert clinical["used_duration_s"] == 15.0 and 14.9 < edges[-1] < 15.0
        scale = (values[real].min(), values[real].max())  # the whole record's, also what is not plotted
        assert (mesh.norm.vmin, mesh.norm.vmax) == scale
        panels = [ax.collections[0] for ax in figure.axes if ax.get_gid() is None and ax.collections]
        assert len(panels) == 12 and {(m.norm.vmin, m.norm.vmax) for m in panels} == {scale}
        assert list(colorbar.get_xticks() if colorbar.get_xticks().size else colorbar.get_yticks()) == list(scale)
    finally:
        plt.close(figure)
    plain = ecg_figure(record.signal, record.fs, record.lead_names, max_seconds=max_seconds)
    assert _axes(plain, "rhythm-strip") is None and _axes(plain, "saliency-band") is None  # only with saliency
    plt.close(plain)


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
    from ecgfm.records.readers import read_record

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


# ---- demo weights: said at the top of every report ------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_finetuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The finetuned checkpoint ``ecgfm demo-checkpoints`` writes (random weights that say they are demo weights)."""
    from ecgfm.cli import main as ecgfm_main

    out = tmp_path_factory.mktemp("demo-weights")
    assert ecgfm_main(["demo-checkpoints", "--out", str(out), "--size", "small"]) == 0
    return out / "finetuned.pt"


def _body_paragraphs(page: str) -> list[tuple[dict, str]]:
    """The ``<p>`` elements of a page in order, as (attributes, text)."""

    class Paragraphs(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.found: list[tuple[dict, str]] = []
            self.open: dict | None = None

        def handle_starttag(self, tag: str, attrs: list) -> None:
            if tag == "p":
                self.open = dict(attrs)
                self.found.append((self.open, ""))

        def handle_endtag(self, tag: str) -> None:
            if tag == "p":
                self.open = None

        def handle_data(self, data: str) -> None:
            if self.open is not None:
                attrs, text = self.found[-1]
                self.found[-1] = (attrs, text + data)

    parser = Paragraphs()
    parser.feed(page)
    return parser.found


def _run_report(args: list[str], monkeypatch) -> None:
    for name in ("ECGFM_PRETRAINED_CHECKPOINT", "ECGFM_DEMO"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main([*args, "--quiet"]) == 0


def test_a_report_from_demo_weights_says_so_at_the_top_of_text_and_html_and_in_json_and_csv(
    tmp_path: Path, demo_finetuned: Path, monkeypatch, capsys
) -> None:
    out = tmp_path / "out"
    _run_report(["report", str(DATA / "JS06908.json"), "--finetuned", str(demo_finetuned), "--out", str(out)],
                monkeypatch)  # fmt: skip
    report = json.loads((out / "JS06908.json").read_text())
    assert report["demo"] is True and list(report)[:2] == ["disclaimer", "demo"]
    assert json.loads(report["source"]["checkpoint"])["demo"] is True  # what the model's answer said
    text = (out / "JS06908.txt").read_text().splitlines()
    assert text[0] == f"!!! {DEMO_BANNER} !!!"
    assert f"OVERALL SEVERITY: {report['severity'].upper()} (DEMO WEIGHTS: meaningless)" in text
    paragraphs = _body_paragraphs((out / "JS06908.html").read_text())
    assert paragraphs[0] == ({"class": "demo", "id": "demo-banner", "role": "alert"}, DEMO_BANNER)  # first of all
    assert paragraphs[1][0]["id"] == "disclaimer"
    assert paragraphs[2][1] == f"Overall severity: {report['severity']} (demo weights: meaningless)"
    (row,) = csv.DictReader((out / "summary.csv").open())
    assert row["demo"] == "True"
    assert f"1 of 1 report(s): {DEMO_BANNER}" in capsys.readouterr().err


def test_a_report_from_real_weights_has_no_demo_banner(tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "out"
    _run_report(["report", str(DATA / "JS06908.json"), "--finetuned", str(FINETUNED_CKPT), "--out", str(out)],
                monkeypatch)  # fmt: skip
    assert json.loads((out / "JS06908.json").read_text())["demo"] is False
    text = (out / "JS06908.txt").read_text()
    assert text.startswith("ECG interpretation — record JS06908") and "DEMO" not in text
    page = (out / "JS06908.html").read_text()
    assert "demo-banner" not in page and "meaningless" not in page
    assert next(csv.DictReader((out / "summary.csv").open()))["demo"] == "False"
    assert "DEMO" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("meta", "demo"),
    [
        ({"demo": True}, True),
        ({"demo": False}, False),
        ({"demo": "True"}, True),  # a results CSV's column
        ({"demo": "False"}, False),
        ({"demo": "1"}, True),
        ({"checkpoint": {"demo": True}}, True),  # a results file whose answer has only the checkpoint's flag
        ({"checkpoint": json.dumps({"demo": True, "kind": "finetuned"})}, True),
        ({"checkpoint": json.dumps({"demo": False})}, False),
        ({"checkpoint": "not json"}, False),
        ({}, False),
        (None, False),
    ],
)
def test_demo_results_are_told_by_their_own_flag_or_their_checkpoints(meta, demo: bool) -> None:
    assert is_demo(meta) is demo


def test_a_results_csv_saying_demo_false_gives_no_demo_fhir_bundle(tmp_path: Path) -> None:
    with (tmp_path / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["record", "demo", *LABELS])
        writer.writeheader()
        writer.writerow({"record": "JS36330", "demo": "False", **probabilities(Sinus_rhythm=0.9)})
        writer.writerow({"record": "JS06908", "demo": "True", **probabilities(Sinus_rhythm=0.9)})
    args = ["report", "--results", str(tmp_path / "results.csv"), "--out", str(tmp_path), "--format", "fhir"]
    assert main([*args, "--quiet"]) == 0
    conclusions = {name: json.loads((tmp_path / f"{name}.fhir.json").read_text()) for name in ("JS36330", "JS06908")}
    texts = {name: json.dumps(bundle) for name, bundle in conclusions.items()}
    assert "DEMO" not in texts["JS36330"] and "DEMO weights (random)" in texts["JS06908"]
