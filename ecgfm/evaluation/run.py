"""One evaluation: predictions and a site's labels in, a complete output folder out (or nothing at all).

The folder is written under a hidden temporary name beside ``out`` and renamed onto it at the end, so that a
refused input or a crash leaves no half-written results.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

import ecgfm
from ecgfm.evaluation import metrics, outputs, thresholds
from ecgfm.evaluation.errors import EvaluationInputError, listed
from ecgfm.evaluation.predictions import Predictions, read_predictions
from ecgfm.evaluation.site_labels import SiteLabels, read_site_labels
from ecgfm.labels import LABELS

FORMAT = "ecgfm-evaluate/1"
RESEARCH_USE = (
    "Research use only. These figures describe ECG-FM's outputs on this site's labelled records; they are not a "
    "clearance of ECG-FM or of this service as a diagnostic device."
)


@dataclass(frozen=True)
class EvaluationOptions:
    predictions: Path
    labels: Path
    out: Path
    target_sensitivity: float | None = None  # None: Youden's J
    bootstrap: metrics.Bootstrap = field(default_factory=metrics.Bootstrap)
    thresholds: str | None = None  # the interpreter's thresholds file in force (None: its defaults)
    quiet: bool = False


def evaluate(options: EvaluationOptions) -> dict[str, Any]:
    """Measure, choose thresholds, write ``metrics.json``, ``metrics.csv``, ``report.html`` and ``thresholds.yaml``
    into ``options.out``; returns the metrics document. Raises :class:`EvaluationInputError` before writing."""
    _check_out(options.out)
    config = _interpreter_config(options.thresholds)
    predictions = read_predictions(options.predictions)
    site = read_site_labels(options.labels, predictions.labels)
    rows, matched = _match(predictions, site)
    position = {name: i for i, name in enumerate(predictions.records)}
    prediction_rows = [position[name] for name in matched]
    plots: dict[str, dict[str, Any]] = {}
    per_label: dict[str, dict[str, Any]] = {}
    for j, label in enumerate(tqdm(predictions.labels, desc="labels", unit="label", disable=options.quiet)):
        truth = site.truth[rows, j]
        scores = predictions.probabilities[prediction_rows, j]
        per_label[label] = _label_figures(label, truth, scores, site, config, options, plots)
    chosen = {
        label: entry["thresholds"]["chosen"]["threshold"]
        for label, entry in per_label.items()
        if entry["evaluable"] and label in LABELS
    }
    document = _document(options, predictions, site, matched, per_label, config)
    thresholds_file = None
    if set(predictions.labels) <= set(LABELS):
        counts = {label: {k: per_label[label][k] for k in ("n_positive", "n_negative")} for label in chosen}
        kept = [label for label in LABELS if label not in chosen]
        provenance = thresholds.provenance_of(
            str(options.predictions), str(options.labels), len(matched), counts, kept, options.target_sensitivity
        )
        thresholds_file = thresholds.thresholds_document(chosen, config, provenance)
    _write(options.out, document, plots, thresholds_file)
    return document


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EvaluationInputError(f"{out}: exists and is not an empty folder; give a new --out folder")


def _interpreter_config(path: str | None) -> dict[str, Any]:
    from interpreter.findings import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        raise EvaluationInputError(f"thresholds in force: {exc}") from None


def _match(predictions: Predictions, site: SiteLabels) -> tuple[list[int], list[str]]:
    """Row indices into the site's labels and the matched record names, in the predictions' order."""
    labelled = {name: i for i, name in enumerate(site.records)}
    matched = [name for name in predictions.records if name in labelled]
    if not matched:
        raise EvaluationInputError(
            f"no record is in both {predictions.source} ({len(predictions.records)} records, e.g. "
            f"{listed(predictions.records, 3)}) and {site.source} ({len(site.records)} records, e.g. "
            f"{listed(site.records, 3)}); the names must match (ecgfm predict names a record after its file's stem)"
        )
    return [labelled[name] for name in matched], matched


def _label_figures(
    label: str,
    truth: np.ndarray,
    scores: np.ndarray,
    site: SiteLabels,
    config: dict[str, Any],
    options: EvaluationOptions,
    plots: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    labelled = ~np.isnan(truth)
    truth, scores = truth[labelled].astype(int), scores[labelled]
    n_positive, n_negative = int(truth.sum()), int(len(truth) - truth.sum())
    entry: dict[str, Any] = {
        "label": label,
        "n_records": len(truth),
        "n_positive": n_positive,
        "n_negative": n_negative,
        "prevalence": n_positive / len(truth) if len(truth) else None,
    }
    reason = site.not_evaluable.get(label)
    if reason is None and not len(truth):
        reason = "no matched record is labelled for it"
    elif reason is None and not n_positive:
        reason = "no positive record: sensitivity and AUROC are undefined"
    elif reason is None and not n_negative:
        reason = "no negative record: specificity and AUROC are undefined"
    if reason:
        return {**entry, "evaluable": False, "reason": reason}
    resamples = options.bootstrap.indices(len(truth))
    entry |= {
        "evaluable": True,
        **metrics.discrimination(truth, scores, resamples),
        **metrics.calibration(truth, scores),
    }
    points = {}
    if label in config["labels"]:
        points["interpreter"] = metrics.operating_point(truth, scores, config["labels"][label]["threshold"], resamples)
    if options.target_sensitivity is None:
        chosen = thresholds.youden_threshold(truth, scores)
    else:
        chosen = thresholds.target_sensitivity_threshold(truth, scores, options.target_sensitivity)
    points["chosen"] = metrics.operating_point(truth, scores, chosen, resamples)
    entry["thresholds"] = points
    plots[label] = {**metrics.curves(truth, scores), "entry": entry}
    return entry


def _document(
    options: EvaluationOptions,
    predictions: Predictions,
    site: SiteLabels,
    matched: list[str],
    per_label: dict[str, dict[str, Any]],
    config: dict[str, Any],
) -> dict[str, Any]:
    matched_set = set(matched)
    only_predicted = [name for name in predictions.records if name not in matched_set]
    only_labelled = [name for name in site.records if name not in matched_set]
    return {
        "format": FORMAT,
        "written_by": f"ecgfm evaluate {ecgfm.__version__}",
        "research_use": RESEARCH_USE,
        "predictions": {"source": predictions.source, "kind": predictions.kind, "n_records": len(predictions.records)},
        "reference": {"source": site.source, "form": site.form, "n_records": len(site.records)},
        "records": {
            "n_matched": len(matched),
            "only_in_predictions": {"count": len(only_predicted), "records": only_predicted},
            "only_in_labels": {"count": len(only_labelled), "records": only_labelled},
            "failed_in_batch": {"count": len(predictions.failed), "records": predictions.failed},
            "without_dx_line": {"count": len(site.unlabelled), "records": site.unlabelled},
        },
        "unmapped_codes": [code.__dict__ for code in site.unmapped_codes],
        "bootstrap": options.bootstrap.to_dict(),
        "threshold_choice": thresholds.method_description(options.target_sensitivity),
        "interpreter_thresholds": {"source": config["source"], "provenance": config.get("provenance")},
        "labels": per_label,
        "macro": metrics.macro_averages(list(per_label.values()), ["interpreter", "chosen"]),
    }


def _write(
    out: Path, document: dict[str, Any], plots: dict[str, dict[str, Any]], thresholds_file: dict[str, Any] | None
) -> None:
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        outputs.write_json(document, staging / "metrics.json")
        outputs.write_csv(document, staging / "metrics.csv")
        if thresholds_file is not None:
            thresholds.write_thresholds(thresholds_file, staging / "thresholds.yaml")
        outputs.write_html(document, plots, staging / "report.html")
        staging.chmod(0o755)
        if out.exists():
            out.rmdir()  # empty (checked before any work)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(
        f"ecgfm evaluate: {len(document['labels'])} labels on {document['records']['n_matched']} records in {out}",
        file=sys.stderr,
    )
