"""The probe file and applying a probe: data only, checked before use, applied with NumPy.

A probe file ``<name>.probe`` is a safetensors file (https://github.com/huggingface/safetensors): four float64
tensors and string metadata, nothing executable. Tensors: ``coef`` ``[T, D]`` and ``intercept`` ``[T]`` (the
logistic regression on standardised embeddings), ``mean`` and ``scale`` ``[D]`` (the standardisation). Metadata:
``format`` (:data:`FORMAT`), ``targets`` (JSON list of T names), ``pretrained_sha256`` (the checkpoint whose
embeddings it was fit on), ``demo`` (``true`` when those were random demo weights), ``summary`` (JSON: the training
records, positives, cross-validated AUROC, date, command; :mod:`ecgfm.probes.fit`).

A probe's name is its file name without ``.probe``: ``POST /probes/<name>``, ``probe_<name>_<target>`` columns.
Loading (:func:`load_probe`) checks the bytes are a safetensors file before anything reads them (a pickle renamed
``.probe`` is refused, never unpickled), then every tensor's dtype, shape and values and every metadata field, and
raises :class:`ProbeFileError` naming the file and the problem.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecgfm.results.outputs import FeaturesOutput, ProbeOutput

FORMAT = "ecgfm-probe/1"
SUFFIX = ".probe"
TENSORS = ("coef", "intercept", "mean", "scale")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")  # a URL path segment and a Parquet column part
TARGET_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.+-]{0,63}$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header
PICKLE_PROTOCOL_BYTE = 0x80  # every pickle of protocol 2 or later starts with it (torch.save, joblib, pickle)


class ProbeFileError(ValueError):
    """A probe file that cannot be used (not a probe, damaged, fit on other weights); the message says what."""


@dataclass(frozen=True)
class Probe:
    """A logistic-regression head on ECG-FM embeddings: ``p = sigmoid(((x - mean) / scale) @ coef.T + intercept)``."""

    name: str
    targets: tuple[str, ...]
    coef: np.ndarray  # float64 [T, D], on standardised embeddings
    intercept: np.ndarray  # float64 [T]
    mean: np.ndarray  # float64 [D]
    scale: np.ndarray  # float64 [D], > 0
    pretrained_sha256: str
    demo: bool
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def embed_dim(self) -> int:
        return int(self.coef.shape[1])

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """``[N, T]`` probabilities for embeddings ``[N, D]`` (or ``[T]`` for one ``[D]``)."""
        x = np.asarray(embeddings, dtype=np.float64)
        if x.shape[-1] != self.embed_dim:
            raise ValueError(f"probe {self.name} takes {self.embed_dim}-d embeddings, not {x.shape[-1]}-d")
        logits = ((x - self.mean) / self.scale) @ self.coef.T + self.intercept
        return np.exp(-np.logaddexp(0.0, -logits))  # the sigmoid, without overflow for large |logits|

    def output(self, features: FeaturesOutput) -> ProbeOutput:
        """The probe's result for a record from its :class:`FeaturesOutput` (record-level embedding, and each
        segment's when it has ``segments``)."""
        record = self.probabilities(np.asarray(features.features))
        segments = None if features.segments is None else self.probabilities(np.asarray(features.segments))
        return ProbeOutput.from_features(features, self.name, self.targets, record, segments, demo=self.demo)

    def describe(self) -> dict[str, Any]:
        """What ``GET /probes`` and ``/info`` say about it: name, targets, checkpoint and training summary."""
        return {
            "name": self.name,
            "targets": list(self.targets),
            "embed_dim": self.embed_dim,
            "pretrained_sha256": self.pretrained_sha256,
            "demo": self.demo,
            "summary": self.summary,
        }

    def check_checkpoint(self, sha256: str, where: str = "the pretrained checkpoint") -> None:
        """:class:`ProbeFileError` naming both sha256s when the probe was fit on other weights than ``sha256``."""
        if sha256 != self.pretrained_sha256:
            raise ProbeFileError(
                f"probe {self.name} was fit on the embeddings of the pretrained checkpoint with sha256 "
                f"{self.pretrained_sha256}, but {where} has sha256 {sha256}: its outputs would be meaningless; "
                "fit it again on embeddings of these weights (ecgfm probe fit), or serve the weights it was fit on"
            )


def probe_name(path: Path) -> str:
    """A probe's name: its file name without ``.probe`` (:class:`ProbeFileError` when it cannot be one)."""
    if path.suffix != SUFFIX:
        raise ProbeFileError(f"{path.name}: a probe file's name ends in {SUFFIX} (<name>{SUFFIX})")
    if not NAME_PATTERN.match(path.stem):
        raise ProbeFileError(
            f"{path.name}: a probe's name (the file name without {SUFFIX}) is 1 to 64 of a-z, 0-9, _ and -, "
            "starting with a letter or digit"
        )
    return path.stem


def save_probe(probe: Probe, directory_or_path: Path) -> Path:
    """Write ``probe`` as ``<name>.probe`` (into a folder, or to the given file path); returns the path."""
    from safetensors.numpy import save_file

    path = Path(directory_or_path)
    if path.is_dir():
        path = path / f"{probe.name}{SUFFIX}"
    if probe_name(path) != probe.name:
        raise ProbeFileError(f"{path.name}: the file of probe {probe.name} must be named {probe.name}{SUFFIX}")
    tensors = {
        "coef": probe.coef,
        "intercept": probe.intercept,
        "mean": probe.mean,
        "scale": probe.scale,
    }
    metadata = {
        "format": FORMAT,
        "targets": json.dumps(list(probe.targets)),
        "pretrained_sha256": probe.pretrained_sha256,
        "demo": "true" if probe.demo else "false",
        "summary": json.dumps(probe.summary, sort_keys=True),
    }
    _validate(probe, path)
    save_file({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in tensors.items()}, str(path), metadata)
    return path


def _check_safetensors_bytes(path: Path) -> None:
    """Refuse anything but a safetensors file by its first bytes, before any library reads it (a pickle is never
    unpickled): an 8-byte little-endian header length, then that many bytes of JSON starting with ``{``."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head[:1] == bytes([PICKLE_PROTOCOL_BYTE]) or head[:2] == b"PK":
        kind = "a Python pickle" if head[:1] == bytes([PICKLE_PROTOCOL_BYTE]) else "a zip archive (torch.save?)"
        raise ProbeFileError(
            f"{path.name}: this is {kind}, not a probe file; probes are safetensors files written by "
            "`ecgfm probe fit`, and pickles are never loaded (they can run code)"
        )
    if len(head) < 9:
        raise ProbeFileError(f"{path.name}: {size} bytes, too short to be a probe file (safetensors)")
    (header_bytes,) = struct.unpack("<Q", head[:8])
    if not 2 <= header_bytes <= min(MAX_HEADER_BYTES, size - 8) or head[8:9] != b"{":
        raise ProbeFileError(f"{path.name}: not a probe file (not a safetensors file; write one with ecgfm probe fit)")


def load_probe(path: str | Path) -> Probe:
    """Read and check a probe file; :class:`ProbeFileError` says what is wrong (the file's name, never a value)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    name = probe_name(path)
    if not path.is_file():
        raise ProbeFileError(f"{path}: no such probe file")
    _check_safetensors_bytes(path)
    try:
        with safe_open(str(path), framework="numpy") as file:
            metadata = file.metadata() or {}
            keys = set(file.keys())
            if keys != set(TENSORS):
                raise ProbeFileError(f"{path.name}: holds the tensors {sorted(keys)}, a probe has {list(TENSORS)}")
            tensors = {key: file.get_tensor(key) for key in TENSORS}
    except (SafetensorError, OSError, ValueError) as exc:
        if isinstance(exc, ProbeFileError):
            raise
        raise ProbeFileError(f"{path.name}: not a readable probe file ({type(exc).__name__})") from None
    if metadata.get("format") != FORMAT:
        raise ProbeFileError(f"{path.name}: format {metadata.get('format')!r}, expected {FORMAT!r}")
    try:
        targets = json.loads(metadata["targets"])
        summary = json.loads(metadata["summary"])
        sha256, demo = metadata["pretrained_sha256"], metadata["demo"]
    except (KeyError, json.JSONDecodeError) as exc:
        raise ProbeFileError(f"{path.name}: missing or unreadable metadata ({exc})") from None
    if demo not in ("true", "false") or not isinstance(summary, dict) or not isinstance(targets, list):
        raise ProbeFileError(f"{path.name}: metadata 'demo', 'summary' or 'targets' has the wrong type")
    probe = Probe(name, tuple(targets), *(tensors[key] for key in TENSORS), sha256, demo == "true", summary)
    _validate(probe, path)
    return probe


def _validate(probe: Probe, path: Path) -> None:
    """Every field of a probe: target names, the sha256, and the tensors' dtypes, shapes and values."""
    where = path.name
    targets = probe.targets
    if not targets or not all(isinstance(t, str) and TARGET_PATTERN.match(t) for t in targets):
        raise ProbeFileError(f"{where}: targets must be 1 or more names of 1 to 64 letters, digits, ' _.+-'")
    if len(set(targets)) != len(targets):
        raise ProbeFileError(f"{where}: a target is named twice")
    if not isinstance(probe.pretrained_sha256, str) or not SHA256_PATTERN.match(probe.pretrained_sha256):
        raise ProbeFileError(f"{where}: pretrained_sha256 is not a sha256 (64 lower-case hex digits)")
    n_targets = len(targets)
    dim = probe.mean.shape[0] if probe.mean.ndim == 1 else -1
    expected = {"coef": (n_targets, dim), "intercept": (n_targets,), "mean": (dim,), "scale": (dim,)}
    for key, shape in expected.items():
        tensor = getattr(probe, key)
        if tensor.dtype != np.float64 or tensor.shape != shape or dim < 1:
            raise ProbeFileError(
                f"{where}: {key} is {tensor.dtype} {list(tensor.shape)}, expected float64 {list(shape)} "
                f"({n_targets} targets)"
            )
        if not np.isfinite(tensor).all():
            raise ProbeFileError(f"{where}: {key} holds NaN or infinite values")
    if not (probe.scale > 0).all():
        raise ProbeFileError(f"{where}: scale must be positive")


def load_probe_dir(directory: str | Path | None) -> dict[str, Probe]:
    """Every ``*.probe`` file of a folder, by name (``{}`` for None); :class:`ProbeFileError` for the first one that
    cannot be used, or a folder that does not exist."""
    if directory is None:
        return {}
    folder = Path(directory).expanduser()
    if not folder.is_dir():
        raise ProbeFileError(f"{folder}: no such folder of probe files (ECGFM_PROBES_DIR)")
    probes = {}
    for path in sorted(folder.glob(f"*{SUFFIX}")):
        probe = load_probe(path)
        probes[probe.name] = probe
    return probes
