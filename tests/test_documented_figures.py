"""The figures of docs/ that a test backs: each is recomputed here, or checked against the results file it names.

docs/clinical_methodology.md section 1 (heart-rate validation) is recomputed from ../shared/data; the results files
named in docs/ exist and carry their provenance; the fast-path tolerance table of docs/performance.md matches
benchmarks/results/fast_path_tolerance_cpu.json; results writers record commit, command and machine.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import wfdb
from scipy import signal as sps

from benchmarks import common
from ecgfm.records.readers import read_record
from interpreter.heart_rate import detect_heart_rate

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
RESULTS = REPO / "benchmarks" / "results"
DATA = REPO.parent / "shared" / "data"
MITDB_100 = DATA / "MIT-LCP_wfdb-python" / "100"
BEAT_SYMBOLS = set("NLRBAaJSVrFejnE/fQ?")  # MIT-BIH beat annotations (as tests/test_interpreter_heart_rate.py)
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not checked out")


def _mit_100(seconds: float | None) -> tuple[np.ndarray, np.ndarray, float]:
    """Signal ``[2, n]``, annotated beat samples and fs of MIT-BIH 100 (the whole record when ``seconds`` is None)."""
    n = None if seconds is None else int(seconds * 360)
    record = wfdb.rdrecord(str(MITDB_100), sampto=n)
    ann = wfdb.rdann(str(MITDB_100), "atr", sampto=n)
    beats = np.array([s for s, sym in zip(ann.sample, ann.symbol, strict=True) if sym in BEAT_SYMBOLS])
    return record.p_signal.T, beats, float(record.fs)


def _matching(peaks: list[int], beats: np.ndarray, fs: float, tol_s: float = 0.05) -> tuple[int, int]:
    """(annotated beats with a detected peak within ``tol_s``, detected peaks with no annotated beat within it)."""
    peaks_arr, tol = np.asarray(peaks), tol_s * fs
    hits = sum(bool(np.min(np.abs(peaks_arr - b)) <= tol) for b in beats)
    extra = sum(bool(np.min(np.abs(beats - p)) > tol) for p in peaks_arr)
    return hits, extra


def _reference_hr(beats: np.ndarray, fs: float) -> float:
    return 60.0 / float(np.mean(np.diff(beats) / fs))


# docs/clinical_methodology.md, "Validation": MIT-BIH 100 rows.


@needs_data
@pytest.mark.parametrize("new_fs", [250, 500, 1000])
def test_mitdb_100_resampled_row(new_fs: int) -> None:
    """'MIT-BIH 100, 60 s resampled to 250, 500, 1000 Hz | 74 beats | 73.87 / 73.87 bpm | 100 %'."""
    signal, beats, fs = _mit_100(60)
    result = detect_heart_rate(sps.resample_poly(signal, new_fs, int(fs), axis=1), new_fs)
    assert result.fs == new_fs
    assert len(beats) == 74
    assert round(result.heart_rate_bpm, 2) == round(_reference_hr(beats, fs), 2) == 73.87
    assert _matching(result.r_peaks, beats * new_fs / fs, new_fs) == (74, 0)


@needs_data
@pytest.mark.slow
def test_mitdb_100_whole_record_row() -> None:
    """'MIT-BIH 100, whole record 30 min | 2273 beats | 75.51 / 75.51 bpm | 2272/2273 (99.96 %), 1 extra'.

    About 10 s on a 2-core CPU (650,000 samples per lead).
    """
    signal, beats, fs = _mit_100(None)
    assert signal.shape[1] / fs / 60 == pytest.approx(30.09, abs=0.01)
    result = detect_heart_rate(signal, fs, ["MLII", "V5"])
    assert len(beats) == 2273
    assert round(result.heart_rate_bpm, 2) == round(_reference_hr(beats, fs), 2) == 75.51
    assert _matching(result.r_peaks, beats, fs) == (2272, 1)
    assert result.quality == "good"


@needs_data
def test_mitdb_100_first_5_minutes_row() -> None:
    """'MIT-BIH 100, first 5 min (WFDB + .atr) | 371 beats | 74.22 / 74.22 bpm | 371/371 (100 %), 0 extra'."""
    signal, beats, fs = _mit_100(300)
    result = detect_heart_rate(signal, fs, ["MLII", "V5"])
    assert len(beats) == 371
    assert round(result.heart_rate_bpm, 2) == round(_reference_hr(beats, fs), 2) == 74.22
    assert _matching(result.r_peaks, beats, fs) == (371, 0)


@needs_data
@pytest.mark.parametrize("variant", ["json", "MLII", "V5", "baseline wander"])
def test_mitdb_100_first_60_s_rows(variant: str) -> None:
    """The 60 s rows (JSON; one lead; baseline wander): '74 beats | 73.87 / 73.87 bpm | 74/74 (100 %), 0 extra'."""
    if variant == "json":
        record = read_record(DATA / "mitdb_100_first60s.json")
        signal, fs, names = record.signal, record.fs, record.lead_names
        beats = np.asarray(record.metadata["reference_beat_samples"])
    else:
        signal, beats, fs = _mit_100(60)
        names = None
        if variant != "baseline wander":
            signal = signal[0 if variant == "MLII" else 1]
        else:
            t = np.arange(signal.shape[1]) / fs
            signal = signal + 1.5 * np.sin(2 * np.pi * 0.25 * t) + 0.8 * np.sin(2 * np.pi * 0.07 * t + 1.0)
    result = detect_heart_rate(signal, fs, names)
    assert len(beats) == 74
    assert round(result.heart_rate_bpm, 2) == round(_reference_hr(beats, fs), 2) == 73.87
    assert _matching(result.r_peaks, beats, fs) == (74, 0)


# docs/clinical_methodology.md, "Labelled 12-lead records": detected HR and RR CV as printed there.
LABELLED = [
    ("JS01048.json", 49.7, 0.033, False),
    ("E05526.json", 48.8, 0.154, True),
    ("JS06908.json", 126.9, 0.008, False),
    ("JS36330.json", 82.8, 0.026, False),
    ("ptbdb_s0010_re_first10s.json", 81.8, 0.011, False),
    ("A5215.json", 81.8, 0.068, False),
    ("A0689.json", 80.4, 0.145, False),
    ("A1041.json", 60.0, 0.256, True),
    ("JS23463.json", 74.2, 0.168, True),
]


@needs_data
@pytest.mark.parametrize(("file", "hr", "cv", "irregular"), LABELLED)
def test_labelled_record_rows(file: str, hr: float, cv: float, irregular: bool) -> None:
    record = read_record(DATA / file)
    result = detect_heart_rate(record.signal, record.fs, record.lead_names)
    assert (round(result.heart_rate_bpm, 1), round(result.rr_cv, 3), result.irregular) == (hr, cv, irregular)
    row = re.search(rf"^\| {re.escape(Path(file).stem.removeprefix('ptbdb_').split('_first')[0])} .*$",
                    (DOCS / "clinical_methodology.md").read_text(), re.MULTILINE)  # fmt: skip
    assert row is not None and f"| {hr} |" in row.group(0) and f"| {cv}" in row.group(0)
    assert ("(irregular)" in row.group(0)) is irregular


# Results files named in docs/.


def _named_results() -> set[str]:
    """Every ``<name>.md`` / ``.json`` of benchmarks/results that a page of docs/ names."""
    names = set()
    for page in DOCS.glob("*.md"):
        for match in re.finditer(r"`(?:benchmarks/results/)?([a-z0-9_.\-]+)\.(?:md|json)`", page.read_text()):
            names.add(match.group(1))
    return names


def test_every_results_file_named_in_docs_exists_with_its_provenance() -> None:
    named = _named_results()
    assert "fast_path_tolerance_cpu" in named
    for name in sorted(named):
        if not (RESULTS / f"{name}.json").exists():
            continue  # a doc page or another file named in backticks, not a results file
        data = json.loads((RESULTS / f"{name}.json").read_text())
        record = data["provenance"]
        assert {"commit", "command", "machine"} <= set(record), name
        assert "Provenance:" in (RESULTS / f"{name}.md").read_text(), name


def test_every_results_file_records_commit_command_and_machine() -> None:
    for path in sorted(RESULTS.glob("*.json")):
        record = json.loads(path.read_text())["provenance"]
        assert record["commit"] or "unknown" in record.get("commit_note", ""), path.name
        assert record["command"], path.name
        assert record["machine"].startswith("Machine:"), path.name


def test_fast_path_tolerance_row_matches_its_results_file() -> None:
    """The 'measured on the fixture' column of docs/performance.md comes from fast_path_tolerance_cpu.json."""
    variants = json.loads((RESULTS / "fast_path_tolerance_cpu.json").read_text())["variants"]
    fft = variants["fp32+fft"]["against_fp32"]
    bf16 = variants["bf16"]["against_fp32"]
    fp16 = variants["fp16"]["against_fp32"]
    page = (DOCS / "performance.md").read_text()
    logits = max(fft["logits_max_abs"], fft["logits_padded_max_abs"])
    probabilities = max(fft["probabilities_max_abs"], fft["probabilities_padded_max_abs"])
    assert f"logits diff ≤ {logits:.1e}" in page
    assert f"prob. diff ≤ {probabilities:.1e}" in page
    assert f"prob. diff {max(bf16['probabilities_max_abs'], bf16['probabilities_padded_max_abs']):.1e}" in page
    assert f"min cosine per frame {bf16['hidden_min_cosine_per_frame']:.5f}" in page
    assert f"prob. diff {max(fp16['probabilities_max_abs'], fp16['probabilities_padded_max_abs']):.1e}" in page


def test_write_results_records_commit_command_and_machine(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ECGFM_POS_CONV", "fft")
    monkeypatch.setenv("ECGFM_API_KEY", "not-to-be-written")
    machine = common.machine_info()
    common.write_results("probe", {"machine": machine, "x": 1}, "# probe", out_dir=tmp_path)
    data = json.loads((tmp_path / "probe.json").read_text())
    record = data["provenance"]
    assert data["x"] == 1
    assert re.fullmatch(r"[0-9a-f]{4,40}", record["commit"])
    assert isinstance(record["dirty"], bool)
    assert record["command"].startswith("python")
    assert record["environment"]["ECGFM_POS_CONV"] == "fft"
    assert "ECGFM_API_KEY" not in record["environment"]
    assert record["machine"] == common.machine_line(machine)
    markdown = (tmp_path / "probe.md").read_text()
    assert f"`{record['commit']}`" in markdown and record["machine"] in markdown
    assert "not-to-be-written" not in markdown + (tmp_path / "probe.json").read_text()
