"""What every format reader returns, and the steps all formats share after decoding.

A reader decodes its file into a :class:`Decoded` (signal in mV, the file's own lead labels, what the file says
about units and scaling). :func:`finish` then does the same for every format: names the leads
(:mod:`ecgfm.records.formats.leads`), derives III, aVR, aVL, aVF where only I and II were stored, puts the leads in the
standard order (the leads beyond the 12 after them), trims a terminal calibration pulse
(:mod:`ecgfm.records.formats.calibration`) and builds the :class:`ecgfm.records.record.ECGRecord` with its
``conversion`` report: what a response says about how the file was read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ecgfm.records.formats.calibration import trim_calibration_pulse
from ecgfm.records.formats.errors import FormatError
from ecgfm.records.formats.leads import LeadNameError, canonical_leads, derive_limb_leads, split_leads, standard_order
from ecgfm.records.record import ECGRecord

UNIT_TO_MV = {"uv": 1e-3, "µv": 1e-3, "microvolt": 1e-3, "microvolts": 1e-3, "mv": 1.0, "millivolt": 1.0,
              "millivolts": 1.0, "v": 1e3, "volt": 1e3, "volts": 1e3, "nv": 1e-6, "nanovolt": 1e-6,
              "nanovolts": 1e-6}  # fmt: skip


def unit_to_mv(unit: str | None, kind: str) -> float:
    """The factor from ``unit`` (``uV``, ``MICROVOLTS``, ``mV``, ...) to mV; :class:`FormatError` if unknown."""
    key = (unit or "").strip().lower()
    if key not in UNIT_TO_MV:
        raise FormatError(f"{kind}: unknown amplitude unit {unit!r} (expected uV, mV or V)")
    return UNIT_TO_MV[key]


@dataclass
class Decoded:
    """One file as decoded, before the shared steps.

    Attributes:
        format: ``dicom``, ``hl7_aecg``, ``philips``, ``ge_muse``, ``scp_ecg``.
        signal: ``[leads, samples]`` float64 in mV.
        fs: Hz.
        labels: each row's lead as the file names or codes it.
        units: the amplitude unit the file stores (``uV``, ``mV``), before conversion to mV.
        scaling: how the file's numbers became mV, in words.
        version: the format's version when the file says it.
        waveform: which waveform was taken (the rhythm, never a median beat).
        derived_leads: leads the reader (or its library) computed rather than read.
        notes: anything else worth saying about the conversion.
    """

    format: str
    signal: np.ndarray
    fs: float
    labels: list[str]
    units: str
    scaling: str
    version: str | None = None
    waveform: str = "rhythm"
    derived_leads: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def finish(decoded: Decoded, name: str) -> ECGRecord:
    """Name, complete, order and trim the leads; the record and its ``conversion`` report."""
    kind = decoded.format
    signal = np.asarray(decoded.signal, dtype=np.float64)
    if signal.ndim != 2 or signal.shape[0] == 0 or signal.shape[1] == 0:
        raise FormatError(f"{kind}: the file holds no samples")
    if signal.shape[0] != len(decoded.labels):
        raise FormatError(f"{kind}: {signal.shape[0]} leads but {len(decoded.labels)} lead labels")
    if not np.isfinite(decoded.fs) or decoded.fs <= 0:
        raise FormatError(f"{kind}: no usable sampling rate in the file")
    try:
        names = canonical_leads(decoded.labels)
    except LeadNameError as exc:
        raise FormatError(f"{kind}: {exc}") from None
    signal, names, derived = derive_limb_leads(signal, names)
    signal, names = standard_order(signal, names)
    signal, trims = trim_calibration_pulse(signal, decoded.fs)
    if not np.isfinite(signal).all():
        raise FormatError(f"{kind}: the waveform holds non-finite values")
    extra = split_leads(names)[1]
    conversion: dict[str, Any] = {
        "format": kind,
        "version": decoded.version,
        "waveform": decoded.waveform,
        "units_in_file": decoded.units,
        "units": "mV",
        "scaling": decoded.scaling,
        "lead_labels_in_file": [str(label) for label in decoded.labels],
        "derived_leads": [*decoded.derived_leads, *derived],
        "extra_leads": extra,
        "trimmed": [trim.to_dict() for trim in trims],
        "notes": list(decoded.notes),
    }
    if extra:
        conversion["notes"].append(f"leads beyond the standard 12 kept in the record, left out of the model: {extra}")
    return ECGRecord(name, signal, float(decoded.fs), names, conversion=conversion)
