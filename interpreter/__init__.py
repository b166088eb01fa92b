"""Readable, reproducible interpretation of ECG-FM API results, kept apart from the model service.

* :mod:`interpreter.heart_rate` — R peaks and heart rate from the raw ECG (``wfdb.processing.XQRS``).
* :mod:`interpreter.findings` — label groups, thresholds, severity and heart-rate rules.
* :mod:`interpreter.report` — text, JSON and HTML reports, and the summary CSV.
* :mod:`interpreter.cli` — ``python -m interpreter hr RECORD`` and ``python -m interpreter report ...``.

Research use only — not a diagnostic device.
"""

from __future__ import annotations

DISCLAIMER = (
    "Research use only — not a diagnostic device. This interpretation is produced automatically from the "
    "ECG-FM research model and a heart-rate detector; it has not been cleared by any regulator and must not "
    "be used for diagnosis or treatment decisions. A qualified clinician must review the ECG itself."
)

__all__ = ["DISCLAIMER"]
