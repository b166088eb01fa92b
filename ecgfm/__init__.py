"""ECG-FM in plain PyTorch, one package per job (docs/architecture.md): ``records`` (files in and out, the official
preprocessing), ``network`` (the model and its weights), ``results`` (typed outputs, FHIR), ``inference`` (running a
model on records), ``archive`` (``ecgfm batch``), ``cli`` (the ``ecgfm`` command); ``labels`` and ``settings`` beside.

The Python API in a few names (imported lazily, so ``import ecgfm`` does not pull in torch)::

    from ecgfm import load_checkpoint, Predictor, read_record, preprocess, LABELS

    finetuned = load_checkpoint("mimic_iv_ecg_finetuned.pt")      # LoadedModel: .model, .config, .kind
    logits = finetuned.model(segments)                               # [B, 12, 2500] -> [B, 17]
    hidden, frame_mask = load_checkpoint("pretrained.pt").model(segments, padding_mask)  # [B, T, D]

    predictor = Predictor.from_paths("pretrained.pt", "finetuned.pt")
    result = predictor.predict(read_record("record.json"))           # the /clinical and /features bodies
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "LABELS": "ecgfm.labels",
    "ECGFMConfig": "ecgfm.network.model",
    "ECGFMEncoder": "ecgfm.network.model",
    "ECGFMClassifier": "ecgfm.network.model",
    "build_model": "ecgfm.network.model",
    "load_checkpoint": "ecgfm.network.checkpoint",
    "CheckpointError": "ecgfm.network.checkpoint",
    "preprocess": "ecgfm.records.preprocess",
    "ECGInputError": "ecgfm.records.preprocess",
    "read_record": "ecgfm.records.readers",
    "Predictor": "ecgfm.inference",
    "load_model": "ecgfm.inference",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ecgfm' has no attribute {name!r}")
