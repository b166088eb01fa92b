"""The self-check: a model variant (int8, bf16, FFT positional conv, compile) against the fp32 reference, on records.

Quantization error depends on the weights' and activations' ranges, so a variant proves itself on the weights it is
about to serve: :func:`ecgfm.inference.load_model` runs both the variant and the fp32 reference (the same file,
loaded a second time) on the bundled real records of ``sample_data/`` (:data:`SELF_CHECK_RECORDS`) and refuses the
variant (:class:`PrecisionCheckError`) when

* finetuned: any label's probability differs by more than :data:`PROBABILITY_BOUND` (0.01) on any segment;
* pretrained: any segment's embedding has a cosine similarity below :data:`COSINE_BOUND` (0.999) to fp32's.

What it proves: agreement with fp32 on the records checked. Not clinical accuracy, and not agreement on every record
(``ecgfm check-precision`` runs the same comparison on a site's own records).

``bentoml serve`` measures it once, in its start-up hook, and hands the result to the model workers it starts
(:class:`SelfCheckHandoff`): the same weights file (sha256), variant, torch and records measure the same, so a worker
does not load a second, fp32 copy to measure again. A worker with no hand-off for its weights measures itself.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

from ecgfm.labels import LABELS
from ecgfm.network.checkpoint import CheckpointError, ModelKind
from ecgfm.records.preprocess import ECGInputError, preprocess
from ecgfm.records.readers import read_record
from ecgfm.records.record import RecordError
from ecgfm.results.outputs import SelfCheck

PROBABILITY_BOUND = 0.01  # finetuned: most absolute probability difference to fp32, any label, any segment
COSINE_BOUND = 0.999  # pretrained: least cosine similarity of a segment's embedding to fp32's
SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample_data"
# The bundled real records (PhysioNet; sample_data/README.md): 10 s, 12 leads, several rhythms and sources.
SELF_CHECK_RECORDS = ("A1041.json", "JS01048.json", "JS06908.json", "JS36330.json", "ptbdb_s0010_re_first10s.json")

Run = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]  # ModelHandle.run: segments, lengths -> outputs


class PrecisionCheckError(CheckpointError):
    """A variant's outputs leave the bound against fp32 on these weights: it is not served."""


@dataclass(frozen=True)
class CheckSegments:
    """The preprocessed segments of the records a check runs, with their valid lengths."""

    records: list[str]
    segments: np.ndarray  # [N, 12, 2500]
    lengths: np.ndarray | None  # [N] valid samples, None when no segment is padded


@dataclass(frozen=True)
class Comparison:
    """A variant's deviation from fp32: the summary every answer carries and, for the finetuned model, per label."""

    summary: SelfCheck
    per_label: dict[str, float] | None  # finetuned: each label's largest absolute difference


def bundled_records() -> list[Path]:
    """The records of the start-up self-check."""
    return [SAMPLE_DIR / name for name in SELF_CHECK_RECORDS]


def read_segments(
    paths: Sequence[str | Path], fs: float | None = None, skip: Callable[[str | Path, Exception], None] | None = None
) -> CheckSegments:
    """Every record's segments, preprocessed as for inference (the official preprocessing); ``fs`` for ``.npy`` and
    ``.csv`` files. A record that cannot be read raises, or with ``skip`` is passed to it and left out."""
    segments, lengths, names = [], [], []
    for path in paths:
        try:
            record = read_record(path, fs=fs)
            signal, lead_names = record.model_input()
            prep = preprocess(signal, record.fs, lead_names)
        except (RecordError, ECGInputError) as exc:
            if skip is None:
                raise
            skip(path, exc)
            continue
        segments.append(prep.segments)
        valid = prep.segments.shape[-1] - (prep.padding_mask.sum(axis=1) if prep.padding_mask is not None else 0)
        lengths.append(np.broadcast_to(valid, len(prep.segments)))
        names.append(Path(path).name)
    if not segments:
        raise ECGInputError("no record could be read")
    all_lengths = np.concatenate(lengths).astype(np.int64)
    stacked = np.concatenate(segments).astype(np.float32)
    return CheckSegments(names, stacked, None if (all_lengths == stacked.shape[-1]).all() else all_lengths)


def compare(kind: ModelKind, variant: np.ndarray, reference: np.ndarray, records: list[str]) -> Comparison:
    """The deviation of ``variant``'s outputs from ``reference``'s (same segments, same order) and the verdict."""
    if kind == "finetuned":
        per_label_max = np.abs(variant.astype(np.float64) - reference.astype(np.float64)).max(axis=0)
        worst = float(per_label_max.max())
        summary = SelfCheck(
            records=records,
            segments=len(variant),
            max_probability_difference=worst,
            bound=PROBABILITY_BOUND,
            passed=worst <= PROBABILITY_BOUND,
        )
        return Comparison(summary, {label: float(value) for label, value in zip(LABELS, per_label_max, strict=True)})
    a, b = variant.astype(np.float64), reference.astype(np.float64)
    cosine = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    least = float(cosine.min())
    summary = SelfCheck(
        records=records,
        segments=len(variant),
        min_embedding_cosine=least,
        bound=COSINE_BOUND,
        passed=least >= COSINE_BOUND,
    )
    return Comparison(summary, None)


def measure(kind: ModelKind, variant: Run, reference: Run, checked: CheckSegments) -> Comparison:
    """Run both models on the same segments and compare."""
    return compare(
        kind,
        variant(checked.segments, checked.lengths),
        reference(checked.segments, checked.lengths),
        checked.records,
    )


def refusal(kind: ModelKind, variant_name: str, result: SelfCheck) -> str:
    """The one message of a refused variant."""
    if result.max_probability_difference is not None:
        how = f"a probability differs from fp32 by {result.max_probability_difference:.4f} (bound {result.bound})"
    else:
        how = f"an embedding's cosine similarity to fp32 is {result.min_embedding_cosine:.5f} (bound {result.bound})"
    return (
        f"the {kind} model in {variant_name} fails the self-check on these weights: {how} on "
        f"{result.segments} segments of {', '.join(result.records)}; serve it in fp32 (ECGFM_PRECISION=fp32)"
    )


@dataclass(frozen=True)
class SelfCheckHandoff:
    """Self-checks measured by one server process (``server_pid``), kept for the model workers it starts.

    The start-up hook saves each model's result (:meth:`save`); a worker, a child of that process, takes it
    (:meth:`take`) when it loads the same file (sha256) as the same variant with the same torch and records.
    The files lie in a folder of the user's own (mode 0700) in the temporary directory; a folder that is not
    private to the user is not used (the workers then measure themselves)."""

    server_pid: int
    worker: bool  # a model worker takes what its server saved; the server's hook saves and takes nothing

    @classmethod
    def of_this_server(cls) -> SelfCheckHandoff:
        """For the start-up hook: this process is the server that starts the workers; it saves."""
        return cls(os.getpid(), worker=False)

    @classmethod
    def of_the_parent_server(cls) -> SelfCheckHandoff:
        """For a model worker: the server that started it is its parent process; it takes."""
        return cls(os.getppid(), worker=True)

    def _path(self, kind: ModelKind) -> Path | None:
        folder = Path(tempfile.gettempdir()) / f"ecgfm-serve-self-check-{os.getuid()}"
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            info = folder.lstat()
        except OSError:
            return None
        private = stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077
        return folder / f"{self.server_pid}-{kind}.json" if private else None

    @staticmethod
    def _key(kind: ModelKind, sha256: str, variant: str) -> dict[str, object]:
        return {
            "kind": kind,
            "sha256": sha256,
            "variant": variant,
            "torch": torch.__version__,
            "records": list(SELF_CHECK_RECORDS),
        }

    def save(self, kind: ModelKind, sha256: str, variant: str, check: SelfCheck) -> None:
        """Keep ``check`` for the workers (atomically: written aside, then renamed); nothing in a worker or when there
        is no private folder."""
        path = None if self.worker else self._path(kind)
        if path is None:
            return
        written = path.with_suffix(".tmp")
        written.write_text(json.dumps({"key": self._key(kind, sha256, variant), "check": check.model_dump()}))
        written.replace(path)

    def take(self, kind: ModelKind, sha256: str, variant: str) -> SelfCheck | None:
        """In a worker, the server's check of these weights in this variant, or None (none saved, for other weights,
        or not in a worker)."""
        path = self._path(kind) if self.worker else None
        try:
            saved = json.loads(path.read_text()) if path is not None else None
            if not isinstance(saved, dict) or saved.get("key") != self._key(kind, sha256, variant):
                return None
            return SelfCheck.model_validate(saved["check"])
        except (OSError, ValueError, KeyError, ValidationError):
            return None
