"""The heart-rate measures and the signal-quality flag at their cut-offs (docs/clinical_methodology.md §1).

The numbers are transcribed from the document: ``irregular`` when RR CV > 0.15; ``unreliable`` with fewer than 3
beats, a chosen lead agreeing with the others below 0.8 (beats matched within ±100 ms), or an RR interval outside
0.2-3.0 s. The records are synthetic beat trains at 1024 Hz with beats at chosen samples: the detector finds
every beat at the same offset, so the RR intervals (checked in each test) are exactly the designed ones and a
cut-off can be hit exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from interpreter.heart_rate import detect_heart_rate, refine_peaks

FS = 1024  # RR intervals of whole samples are exact binary fractions of a second
START = 600  # first beat (samples)
TAIL = 800  # samples after the last beat


def beat_train(peaks: np.ndarray, n: int) -> np.ndarray:
    """One lead of narrow QRS complexes (q, R, s) with a T wave, R peak at each of ``peaks``, in mV."""
    t = np.arange(n)[None, :] / FS
    d = t - np.asarray(peaks, dtype=np.float64)[:, None] / FS
    r = 1.5 * np.exp(-0.5 * (d / 0.008) ** 2)
    q_s = 0.3 * np.exp(-0.5 * ((d + 0.03) / 0.01) ** 2) + 0.45 * np.exp(-0.5 * ((d - 0.03) / 0.01) ** 2)
    t_wave = 0.3 * np.exp(-0.5 * ((d - 0.25) / 0.04) ** 2)
    return (r - q_s + t_wave).sum(axis=0)


def peaks_with_rr(rr_samples: list[int]) -> np.ndarray:
    return np.cumsum([START, *rr_samples])


def measure(rr_samples: list[int], other_lead: np.ndarray | None = None):
    """Detect on a record whose beats are ``rr_samples`` apart, with an optional second lead's beat positions."""
    peaks = peaks_with_rr(rr_samples)
    n = int(peaks[-1]) + TAIL
    leads = [beat_train(peaks, n)] + ([beat_train(other_lead, n)] if other_lead is not None else [])
    result = detect_heart_rate(np.vstack(leads), FS)
    assert np.diff(result.r_peaks).tolist() == rr_samples  # the precondition: every beat found, none extra
    return result


def alternating(long: int, short: int, pairs: int = 6) -> list[int]:
    """RR intervals long, short, long, ...: CV = (long - short) / (long + short), exact in floating point."""
    return [long, short] * pairs


def test_heart_rate_is_60_over_the_mean_rr_interval() -> None:
    result = measure(alternating(1150, 850))
    assert result.heart_rate_bpm == pytest.approx(60 / (1000 / FS))
    assert result.rr_intervals_s == pytest.approx([1150 / FS, 850 / FS] * 6)
    assert result.r_peaks[0] == pytest.approx(START, abs=3)  # peaks at the record's own rate


def test_rr_variability_is_the_coefficient_of_variation_and_rmssd() -> None:
    result = measure(alternating(1150, 850))
    assert result.rr_cv == pytest.approx(150 / 1000)
    assert result.rmssd_ms == pytest.approx(300 / FS * 1000)


@pytest.mark.parametrize(("long", "short", "irregular"), [(1148, 852, False), (1150, 850, False), (1152, 848, True)])
def test_rr_is_irregular_only_above_a_cv_of_0_15(long: int, short: int, irregular: bool) -> None:
    result = measure(alternating(long, short))
    assert result.rr_cv == pytest.approx((long - short) / (long + short), abs=1e-12)
    assert result.irregular is irregular
    assert result.quality == "good"  # irregularity is a measure, not a quality problem


def test_a_regular_rhythm_is_not_irregular() -> None:
    result = measure([FS] * 8)
    assert (result.heart_rate_bpm, result.rr_cv, result.irregular) == (60.0, 0.0, False)


@pytest.mark.parametrize(("beats", "quality"), [(2, "unreliable"), (3, "good"), (4, "good")])
def test_fewer_than_3_beats_make_the_rate_unreliable(beats: int, quality: str) -> None:
    result = measure([FS] * (beats - 1))
    assert result.quality == quality
    assert result.quality_reasons == ([f"only {beats} beats detected"] if quality == "unreliable" else [])
    assert result.heart_rate_bpm == pytest.approx(60.0)  # reported, flagged


def test_with_two_beats_there_is_a_rate_but_no_variability() -> None:
    result = measure([FS])
    assert (result.rr_cv, result.rmssd_ms, result.irregular) == (None, None, None)


@pytest.mark.parametrize(
    ("longest_rr", "quality"), [(3 * FS - 1, "good"), (3 * FS, "good"), (3 * FS + 1, "unreliable")]
)
def test_an_rr_interval_longer_than_3_s_makes_the_rate_unreliable(longest_rr: int, quality: str) -> None:
    result = measure([FS] * 3 + [longest_rr] + [FS] * 3)
    assert result.quality == quality
    if quality == "unreliable":
        assert result.quality_reasons == ["RR intervals outside the physiological range 0.2-3.0 s"]


@pytest.mark.parametrize(
    ("matched", "agreement", "quality"), [(15, 0.75, "unreliable"), (16, 0.8, "good"), (17, 0.85, "good")]
)
def test_a_lead_agreeing_with_the_others_below_0_8_makes_the_rate_unreliable(
    matched: int, agreement: float, quality: str
) -> None:
    rr = [FS] * 19  # 20 beats; the second lead has the last 20 - matched beats 300 ms late
    other = peaks_with_rr(rr)
    other[matched:] += round(0.3 * FS)
    result = measure(rr, other_lead=other)
    assert result.lead_agreement == pytest.approx(agreement, abs=1e-12)
    assert result.quality == quality
    if quality == "unreliable":
        assert result.quality_reasons == [f"leads disagree on beat positions (agreement {agreement:.2f} < 0.8)"]


@pytest.mark.parametrize(("shift", "agreement"), [(int(0.1 * FS), 1.0), (int(0.1 * FS) + 1, 0.0)])
def test_beats_of_two_leads_within_100_ms_are_the_same_beat(shift: int, agreement: float) -> None:
    rr = [FS] * 9
    result = measure(rr, other_lead=peaks_with_rr(rr) + shift)
    assert result.lead_agreement == agreement
    assert result.quality == ("good" if agreement == 1.0 else "unreliable")


def test_the_most_regular_of_equally_agreeing_leads_is_chosen() -> None:
    rr = [FS] * 19
    other = peaks_with_rr(rr)
    other[16:] += round(0.3 * FS)  # the second lead: 4 beats late, so an irregular rhythm
    n = int(other[-1]) + TAIL
    signal = np.vstack([beat_train(other, n), beat_train(peaks_with_rr(rr), n)])
    result = detect_heart_rate(signal, FS, ["irregular", "regular"])
    assert result.lead == "regular"
    assert result.heart_rate_bpm == pytest.approx(60.0)


@pytest.mark.parametrize(("gap", "kept"), [(200, True), (199, False)])
def test_two_detections_closer_than_0_2_s_count_as_one_beat(gap: int, kept: bool) -> None:
    fs = 1000
    peaks = np.array([500, 500 + gap, 1500])
    t = np.arange(2500) / fs
    signal = sum(np.exp(-0.5 * ((t - p / fs) / 0.008) ** 2) for p in peaks)
    refined = refine_peaks(signal, peaks, fs)
    assert refined.tolist() == ([500, 500 + gap, 1500] if kept else [500, 1500])


def test_the_json_form_counts_the_beats() -> None:
    result = measure([FS] * 4)
    data = result.to_dict()
    assert data["n_beats"] == 5 and data["r_peaks"] == result.r_peaks and data["quality"] == "good"
