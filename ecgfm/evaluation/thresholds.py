"""Thresholds chosen on a site's data, written as a thresholds file the interpreter reads.

* Youden's J: the threshold of the ROC curve (scikit-learn ``roc_curve``) with the largest sensitivity +
  specificity - 1 (the highest such threshold on a tie);
* a target sensitivity: the highest threshold whose sensitivity reaches the target (so the most specific one).

The file has the layout of ``interpreter/thresholds.yaml`` (``labels: {label: {threshold, borderline}}``; the
interpreter merges it into its defaults, severities and groups unchanged) and a ``provenance:`` block (the data,
the counts, the date, the method) that ``/info`` shows. ``borderline`` keeps the default's ratio to the threshold
(0.3 / 0.5 by default), so the "possible" zone scales with the threshold. Labels that were not evaluable are not
written: the default stays in force for them (listed under ``provenance.kept_default``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from sklearn.metrics import roc_curve

import ecgfm

LOWEST_THRESHOLD = 1e-6  # the interpreter's thresholds are in (0, 1]


def youden_threshold(truth: np.ndarray, scores: np.ndarray) -> float:
    """The threshold that maximises Youden's J = sensitivity + specificity - 1."""
    fpr, tpr, thresholds = roc_curve(truth, scores, drop_intermediate=False)
    finite = np.isfinite(thresholds)
    best = int(np.argmax((tpr - fpr)[finite]))
    return _usable(float(thresholds[finite][best]))


def target_sensitivity_threshold(truth: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The highest threshold at which sensitivity is at least ``target``."""
    _, tpr, thresholds = roc_curve(truth, scores, drop_intermediate=False)
    finite = np.isfinite(thresholds)
    reaching = np.flatnonzero(tpr[finite] >= target)
    return _usable(float(thresholds[finite][reaching[0]]))


def _usable(threshold: float) -> float:
    return min(max(threshold, LOWEST_THRESHOLD), 1.0)


def method_description(target_sensitivity: float | None) -> dict[str, Any]:
    if target_sensitivity is None:
        return {"method": "youden", "description": "Youden's J (largest sensitivity + specificity - 1)"}
    return {
        "method": "target_sensitivity",
        "target_sensitivity": target_sensitivity,
        "description": f"highest threshold with sensitivity >= {target_sensitivity:g}",
    }


def thresholds_document(
    chosen: dict[str, float],
    interpreter_config: dict[str, Any],
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """The thresholds file: ``version``, ``provenance`` and ``labels`` (threshold and borderline per label)."""
    labels = {}
    for label, threshold in chosen.items():
        default = interpreter_config["labels"][label]
        ratio = float(default["borderline"]) / float(default["threshold"])
        labels[label] = {"threshold": threshold, "borderline": threshold * ratio}
    return {"version": 1, "provenance": provenance, "labels": labels}


def provenance_of(
    predictions: str,
    site_labels: str,
    n_records: int,
    counts: dict[str, dict[str, int]],
    kept_default: list[str],
    target_sensitivity: float | None,
) -> dict[str, Any]:
    """Where the thresholds came from: the files, on how many records, the counts per label, when and how."""
    return {
        "written_by": f"ecgfm evaluate {ecgfm.__version__}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **method_description(target_sensitivity),
        "predictions": predictions,
        "labels": site_labels,
        "n_records": n_records,
        "counts": counts,
        "kept_default": kept_default,
    }


def write_thresholds(document: dict[str, Any], path: Path) -> None:
    header = (
        "# Thresholds chosen by ecgfm evaluate on a site's own labelled ECGs (docs/evaluation.md); the layout of\n"
        "# interpreter/thresholds.yaml: use with ECGFM_THRESHOLDS=<this file> or --thresholds <this file>.\n"
        "# Research use only: thresholds chosen and measured on the same records look better than they will be on\n"
        "# new ones; confirm them on held-out records.\n"
    )
    path.write_text(header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True), encoding="utf-8")
