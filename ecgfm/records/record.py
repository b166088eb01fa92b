"""One ECG as read from a file (:class:`ECGRecord`), and the error of a file that cannot be read: what every reader
of :mod:`ecgfm.records` returns or raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class RecordError(ValueError):
    """A record file that cannot be read; the message names the file and the problem."""


@dataclass
class ECGRecord:
    """One ECG as read from a file.

    Attributes:
        name: record name (file stem unless the file says otherwise).
        signal: shape ``[n_leads, n_samples]``, float64, physical units as stored (usually mV).
        fs: sampling rate in Hz.
        lead_names: one name per row of ``signal``.
        metadata: anything else the file carried (labels, age, ...), never the signal.
        conversion: for hospital formats (DICOM, HL7 aECG, Philips, GE MUSE, SCP-ECG; :mod:`ecgfm.records.formats`), how
            the file was read: its format, units, derived leads, leads beyond the 12, what was trimmed.
    """

    name: str
    signal: np.ndarray
    fs: float
    lead_names: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)
    conversion: dict[str, Any] | None = None

    @property
    def duration_s(self) -> float:
        return self.signal.shape[1] / self.fs

    def model_input(self) -> tuple[np.ndarray, list[str]]:
        """Signal and lead names for the model: without the leads a format reader kept beyond the standard 12."""
        extra = set((self.conversion or {}).get("extra_leads") or ())
        if not extra:
            return self.signal, self.lead_names
        rows = [i for i, name in enumerate(self.lead_names) if name not in extra]
        return self.signal[rows], [self.lead_names[i] for i in rows]
