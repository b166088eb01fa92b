"""Running a loaded ECG-FM: one call for either model, padding carried as lengths, and the wire format of batches.

* :func:`load_model` resolves one checkpoint (:mod:`ecgfm.network.hub`), loads it strictly
  (:mod:`ecgfm.network.checkpoint`) and applies the runtime settings (:class:`ecgfm.settings.RuntimeSettings`:
  device, precision, fast path); a variant other than the fp32 reference is self-checked against it first
  (:mod:`ecgfm.precision`);
* :meth:`ModelHandle.run` is *the* way to run a model: ``[N, 12, 2500]`` segments and their valid lengths in,
  ``[N, 17]`` probabilities (finetuned) or ``[N, D]`` embeddings (pretrained) out, in chunks;
* :func:`encode_batch` / :func:`decode_batch` carry segments and lengths in one float32 array between processes
  (the service's model services take one array per request, batched across requests);
* :class:`Predictor` runs whole records in process (``ecgfm predict``), producing :mod:`ecgfm.results.outputs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecgfm.labels import LABELS
from ecgfm.network.checkpoint import CheckpointError, LoadedModel, ModelKind, file_sha256, load_checkpoint
from ecgfm.network.fast import (
    PosConv,
    Precision,
    host_to_device,
    optimize_for_inference,
    resolve_compile,
    resolve_pos_conv,
    resolve_precision,
)
from ecgfm.network.hub import CheckpointSource, resolve_checkpoint
from ecgfm.network.model import ECGFMClassifier, attention_max, time_mean
from ecgfm.precision import (
    CheckSegments,
    Comparison,
    PrecisionCheckError,
    SelfCheckHandoff,
    bundled_records,
    measure,
    read_segments,
    refusal,
)
from ecgfm.records.preprocess import SEGMENT_SAMPLES, PreprocessedECG, preprocess
from ecgfm.records.record import ECGRecord
from ecgfm.results.outputs import (
    CheckpointInfo,
    ClinicalOutput,
    FeaturesOutput,
    LoadedCheckpoint,
    PrecisionInfo,
    SelfCheck,
)
from ecgfm.settings import RuntimeSettings, WeightsSettings

DEFAULT_BATCH_SIZE = 32
PAD_VALUE = np.float32("nan")  # padded samples on the wire (see encode_batch)


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def padding_mask_from_lengths(lengths: np.ndarray, n_samples: int = SEGMENT_SAMPLES) -> np.ndarray:
    """``[N, n_samples]`` bool, True at the padded (trailing) samples of each segment."""
    return np.arange(n_samples)[None, :] >= np.asarray(lengths)[:, None]


@dataclass
class ModelHandle:
    """A loaded model on its device, with where it came from and how it runs."""

    loaded: LoadedModel
    source: CheckpointSource
    sha256: str
    device: torch.device
    precision: Precision = "fp32"  # of the transformer layers; see ecgfm.network.fast
    pos_conv: PosConv = "conv"
    compiled: bool = False
    self_check: SelfCheck | None = None  # the variant against fp32 at load (None for the reference itself)
    self_check_taken: bool = False  # True when the server's start-up measurement was taken over (SelfCheckHandoff)

    @property
    def kind(self) -> ModelKind:
        return self.loaded.kind

    @property
    def variant(self) -> str:
        """``fp32`` for the reference, else e.g. ``int8+fft``: precision, then ``+fft`` and ``+compile``."""
        return variant_name(self.precision, self.pos_conv, self.compiled)

    @property
    def reference(self) -> bool:
        """True for the fp32 reference (fp32, grouped positional conv, no compile)."""
        return self.variant == REFERENCE_VARIANT

    @property
    def demo(self) -> bool:
        return self.loaded.demo or self.source.origin == "demo"

    @property
    def output_dim(self) -> int:
        """17 probabilities (finetuned) or ``embed_dim`` features (pretrained) per segment."""
        return len(LABELS) if self.kind == "finetuned" else self.loaded.config.embed_dim

    def runtime(self) -> dict[str, Any]:
        """Where and how the model runs (what ``/health`` and ``/status`` report)."""
        self_check = None if self.self_check is None else self.self_check.model_dump(mode="json")
        return {"device": str(self.device), "precision": self.precision, "pos_conv": self.pos_conv,
                "compiled": self.compiled, "variant": self.variant, "self_check": self_check}  # fmt: skip

    def checkpoint(self) -> LoadedCheckpoint:
        """The weights, as ``/info`` reports them; ``.public()`` is what responses carry (no path)."""
        config = self.loaded.config
        return LoadedCheckpoint(
            kind=self.kind,
            model_type=self.loaded.model_name,
            demo=self.demo,
            path=self.source.path,
            origin=self.source.origin,  # type: ignore[arg-type]
            repo_id=self.source.repo_id,
            revision=self.source.revision,
            filename=self.source.filename or Path(self.source.path).name,
            sha256=self.sha256,
            parameters=self.loaded.num_parameters,
            embed_dim=config.embed_dim,
            layers=config.num_layers,
            num_labels=config.num_labels or None,
            precision=PrecisionInfo(variant=self.variant, reference=self.reference, self_check=self.self_check),
        )

    def run(
        self, segments: np.ndarray, lengths: np.ndarray | None = None, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> np.ndarray:
        """Per-segment outputs: ``[N, 17]`` probabilities (sigmoid of the logits) or ``[N, D]`` embeddings (the
        encoder's output averaged over valid frames).

        Args:
            segments: ``[N, 12, 2500]`` preprocessed segments (:func:`ecgfm.records.preprocess.preprocess`).
            lengths: ``[N]`` valid samples of each segment (shorter ones are zero-padded at the end); None: all full.
            batch_size: most segments per forward.

        Full segments run without a mask, exactly as a whole-record run does; padded ones run with their mask.
        """
        return self._run(segments, lengths, batch_size, saliency=False)[0]

    def run_with_saliency(
        self, segments: np.ndarray, lengths: np.ndarray | None = None, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`run`'s outputs and each segment's saliency ``[N, T]`` float32 (T = 156 for 2500 samples).

        The saliency is ECG-FM quickstart's reduction of fairseq-signals' attention weights
        (:func:`ecgfm.network.model.attention_max`): the last layer's head-mean post-softmax weights, padded keys
        masked, and for each query step its largest weight on any key. Computed with an explicit softmax (the default
        :meth:`run` keeps the fused attention kernel); same chunks, same padding masks.
        """
        outputs, saliency = self._run(segments, lengths, batch_size, saliency=True)
        return outputs, saliency  # type: ignore[return-value]

    @torch.inference_mode()
    def _run(
        self, segments: np.ndarray, lengths: np.ndarray | None, batch_size: int, saliency: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        segments = np.asarray(segments, dtype=np.float32)
        out = np.empty((len(segments), self.output_dim), dtype=np.float32)
        reduced: np.ndarray | None = None
        padded = np.zeros(len(segments), bool) if lengths is None else np.asarray(lengths) < segments.shape[-1]
        for rows, with_mask in ((np.flatnonzero(~padded), False), (np.flatnonzero(padded), True)):
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                mask = padding_mask_from_lengths(lengths[chunk], segments.shape[-1]) if with_mask else None
                out[chunk], chunk_saliency = self._forward(segments[chunk], mask, saliency)
                if chunk_saliency is not None:
                    if reduced is None:
                        reduced = np.empty((len(segments), chunk_saliency.shape[1]), dtype=np.float32)
                    reduced[chunk] = chunk_saliency
        if saliency and reduced is None:  # no segments
            reduced = np.empty((0, 0), dtype=np.float32)
        return out, reduced

    def _forward(
        self, segments: np.ndarray, padding_mask: np.ndarray | None, saliency: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        source = host_to_device(segments, self.device)
        mask = None if padding_mask is None else host_to_device(padding_mask, self.device)
        model = self.loaded.model
        weights = None
        if isinstance(model, ECGFMClassifier):
            logits = model(source, mask, need_weights=True) if saliency else model(source, mask)
            if saliency:
                logits, weights = logits
            out = torch.sigmoid(logits.float())
        elif saliency:
            hidden, frame_mask, weights = model(source, mask, need_weights=True)
            out = time_mean(hidden, frame_mask)
        else:
            out = time_mean(*model(source, mask))
        reduced = None if weights is None else attention_max(weights).float().cpu().numpy()
        return out.float().cpu().numpy(), reduced

    def warm_up(self) -> None:
        """One forward on a zero segment, so that the first request does not pay for lazy initialisation."""
        self.run(np.zeros((1, 12, SEGMENT_SAMPLES), dtype=np.float32))


REFERENCE_VARIANT = "fp32"


def variant_name(precision: str, pos_conv: str, compiled: bool) -> str:
    """``fp32`` (the reference), else the precision with ``+fft`` and ``+compile`` as they apply."""
    return precision + ("+fft" if pos_conv == "fft" else "") + ("+compile" if compiled else "")


def load_model(
    kind: ModelKind,
    path: str | None = None,
    device: torch.device | str | None = None,
    precision: Precision | str | None = None,
    pos_conv: PosConv | str | None = None,
    compile: bool | None = None,
    *,
    weights: WeightsSettings | None = None,
    runtime: RuntimeSettings | None = None,
    self_check: bool = True,
    handoff: SelfCheckHandoff | None = None,
) -> ModelHandle:
    """Resolve (explicit path, else ``weights``: local path, demo, Hub), load strictly, move to the device.

    ``device``, ``precision``, ``pos_conv`` and ``compile`` override ``runtime`` (default: read from the
    environment, :class:`~ecgfm.settings.RuntimeSettings`). fp32 with the plain conv and no compile is the
    reference; anything else goes through :func:`ecgfm.network.fast.optimize_for_inference` and, unless
    ``self_check`` is False, must pass the self-check against the reference on the bundled records
    (:mod:`ecgfm.precision`; :class:`~ecgfm.precision.PrecisionCheckError` otherwise), whose result the handle keeps.
    With ``handoff``, the start-up hook saves the result there for the model workers, and a model worker takes it
    from there instead of measuring when the server measured these weights.
    With a weights cache folder, weights are read through a stripped safetensors copy kept there
    (:func:`ecgfm.network.checkpoint.read_checkpoint_cached`).
    """
    runtime = runtime or RuntimeSettings.from_env()
    source = resolve_checkpoint(kind, path, weights)
    sha256 = source.sha256 or file_sha256(source.path)
    device = device if device is not None else runtime.device
    target = default_device() if device == "auto" else torch.device(device)
    resolved = resolve_precision(precision or runtime.precision, target)
    positional = resolve_pos_conv(pos_conv or runtime.pos_conv)
    compiled = resolve_compile(runtime.compile if compile is None else compile)
    handle = ModelHandle(_load_weights(kind, source, sha256, target, runtime), source, sha256, target)
    if variant_name(resolved, positional, compiled) == REFERENCE_VARIANT:
        return handle
    optimize_for_inference(handle.loaded.model, resolved, pos_conv=positional, compile=compiled)
    handle.precision, handle.pos_conv, handle.compiled = resolved, positional, compiled
    if self_check:
        taken = handoff.take(kind, sha256, handle.variant) if handoff else None
        if taken is not None:
            handle.self_check, handle.self_check_taken = taken, True
        else:
            reference = ModelHandle(_load_weights(kind, source, sha256, target, runtime), source, sha256, target)
            handle.self_check = check_against(handle, reference, read_segments(bundled_records())).summary
            if handoff:
                handoff.save(kind, sha256, handle.variant, handle.self_check)
        if not handle.self_check.passed:
            raise PrecisionCheckError(refusal(kind, handle.variant, handle.self_check))
    return handle


def check_line(handle: ModelHandle) -> str:
    """One line for a log: the handle's variant and its self-check (no signal values)."""
    check = handle.self_check
    if check is None:
        return f"the {handle.kind} model runs as the {handle.variant} reference (no self-check)"
    deviation = (
        f"largest probability difference {check.max_probability_difference:.5f}"
        if check.max_probability_difference is not None
        else f"smallest embedding cosine {check.min_embedding_cosine:.6f}"
    )
    taken = ", as measured by the server at start-up" if handle.self_check_taken else ""
    return (
        f"the {handle.kind} model in {handle.variant} passed the self-check against fp32{taken}: {deviation} "
        f"(bound {check.bound}) on {check.segments} segments of {len(check.records)} records"
    )


def _load_weights(
    kind: ModelKind, source: CheckpointSource, sha256: str, device: torch.device, runtime: RuntimeSettings
) -> LoadedModel:
    """The checkpoint's model, loaded strictly, on ``device`` (fp32, the reference)."""
    loaded = load_checkpoint(source.path, expected_kind=kind, cache_dir=runtime.weights_cache_dir, sha256=sha256)
    loaded.model.to(device)
    if kind == "finetuned" and loaded.config.num_labels != len(LABELS):
        raise CheckpointError(
            f"{source.path}: the classifier has {loaded.config.num_labels} outputs, but ECG-FM has {len(LABELS)} labels"
        )
    return loaded


def check_against(variant: ModelHandle, reference: ModelHandle, checked: CheckSegments) -> Comparison:
    """``variant``'s deviation from ``reference`` (the fp32 reference of the same weights) on ``checked``."""
    return measure(variant.kind, variant.run, reference.run, checked)


def classify_segments(
    handle: ModelHandle, segments: np.ndarray, padding_mask: np.ndarray | None = None, batch_size: int = 32
) -> np.ndarray:
    """Probabilities ``[N, 17]``: :meth:`ModelHandle.run` on the finetuned model, padding given as a mask."""
    return _run_kind("finetuned", handle, segments, padding_mask, batch_size)


def embed_segments(
    handle: ModelHandle, segments: np.ndarray, padding_mask: np.ndarray | None = None, batch_size: int = 32
) -> np.ndarray:
    """Embeddings ``[N, D]``: :meth:`ModelHandle.run` on the pretrained model, padding given as a mask."""
    return _run_kind("pretrained", handle, segments, padding_mask, batch_size)


def _run_kind(
    kind: ModelKind, handle: ModelHandle, segments: np.ndarray, padding_mask: np.ndarray | None, batch_size: int
) -> np.ndarray:
    if handle.kind != kind:
        raise TypeError(f"this needs the {kind} model, not the {handle.kind} one")
    return handle.run(segments, lengths_from_mask(padding_mask, segments), batch_size)


def warm_up(handle: ModelHandle) -> None:
    """:meth:`ModelHandle.warm_up`."""
    handle.warm_up()


def lengths_from_mask(padding_mask: np.ndarray | None, segments: np.ndarray) -> np.ndarray | None:
    """Valid samples per segment from a trailing padding mask (None: every segment is whole)."""
    if padding_mask is None or not np.asarray(padding_mask).any():
        return None
    return np.asarray(segments).shape[-1] - np.asarray(padding_mask).sum(axis=1)


def record_lengths(prep: PreprocessedECG) -> np.ndarray | None:
    """The valid samples of each of a record's segments (None when none is padded)."""
    return lengths_from_mask(prep.padding_mask, prep.segments)


def encode_batch(segments: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    """One ``float32 [N, 12, 2500]`` array carrying both: padded samples are NaN (:data:`PAD_VALUE`) in every lead.

    Preprocessing guarantees real samples are finite, so :func:`decode_batch` recovers the lengths exactly.
    """
    if lengths is None:
        return segments
    encoded = np.array(segments, dtype=np.float32)
    mask = padding_mask_from_lengths(lengths, encoded.shape[-1])
    encoded[np.broadcast_to(mask[:, None, :], encoded.shape)] = PAD_VALUE
    return encoded


def decode_batch(encoded: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The inverse of :func:`encode_batch`: finite segments (padding set back to 0) and their lengths."""
    encoded = np.asarray(encoded, dtype=np.float32)
    mask = np.isnan(encoded[:, 0, :])
    if not mask.any():
        return encoded, None
    return np.where(np.isnan(encoded), np.float32(0.0), encoded), encoded.shape[-1] - mask.sum(axis=1)


class Predictor:
    """Whole-record inference with one or both models, in process (the CLI's engine)."""

    def __init__(self, pretrained: ModelHandle | None = None, finetuned: ModelHandle | None = None) -> None:
        if pretrained is None and finetuned is None:
            raise ValueError("a Predictor needs at least one model")
        self.pretrained = pretrained
        self.finetuned = finetuned
        self._checkpoints: dict[str, CheckpointInfo] = {}

    @classmethod
    def from_paths(
        cls,
        pretrained: str | None = None,
        finetuned: str | None = None,
        *,
        load_pretrained: bool = True,
        load_finetuned: bool = True,
        device: str | None = None,
        precision: str | None = None,
        pos_conv: str | None = None,
    ) -> Predictor:
        """Load the models; a path of None means "resolve it" (environment, demo mode, hub). A ``precision`` or
        ``pos_conv`` other than the reference's is self-checked (:func:`load_model`)."""
        return cls(
            load_model("pretrained", pretrained, device, precision, pos_conv) if load_pretrained else None,
            load_model("finetuned", finetuned, device, precision, pos_conv) if load_finetuned else None,
        )

    def preprocess(self, record: ECGRecord, **options: Any) -> PreprocessedECG:
        signal, lead_names = record.model_input()  # without leads a file reader kept beyond the 12
        return preprocess(signal, record.fs, lead_names, **options)

    def _checkpoint(self, handle: ModelHandle) -> CheckpointInfo:
        if handle.kind not in self._checkpoints:
            self._checkpoints[handle.kind] = handle.checkpoint().public()
        return self._checkpoints[handle.kind]

    def predict_preprocessed(
        self, prep: PreprocessedECG, per_segment: bool = False, saliency: bool = False
    ) -> dict[str, Any]:
        """``{"clinical": ..., "features": ...}`` (JSON bodies) for the models this predictor holds; with
        ``saliency``, each body has its model's ``saliency`` (:class:`ecgfm.results.outputs.Saliency`)."""
        result: dict[str, Any] = {}
        lengths = record_lengths(prep)
        for key, handle, output in (
            ("clinical", self.finetuned, ClinicalOutput),
            ("features", self.pretrained, FeaturesOutput),
        ):
            if handle is None:
                continue
            if saliency:
                values, reduced = handle.run_with_saliency(prep.segments, lengths)
            else:
                values, reduced = handle.run(prep.segments, lengths), None
            body = output.from_segments(values, prep, self._checkpoint(handle), per_segment, reduced)
            result[key] = body.to_json()
        return result

    def predict(
        self, record: ECGRecord, per_segment: bool = False, saliency: bool = False, **options: Any
    ) -> dict[str, Any]:
        """One JSON-ready object per record: ``{"record": name, "clinical": ..., "features": ...}``."""
        prep = self.preprocess(record, **options)
        conversion = {"conversion": record.conversion} if record.conversion is not None else {}
        return {"record": record.name, **conversion, **self.predict_preprocessed(prep, per_segment, saliency)}
