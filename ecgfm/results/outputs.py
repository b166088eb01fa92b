"""What ECG-FM returns for a record: typed results, the one definition the CLI, the HTTP API and reports share.

In the manner of Hugging Face's ``ModelOutput``: each result is a typed object (here pydantic models, so that the
HTTP schema in ``serving/contract.py`` and ``/docs.json`` are derived from them), built in one place from the
per-segment model outputs and the preprocessed record:

* :class:`ClinicalOutput` (``/clinical``, ``ecgfm predict``'s ``clinical``): the 17 label probabilities;
* :class:`FeaturesOutput` (``/features``, ``features``): the pretrained encoder's embedding;
* :class:`ProbeOutput` (``/probes/<name>``, ``ecgfm probe predict``): a probe's target probabilities
  (:mod:`ecgfm.probes`), computed from the record's :class:`FeaturesOutput`;
* :class:`Saliency` (``saliency``, only when asked): where in the tracing the model attended;
* :class:`PrecisionInfo` (in :class:`CheckpointInfo`): how the model computed it, and the self-check that proved a
  variant other than the fp32 reference on these weights (:class:`SelfCheck`, :mod:`ecgfm.precision`);
* :class:`CheckpointInfo`: which weights produced it (never the server's file path: that is in
  :class:`LoadedCheckpoint`, which only ``/info`` reports).

:meth:`RecordOutput.to_json` gives the JSON body (``segments`` and ``saliency`` only when asked for).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from ecgfm.labels import LABELS, aggregate_probabilities
from ecgfm.records.preprocess import SEGMENT_SAMPLES, TARGET_FS, PreprocessedECG


class SelfCheck(BaseModel):
    """A variant's outputs against the fp32 reference's on the same weights and records (:mod:`ecgfm.precision`).

    It proves agreement with fp32 on the records checked, not clinical accuracy."""

    compared_with: Literal["fp32"] = Field(default="fp32", description="The reference: fp32, grouped positional conv.")
    records: list[str] = Field(description="The records run through both (file names).")
    segments: int = Field(description="5 s segments compared.")
    max_probability_difference: float | None = Field(
        default=None, description="Finetuned: the largest absolute difference of any label's probability, any segment."
    )
    min_embedding_cosine: float | None = Field(
        default=None, description="Pretrained: the smallest cosine similarity of a segment's embedding to fp32's."
    )
    bound: float = Field(description="Most probability difference (0.01) or least cosine (0.999) allowed.")
    passed: bool


class PrecisionInfo(BaseModel):
    """How the model computes: the variant, and its self-check (none for the fp32 reference itself)."""

    variant: str = Field(
        description="fp32 (the reference), or the variant: fp32+fft, bf16, fp16, int8, with +fft / +compile."
    )
    reference: bool = Field(description="True for the fp32 reference: the numbers of the parity tests.")
    self_check: SelfCheck | None = Field(
        default=None, description="The variant's measured deviation from fp32 at start-up, on the weights served."
    )


class CheckpointInfo(BaseModel):
    """Which weights produced a response (no path: a response never tells where the server keeps its files)."""

    kind: Literal["pretrained", "finetuned"]
    model_type: str
    demo: bool = Field(description="True when the weights are random demo weights: outputs are meaningless.")
    origin: Literal["local", "huggingface", "demo"]
    repo_id: str | None = None
    revision: str | None = None
    filename: str | None = Field(default=None, description="The checkpoint's file name.")
    sha256: str
    parameters: int
    embed_dim: int
    layers: int
    num_labels: int | None = None
    precision: PrecisionInfo = Field(description="How the model computes; a variant's deviation from fp32 as measured.")


class LoadedCheckpoint(CheckpointInfo):
    """:class:`CheckpointInfo` plus the file the server loaded (``/info`` only)."""

    path: str

    def public(self) -> CheckpointInfo:
        """What responses carry: everything but the path."""
        return CheckpointInfo.model_validate(self.model_dump(exclude={"path"}))


class TrimReport(BaseModel):
    """A stretch cut from the end of a file's record (a calibration pulse, say), ``[start_s, end_s)``."""

    what: str
    start_s: float
    end_s: float


class ConversionReport(BaseModel):
    """How a hospital file (``/<post>/file``, ``ecgfm predict file.dcm``) was read (:mod:`ecgfm.records.formats`)."""

    format: Literal["dicom", "hl7_aecg", "philips", "ge_muse", "scp_ecg"]
    version: str | None = Field(description="The format's version or DICOM SOP class, when the file says it.")
    waveform: Literal["rhythm"] = Field(description="The waveform read: the rhythm, never a median beat.")
    units_in_file: str = Field(description="The amplitude unit the file stores (converted to mV).")
    units: Literal["mV"]
    scaling: str = Field(description="How the file's numbers became mV.")
    lead_labels_in_file: list[str]
    derived_leads: list[str] = Field(description="Leads computed, not read (GE MUSE: III, aVR, aVL, aVF).")
    extra_leads: list[str] = Field(description="Leads beyond the standard 12: kept in the record, not given the model.")
    trimmed: list[TrimReport] = Field(description="What was cut from the end (a 1 mV calibration pulse: not ECG).")
    notes: list[str]


class Saliency(BaseModel):
    """Where in the tracing ECG-FM attended, per 5 s segment: ECG-FM quickstart's reduction of fairseq-signals'
    attention (the last layer's head-mean post-softmax weights, padded keys masked; for each time step, the largest
    weight it puts on any step). It shows attention, not causation: which parts the model weighed, not why it
    answered what it did."""

    values: list[list[float]] = Field(
        description="[n_segments][T] attention values in [0, 1] (T = 156 for a 5 s segment); step i of segment k "
        "covers [segment_start_s[k] + i * step_s, + step_s) on the record's time axis. Steps after the end of a "
        "padded (short) record are padding: leave them out."
    )
    step_s: float = Field(description="Duration of one step in seconds (16 input samples at 500 Hz: 0.032 s).")
    segment_start_s: list[float] = Field(description="Start of each segment on the record's time axis (5 s * k).")

    @classmethod
    def from_segments(cls, values: np.ndarray) -> Saliency:
        """From :meth:`ecgfm.inference.ModelHandle.run_with_saliency`'s ``[n_segments, T]``; each step covers
        ``SEGMENT_SAMPLES // T`` input samples (16: the feature extractor's four stride-2 convs)."""
        values = np.asarray(values, dtype=np.float64)
        step_samples = SEGMENT_SAMPLES // values.shape[1]
        return cls(
            values=values.tolist(),
            step_s=step_samples / TARGET_FS,
            segment_start_s=[k * SEGMENT_SAMPLES / TARGET_FS for k in range(len(values))],
        )


class RecordOutput(BaseModel):
    """What every per-record result says about the record and the weights."""

    demo: bool = Field(description="True when the model has random demo weights.")
    n_segments: int = Field(description="Number of 5 s segments the record was cut into.")
    duration_s: float = Field(description="Duration of the posted record.")
    used_duration_s: float = Field(description="Seconds covered by the segments (a tail shorter than 5 s is dropped).")
    padded: bool = Field(description="True when the record was shorter than 5 s and was padded (with a mask).")
    constant_leads: list[str] = Field(description="Leads that were constant (e.g. disconnected) and set to 0.")
    checkpoint: CheckpointInfo
    conversion: ConversionReport | None = Field(
        default=None, description="Only for an uploaded file (/<post>/file): how it was read."
    )
    saliency: Saliency | None = Field(
        default=None, description="Only with saliency: where in the tracing the model attended (attention, not cause)."
    )

    @staticmethod
    def record_fields(prep: PreprocessedECG, checkpoint: CheckpointInfo) -> dict[str, Any]:
        return {
            "demo": checkpoint.demo,
            "n_segments": prep.n_segments,
            "duration_s": round(prep.duration_s, 6),
            "used_duration_s": round(prep.used_duration_s, 6),
            "padded": prep.padding_mask is not None,
            "constant_leads": list(prep.constant_leads),
            "checkpoint": checkpoint,
        }

    def to_json(self) -> dict[str, Any]:
        """The JSON body: ``segments``, ``conversion`` and ``saliency`` are left out unless there are any."""
        unset = {name for name in ("segments", "conversion", "saliency") if getattr(self, name, None) is None}
        return self.model_dump(mode="json", exclude=unset or None)


class ClinicalOutput(RecordOutput):
    """Sigmoid outputs of the finetuned model, aggregated over segments (raw outputs, no thresholds)."""

    model: Literal["finetuned"] = "finetuned"
    probabilities: dict[str, float] = Field(
        description=f"One probability per label, in label order ({len(LABELS)} labels; see /info for "
        "how each label aggregates over segments: max or mean). Raw outputs, no thresholds.",
    )
    segments: list[list[float]] | None = Field(
        default=None, description="Only with per_segment: [n_segments][17] probabilities in label order."
    )

    @classmethod
    def from_segments(
        cls,
        probabilities: np.ndarray,
        prep: PreprocessedECG,
        checkpoint: CheckpointInfo,
        per_segment: bool = False,
        saliency: np.ndarray | None = None,
    ) -> ClinicalOutput:
        """Aggregate per-segment probabilities ``[n_segments, 17]`` into the record (max or mean per label);
        ``saliency`` ``[n_segments, T]`` when asked for (:class:`Saliency`)."""
        record = aggregate_probabilities(probabilities)
        return cls(
            probabilities={label: float(p) for label, p in zip(LABELS, record, strict=True)},
            segments=np.asarray(probabilities, dtype=np.float64).tolist() if per_segment else None,
            saliency=None if saliency is None else Saliency.from_segments(saliency),
            **cls.record_fields(prep, checkpoint),
        )


class FeaturesOutput(RecordOutput):
    """The pretrained encoder's embedding: the mean over valid frames, then over segments."""

    model: Literal["pretrained"] = "pretrained"
    features: list[float] = Field(description="The record's embedding, dim floats.")
    dim: int
    segments: list[list[float]] | None = Field(
        default=None, description="Only with per_segment: [n_segments][dim] embeddings."
    )

    @classmethod
    def from_segments(
        cls,
        embeddings: np.ndarray,
        prep: PreprocessedECG,
        checkpoint: CheckpointInfo,
        per_segment: bool = False,
        saliency: np.ndarray | None = None,
    ) -> FeaturesOutput:
        """The record's embedding from per-segment embeddings ``[n_segments, D]``; ``saliency`` as for
        :meth:`ClinicalOutput.from_segments`."""
        embeddings = np.asarray(embeddings, dtype=np.float64)
        return cls(
            features=embeddings.mean(axis=0).tolist(),
            dim=int(embeddings.shape[1]),
            segments=embeddings.tolist() if per_segment else None,
            saliency=None if saliency is None else Saliency.from_segments(saliency),
            **cls.record_fields(prep, checkpoint),
        )


class ProbeResult(BaseModel):
    """What a probe answered for a record: one probability per target (raw outputs, no thresholds)."""

    name: str = Field(description="The probe's name (its file name without .probe; GET /probes lists them).")
    targets: list[str] = Field(description="The probe's targets, in the order of its file.")
    probabilities: dict[str, float] = Field(description="One probability per target (logistic regression).")


class ProbeOutput(RecordOutput):
    """A probe's result (``POST /probes/<name>``): a logistic regression on the pretrained encoder's embedding of
    the record (:mod:`ecgfm.probes`). ``checkpoint`` is the pretrained checkpoint; ``demo`` is true when it, or the
    probe's training embeddings, came from random demo weights."""

    model: Literal["probe"] = "probe"
    probe: ProbeResult
    segments: list[list[float]] | None = Field(
        default=None, description="Only with per_segment: [n_segments][targets] probabilities of each segment."
    )

    @classmethod
    def from_features(
        cls,
        features: FeaturesOutput,
        name: str,
        targets: tuple[str, ...] | list[str],
        probabilities: np.ndarray,
        segments: np.ndarray | None = None,
        demo: bool = False,
    ) -> ProbeOutput:
        """From the record's embedding result and the probe's ``[T]`` (and per-segment ``[n_segments, T]``)
        probabilities; ``demo`` (the probe was fit on demo embeddings) is added to the checkpoint's."""
        record = features.model_dump(include=set(RecordOutput.model_fields))
        record["demo"] = features.demo or demo
        result = ProbeResult(
            name=name,
            targets=list(targets),
            probabilities={t: float(p) for t, p in zip(targets, probabilities, strict=True)},
        )
        values = None if segments is None else np.asarray(segments, dtype=np.float64).tolist()
        return cls(probe=result, segments=values, **record)


class BothOutput(BaseModel):
    """Both results for one record (``/both``)."""

    clinical: ClinicalOutput
    features: FeaturesOutput

    def to_json(self) -> dict[str, Any]:
        return {"clinical": self.clinical.to_json(), "features": self.features.to_json()}
