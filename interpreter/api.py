"""The interpreter for one record over HTTP (``POST /interpret``): heart rate from the signal, findings from the
probabilities, the same report ``python -m interpreter report`` writes as JSON (:func:`interpreter.report.report_dict`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ecgfm.records.preprocess import LEAD_ORDER, preprocess
from interpreter.findings import interpret
from interpreter.heart_rate import detect_heart_rate
from interpreter.report import report_dict


def interpret_record(
    probabilities: dict[str, float],
    signal: Sequence[Sequence[float]] | np.ndarray | None = None,
    fs: float | None = None,
    lead_names: list[str] | None = None,
    record: str = "",
    *,
    max_duration_s: float,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON report of one record: ``probabilities`` (the 17 labels of ``/clinical``) and, when ``signal`` and
    ``fs`` are given, the heart rate measured on the record as sent (its own rate, every lead).

    The signal is first checked as ``/clinical`` checks it (:class:`ecgfm.records.preprocess.ECGInputError`, 422), so
    that a record the model would refuse gets the same message here. Without a signal the rate rules are not applied
    (H8). ``config``: :func:`interpreter.findings.load_config`'s thresholds (the defaults when ``None``).
    """
    heart_rate = None
    if signal is not None:
        if fs is None:
            raise ValueError("fs is required with signal")
        preprocess(signal, fs, lead_names, max_duration_s=max_duration_s)
        names = list(lead_names) if lead_names else list(LEAD_ORDER)  # preprocess checked there are 12
        heart_rate = detect_heart_rate(np.asarray(signal, dtype=np.float64), float(fs), names).to_dict()
    return report_dict(interpret(probabilities, heart_rate, config, record=record))
