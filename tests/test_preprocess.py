"""Preprocessing matches ECG-FM's official ecg-transform 0.1.3 pipeline and is stricter where it is wrong."""

from __future__ import annotations

import numpy as np
import pytest
from ecg_transform.inp import ECGInput, ECGInputSchema, ECGMetadata
from ecg_transform.sample import ECGSample
from ecg_transform.t.common import HandleConstantLeads, LinearResample, ReorderLeads
from ecg_transform.t.cut import SegmentNonoverlapping
from ecg_transform.t.scale import Standardize

from ecgfm.records.preprocess import (
    LEAD_ORDER,
    ECGInputError,
    constant_lead_mask,
    linear_resample,
    order_leads,
    preprocess,
)
from tests.conftest import TWELVE_LEAD_RECORDS, load_json_record


def ecg_transform_segments(signal: np.ndarray, fs: float, lead_names: list[str]) -> np.ndarray:
    """The quickstart notebook's transforms, run by the real ecg-transform package."""
    transforms = [
        ReorderLeads(expected_order=list(LEAD_ORDER), missing_lead_strategy="raise"),
        LinearResample(desired_sample_rate=500),
        HandleConstantLeads(strategy="zero"),
        Standardize(),
        SegmentNonoverlapping(segment_length=2500),
    ]
    meta = ECGMetadata(fs, signal.shape[1], list(lead_names), "mV", 0, signal.shape[1])
    return ECGSample(ECGInput(signal, meta), ECGInputSchema(500, list(LEAD_ORDER)), transforms).out


def _record(name: str) -> tuple[np.ndarray, float, list[str]]:
    record = load_json_record(name)
    return np.asarray(record["signal"], dtype=np.float64), float(record["fs"]), record["lead_names"]


@pytest.mark.parametrize("name", TWELVE_LEAD_RECORDS)
def test_segments_match_ecg_transform_on_real_records(name):
    signal, fs, leads = _record(name)
    ours = preprocess(signal, fs, leads)
    theirs = ecg_transform_segments(signal, fs, leads)
    assert ours.segments.dtype == np.float32 and ours.padding_mask is None
    np.testing.assert_allclose(ours.segments, theirs.astype(np.float32), atol=1e-6, rtol=0)


@pytest.mark.parametrize("fs", [250.0, 360.0, 1000.0])
def test_resampling_aligns_first_and_last_samples_like_ecg_transform(fs):
    n = 3001
    ramp = np.tile(np.arange(n, dtype=np.float64), (12, 1))  # value = input sample index
    resampled = linear_resample(ramp, fs)
    m = int(n * (500 / fs))
    assert resampled.shape == (12, m)
    # Output sample k sits at input position k * (n - 1) / (m - 1): the last lands on the last, not time-exact.
    np.testing.assert_allclose(resampled[0], np.arange(m) * (n - 1) / (m - 1), atol=1e-9)
    assert resampled[0, -1] == n - 1


def test_leads_are_reordered_by_name_case_insensitively():
    signal, fs, leads = _record("JS36330.json")
    order = np.random.default_rng(0).permutation(12)
    shuffled_names = [leads[i].lower() for i in order]
    np.testing.assert_array_equal(
        preprocess(signal[order], fs, shuffled_names).segments, preprocess(signal, fs, leads).segments
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda names: [*names[:-1], "V5"], "lead V5 appears more than once"),
        (lambda names: [*names[:-1], "V7"], "unknown lead name 'V7'"),
    ],
)
def test_duplicate_and_unknown_lead_names_are_refused(change, message):
    signal, fs, leads = _record("JS36330.json")
    with pytest.raises(ECGInputError, match=message):
        preprocess(signal, fs, change(list(leads)))


def test_a_missing_lead_is_refused_naming_it():
    signal, fs, leads = _record("JS36330.json")
    with pytest.raises(ECGInputError, match="missing lead V4"):
        preprocess(np.delete(signal, 9, axis=0), fs, [n for n in leads if n != "V4"])


def test_eleven_leads_without_names_are_refused():
    signal, fs, _ = _record("JS36330.json")
    with pytest.raises(ECGInputError, match="expected 12 leads"):
        preprocess(signal[:11], fs)


def test_extra_leads_can_be_ignored_when_asked():
    signal, fs, leads = _record("JS36330.json")
    extra = np.vstack([signal, signal[:1]])
    result = preprocess(extra, fs, [*leads, "vx"], ignore_extra_leads=True)
    assert result.ignored_leads == ("vx",)
    np.testing.assert_array_equal(result.segments, preprocess(signal, fs, leads).segments)


def test_a_constant_float32_lead_is_zeroed_where_ecg_transform_amplifies_it():
    signal, fs, leads = _record("JS36330.json")
    signal32 = signal.astype(np.float32)
    signal32[8] = np.float32(0.1)  # a flat V3, stored as float32
    ours = preprocess(signal32, fs, leads)
    theirs = ecg_transform_segments(signal32, fs, leads)
    assert ours.constant_leads == ("V3",)
    assert np.all(ours.segments[:, 8] == 0)
    assert np.abs(theirs[:, 8]).max() > 0.5  # upstream turns float rounding noise into unit-variance noise
    np.testing.assert_allclose(np.delete(ours.segments, 8, axis=1), np.delete(theirs, 8, axis=1), atol=1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_refused_naming_the_lead(bad):
    signal, fs, leads = _record("JS36330.json")
    signal[3, 100] = bad
    with pytest.raises(ECGInputError, match=r"non-finite values .* in lead aVR"):
        preprocess(signal, fs, leads)


@pytest.mark.parametrize("fs", [0, -500, 50, 1e6, float("nan"), True, "500"])
def test_absurd_sampling_rates_are_refused(fs):
    signal, _, leads = _record("JS36330.json")
    with pytest.raises(ECGInputError, match="fs must be"):
        preprocess(signal, fs, leads)


def test_a_record_shorter_than_the_minimum_is_refused():
    signal, fs, leads = _record("JS36330.json")
    with pytest.raises(ECGInputError, match="at least 2 s"):
        preprocess(signal[:, :999], fs, leads)


def test_a_record_longer_than_the_maximum_is_refused():
    signal, fs, leads = _record("JS36330.json")
    with pytest.raises(ECGInputError, match="at most 8 s"):
        preprocess(signal, fs, leads, max_duration_s=8)


def test_a_short_record_is_zero_padded_with_a_mask():
    signal, fs, leads = _record("JS36330.json")
    result = preprocess(signal[:, :1500], fs, leads)  # 3 s
    assert result.segments.shape == (1, 12, 2500)
    assert result.padding_mask is not None and result.padding_mask.sum() == 1000
    assert not result.padding_mask[0, :1500].any() and np.all(result.segments[0, :, 1500:] == 0)
    with pytest.raises(ValueError):  # upstream makes no segment at all from a 3 s record
        ecg_transform_segments(signal[:, :1500], fs, leads)


def test_the_tail_shorter_than_a_segment_is_dropped():
    signal, fs, leads = _record("A1041.json")  # 17 s
    result = preprocess(signal, fs, leads)
    assert (result.n_segments, result.duration_s, result.used_duration_s) == (3, 17.0, 15.0)


@pytest.mark.parametrize(
    ("signal", "message"),
    [
        ([], "empty"),
        ([[0.0] * 1000, [0.0] * 999], "ragged leads"),
        ([[0.0, "a"]], "every sample must be a number"),
        ([[None, 1.0]], "every sample must be a number"),
        ([1.0, 2.0], "list of leads"),
        ([[]], "empty"),
    ],
)
def test_malformed_signals_are_refused(signal, message):
    with pytest.raises(ECGInputError, match=message):
        preprocess(signal, 500)


# --- Length boundaries (docs/api.md, docs/model.md): at least 2 s, at most 600 s by default, 5 s segments of 2500
# samples at 500 Hz; a record shorter than 5 s is one zero-padded segment, the tail after whole segments is dropped.
# Each boundary is tested at, just below and just above it.

# The quickstart's ECG_FM_LEAD_ORDER (bowang-lab/ECG-FM notebooks/infer_quickstart.ipynb).
QUICKSTART_LEAD_ORDER = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def noise(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(12, n))


def test_the_lead_order_is_the_quickstart_s():
    assert LEAD_ORDER == QUICKSTART_LEAD_ORDER


@pytest.mark.parametrize(("fs", "n"), [(500, 2500), (250, 1250), (1000, 5000), (360, 1800)])
def test_a_record_of_exactly_5_s_is_one_segment_without_padding(fs, n):
    result = preprocess(noise(n), fs)
    assert result.padding_mask is None
    assert result.segments.shape == (1, 12, 2500) and result.segments.dtype == np.float32
    assert (result.duration_s, result.used_duration_s) == (5.0, 5.0)


@pytest.mark.parametrize(("fs", "n", "padded_samples"), [(500, 2499, 1), (250, 1249, 2)])
def test_a_record_just_under_5_s_is_padded_at_its_end(fs, n, padded_samples):
    result = preprocess(noise(n), fs)
    assert result.segments.shape == (1, 12, 2500)
    assert result.padding_mask is not None and result.padding_mask.shape == (1, 2500)
    np.testing.assert_array_equal(result.padding_mask[0], np.arange(2500) >= 2500 - padded_samples)
    assert np.all(result.segments[0, :, 2500 - padded_samples :] == 0)
    assert np.all(result.segments[0, :, : 2500 - padded_samples] != 0)
    assert result.used_duration_s == pytest.approx((2500 - padded_samples) / 500)


def test_a_padded_record_is_standardised_over_its_real_samples_only():
    signal = noise(1500) * 3.0 + 7.0
    result = preprocess(signal, 500)
    real = result.segments[0, :, :1500].astype(np.float64)
    np.testing.assert_allclose(real.mean(axis=1), 0.0, atol=1e-6)
    np.testing.assert_allclose(real.std(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("fs", "n", "accepted"),
    [(500, 999, False), (500, 1000, True), (500, 1001, True), (250, 499, False), (250, 500, True)],
)
def test_the_minimum_duration_is_2_s_inclusive(fs, n, accepted):
    if accepted:
        result = preprocess(noise(n), fs)
        assert result.padding_mask is not None and result.duration_s == pytest.approx(n / fs)
    else:
        with pytest.raises(ECGInputError, match="at least 2 s is needed") as refused:
            preprocess(noise(n), fs)
        assert f"the record is {n / fs:.6g} s long" in str(refused.value) and f"{n / fs:.6g}" != "2"


@pytest.mark.parametrize(("n", "accepted"), [(59_999, True), (60_000, True), (60_001, False)])
def test_the_default_maximum_duration_is_600_s_inclusive(n, accepted):
    signal = noise(n)  # at 100 Hz, the lowest accepted rate
    if accepted:
        assert preprocess(signal, 100).duration_s == pytest.approx(n / 100)
    else:
        with pytest.raises(ECGInputError, match=r"the record is 600\.01 s long; at most 600 s is accepted"):
            preprocess(signal, 100)


@pytest.mark.parametrize(("n", "accepted"), [(3999, True), (4000, True), (4001, False)])
def test_a_given_maximum_duration_is_inclusive(n, accepted):
    if accepted:
        assert preprocess(noise(n), 500, max_duration_s=8).n_segments == 1
    else:
        with pytest.raises(ECGInputError, match="at most 8 s"):
            preprocess(noise(n), 500, max_duration_s=8)


def test_no_maximum_duration_when_it_is_none():
    assert preprocess(noise(60_100), 100, max_duration_s=None).duration_s == pytest.approx(601.0)


@pytest.mark.parametrize(
    ("n", "segments", "used_s"),
    [(4999, 1, 5.0), (5000, 2, 10.0), (5001, 2, 10.0), (7450, 2, 10.0), (7499, 2, 10.0), (7500, 3, 15.0)],
)
def test_records_are_cut_into_whole_5_s_segments_and_the_tail_is_dropped(n, segments, used_s):
    signal = noise(n)
    result = preprocess(signal, 500)
    assert result.padding_mask is None
    assert (result.n_segments, result.used_duration_s, result.duration_s) == (segments, used_s, n / 500)
    standardised = (signal - signal.mean(axis=1, keepdims=True)) / signal.std(axis=1, keepdims=True)
    for k in range(segments):  # segment k is samples [2500 k, 2500 (k + 1)) of the whole standardised record
        np.testing.assert_allclose(result.segments[k], standardised[:, 2500 * k : 2500 * (k + 1)], atol=1e-5)


@pytest.mark.parametrize(
    ("fs", "accepted"), [(99.9, False), (100, True), (100.1, True), (4999.9, True), (5000, True), (5000.1, False)]
)
def test_the_sampling_rate_must_be_between_100_and_5000_hz_inclusive(fs, accepted):
    signal = noise(int(3 * fs))
    if accepted:
        assert preprocess(signal, fs).duration_s == pytest.approx(3.0, abs=0.01)
    else:
        with pytest.raises(ECGInputError, match="fs must be between 100 and 5000 Hz"):
            preprocess(signal, fs)


def test_a_lead_with_a_small_real_signal_is_not_treated_as_constant():
    signal = noise(2500)
    signal[4] = 5.0 + 1e-3 * signal[4]  # aVL: 1 µV-scale wiggle on a 5 mV offset, far above float rounding
    result = preprocess(signal, 500)
    assert result.constant_leads == ()
    assert result.segments[0, 4].std() == pytest.approx(1.0, abs=1e-4)


def test_an_all_zero_lead_is_constant_and_stays_zero():
    signal = noise(2500)
    signal[0] = 0.0
    result = preprocess(signal, 500)
    assert result.constant_leads == ("I",)
    assert np.all(result.segments[0, 0] == 0)


@pytest.mark.parametrize(
    ("lead", "constant"),
    [
        ([0.0, 1e-5], True),  # peak-to-peak at the absolute floor 1e-5 (magnitudes below 1)
        ([0.0, 1.5e-5], False),
        ([1.5, 1.5 + 1e-5], True),  # below 1.5e-5 of its magnitude 1.5
        ([1.5, 1.5 + 2e-5], False),
        ([1000.0, 1000.0 + 5e-3], True),  # float rounding of a large offset
        ([1000.0, 1000.0 + 2e-2], False),
    ],
)
def test_a_lead_is_constant_when_its_range_is_within_1e_5_of_its_magnitude(lead, constant):
    signal = np.tile(np.array(lead), 50)[None, :]
    assert constant_lead_mask(signal).tolist() == [constant]


def test_a_large_lead_does_not_make_a_quiet_lead_constant():
    signal = np.vstack([1e-3 * noise(2500)[0], 1000.0 + noise(2500)[1]])  # magnitudes are per lead
    assert constant_lead_mask(signal).tolist() == [False, False]


def test_a_padded_segment_is_float32_with_a_boolean_mask():
    result = preprocess(noise(1500), 500)
    assert result.segments.dtype == np.float32 and result.padding_mask.dtype == np.bool_


def test_resampling_needs_two_samples_in_and_out():
    with pytest.raises(ECGInputError, match=r"^the signal is too short to resample$"):
        linear_resample(np.zeros((12, 1)), 250)
    with pytest.raises(ECGInputError, match="too short to resample"):
        linear_resample(np.zeros((12, 3)), 2000)  # 3 samples at 2000 Hz -> 0 at 500 Hz
    two = np.tile([0.0, 3.0], (12, 1))
    np.testing.assert_allclose(linear_resample(two, 250), np.tile([0.0, 1.0, 2.0, 3.0], (12, 1)))  # 2 in, 4 out
    three = np.tile([0.0, 1.0, 2.0], (12, 1))
    np.testing.assert_array_equal(linear_resample(three, 750), np.tile([0.0, 2.0], (12, 1)))  # 2 out: the ends


# --- Messages an integrator acts on: they name the leads and counts.


def test_unnamed_leads_of_the_wrong_count_are_refused_with_the_count():
    with pytest.raises(ECGInputError, match=r"expected 12 leads \(I, II, III, aVR, aVL, aVF, V1, .*V6\), got 11; pass"):
        preprocess(noise(2500)[:11], 500)


def test_a_lead_name_count_that_does_not_match_the_signal_is_refused_with_both_counts():
    with pytest.raises(ECGInputError, match=r"^11 lead names for 12 leads$"):
        preprocess(noise(2500), 500, list(LEAD_ORDER[:11]))


def test_several_missing_leads_are_all_named():
    names = [name for name in LEAD_ORDER if name not in ("V4", "V5")]
    with pytest.raises(ECGInputError, match=r"^missing leads V4, V5: ECG-FM needs all 12$"):
        preprocess(noise(2500)[:10], 500, names)


def test_an_unknown_lead_name_lists_the_expected_ones():
    with pytest.raises(
        ECGInputError, match=r"^unknown lead name 'V7'; expected I, II, III, aVR, aVL, aVF, V1, V2, V3, V4"
    ):
        preprocess(noise(2500), 500, [*LEAD_ORDER[:11], "V7"])


def test_non_finite_values_in_several_leads_name_them_all():
    signal = noise(2500)
    signal[3, 10], signal[6, 20] = np.nan, np.inf
    with pytest.raises(ECGInputError, match=r"^non-finite values \(NaN or infinity\) in leads aVR, V1$"):
        preprocess(signal, 500)


def test_a_sampling_rate_of_the_wrong_type_is_refused_naming_the_type():
    with pytest.raises(ECGInputError, match=r"^fs must be a number \(Hz\), got str$"):
        preprocess(noise(2500), "500")


def test_extra_leads_anywhere_are_ignored_when_asked():
    signal = noise(2500)
    extra = np.vstack([signal[:1] * 2, signal])  # the extra lead comes first
    result = preprocess(extra, 500, ["pacer", *LEAD_ORDER], ignore_extra_leads=True)
    assert result.ignored_leads == ("pacer",)
    np.testing.assert_array_equal(result.segments, preprocess(signal, 500).segments)


def test_ordering_leads_refuses_unknown_names_unless_asked():
    with pytest.raises(ECGInputError, match="unknown lead name 'pacer'"):
        order_leads(np.zeros((13, 10)), ["pacer", *LEAD_ORDER])


@pytest.mark.parametrize(
    ("array", "dtype"), [(np.ones((12, 2500), dtype=bool), "bool"), (np.full((12, 2500), "1"), "<U1")]
)
def test_an_array_of_booleans_or_text_is_refused_naming_its_type(array, dtype):
    with pytest.raises(ECGInputError, match=f"^the signal must hold numbers, not {dtype}$"):
        preprocess(array, 500)
