"""R-peak detection and heart rate against annotated and labelled real records in ../shared/data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import wfdb
from scipy import signal as sps

from ecgfm.records.readers import read_record
from interpreter.heart_rate import clean_for_detection, detect_heart_rate

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
MITDB_100 = DATA / "MIT-LCP_wfdb-python" / "100"
BEAT_SYMBOLS = set("NLRBAaJSVrFejnE/fQ?")

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not checked out")


def _mit_100(seconds: float) -> tuple[np.ndarray, np.ndarray, float]:
    n = int(seconds * 360)
    record = wfdb.rdrecord(str(MITDB_100), sampto=n)
    ann = wfdb.rdann(str(MITDB_100), "atr", sampto=n)
    beats = np.array([s for s, sym in zip(ann.sample, ann.symbol, strict=True) if sym in BEAT_SYMBOLS])
    return record.p_signal.T, beats, float(record.fs)


def _fraction_within(peaks: list[int], reference: np.ndarray, fs: float, tol_s: float = 0.05) -> float:
    peaks_arr = np.asarray(peaks)
    return float(np.mean([np.min(np.abs(peaks_arr - r)) <= tol_s * fs for r in reference]))


def _reference_hr(beats: np.ndarray, fs: float) -> float:
    return 60.0 / float(np.mean(np.diff(beats) / fs))


def test_mitdb_100_first_60s_json_matches_annotations() -> None:
    record = read_record(DATA / "mitdb_100_first60s.json")
    result = detect_heart_rate(record.signal, record.fs, record.lead_names)
    reference = np.asarray(record.metadata["reference_beat_samples"])
    assert abs(result.heart_rate_bpm - record.metadata["reference_hr_bpm"]) <= 2.0
    assert _fraction_within(result.r_peaks, reference, record.fs) >= 0.98
    assert result.quality == "good"


def test_samples_missing_between_beats_are_interpolated() -> None:
    record = read_record(DATA / "mitdb_100_first60s.json")
    reference = np.asarray(record.metadata["reference_beat_samples"])
    signal = np.array(record.signal, dtype=np.float64)
    half_gap = int(0.05 * record.fs)
    for mid in (reference[:-1] + reference[1:]) // 2:  # a 100 ms dropout (NaN) halfway between every two beats
        signal[:, mid - half_gap : mid + half_gap] = np.nan
    result = detect_heart_rate(signal, record.fs, record.lead_names)
    assert abs(result.heart_rate_bpm - record.metadata["reference_hr_bpm"]) <= 2.0
    assert _fraction_within(result.r_peaks, reference, record.fs) >= 0.98
    assert len(result.r_peaks) == len(reference)
    assert result.quality == "good"


@pytest.mark.parametrize("first_beat_ms", [10, 20, 40, 58])
def test_a_beat_just_after_the_start_is_found_where_it_is(first_beat_ms: int) -> None:
    """wfdb's correct_peaks shifts a peak closer to the start than its 60 ms search radius to a negative index;
    refine_peaks pads the lead so that no beat is lost or moved (20 s cut so that an annotated beat comes first)."""
    record = read_record(DATA / "mitdb_100_first60s.json")
    reference = np.asarray(record.metadata["reference_beat_samples"])
    start = int(reference[5] - first_beat_ms / 1000 * record.fs)
    stop = start + int(20 * record.fs)
    beats = reference[(reference >= start) & (reference < stop)] - start
    assert beats[0] == reference[5] - start <= 0.06 * record.fs
    result = detect_heart_rate(np.asarray(record.signal)[:, start:stop], record.fs, record.lead_names)
    assert len(result.r_peaks) == len(beats)
    assert np.max(np.abs(np.asarray(result.r_peaks) - beats)) <= 0.01 * record.fs  # each within 10 ms


@pytest.mark.parametrize("file", ["mitdb_100_first60s.json", "A1041.json"])  # peaks on an upward, a downward QRS
def test_each_r_peak_is_the_extremum_of_its_lead_within_25_ms(file: str) -> None:
    record = read_record(DATA / file)
    result = detect_heart_rate(record.signal, record.fs, record.lead_names)
    lead = clean_for_detection(record.signal[record.lead_names.index(result.lead)], record.fs)
    radius = int(0.025 * record.fs)
    sign = np.sign(np.median(lead[result.r_peaks]))
    for peak in result.r_peaks:
        window = sign * lead[max(0, peak - radius) : peak + radius + 1]
        assert sign * lead[peak] == window.max()


def test_mitdb_100_first_5_minutes_matches_annotations() -> None:
    signal, beats, fs = _mit_100(300)
    result = detect_heart_rate(signal, fs, ["MLII", "V5"])
    assert abs(result.heart_rate_bpm - _reference_hr(beats, fs)) <= 2.0
    assert _fraction_within(result.r_peaks, beats, fs) >= 0.98
    assert len(result.r_peaks) <= len(beats) * 1.02  # few false detections


@pytest.mark.parametrize("lead", [0, 1])
def test_single_lead_input_matches_annotations(lead: int) -> None:
    signal, beats, fs = _mit_100(60)
    result = detect_heart_rate(signal[lead], fs)
    assert abs(result.heart_rate_bpm - _reference_hr(beats, fs)) <= 2.0
    assert _fraction_within(result.r_peaks, beats, fs) >= 0.98
    assert (result.lead, result.lead_agreement, result.quality) == ("lead0", 1.0, "good")  # no other lead


@pytest.mark.parametrize("new_fs", [250, 1000])
def test_resampled_record_gives_peaks_at_its_own_rate(new_fs: int) -> None:
    signal, beats, fs = _mit_100(60)
    resampled = sps.resample_poly(signal, new_fs, int(fs), axis=1)
    result = detect_heart_rate(resampled, new_fs)
    assert result.fs == new_fs
    assert abs(result.heart_rate_bpm - _reference_hr(beats, fs)) <= 2.0
    assert _fraction_within(result.r_peaks, beats * new_fs / fs, new_fs) >= 0.98


def test_strong_baseline_wander_does_not_change_the_peaks() -> None:
    signal, beats, fs = _mit_100(60)
    t = np.arange(signal.shape[1]) / fs
    wandering = signal + 1.5 * np.sin(2 * np.pi * 0.25 * t) + 0.8 * np.sin(2 * np.pi * 0.07 * t + 1.0)
    result = detect_heart_rate(wandering, fs)
    assert abs(result.heart_rate_bpm - _reference_hr(beats, fs)) <= 2.0
    assert _fraction_within(result.r_peaks, beats, fs) >= 0.98


@pytest.mark.parametrize(
    ("file", "low", "high"),
    [
        ("JS01048.json", 40, 60),  # sinus bradycardia
        ("E05526.json", 40, 60),  # sinus bradycardia with sinus arrhythmia
        ("JS06908.json", 100, 150),  # sinus tachycardia
        ("JS36330.json", 60, 100),  # normal sinus rhythm
        ("ptbdb_s0010_re_first10s.json", 60, 100),  # 1000 Hz, sinus ~82/min
        ("A5215.json", 60, 100),  # RBBB + PAC, ~82/min
        ("A0689.json", 60, 100),  # AF ~80/min
        ("A1041.json", 45, 75),  # AF + LBBB ~56-62/min
        ("JS23463.json", 60, 90),  # paced with +/-10 mV spikes and PVCs, ~70-75/min
    ],
)
def test_labelled_records_have_plausible_heart_rate(file: str, low: float, high: float) -> None:
    record = read_record(DATA / file)
    result = detect_heart_rate(record.signal, record.fs, record.lead_names)
    assert low < result.heart_rate_bpm < high
    assert result.quality == "good"


def test_atrial_fibrillation_is_irregular_and_sinus_rhythm_is_not() -> None:
    af = read_record(DATA / "A1041.json")
    nsr = read_record(DATA / "JS36330.json")
    assert detect_heart_rate(af.signal, af.fs).irregular is True
    assert detect_heart_rate(nsr.signal, nsr.fs).irregular is False


def test_noise_only_signal_is_flagged_unreliable() -> None:
    rng = np.random.default_rng(0)
    result = detect_heart_rate(rng.normal(0, 0.3, size=(2, 5000)), 500)
    assert result.quality == "unreliable"
    assert result.quality_reasons


def test_flat_signal_gives_no_heart_rate() -> None:
    result = detect_heart_rate(np.zeros((12, 5000)), 500)
    assert result.heart_rate_bpm is None
    assert result.quality == "unreliable"
    assert result.to_dict() == {
        "fs": 500,  # still the record's rate
        "r_peaks": [],
        "heart_rate_bpm": None,
        "rr_intervals_s": [],
        "rr_cv": None,
        "rmssd_ms": None,
        "irregular": None,
        "lead": None,
        "lead_agreement": None,
        "quality": "unreliable",
        "quality_reasons": ["no R peaks found in any lead"],
        "n_beats": 0,
    }


def test_detection_writes_nothing_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    record = read_record(DATA / "mitdb_100_first60s.json")
    detect_heart_rate(record.signal, record.fs, record.lead_names)
    assert capsys.readouterr().out == ""  # stdout is the JSON of `interpreter hr` and the other commands


def test_hr_command_prints_json_for_a_wfdb_record() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "interpreter", "hr", str(DATA / "DeepPSP_cinc2021" / "JS01048.hea")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    data = json.loads(out)
    assert data["fs"] == 500
    assert data["heart_rate_bpm"] < 60
    rr = np.diff(data["r_peaks"]) / data["fs"]
    assert data["heart_rate_bpm"] == pytest.approx(60 / rr.mean())


def test_hr_command_reports_a_missing_file_with_exit_code_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "interpreter", "hr", str(tmp_path / "nope.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "no such file" in proc.stderr
