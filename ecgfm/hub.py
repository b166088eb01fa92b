"""Where the weights come from: a local file, the Hugging Face Hub, or (only when asked) demo weights.

Resolution order for each model:

1. ``ECGFM_PRETRAINED_CHECKPOINT`` / ``ECGFM_FINETUNED_CHECKPOINT`` (path to a ``.pt`` file), or an explicit
   path given by the caller;
2. demo mode, only when ``ECGFM_DEMO=1`` is set: random-init checkpoints in the official format are written
   to ``ECGFM_DEMO_DIR`` (default ``~/.cache/ecgfm-serve/demo``) and everything that reports on the model says
   "demo";
3. ``huggingface_hub.hf_hub_download`` from ``wanglab/ecg-fm`` at ``HF_REVISION`` (uses the local HF cache; set
   ``HF_HUB_OFFLINE=1`` to forbid network access).

There is no silent fallback: when none of these yields a file, :class:`WeightsNotFoundError` says which
variables to set. A file whose sha256 differs from its pin (``ECGFM_PRETRAINED_SHA256`` /
``ECGFM_FINETUNED_SHA256``, or :data:`HF_FILE_SHA256` for a Hub download) raises :class:`ChecksumError`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ecgfm.checkpoint import ModelKind, file_sha256

HF_REPO_ID = "wanglab/ecg-fm"
# The Hub revision the files are downloaded at. Pin it to a commit hash for a reproducible deployment
# (override with ECGFM_HF_REVISION); see docs/deployment.md.
HF_REVISION = "main"
HF_FILENAMES: dict[str, str] = {
    "pretrained": "mimic_iv_ecg_physionet_pretrained.pt",
    "finetuned": "mimic_iv_ecg_finetuned.pt",
}
# Known file sizes of the published files (Git LFS pointer), to catch a truncated download early.
HF_FILE_SIZES: dict[str, int] = {"pretrained": 1_090_825_421}
# Known sha256 of the published files at the pinned revision, checked after every Hub download when listed.
# Empty on purpose: the hashes could not be read offline when this was written, and an invented value would
# refuse the real file. Fill them in from the Hub's file pages (the LFS "SHA256") when HF_REVISION is pinned.
HF_FILE_SHA256: dict[str, str] = {}
SHA256_ENV_VARS: dict[str, str] = {"pretrained": "ECGFM_PRETRAINED_SHA256", "finetuned": "ECGFM_FINETUNED_SHA256"}

CHECKPOINT_ENV_VARS: dict[str, str] = {
    "pretrained": "ECGFM_PRETRAINED_CHECKPOINT",
    "finetuned": "ECGFM_FINETUNED_CHECKPOINT",
}
DEMO_ENV_VAR = "ECGFM_DEMO"
DEMO_DIR_ENV_VAR = "ECGFM_DEMO_DIR"
DEMO_SIZE_ENV_VAR = "ECGFM_DEMO_SIZE"
REVISION_ENV_VAR = "ECGFM_HF_REVISION"


class WeightsNotFoundError(RuntimeError):
    """No checkpoint could be found; the message says how to provide one."""


class ChecksumError(WeightsNotFoundError):
    """A checkpoint file does not have its pinned sha256 (truncated, corrupt or another version)."""


@dataclass(frozen=True)
class CheckpointSource:
    """Where a checkpoint file came from (reported by ``/info`` and the CLI)."""

    path: str
    origin: str  # "local", "huggingface" or "demo"
    repo_id: str | None = None
    revision: str | None = None
    filename: str | None = None
    sha256: str | None = None  # set when the file was hashed to check a pin (so nobody hashes it again)

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)


def demo_requested() -> bool:
    """True when ``ECGFM_DEMO`` is set to 1/true/yes."""
    return os.environ.get(DEMO_ENV_VAR, "").strip().lower() in {"1", "true", "yes"}


def resolve_checkpoint(kind: ModelKind, explicit_path: str | os.PathLike | None = None) -> CheckpointSource:
    """Find the checkpoint file for ``kind`` (see the module docstring for the order)."""
    local = explicit_path or os.environ.get(CHECKPOINT_ENV_VARS[kind])
    if local:
        path = Path(local).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"{kind} checkpoint {path} does not exist ({CHECKPOINT_ENV_VARS[kind]})")
        return verify_sha256(kind, CheckpointSource(str(path.resolve()), "local"))
    if demo_requested():
        return _demo_checkpoint(kind)
    return verify_sha256(kind, _hub_checkpoint(kind))


def verify_sha256(kind: ModelKind, source: CheckpointSource) -> CheckpointSource:
    """``source`` when its file has the pinned sha256 or no hash is pinned, else :class:`ChecksumError`.

    The pin is ``ECGFM_<KIND>_SHA256`` when set, else :data:`HF_FILE_SHA256` for a Hub download.
    """
    expected, pinned_by = os.environ.get(SHA256_ENV_VARS[kind], "").strip().lower(), SHA256_ENV_VARS[kind]
    if not expected and source.origin == "huggingface" and kind in HF_FILE_SHA256:
        expected, pinned_by = HF_FILE_SHA256[kind].lower(), f"the known hash of {HF_REPO_ID}/{HF_FILENAMES[kind]}"
    if not expected:
        return source
    actual = file_sha256(source.path)
    if actual != expected:
        raise ChecksumError(
            f"{kind} checkpoint {source.path}: sha256 is {actual}, but {pinned_by} expects {expected}: "
            "the file is truncated, corrupt or another version; download it again or fix the pin"
        )
    return replace(source, sha256=actual)


def _demo_checkpoint(kind: ModelKind) -> CheckpointSource:
    from ecgfm.demo import write_demo_checkpoints

    size = os.environ.get(DEMO_SIZE_ENV_VAR, "full")
    directory = Path(os.environ.get(DEMO_DIR_ENV_VAR, Path.home() / ".cache" / "ecgfm-serve" / "demo")) / size
    path = directory / f"{kind}.pt"
    if not path.is_file():
        write_demo_checkpoints(directory, size=size)
    return CheckpointSource(str(path), "demo")


def _hub_checkpoint(kind: ModelKind) -> CheckpointSource:
    from huggingface_hub import hf_hub_download

    revision = os.environ.get(REVISION_ENV_VAR, HF_REVISION)
    filename = HF_FILENAMES[kind]
    try:
        path = hf_hub_download(repo_id=HF_REPO_ID, filename=filename, revision=revision)
    except Exception as exc:  # offline, no cache, auth or network errors all end here
        raise WeightsNotFoundError(
            f"could not get the {kind} ECG-FM weights ({HF_REPO_ID}/{filename}@{revision}) from the Hugging Face "
            f"Hub or its local cache ({type(exc).__name__}). Set {CHECKPOINT_ENV_VARS[kind]} to a local .pt file, "
            f"or set {DEMO_ENV_VAR}=1 to try the service with random demo weights."
        ) from exc
    expected_size = HF_FILE_SIZES.get(kind)
    if expected_size is not None and Path(path).stat().st_size != expected_size:
        raise WeightsNotFoundError(
            f"{path}: {Path(path).stat().st_size} bytes, but {HF_REPO_ID}/{filename} has {expected_size}: "
            "the download is truncated or corrupt; delete it and download again"
        )
    return CheckpointSource(path, "huggingface", HF_REPO_ID, revision, filename)
