"""The 1 mV calibration pulse some carts append to every lead (Philips: 10.7-10.9 s of an 11 s record).

It is not ECG: it must reach neither the model nor the per-lead z-score. It is recognised by what it is, not by
who wrote the file, so it is found in files converted from the cart's format too (aECG, DICOM):

* every lead at once steps up (within ``MAX_RISE_S``) by the same ``PULSE_MV`` (within ``AMPLITUDE_TOL_MV``),
* from a baseline that is flat in every lead, and holds that plateau for ``MIN_PLATEAU_S`` to ``MAX_PLATEAU_S``,
* at the end of the record: the pulse starts in the last ``TAIL_S`` seconds and nothing but the pulse's return
  follows it (it ends within ``MAX_AFTER_S`` of the end of the record).

:func:`trim_calibration_pulse` cuts the record at the pulse's start and, with it, the stretch just before the
pulse where every lead is flat (a gap the cart leaves before the pulse, not ECG either), then keeps the whole seconds
before it: a cart's strip is a whole number of seconds (Philips: ``durationperchannel`` 11000 ms = a 10 s strip, its
lead-out, the gap and the pulse), and the lead-out must not change the record's z-score. It says what it cut.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PULSE_MV = 1.0
AMPLITUDE_TOL_MV = 0.1  # the step and the plateau, per lead
SPREAD_TOL_MV = 0.05  # how far apart the leads' steps may be
FLAT_TOL_MV = 0.02  # "flat": within this of the value before the step (a few LSB)
MAX_RISE_S = 0.01
MIN_PLATEAU_S = 0.04
MAX_PLATEAU_S = 0.5
TAIL_S = 2.0
MAX_AFTER_S = 0.5
MIN_FLAT_BEFORE_S = 0.02  # the baseline before the step; a longer flat stretch is cut with the pulse
MIN_LEADS = 2


@dataclass(frozen=True)
class Trim:
    """A stretch cut from the end of a record: ``[start_s, end_s)`` and why."""

    what: str
    start_s: float
    end_s: float

    def to_dict(self) -> dict[str, object]:
        return {"what": self.what, "start_s": round(self.start_s, 6), "end_s": round(self.end_s, 6)}


def find_calibration_pulse(signal: np.ndarray, fs: float) -> tuple[int, int] | None:
    """``(start, end)`` samples of a terminal calibration pulse in ``signal`` (``[leads, samples]``, mV), or None."""
    leads, n = signal.shape
    if leads < MIN_LEADS or n < 4:
        return None
    rise = max(1, round(MAX_RISE_S * fs))
    min_plateau, max_plateau = max(2, round(MIN_PLATEAU_S * fs)), round(MAX_PLATEAU_S * fs)
    flat_before = max(1, round(MIN_FLAT_BEFORE_S * fs))
    first = max(flat_before, n - round(TAIL_S * fs))
    # candidate starts: every lead has risen by ~1 mV within `rise` samples
    ahead = np.minimum(np.arange(first, n) + rise, n - 1)
    steps = signal[:, ahead] - signal[:, first - 1 : n - 1]
    near = np.all(np.abs(steps - PULSE_MV) <= AMPLITUDE_TOL_MV, axis=0)
    for offset in np.flatnonzero(near):
        candidate = first + int(offset)
        base = signal[:, candidate - 1]
        if np.abs(signal[:, candidate - flat_before : candidate] - base[:, None]).max() > FLAT_TOL_MV:
            continue  # the pulse starts from a flat baseline in every lead
        moved = np.any(np.abs(signal[:, candidate : candidate + rise + 1] - base[:, None]) > FLAT_TOL_MV, axis=0)
        start = candidate + int(np.argmax(moved))
        top = signal[:, start:] - base[:, None]
        on = np.all(np.abs(top - PULSE_MV) <= AMPLITUDE_TOL_MV, axis=0) & (np.ptp(top, axis=0) <= SPREAD_TOL_MV)
        reached = int(np.argmax(on[: rise + 1]))
        if not on[reached]:
            continue
        run = on[reached:]
        plateau = int(np.argmin(run)) if not run.all() else run.size
        end = start + reached + plateau
        if min_plateau <= plateau <= max_plateau and n - end <= round(MAX_AFTER_S * fs):
            return start, end
    return None


def trim_calibration_pulse(signal: np.ndarray, fs: float) -> tuple[np.ndarray, list[Trim]]:
    """The record without a terminal calibration pulse (and the flat gap before it), and what was cut."""
    found = find_calibration_pulse(signal, fs)
    if found is None:
        return signal, []
    start, _ = found
    n = signal.shape[1]
    base = signal[:, start - 1]
    flat = np.all(np.abs(signal[:, :start] - base[:, None]) <= FLAT_TOL_MV, axis=0)
    cut = start
    while cut > 0 and flat[cut - 1]:
        cut -= 1
    trims = []
    if start - cut >= round(MIN_FLAT_BEFORE_S * fs) and cut > 0:
        trims.append(Trim("flat stretch before the calibration pulse (every lead constant)", cut / fs, start / fs))
    else:
        cut = start
    trims.append(
        Trim(f"{PULSE_MV:g} mV calibration pulse in every lead (not ECG) and what follows it", start / fs, n / fs)
    )
    strip = int(np.floor(cut / fs + 1e-9) * fs)  # whole seconds before the pulse
    if 0 < strip < cut:
        lead_out = Trim("the lead-out after the strip's last whole second, before the pulse", strip / fs, cut / fs)
        trims.insert(0, lead_out)
        cut = strip
    return signal[:, :cut], trims
