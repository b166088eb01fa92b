"""The pretrained encoder's embeddings of record files, in process: what ``ecgfm probe fit`` fits on when it is
given records instead of an ``ecgfm batch`` dataset, and what ``ecgfm probe predict`` applies a probe to. The
same :class:`ecgfm.inference.Predictor` as ``ecgfm predict --only features``, so a record's embedding is the
``features`` of ``ecgfm predict``, of ``POST /features`` and of ``ecgfm batch``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ecgfm.inference import Predictor
from ecgfm.records.preprocess import ECGInputError
from ecgfm.records.readers import read_record
from ecgfm.records.record import RecordError
from ecgfm.results.outputs import ConversionReport, FeaturesOutput


@dataclass(frozen=True)
class RecordFeatures:
    """One record file's embedding result, or why it could not be embedded."""

    path: str
    name: str | None
    features: FeaturesOutput | None
    error: str | None = None


def encoder(pretrained: str | None = None, device: str | None = None) -> Predictor:
    """A predictor with the pretrained encoder only (``pretrained``: a .pt path, else the settings: local, demo,
    Hub; raises ``CheckpointError`` or ``WeightsNotFoundError``)."""
    return Predictor.from_paths(pretrained, None, load_finetuned=False, device=device)


def record_features(
    predictor: Predictor,
    paths: Sequence[str],
    fs: float | None = None,
    per_segment: bool = False,
    max_duration_s: float | None = None,
) -> Iterator[RecordFeatures]:
    """Each record's :class:`FeaturesOutput` (with ``conversion`` for a hospital file), in the order given; a
    record that cannot be read or used yields its error instead."""
    for path in paths:
        try:
            record = read_record(path, fs=fs)
            result = predictor.predict(record, per_segment=per_segment, max_duration_s=max_duration_s)
        except (RecordError, ECGInputError) as exc:
            yield RecordFeatures(str(path), None, None, str(exc))
            continue
        features = FeaturesOutput.model_validate(result["features"])
        if record.conversion is not None:
            features.conversion = ConversionReport.model_validate(record.conversion)
        yield RecordFeatures(str(path), record.name, features)
