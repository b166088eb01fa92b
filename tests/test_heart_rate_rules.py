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


def test_with_three_beats_the_variability_is_measured() -> None:
    result = measure([1150, 850])  # two RR intervals: CV (1150 - 850) / (1150 + 850), one successive difference
    assert result.rr_cv == pytest.approx(150 / 1000)
    assert result.rmssd_ms == pytest.approx(300 / FS * 1000)
    assert result.irregular is False


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


def test_beats_of_two_leads_match_whichever_lead_is_earlier() -> None:
    rr = [FS] * 9  # the second lead's beats alternately 50 ms early and 50 ms late, the last one late
    other = peaks_with_rr(rr) + np.where(np.arange(len(rr) + 1) % 2 == 1, 1, -1) * round(0.05 * FS)
    result = measure(rr, other_lead=other)  # the regular first lead is chosen (the tie broken by regularity)
    assert result.lead == "lead0"
    assert result.lead_agreement == 1.0
    assert result.quality == "good"


@pytest.mark.parametrize(("beats", "late"), [(20, 4), (3, 1)])
def test_the_most_regular_of_equally_agreeing_leads_is_chosen(beats: int, late: int) -> None:
    rr = [FS] * (beats - 1)
    other = peaks_with_rr(rr)
    other[beats - late :] += round(0.3 * FS)  # the first lead: its last beats late, so an irregular rhythm
    n = int(other[-1]) + TAIL
    signal = np.vstack([beat_train(other, n), beat_train(peaks_with_rr(rr), n)])
    result = detect_heart_rate(signal, FS, ["irregular", "regular"])
    assert result.lead == "regular"  # also with 3 beats, the fewest a rate needs (2 RR intervals)
    assert result.heart_rate_bpm == pytest.approx(60.0)


def test_a_lead_counting_every_beat_twice_is_less_regular_than_one_counting_it_once() -> None:
    peaks = peaks_with_rr(alternating(1150, 850))  # RR CV 0.15
    doubled = np.sort(np.concatenate([peaks, peaks + round(0.3 * FS)]))  # RR 0.3 s, 0.82 s, ...: CV above 0.4
    n = int(peaks[-1]) + TAIL
    result = detect_heart_rate(np.vstack([beat_train(doubled, n), beat_train(peaks, n)]), FS, ["twice", "once"])
    assert result.lead_agreement == pytest.approx(2 / 3)  # 2n / (n + 2n) for both leads: a tie, flagged
    assert result.lead == "once"  # the tie broken by the lower RR CV, not by a smaller spread in seconds
    assert result.heart_rate_bpm == pytest.approx(60 / (1000 / FS))
    assert result.quality == "unreliable"


def test_a_lead_with_two_beats_does_not_win_over_a_lead_with_three() -> None:
    peaks = peaks_with_rr([FS, FS])
    n = int(peaks[-1]) + TAIL
    # Lead "two" has the first two of the three beats: agreement 2 * 2 / (2 + 3) = 0.8 for both leads, a tie.
    result = detect_heart_rate(np.vstack([beat_train(peaks[:2], n), beat_train(peaks, n)]), FS, ["two", "three"])
    assert result.lead == "three"
    assert result.lead_agreement == pytest.approx(0.8)
    assert len(result.r_peaks) == 3 and result.quality == "good"


def test_a_downward_qrs_gives_its_peaks_at_the_deepest_point_as_an_upward_one_at_the_highest() -> None:
    peaks = peaks_with_rr([FS] * 9)
    n = int(peaks[-1]) + TAIL
    upward = detect_heart_rate(beat_train(peaks, n), FS)
    downward = detect_heart_rate(-beat_train(peaks, n), FS)  # QS complexes, inverted T waves
    assert np.abs(np.asarray(upward.r_peaks) - peaks).max() <= 3  # the R wave, not the s wave 30 ms later
    assert downward.r_peaks == upward.r_peaks


@pytest.mark.parametrize("spike_at", ["between the beats", "160 ms before each QRS"])
@pytest.mark.parametrize("width_ms", [2, 4])
def test_pacemaker_spikes_are_neither_beats_nor_peaks(spike_at: str, width_ms: int) -> None:
    peaks = peaks_with_rr([FS] * 9)
    n = int(peaks[-1]) + TAIL
    signal = beat_train(peaks, n)
    spikes = (peaks[:-1] + peaks[1:]) // 2 if spike_at == "between the beats" else peaks - round(0.16 * FS)
    for spike in spikes:  # 10 mV, a few ms wide (the median filter of 12 ms removes them)
        signal[spike : spike + round(width_ms / 1000 * FS)] += 10.0
    result = detect_heart_rate(signal, FS)
    assert np.diff(result.r_peaks).tolist() == [FS] * 9
    assert np.abs(np.asarray(result.r_peaks) - peaks).max() <= 3  # on the R waves
    assert result.heart_rate_bpm == pytest.approx(60.0)


def test_beats_150_ms_from_either_end_of_the_record_are_found() -> None:
    edge = round(0.15 * FS)  # the detector sees the ends through 0.5 s of flat padding
    peaks = edge + np.arange(8) * FS
    result = detect_heart_rate(beat_train(peaks, int(peaks[-1]) + 1 + edge), FS)
    assert len(result.r_peaks) == 8
    assert np.abs(np.asarray(result.r_peaks) - peaks).max() <= round(0.01 * FS)


@pytest.mark.parametrize("offset_mv", [3.0, -3.0])
@pytest.mark.parametrize("polarity", [1, -1])
def test_a_strip_shorter_than_3_s_has_its_offset_removed_before_the_qrs_polarity_is_judged(
    offset_mv: float, polarity: int
) -> None:
    peaks = 300 + np.arange(4) * 614  # 100/min, 2.4 s
    signal = polarity * beat_train(peaks, int(peaks[-1]) + 300) + offset_mv
    result = detect_heart_rate(signal, FS)
    assert np.abs(np.asarray(result.r_peaks) - peaks).max() <= 3  # on the R (or QS) wave, not 30 ms later


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
