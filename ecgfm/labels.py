"""The 17 labels of ECG-FM's finetuned MIMIC-IV-ECG model and how segments aggregate into a record.

Order and aggregation are those of bowang-lab/ECG-FM (`data/mimic_iv_ecg/labels/label_def.csv` and the
`AGG_METHODS` of `notebooks/infer_quickstart.ipynb`): the model's logit ``i`` belongs to ``LABELS[i]``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Aggregation = Literal["max", "mean"]

LABELS: tuple[str, ...] = (
    "Poor data quality",
    "Sinus rhythm",
    "Premature ventricular contraction",
    "Tachycardia",
    "Ventricular tachycardia",
    "Supraventricular tachycardia with aberrancy",
    "Atrial fibrillation",
    "Atrial flutter",
    "Bradycardia",
    "Accessory pathway conduction",
    "Atrioventricular block",
    "1st degree atrioventricular block",
    "Bifascicular block",
    "Right bundle branch block",
    "Left bundle branch block",
    "Infarction",
    "Electronic pacemaker",
)

# Findings that may show in one segment only (an ectopic beat, a run, a pacemaker spike, noise) take the
# maximum over segments; everything else is a property of the whole record and takes the mean.
MAX_AGGREGATED: frozenset[str] = frozenset(
    {
        "Poor data quality",
        "Premature ventricular contraction",
        "Ventricular tachycardia",
        "Supraventricular tachycardia with aberrancy",
        "Electronic pacemaker",
    }
)

AGGREGATION: dict[str, Aggregation] = {label: ("max" if label in MAX_AGGREGATED else "mean") for label in LABELS}

_MAX_COLUMNS = np.array([AGGREGATION[label] == "max" for label in LABELS])


def aggregate_probabilities(segment_probabilities: np.ndarray) -> np.ndarray:
    """Combine per-segment probabilities into record-level ones.

    Args:
        segment_probabilities: shape ``[n_segments, 17]``, sigmoid outputs in label order.

    Returns:
        shape ``[17]``: max over segments for the labels in ``MAX_AGGREGATED``, mean for the rest.
    """
    probs = np.asarray(segment_probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(LABELS) or probs.shape[0] == 0:
        raise ValueError(f"expected [n_segments>0, {len(LABELS)}] probabilities, got {probs.shape}")
    return np.where(_MAX_COLUMNS, probs.max(axis=0), probs.mean(axis=0))
