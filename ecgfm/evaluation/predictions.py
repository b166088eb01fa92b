"""What ECG-FM predicted, per record: the probabilities of ``ecgfm predict -o``, ``ecgfm batch`` or a probe.

Three shapes are read, told by the path and the first line:

* JSON Lines of ``ecgfm predict -o``: ``{"record": ..., "clinical": {"probabilities": {label: p}}}`` (the 17 labels);
* JSON Lines of ``ecgfm probe predict``: ``{"record": ..., "probe": {"name": ..., "targets": [...],
  "probabilities": {target: p}}}`` (the probe's targets are then the labels evaluated);
* an ``ecgfm batch`` output folder (or one of its ``.parquet`` parts): the ``record`` and ``probabilities``
  columns, the label order from the schema's ``ecgfm`` metadata (:mod:`ecgfm.archive.parts`); rows that failed
  in the batch (``error`` set) are counted apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecgfm.evaluation.errors import EvaluationInputError, listed
from ecgfm.labels import LABELS


@dataclass(frozen=True)
class Predictions:
    """Probabilities ``[records, labels]`` and where they came from."""

    records: list[str]
    labels: list[str]
    probabilities: np.ndarray
    source: str
    kind: str  # "ecgfm predict", "ecgfm batch" or "probe <name>"
    failed: list[str] = field(default_factory=list)  # records without probabilities (an error in ecgfm batch)


def read_predictions(path: str | Path) -> Predictions:
    """The predictions in ``path`` (see the module's docstring), checked: one row per record, every probability
    a number in [0, 1]."""
    path = Path(path)
    if path.is_dir() or path.suffix.lower() == ".parquet":
        predictions = _read_batch(path)
    elif path.is_file():
        predictions = _read_json_lines(path)
    else:
        raise EvaluationInputError(f"{path}: no such predictions file or folder")
    _check(predictions)
    return predictions


def _read_json_lines(path: Path) -> Predictions:
    records: list[str] = []
    rows: list[list[float]] = []
    labels: list[str] | None = None
    kind = ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            message = f"{where}: not JSON ({exc.msg}); expected the JSON Lines of ecgfm predict -o"
            raise EvaluationInputError(message) from None
        if not isinstance(entry, dict) or not entry.get("record"):
            raise EvaluationInputError(f"{where}: no 'record' name")
        line_labels, probabilities, line_kind = _probabilities_of(entry, where)
        if labels is None:
            labels, kind = line_labels, line_kind
        elif line_labels != labels or line_kind != kind:
            raise EvaluationInputError(f"{where}: its labels differ from the first line's ({kind}: {labels})")
        records.append(str(entry["record"]))
        rows.append([_probability(probabilities.get(label), where, label) for label in labels])
    if labels is None:
        raise EvaluationInputError(f"{path}: no predictions in it")
    return Predictions(records, labels, np.asarray(rows, dtype=np.float64), str(path), kind)


def _probabilities_of(entry: dict[str, Any], where: str) -> tuple[list[str], dict[str, Any], str]:
    """(labels, probabilities, kind) of one JSON Lines entry."""
    clinical, probe = entry.get("clinical"), entry.get("probe")
    if isinstance(probe, dict):
        targets, probabilities = probe.get("targets"), probe.get("probabilities")
        if not isinstance(targets, list) or not targets or not isinstance(probabilities, dict):
            raise EvaluationInputError(f"{where}: a probe prediction needs 'targets' and 'probabilities'")
        return [str(target) for target in targets], probabilities, f"probe {probe.get('name', '')}".strip()
    if isinstance(clinical, dict) and isinstance(clinical.get("probabilities"), dict):
        return list(LABELS), clinical["probabilities"], "ecgfm predict"
    if entry.get("resourceType") == "Bundle":
        raise EvaluationInputError(f"{where}: a FHIR Bundle; write the predictions with ecgfm predict -o (JSON)")
    raise EvaluationInputError(
        f"{where}: no 'clinical.probabilities' (ecgfm predict -o, not --only features) and no 'probe'"
    )


def _probability(value: Any, where: str, label: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EvaluationInputError(f"{where}: no probability for {label!r}")
    return float(value)


def _read_batch(path: Path) -> Predictions:

    from ecgfm.archive.parts import committed_parts, read_metadata, read_part

    parts = [path] if path.is_file() else committed_parts(path)
    if not parts:
        raise EvaluationInputError(f"{path}: no ecgfm batch parts (part-*.parquet) in it")
    records: list[str] = []
    rows: list[list[float]] = []
    failed: list[str] = []
    labels: list[str] = list(LABELS)
    for part in parts:
        labels = read_metadata(part).get("labels") or labels
        try:
            table = read_part(part, ["record", "path", "probabilities", "error"])
        except (KeyError, ValueError) as exc:  # pyarrow: a column is missing, or not Parquet
            raise EvaluationInputError(f"{part}: not an ecgfm batch part with probabilities ({exc})") from None
        for row in table.to_pylist():
            name = row["record"] or Path(row["path"]).stem
            if row["error"] or row["probabilities"] is None:
                failed.append(name)
                continue
            if len(row["probabilities"]) != len(labels):
                raise EvaluationInputError(f"{part}: {name!r} has {len(row['probabilities'])} probabilities")
            records.append(name)
            rows.append([float(p) for p in row["probabilities"]])
    matrix = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(labels))
    return Predictions(records, labels, matrix, str(path), "ecgfm batch", failed)


def _check(predictions: Predictions) -> None:
    seen: set[str] = set()
    duplicates = sorted({name for name in predictions.records if name in seen or seen.add(name)})
    if duplicates:
        raise EvaluationInputError(
            f"{predictions.source}: {len(duplicates)} record(s) predicted more than once: {listed(duplicates)}; "
            "keep one prediction per record"
        )
    values = predictions.probabilities
    bad = ~np.isfinite(values) | (values < 0.0) | (values > 1.0)
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raise EvaluationInputError(
            f"{predictions.source}: {int(bad.sum())} probabilit(ies) outside [0, 1] or not numbers, first "
            f"{predictions.records[row]!r} {predictions.labels[column]!r} = {float(values[row, column])!r}"
        )
