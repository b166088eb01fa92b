"""ECG-FM's input pipeline in numpy: validate, reorder leads, resample to 500 Hz, standardise, segment.

It follows the official quickstart (bowang-lab/ECG-FM ``infer_quickstart.ipynb`` with ecg-transform 0.1.3):
``ReorderLeads -> LinearResample(500) -> HandleConstantLeads('zero') -> Standardize -> SegmentNonoverlapping(2500)``,
and matches it numerically, including two of its conventions:

* the linear resample maps the first and last input samples onto the first and last output samples
  (``m = int(n * 500 / fs)`` outputs at positions ``linspace(0, m - 1, n)``), which stretches time by
  ``(m - 1) / (n - 1) * fs / 500`` instead of being time-exact;
* the z-score is ``(x - mean) / (std + 1e-8)`` with the population std, per lead, over the whole record,
  before segmentation; the leftover tail shorter than one segment is dropped.

Where ecg-transform is wrong we are stricter: a missing, unknown or duplicate lead raises :class:`ECGInputError`
(ecg-transform fills a missing lead with uninitialised memory), and a lead is treated as constant (and zeroed)
when its peak-to-peak range is within float rounding of its magnitude, not only when its std is exactly 0 (a
constant float32 lead has a tiny non-zero std that the z-score would blow up to unit-variance noise).

Records shorter than one segment (but at least ``MIN_DURATION_S``) are zero-padded to 2500 samples with a
padding mask, which the model handles as fairseq-signals does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LEAD_ORDER: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
TARGET_FS = 500
SEGMENT_SAMPLES = 2500  # 5 s at 500 Hz
SEGMENT_SECONDS = SEGMENT_SAMPLES / TARGET_FS
MIN_FS = 100.0
MAX_FS = 5000.0
MIN_DURATION_S = 2.0
DEFAULT_MAX_DURATION_S = 600.0
STD_EPSILON = 1e-8  # ecg-transform's Standardize epsilon
CONSTANT_LEAD_RTOL = 1e-5  # peak-to-peak below this fraction of the lead's magnitude counts as constant

_CANONICAL_LEADS = {name.lower(): name for name in LEAD_ORDER}


class ECGInputError(ValueError):
    """Input that cannot be turned into model input; the message says what to fix."""


@dataclass(frozen=True)
class PreprocessedECG:
    """Model-ready segments of one record.

    Attributes:
        segments: ``[n_segments, 12, 2500]`` float32, standardised, in ``LEAD_ORDER``.
        padding_mask: ``[n_segments, 2500]`` bool (True = padding) when the record was shorter than one
            segment, else None.
        duration_s: duration of the input record.
        used_duration_s: seconds of signal the segments cover (the tail beyond whole segments is dropped).
        constant_leads: leads that were constant and set to 0.
        ignored_leads: extra leads that were dropped (only with ``ignore_extra_leads``).
    """

    segments: np.ndarray
    padding_mask: np.ndarray | None
    duration_s: float
    used_duration_s: float
    constant_leads: tuple[str, ...]
    ignored_leads: tuple[str, ...] = ()

    @property
    def n_segments(self) -> int:
        return int(self.segments.shape[0])


def canonical_lead_name(name: str) -> str | None:
    """``"avr"`` / ``"AVR"`` / ``" aVR "`` -> ``"aVR"``; None for a name that is not one of the 12 leads."""
    return _CANONICAL_LEADS.get(str(name).strip().lower())


def as_signal_array(signal: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """A ``[leads, samples]`` float64 array, or :class:`ECGInputError` for ragged, empty or non-numeric input."""
    if isinstance(signal, np.ndarray):
        if signal.dtype == bool or not (np.issubdtype(signal.dtype, np.number)):
            raise ECGInputError(f"the signal must hold numbers, not {signal.dtype}")
        array = signal.astype(np.float64, copy=False)
    else:
        if len(signal) == 0:
            raise ECGInputError("the signal is empty: expected one list of samples per lead")
        lengths = {len(lead) if isinstance(lead, (list, tuple, np.ndarray)) else -1 for lead in signal}
        if -1 in lengths:
            raise ECGInputError("the signal must be a list of leads, each a list of samples")
        if len(lengths) > 1:
            raise ECGInputError(f"ragged leads: leads have different numbers of samples {sorted(lengths)}")
        try:
            array = np.asarray(signal)
        except (TypeError, ValueError) as exc:
            raise ECGInputError("every sample must be a number") from exc
        if array.dtype.kind not in "iuf":  # object (null, mixed), text or booleans
            raise ECGInputError("every sample must be a number (no null, text or true/false)")
        array = array.astype(np.float64, copy=False)
    if array.ndim != 2:
        raise ECGInputError(f"the signal must be 2-D [leads, samples], got {array.ndim}-D")
    if array.shape[1] == 0:
        raise ECGInputError("the signal is empty: leads have no samples")
    return array


def order_leads(
    signal: np.ndarray, lead_names: Sequence[str] | None, ignore_extra_leads: bool = False
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Reorder rows to ``LEAD_ORDER`` by name (case-insensitive).

    Returns:
        the ``[12, samples]`` signal and the names of extra leads that were dropped.
    Raises:
        ECGInputError: missing, duplicate or (unless ``ignore_extra_leads``) unknown leads.
    """
    if lead_names is None:
        if signal.shape[0] != len(LEAD_ORDER):
            raise ECGInputError(
                f"expected 12 leads ({', '.join(LEAD_ORDER)}), got {signal.shape[0]}; "
                "pass lead_names if the leads are in another order"
            )
        return signal, ()
    names = [str(name) for name in lead_names]
    if len(names) != signal.shape[0]:
        raise ECGInputError(f"{len(names)} lead names for {signal.shape[0]} leads")
    index: dict[str, int] = {}
    ignored: list[str] = []
    for row, name in enumerate(names):
        canonical = canonical_lead_name(name)
        if canonical is None:
            if ignore_extra_leads:
                ignored.append(name)
                continue
            raise ECGInputError(f"unknown lead name {name!r}; expected {', '.join(LEAD_ORDER)}")
        if canonical in index:
            raise ECGInputError(f"lead {canonical} appears more than once")
        index[canonical] = row
    missing = [lead for lead in LEAD_ORDER if lead not in index]
    if missing:
        raise ECGInputError(f"missing lead{'s' if len(missing) > 1 else ''} {', '.join(missing)}: ECG-FM needs all 12")
    return signal[[index[lead] for lead in LEAD_ORDER]], tuple(ignored)


def linear_resample(signal: np.ndarray, fs: float, target_fs: float = TARGET_FS) -> np.ndarray:
    """ecg-transform 0.1.3's ``LinearResample``: ``m = int(n * target/fs)`` samples, endpoints aligned.

    Args:
        signal: ``[leads, n]``.
    Returns:
        ``[leads, m]`` float64 (the input itself when ``fs == target_fs``).
    """
    if fs == target_fs:
        return signal
    n = signal.shape[1]
    m = int(n * (target_fs / fs))
    if n < 2 or m < 2:
        raise ECGInputError("the signal is too short to resample")
    positions = np.linspace(0, m - 1, n)
    targets = np.arange(m, dtype=np.float64)
    left = np.clip(np.searchsorted(positions, targets, side="right") - 1, 0, n - 2)
    x_lo, x_hi = positions[left], positions[left + 1]
    y_lo, y_hi = signal[:, left], signal[:, left + 1]
    # interp1d's formula: y_lo + (x - x_lo) * slope, exact for constant stretches.
    return y_lo + (targets - x_lo) * ((y_hi - y_lo) / (x_hi - x_lo))


def constant_lead_mask(signal: np.ndarray) -> np.ndarray:
    """``[leads]`` bool: leads whose peak-to-peak range is within rounding of their magnitude."""
    peak_to_peak = np.ptp(signal, axis=1)
    magnitude = np.maximum(np.abs(signal).max(axis=1), 1.0)
    return peak_to_peak <= CONSTANT_LEAD_RTOL * magnitude


def standardize(signal: np.ndarray) -> np.ndarray:
    """Per-lead ``(x - mean) / (std + 1e-8)`` with the population std (ecg-transform's ``Standardize``)."""
    centered = signal - signal.mean(axis=1, keepdims=True)
    return centered / (centered.std(axis=1, keepdims=True) + STD_EPSILON)


def segment(signal: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Non-overlapping 2500-sample segments; a record shorter than one segment is zero-padded with a mask.

    Returns:
        segments ``[n, 12, 2500]`` float32 and the padding mask ``[n, 2500]`` (None unless padded).
    """
    leads, n = signal.shape
    if n < SEGMENT_SAMPLES:
        padded = np.zeros((1, leads, SEGMENT_SAMPLES), dtype=np.float32)
        padded[0, :, :n] = signal
        mask = np.zeros((1, SEGMENT_SAMPLES), dtype=bool)
        mask[0, n:] = True
        return padded, mask
    count = n // SEGMENT_SAMPLES
    body = signal[:, : count * SEGMENT_SAMPLES].reshape(leads, count, SEGMENT_SAMPLES)
    return np.ascontiguousarray(body.transpose(1, 0, 2), dtype=np.float32), None


def validate_fs(fs: float) -> float:
    """The sampling rate as a float, or :class:`ECGInputError` outside ``[MIN_FS, MAX_FS]``."""
    if isinstance(fs, bool) or not isinstance(fs, (int, float, np.integer, np.floating)):
        raise ECGInputError(f"fs must be a number (Hz), got {type(fs).__name__}")
    fs = float(fs)
    if not np.isfinite(fs) or not MIN_FS <= fs <= MAX_FS:
        raise ECGInputError(f"fs must be between {MIN_FS:g} and {MAX_FS:g} Hz, got {fs:g}")
    return fs


def preprocess(
    signal: np.ndarray | Sequence[Sequence[float]],
    fs: float,
    lead_names: Sequence[str] | None = None,
    *,
    max_duration_s: float | None = DEFAULT_MAX_DURATION_S,
    ignore_extra_leads: bool = False,
) -> PreprocessedECG:
    """Validate a raw ECG and turn it into ECG-FM segments.

    Args:
        signal: ``[leads, samples]`` in any unit (it is standardised per lead).
        fs: sampling rate in Hz.
        lead_names: names of the rows (case-insensitive); None means already in ``LEAD_ORDER``.
        max_duration_s: longer records raise :class:`ECGInputError` (None: no limit).
        ignore_extra_leads: drop leads that are not one of the 12 instead of raising.
    """
    array = as_signal_array(signal)
    fs = validate_fs(fs)
    ordered, ignored = order_leads(array, lead_names, ignore_extra_leads)
    finite = np.isfinite(ordered)
    if not finite.all():
        bad = [LEAD_ORDER[i] for i in np.flatnonzero(~finite.all(axis=1))]
        raise ECGInputError(
            f"non-finite values (NaN or infinity) in lead{'s' if len(bad) > 1 else ''} {', '.join(bad)}"
        )
    duration_s = ordered.shape[1] / fs
    if duration_s < MIN_DURATION_S:
        raise ECGInputError(f"the record is {duration_s:.6g} s long; at least {MIN_DURATION_S:g} s is needed")
    if max_duration_s is not None and duration_s > max_duration_s:  # 6 digits: one sample over still shows
        raise ECGInputError(f"the record is {duration_s:.6g} s long; at most {max_duration_s:g} s is accepted")
    resampled = linear_resample(ordered, fs)
    constant = constant_lead_mask(resampled)
    if constant.any():
        resampled = resampled.copy()
        resampled[constant] = 0.0
    segments, padding_mask = segment(standardize(resampled))
    covered = min(resampled.shape[1], segments.shape[0] * SEGMENT_SAMPLES) / TARGET_FS
    return PreprocessedECG(
        segments=segments,
        padding_mask=padding_mask,
        duration_s=duration_s,
        used_duration_s=covered,
        constant_leads=tuple(LEAD_ORDER[i] for i in np.flatnonzero(constant)),
        ignored_leads=ignored,
    )
