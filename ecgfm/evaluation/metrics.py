"""The figures of one label: discrimination, operating points, calibration, and their confidence intervals.

Which library computes what:

* scikit-learn: AUROC (``roc_auc_score``), AUPRC as average precision (``average_precision_score``), the ROC and
  precision-recall curves (``roc_curve``, ``precision_recall_curve``), the counts at a threshold
  (``confusion_matrix``), the Brier score (``brier_score_loss``) and the reliability curve (``calibration_curve``,
  10 equal-width bins);
* SciPy: Wilson score intervals for sensitivity, specificity, PPV and NPV (``binomtest(...).proportion_ci(
  method="wilson")``; Wilson, JASA 22:209-212, 1927);
* NumPy: the bootstrap: records resampled with replacement (seeded), the 2.5th and 97.5th percentiles of the
  resampled statistic (percentile interval) for AUROC, AUPRC and F1; a resample with one class only has no AUROC
  and is left out (the number used is reported). The resamples' AUROCs are computed together from SciPy's ranks
  (:func:`resampled_aurocs`, the Mann-Whitney identity, equal to ``roc_auc_score``), their AUPRCs and the point
  estimates by scikit-learn.

A record counts as positive at a threshold when its probability is **at or above** it, as the interpreter's rule
T1 does. The expected calibration error is ``sum over bins of (records in bin / records) * |fraction positive -
mean probability|`` over the same bins as the reliability curve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import sklearn
from scipy.stats import binomtest, rankdata
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

CONFIDENCE = 0.95
CALIBRATION_BINS = 10


@dataclass(frozen=True)
class Bootstrap:
    """How intervals of AUROC, AUPRC and F1 are resampled."""

    n_resamples: int = 1000
    seed: int = 0

    def indices(self, n_records: int) -> np.ndarray:
        """``[n_resamples, n_records]`` record indices, drawn with replacement from a generator seeded by ``seed``."""
        return np.random.default_rng(self.seed).integers(0, n_records, size=(self.n_resamples, n_records))

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_resamples": self.n_resamples,
            "seed": self.seed,
            "method": "percentile",
            "confidence": CONFIDENCE,
            "resampled": "records, with replacement",
        }


def wilson(successes: int, trials: int) -> list[float] | None:
    """The Wilson score interval of ``successes / trials`` at 95 % (``None`` with no trials)."""
    if trials == 0:
        return None
    interval = binomtest(successes, trials).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return [float(interval.low), float(interval.high)]


def _percentile_interval(values: list[float]) -> list[float] | None:
    if not values:
        return None
    tail = (1.0 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def operating_point(truth: np.ndarray, scores: np.ndarray, threshold: float, resamples: np.ndarray) -> dict[str, Any]:
    """Counts, sensitivity, specificity, PPV, NPV (Wilson intervals) and F1 (bootstrap interval) at ``threshold``."""
    predicted = scores >= threshold
    tn, fp, fn, tp = (int(n) for n in confusion_matrix(truth, predicted, labels=[0, 1]).ravel())
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    # F1 is no proportion of trials: its interval is the bootstrap's, from the counts of each resample.
    positive, hit = truth[resamples] == 1, predicted[resamples]
    tp_b, fp_b, fn_b = (positive & hit).sum(1), (~positive & hit).sum(1), (positive & ~hit).sum(1)
    defined = (2 * tp_b + fp_b + fn_b) > 0
    f1_b = 2 * tp_b[defined] / (2 * tp_b + fp_b + fn_b)[defined]
    return {
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "sensitivity": _ratio(tp, tp + fn),
        "sensitivity_ci": wilson(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "specificity_ci": wilson(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "ppv_ci": wilson(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "npv_ci": wilson(tn, tn + fn),
        "f1": f1,
        "f1_ci": _percentile_interval(f1_b.tolist()),
    }


def calibration(truth: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """Brier score, expected calibration error and the reliability curve (10 equal-width bins)."""
    fraction_positive, mean_predicted = calibration_curve(truth, scores, n_bins=CALIBRATION_BINS, strategy="uniform")
    edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
    bins = np.searchsorted(edges[1:-1], scores)  # the binning calibration_curve uses
    counts = np.bincount(bins, minlength=CALIBRATION_BINS)
    occupied = np.flatnonzero(counts)
    curve = [
        {
            "bin": [float(edges[b]), float(edges[b + 1])],
            "n": int(counts[b]),
            "mean_predicted": float(mean_predicted[i]),
            "fraction_positive": float(fraction_positive[i]),
        }
        for i, b in enumerate(occupied)
    ]
    ece = sum(point["n"] / len(scores) * abs(point["fraction_positive"] - point["mean_predicted"]) for point in curve)
    return {"brier": float(brier_score_loss(truth, scores)), "ece": float(ece), "reliability": curve}


def resampled_aurocs(truth: np.ndarray, scores: np.ndarray, resamples: np.ndarray) -> np.ndarray:
    """AUROC of every resample that has both classes, all at once: the Mann-Whitney identity AUROC = (rank sum of
    the positives - n+(n+ + 1)/2) / (n+ n-), ties at mid-ranks (SciPy ``rankdata``); equal to ``roc_auc_score``
    (ties count one half there too), which would take a Python loop of 10^3 calls per label."""
    positive = truth[resamples] == 1
    n_positive = positive.sum(axis=1)
    n_negative = positive.shape[1] - n_positive
    both = (n_positive > 0) & (n_negative > 0)
    ranks = rankdata(scores[resamples[both]], axis=1)
    rank_sums = (ranks * positive[both]).sum(axis=1)
    n_pos, n_neg = n_positive[both], n_negative[both]
    return (rank_sums - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def discrimination(truth: np.ndarray, scores: np.ndarray, resamples: np.ndarray) -> dict[str, Any]:
    """AUROC and AUPRC with their bootstrap percentile intervals (resamples with one class only are left out)."""
    aurocs = resampled_aurocs(truth, scores, resamples)
    auprcs = []
    with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):  # checked once, above
        for index in resamples:
            resampled = truth[index]
            if 0 < resampled.sum() < len(resampled):
                auprcs.append(average_precision_score(resampled, scores[index]))
    return {
        "auroc": float(roc_auc_score(truth, scores)),
        "auroc_ci": _percentile_interval(aurocs.tolist()),
        "auprc": float(average_precision_score(truth, scores)),
        "auprc_ci": _percentile_interval(auprcs),
        "bootstrap_resamples_used": len(auprcs),
    }


def curves(truth: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """The ROC and precision-recall curves, for the report's plots."""
    fpr, tpr, _ = roc_curve(truth, scores)
    precision, recall, _ = precision_recall_curve(truth, scores)
    return {"fpr": fpr, "tpr": tpr, "precision": precision, "recall": recall}


def macro_averages(per_label: list[dict[str, Any]], threshold_kinds: list[str]) -> dict[str, Any]:
    """Unweighted means over the evaluable labels (each label counts once, whatever its prevalence)."""
    evaluable = [entry for entry in per_label if entry["evaluable"]]
    result: dict[str, Any] = {"n_labels": len(evaluable), "labels": [entry["label"] for entry in evaluable]}
    for key in ("auroc", "auprc", "brier", "ece"):
        result[key] = float(np.mean([entry[key] for entry in evaluable])) if evaluable else None
    for kind in threshold_kinds:
        points = [entry["thresholds"][kind] for entry in evaluable if kind in entry["thresholds"]]
        result[kind] = {
            "n_labels": len(points),
            **{
                key: float(np.mean(values)) if (values := [p[key] for p in points if p[key] is not None]) else None
                for key in ("sensitivity", "specificity", "ppv", "npv", "f1")
            },
        }
    return result
