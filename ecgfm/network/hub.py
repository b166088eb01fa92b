"""Where the weights come from: a local file, the Hugging Face Hub, or (only when asked) demo weights.

Resolution order for each model:

1. an explicit path given by the caller, else ``ECGFM_PRETRAINED_CHECKPOINT`` / ``ECGFM_FINETUNED_CHECKPOINT``
   (path to a ``.pt`` file);
2. demo mode, only when ``ECGFM_DEMO=1`` is set: random-init checkpoints in the official format are written
   to ``ECGFM_DEMO_DIR`` (default ``~/.cache/ecgfm-serve/demo``) and everything that reports on the model says
   "demo";
3. ``huggingface_hub.hf_hub_download`` from ``wanglab/ecg-fm`` at ``ECGFM_HF_REVISION`` (uses the local HF cache;
   set ``HF_HUB_OFFLINE=1`` to forbid network access).

The variables are read by :class:`ecgfm.settings.WeightsSettings`; every function here takes one (default: read
from the environment at the call).

There is no silent fallback: when none of these yields a file, :class:`WeightsNotFoundError` says which
variables to set. A file whose sha256 differs from its pin (``ECGFM_PRETRAINED_SHA256`` /
``ECGFM_FINETUNED_SHA256``, or :data:`HF_FILE_SHA256` for a Hub download) raises :class:`ChecksumError`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ecgfm.network.checkpoint import ModelKind, file_sha256
from ecgfm.settings import WeightsSettings

KINDS: tuple[ModelKind, ...] = ("pretrained", "finetuned")
HF_REPO_ID = "wanglab/ecg-fm"
HF_FILENAMES: dict[str, str] = {
    "pretrained": "mimic_iv_ecg_physionet_pretrained.pt",
    "finetuned": "mimic_iv_ecg_finetuned.pt",
}
# Known file sizes of the published files (Git LFS pointer), to catch a truncated download early.
HF_FILE_SIZES: dict[str, int] = {"pretrained": 1_090_825_421}
# Known sha256 of the published files at the pinned revision, checked after every Hub download when listed.
# Empty on purpose: the hashes could not be read offline when this was written, and an invented value would
# refuse the real file. Fill them in from the Hub's file pages (the LFS "SHA256") when the default revision
# (ecgfm.settings.DEFAULT_HF_REVISION) is pinned.
HF_FILE_SHA256: dict[str, str] = {}


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


def resolve_checkpoint(
    kind: ModelKind, explicit_path: str | os.PathLike | None = None, weights: WeightsSettings | None = None
) -> CheckpointSource:
    """Find the checkpoint file for ``kind`` (see the module docstring for the order)."""
    weights = weights or WeightsSettings.from_env()
    local = explicit_path or weights.checkpoint(kind)
    if local:
        path = Path(local).expanduser()
        if not path.is_file():
            given_by = "" if explicit_path else f" ({WeightsSettings.env_var(f'{kind}_checkpoint')})"
            raise WeightsNotFoundError(f"{kind} checkpoint {path} does not exist{given_by}")
        return verify_sha256(kind, CheckpointSource(str(path.resolve()), "local"), weights)
    if weights.demo:
        return _demo_checkpoint(kind, weights)
    return verify_sha256(kind, _hub_checkpoint(kind, weights), weights)


def resolve_all(weights: WeightsSettings | None = None) -> dict[str, CheckpointSource]:
    """Both checkpoints, resolved (downloaded, demo files written) before anything loads them: the start-up step
    of the service (``ECGFMService.resolve_weights``) and of ``ecgfm download``."""
    weights = weights or WeightsSettings.from_env()
    return {kind: resolve_checkpoint(kind, weights=weights) for kind in KINDS}


def verify_sha256(
    kind: ModelKind, source: CheckpointSource, weights: WeightsSettings | None = None
) -> CheckpointSource:
    """``source`` when its file has the pinned sha256 or no hash is pinned, else :class:`ChecksumError`.

    The pin is ``ECGFM_<KIND>_SHA256`` when set, else :data:`HF_FILE_SHA256` for a Hub download.
    """
    weights = weights or WeightsSettings.from_env()
    expected, pinned_by = weights.sha256(kind), WeightsSettings.env_var(f"{kind}_sha256")
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


def _demo_checkpoint(kind: ModelKind, weights: WeightsSettings) -> CheckpointSource:
    from ecgfm.network.demo import write_demo_checkpoints

    directory = Path(weights.demo_dir).expanduser() / weights.demo_size
    path = directory / f"{kind}.pt"
    if not path.is_file():
        write_demo_checkpoints(directory, size=weights.demo_size)
    return CheckpointSource(str(path), "demo")


def download(revision: str | None = None, to_dir: str | None = None) -> dict[str, CheckpointSource]:
    """Both published checkpoints from the Hub, into its cache or into ``to_dir`` (``ecgfm download``), each
    checked against its sha256 pin when one is set; already present files are not fetched again."""
    weights = WeightsSettings.from_env()
    if revision:
        weights = replace(weights, hf_revision=revision)
    return {
        kind: verify_sha256(kind, _hub_checkpoint(kind, weights, to_dir), weights)
        for kind in ("pretrained", "finetuned")
    }


def _hub_checkpoint(kind: ModelKind, weights: WeightsSettings, local_dir: str | None = None) -> CheckpointSource:
    """The Hub file from the local cache (or ``local_dir``), else downloaded with a progress bar; fails within
    seconds, with one message, when it is neither there nor reachable (``hf_hub_download`` alone retries for half a
    minute)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    revision = weights.hf_revision
    filename = HF_FILENAMES[kind]
    try:
        path = hf_hub_download(
            repo_id=HF_REPO_ID, filename=filename, revision=revision, local_dir=local_dir, local_files_only=True
        )
    except LocalEntryNotFoundError:
        path = None
    except Exception as exc:  # a damaged cache, a bad revision name, ...
        raise _not_found(kind, revision, exc) from exc
    if path is None:
        unreachable = _hub_unreachable()
        if unreachable is not None:
            raise _not_found(kind, revision, unreachable) from unreachable
        try:
            path = hf_hub_download(repo_id=HF_REPO_ID, filename=filename, revision=revision, local_dir=local_dir)
        except Exception as exc:  # offline, auth, a missing revision or network errors all end here
            raise _not_found(kind, revision, exc) from exc
    expected_size = HF_FILE_SIZES.get(kind)
    if expected_size is not None and Path(path).stat().st_size != expected_size:
        raise WeightsNotFoundError(
            f"{path}: {Path(path).stat().st_size} bytes, but {HF_REPO_ID}/{filename} has {expected_size}: "
            "the download is truncated or corrupt; delete it and download again"
        )
    return CheckpointSource(path, "huggingface", HF_REPO_ID, revision, filename)


HUB_PROBE_TIMEOUT_S = 5.0


def _hub_unreachable() -> Exception | None:
    """None when the Hub answers at all (any status), else the connection error (one try, a few seconds)."""
    import httpx
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return ConnectionError("HF_HUB_OFFLINE is set")
    try:
        httpx.head(constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return exc
    return None


def _not_found(kind: ModelKind, revision: str, cause: Exception) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"could not get the {kind} ECG-FM weights ({HF_REPO_ID}/{HF_FILENAMES[kind]}@{revision}) from the Hugging "
        f"Face Hub or its local cache ({type(cause).__name__}). Set {WeightsSettings.env_var(f'{kind}_checkpoint')} "
        f"to a local .pt file (`ecgfm download` fetches both), or set {WeightsSettings.env_var('demo')}=1 to try "
        "the service with random demo weights."
    )
