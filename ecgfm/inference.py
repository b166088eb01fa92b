"""From preprocessed segments to the response bodies that the CLI and the HTTP API return.

* :func:`load_model` resolves and loads one checkpoint (:mod:`ecgfm.hub`, :mod:`ecgfm.checkpoint`);
* :func:`classify_segments` / :func:`embed_segments` run batches of segments through a model;
* :func:`clinical_response` / :func:`features_response` aggregate segments into a record and build the body;
* :class:`Predictor` chains all of it for whole records (used by ``ecgfm predict``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ecgfm.checkpoint import CheckpointError, LoadedModel, ModelKind, file_sha256, load_checkpoint
from ecgfm.fast import (
    PosConv,
    Precision,
    host_to_device,
    optimize_for_inference,
    resolve_compile,
    resolve_pos_conv,
    resolve_precision,
)
from ecgfm.hub import CheckpointSource, resolve_checkpoint
from ecgfm.labels import LABELS, aggregate_probabilities
from ecgfm.model import ECGFMClassifier, ECGFMEncoder, time_mean
from ecgfm.preprocess import SEGMENT_SAMPLES, PreprocessedECG, preprocess
from ecgfm.records import ECGRecord

DEFAULT_BATCH_SIZE = 32
# A folder for stripped safetensors copies of the checkpoints (faster, lighter start-ups); unset: no cache.
WEIGHTS_CACHE_ENV_VAR = "ECGFM_WEIGHTS_CACHE_DIR"


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class ModelHandle:
    """A loaded model on its device, with where it came from."""

    loaded: LoadedModel
    source: CheckpointSource
    sha256: str
    device: torch.device = field(default_factory=default_device)
    precision: Precision = "fp32"  # of the transformer layers; see ecgfm.fast
    pos_conv: PosConv = "conv"
    compiled: bool = False

    def runtime(self) -> dict[str, Any]:
        """Where and how the model runs (what ``/health`` and ``/status`` report)."""
        return {"device": str(self.device), "precision": self.precision, "pos_conv": self.pos_conv,
                "compiled": self.compiled}  # fmt: skip

    @property
    def kind(self) -> ModelKind:
        return self.loaded.kind

    @property
    def demo(self) -> bool:
        return self.loaded.demo or self.source.origin == "demo"

    def info(self) -> dict[str, Any]:
        """What responses and ``/info`` say about this model (no weights, no inputs)."""
        config = self.loaded.config
        return {
            "kind": self.kind,
            "model_type": self.loaded.model_name,
            "demo": self.demo,
            **self.source.to_dict(),
            "sha256": self.sha256,
            "parameters": self.loaded.num_parameters,
            "embed_dim": config.embed_dim,
            "layers": config.num_layers,
            "num_labels": config.num_labels or None,
        }


def load_model(
    kind: ModelKind,
    path: str | None = None,
    device: torch.device | str | None = None,
    precision: Precision | str | None = None,
    pos_conv: PosConv | str | None = None,
    compile: bool | None = None,
) -> ModelHandle:
    """Resolve (explicit path, environment, demo, hub), load strictly, move to ``device``.

    ``precision`` None reads ``$ECGFM_PRECISION`` (``fp32``, ``bf16``, ``fp16`` or ``auto`` = bf16 on CUDA);
    unset means fp32, the reference. Likewise ``pos_conv`` None reads ``$ECGFM_POS_CONV`` (``conv`` or ``fft``)
    and ``compile`` None reads ``$ECGFM_COMPILE``. Anything but fp32 with the plain conv and no compile goes through
    :func:`ecgfm.fast.optimize_for_inference` (see there and ``docs/performance.md`` for its tolerance). With
    ``$ECGFM_WEIGHTS_CACHE_DIR`` set, weights are read through a stripped safetensors copy kept there
    (:func:`ecgfm.checkpoint.read_checkpoint_cached`).
    """
    source = resolve_checkpoint(kind, path)
    sha256 = source.sha256 or file_sha256(source.path)
    cache_dir = os.environ.get(WEIGHTS_CACHE_ENV_VAR) or None
    loaded = load_checkpoint(source.path, expected_kind=kind, cache_dir=cache_dir, sha256=sha256)
    target = torch.device(device) if device is not None else default_device()
    loaded.model.to(target)
    if kind == "finetuned" and loaded.config.num_labels != len(LABELS):
        raise CheckpointError(
            f"{source.path}: the classifier has {loaded.config.num_labels} outputs, but ECG-FM has {len(LABELS)} labels"
        )
    resolved = resolve_precision(precision, target)
    positional, compiled = resolve_pos_conv(pos_conv), resolve_compile(compile)
    if resolved != "fp32" or positional != "conv" or compiled:
        optimize_for_inference(loaded.model, resolved, pos_conv=positional, compile=compiled)
    return ModelHandle(loaded, source, sha256, target, resolved, positional, compiled)


def _batches(
    segments: np.ndarray, padding_mask: np.ndarray | None, batch_size: int
) -> Sequence[tuple[np.ndarray, np.ndarray | None]]:
    return [
        (segments[i : i + batch_size], None if padding_mask is None else padding_mask[i : i + batch_size])
        for i in range(0, len(segments), batch_size)
    ]


def _as_tensors(
    segments: np.ndarray, padding_mask: np.ndarray | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    source = host_to_device(np.asarray(segments, dtype=np.float32), device)
    mask = None
    if padding_mask is not None and padding_mask.any():
        mask = host_to_device(np.asarray(padding_mask, dtype=bool), device)
    return source, mask


@torch.inference_mode()
def _run_in_batches(
    handle: ModelHandle,
    segments: np.ndarray,
    padding_mask: np.ndarray | None,
    batch_size: int,
    forward: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    out_dim: int,
) -> np.ndarray:
    """``forward(source, mask)`` over ``segments`` in chunks of ``batch_size``, as one ``[N, out_dim]`` array."""
    outputs = []
    for chunk, mask in _batches(segments, padding_mask, batch_size):
        source, mask_t = _as_tensors(chunk, mask, handle.device)
        outputs.append(forward(source, mask_t).float().cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, out_dim), np.float32)


def classify_segments(
    handle: ModelHandle,
    segments: np.ndarray,
    padding_mask: np.ndarray | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """Per-segment probabilities ``[N, 17]`` (sigmoid of the logits) from ``[N, 12, 2500]`` segments."""
    model = handle.loaded.model
    if not isinstance(model, ECGFMClassifier):
        raise TypeError("classify_segments needs the finetuned model")
    return _run_in_batches(
        handle, segments, padding_mask, batch_size, lambda x, m: torch.sigmoid(model(x, m).float()), len(LABELS)
    )


def embed_segments(
    handle: ModelHandle,
    segments: np.ndarray,
    padding_mask: np.ndarray | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """Per-segment embeddings ``[N, D]``: the pretrained encoder's output averaged over valid frames."""
    model = handle.loaded.model
    if not isinstance(model, ECGFMEncoder):
        raise TypeError("embed_segments needs the pretrained model")
    return _run_in_batches(
        handle, segments, padding_mask, batch_size, lambda x, m: time_mean(*model(x, m)), handle.loaded.config.embed_dim
    )


def warm_up(handle: ModelHandle) -> None:
    """One forward on a zero segment, so that the first request does not pay for lazy initialisation."""
    zeros = np.zeros((1, 12, SEGMENT_SAMPLES), dtype=np.float32)
    (classify_segments if handle.kind == "finetuned" else embed_segments)(handle, zeros)


def _record_fields(prep: PreprocessedECG) -> dict[str, Any]:
    return {
        "n_segments": prep.n_segments,
        "duration_s": round(prep.duration_s, 6),
        "used_duration_s": round(prep.used_duration_s, 6),
        "padded": prep.padding_mask is not None,
        "constant_leads": list(prep.constant_leads),
    }


def clinical_response(
    segment_probabilities: np.ndarray, prep: PreprocessedECG, model_info: dict[str, Any], per_segment: bool = False
) -> dict[str, Any]:
    """The ``/clinical`` body: record-level probabilities in label order (max or mean over segments)."""
    record = aggregate_probabilities(segment_probabilities)
    body: dict[str, Any] = {
        "model": "finetuned",
        "demo": bool(model_info["demo"]),
        "probabilities": {label: float(p) for label, p in zip(LABELS, record, strict=True)},
        **_record_fields(prep),
    }
    if per_segment:
        body["segments"] = np.asarray(segment_probabilities, dtype=np.float64).tolist()
    body["checkpoint"] = model_info
    return body


def features_response(
    segment_embeddings: np.ndarray, prep: PreprocessedECG, model_info: dict[str, Any], per_segment: bool = False
) -> dict[str, Any]:
    """The ``/features`` body: the mean of the per-segment embeddings."""
    embeddings = np.asarray(segment_embeddings, dtype=np.float64)
    body: dict[str, Any] = {
        "model": "pretrained",
        "demo": bool(model_info["demo"]),
        "features": embeddings.mean(axis=0).tolist(),
        "dim": int(embeddings.shape[1]),
        **_record_fields(prep),
    }
    if per_segment:
        body["segments"] = embeddings.tolist()
    body["checkpoint"] = model_info
    return body


class Predictor:
    """Whole-record inference with one or both models, in process (the CLI's engine)."""

    def __init__(self, pretrained: ModelHandle | None = None, finetuned: ModelHandle | None = None) -> None:
        if pretrained is None and finetuned is None:
            raise ValueError("a Predictor needs at least one model")
        self.pretrained = pretrained
        self.finetuned = finetuned

    @classmethod
    def from_paths(
        cls,
        pretrained: str | None = None,
        finetuned: str | None = None,
        *,
        load_pretrained: bool = True,
        load_finetuned: bool = True,
        device: str | None = None,
    ) -> Predictor:
        """Load the models; a path of None means "resolve it" (environment, demo mode, hub)."""
        return cls(
            load_model("pretrained", pretrained, device) if load_pretrained else None,
            load_model("finetuned", finetuned, device) if load_finetuned else None,
        )

    def preprocess(self, record: ECGRecord, **options: Any) -> PreprocessedECG:
        return preprocess(record.signal, record.fs, record.lead_names, **options)

    def predict_preprocessed(self, prep: PreprocessedECG, per_segment: bool = False) -> dict[str, Any]:
        """``{"clinical": ..., "features": ...}`` for the models this predictor holds."""
        result: dict[str, Any] = {}
        if self.finetuned is not None:
            probs = classify_segments(self.finetuned, prep.segments, prep.padding_mask)
            result["clinical"] = clinical_response(probs, prep, self.finetuned.info(), per_segment)
        if self.pretrained is not None:
            embeddings = embed_segments(self.pretrained, prep.segments, prep.padding_mask)
            result["features"] = features_response(embeddings, prep, self.pretrained.info(), per_segment)
        return result

    def predict(self, record: ECGRecord, per_segment: bool = False, **options: Any) -> dict[str, Any]:
        """One JSON-ready object per record: ``{"record": name, "clinical": ..., "features": ...}``."""
        prep = self.preprocess(record, **options)
        return {"record": record.name, **self.predict_preprocessed(prep, per_segment)}
