"""ECG-FM in plain PyTorch: model, official checkpoint loading, preprocessing and labels.

The Python API in a few names (imported lazily, so ``ecgfm.labels`` does not pull in torch)::

    from ecgfm import load_checkpoint, Predictor, read_record, LABELS
    from ecgfm.preprocess import preprocess     # (``ecgfm.preprocess`` is also the module's name)

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
    "ECGFMConfig": "ecgfm.model",
    "ECGFMEncoder": "ecgfm.model",
    "ECGFMClassifier": "ecgfm.model",
    "build_model": "ecgfm.model",
    "load_checkpoint": "ecgfm.checkpoint",
    "CheckpointError": "ecgfm.checkpoint",
    "preprocess": "ecgfm.preprocess",
    "ECGInputError": "ecgfm.preprocess",
    "read_record": "ecgfm.records",
    "Predictor": "ecgfm.inference",
    "load_model": "ecgfm.inference",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ecgfm' has no attribute {name!r}")
