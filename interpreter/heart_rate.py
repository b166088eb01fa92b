"""Heart rate from the raw ECG: R-peak detection with ``wfdb.processing.XQRS`` on every lead.

Method (documented with its validation in ``docs/clinical_methodology.md``):

1. Each lead is cleaned for detection only: NaNs are interpolated, narrow pacemaker spikes are removed by a
   short median filter (spikes are a few ms wide, a QRS complex tens of ms), and baseline wander is removed by
   a 0.5 Hz high-pass filter.
2. ``wfdb.processing.XQRS`` (the maintained PhysioNet detector) runs on every lead with signal.
3. The lead whose beats agree best with the other leads (mean F1 of beat matching within 100 ms) is chosen;
   ties are broken by the regularity of the lead's own detections. With one lead, that lead is used.
4. Peaks are moved to the R wave with ``wfdb.processing.correct_peaks`` on the cleaned lead, in the lead's
   dominant QRS polarity, then to the local extremum of the same polarity within 25 ms.
5. Heart rate = 60 / mean RR; RR irregularity = coefficient of variation and RMSSD of RR intervals.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import signal as sps

#: Physiologically possible RR range used to reject nonsense detections (bpm 20-300).
MIN_RR_S = 0.2
MAX_RR_S = 3.0
#: Beats of two leads are the same beat when closer than this.
MATCH_TOLERANCE_S = 0.1
#: A lead needs this much agreement with the others (mean F1) for its peaks to count as reliable.
MIN_LEAD_AGREEMENT = 0.8
#: Fewer beats than this make a heart rate unreliable.
MIN_BEATS = 3
#: Flat padding added at both ends before detection, in seconds.
PAD_S = 0.5
#: Coefficient of variation of RR above which the rhythm is reported as irregular.
IRREGULAR_RR_CV = 0.15


@dataclass
class HeartRateResult:
    """R peaks and the rate measured from them.

    Attributes:
        fs: sampling rate of ``r_peaks`` (the record's own rate).
        r_peaks: sample indices of the R peaks.
        heart_rate_bpm: 60 / mean RR interval, ``None`` when fewer than two beats were found.
        rr_intervals_s: successive RR intervals in seconds.
        rr_cv: coefficient of variation of RR (std / mean).
        rmssd_ms: root mean square of successive RR differences, in ms.
        irregular: ``rr_cv`` above :data:`IRREGULAR_RR_CV`.
        lead: the lead the peaks come from.
        lead_agreement: mean F1 of that lead's beats against the other leads (1.0 for one lead).
        quality: ``"good"`` or ``"unreliable"``.
        quality_reasons: why the quality is unreliable (empty when good).
    """

    fs: float
    r_peaks: list[int]
    heart_rate_bpm: float | None
    rr_intervals_s: list[float]
    rr_cv: float | None
    rmssd_ms: float | None
    irregular: bool | None
    lead: str | None
    lead_agreement: float | None
    quality: str
    quality_reasons: list[str] = field(default_factory=list)

    @property
    def reliable(self) -> bool:
        return self.quality == "good"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["n_beats"] = len(self.r_peaks)
        return data


def clean_for_detection(x: np.ndarray, fs: float) -> np.ndarray:
    """Return a copy of one lead without NaNs, pacemaker spikes and baseline wander."""
    x = np.asarray(x, dtype=np.float64).copy()
    bad = ~np.isfinite(x)
    if bad.all():
        return np.zeros_like(x)
    if bad.any():
        idx = np.arange(x.size)
        x[bad] = np.interp(idx[bad], idx[~bad], x[~bad])
    width = max(3, round(0.012 * fs) | 1)  # 12 ms, odd: removes spikes narrower than ~6 ms
    x = sps.medfilt(x, width)
    if x.size > 3 * int(fs):
        sos = sps.butter(2, 0.5, btype="highpass", fs=fs, output="sos")
        x = sps.sosfiltfilt(sos, x)
    else:
        x = x - np.median(x)
    return x


def _xqrs(x: np.ndarray, fs: float) -> np.ndarray:
    from wfdb import processing

    if np.std(x) < 1e-6:
        return np.array([], dtype=int)
    logging.getLogger("wfdb").setLevel(logging.WARNING)
    # Flat padding lets XQRS's filters and refractory logic see beats at the very start and end.
    pad = round(PAD_S * fs)
    padded = np.concatenate([np.full(pad, x[0]), x, np.full(pad, x[-1])])
    xqrs = processing.XQRS(sig=padded, fs=fs)
    xqrs.detect(verbose=False)
    peaks = np.asarray(xqrs.qrs_inds, dtype=int) - pad
    return peaks[(peaks >= 0) & (peaks < x.size)]


def _match_f1(a: np.ndarray, b: np.ndarray, tol: int) -> float:
    if a.size == 0 or b.size == 0:
        return 0.0
    pos = np.searchsorted(b, a)
    left = np.abs(a - b[np.clip(pos - 1, 0, b.size - 1)])
    right = np.abs(a - b[np.clip(pos, 0, b.size - 1)])
    matched = int(np.sum(np.minimum(left, right) <= tol))
    return 2 * matched / (a.size + b.size)


def _regularity(peaks: np.ndarray, fs: float) -> float:
    if peaks.size < 3:
        return 0.0
    rr = np.diff(peaks) / fs
    return float(1.0 / (1.0 + np.std(rr) / np.mean(rr)))


def _polarity(x: np.ndarray, peaks: np.ndarray, half: int) -> float:
    """+1 when the QRS complexes point up (the largest deflection around each peak), -1 when down."""
    ups, downs = [], []
    for p in peaks:
        seg = x[max(0, p - half) : p + half + 1]
        if seg.size:
            ups.append(seg.max())
            downs.append(-seg.min())
    return 1.0 if np.median(ups) >= np.median(downs) else -1.0


def refine_peaks(x: np.ndarray, peaks: np.ndarray, fs: float) -> np.ndarray:
    """Move detections to the R wave: ``correct_peaks`` then the local extremum of the lead's polarity."""
    from wfdb import processing

    if peaks.size == 0:
        return peaks
    sign = _polarity(x, peaks, int(0.06 * fs))
    y = sign * x
    # correct_peaks mis-shifts a peak closer to the start than its search radius (a negative index: the beat was
    # lost or moved); padded by the radius with the edge values, no search window reaches an end.
    search_radius = int(0.06 * fs)
    padded = np.pad(y, search_radius, mode="edge")
    corrected = processing.correct_peaks(
        padded, peaks + search_radius, search_radius=search_radius, smooth_window_size=int(0.15 * fs), peak_dir="up"
    )
    corrected = np.clip(np.asarray(corrected, dtype=int) - search_radius, 0, y.size - 1)
    radius = int(0.025 * fs)
    out = []
    for p in corrected:
        lo, hi = max(0, p - radius), min(y.size, p + radius + 1)
        out.append(lo + int(np.argmax(y[lo:hi])))
    out = np.unique(np.asarray(out, dtype=int))
    # Two detections of one beat after refinement: keep the first.
    keep = np.concatenate([[True], np.diff(out) >= int(MIN_RR_S * fs)]) if out.size else out.astype(bool)
    return out[keep]


def detect_heart_rate(signal: np.ndarray, fs: float, lead_names: list[str] | None = None) -> HeartRateResult:
    """Detect R peaks on a ``[n_leads, n_samples]`` (or 1-D) ECG and measure the heart rate.

    Args:
        signal: the raw ECG in physical units, any number of leads.
        fs: its sampling rate in Hz; the returned peaks are at this rate.
        lead_names: one name per lead (default ``lead0``, ``lead1``, ...).
    """
    sig = np.atleast_2d(np.asarray(signal, dtype=np.float64))
    names = list(lead_names) if lead_names else [f"lead{i}" for i in range(sig.shape[0])]
    cleaned = [clean_for_detection(lead, fs) for lead in sig]
    detections = [_xqrs(x, fs) for x in cleaned]
    tol = int(MATCH_TOLERANCE_S * fs)
    usable = [i for i, d in enumerate(detections) if d.size >= 2]
    reasons: list[str] = []
    if not usable:
        return HeartRateResult(
            fs, [], None, [], None, None, None, None, None, "unreliable", ["no R peaks found in any lead"]
        )
    scores: dict[int, tuple[float, float]] = {}
    for i in usable:
        others = [_match_f1(detections[i], detections[j], tol) for j in usable if j != i]
        agreement = float(np.mean(others)) if others else 1.0
        scores[i] = (agreement, _regularity(detections[i], fs))
    best = max(usable, key=lambda i: (round(scores[i][0], 2), scores[i][1]))
    agreement = scores[best][0]
    peaks = refine_peaks(cleaned[best], detections[best], fs)
    rr = np.diff(peaks) / fs
    hr = float(60.0 / rr.mean()) if rr.size else None
    rr_cv = float(rr.std() / rr.mean()) if rr.size >= 2 else None
    rmssd = float(np.sqrt(np.mean(np.diff(rr) ** 2)) * 1000) if rr.size >= 2 else None
    if peaks.size < MIN_BEATS:
        reasons.append(f"only {peaks.size} beats detected")
    if len(usable) > 1 and agreement < MIN_LEAD_AGREEMENT:
        reasons.append(f"leads disagree on beat positions (agreement {agreement:.2f} < {MIN_LEAD_AGREEMENT})")
    if rr.size and (rr.min() < MIN_RR_S or rr.max() > MAX_RR_S):
        reasons.append("RR intervals outside the physiological range 0.2-3.0 s")
    return HeartRateResult(
        fs=float(fs),
        r_peaks=[int(p) for p in peaks],
        heart_rate_bpm=hr,
        rr_intervals_s=[float(v) for v in rr],
        rr_cv=rr_cv,
        rmssd_ms=rmssd,
        irregular=None if rr_cv is None else bool(rr_cv > IRREGULAR_RR_CV),
        lead=names[best],
        lead_agreement=agreement,
        quality="unreliable" if reasons else "good",
        quality_reasons=reasons,
    )
