"""Where the weights come from (``ecgfm.hub``): sha256 pins of local files and Hub downloads, hashed once."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from ecgfm import hub
from tests.conftest import FINETUNED_CKPT


@pytest.fixture()
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "weights.pt"
    path.write_bytes(b"pretend weights")
    return path


def test_local_checkpoint_with_the_pinned_sha256_resolves(weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECGFM_FINETUNED_CHECKPOINT", str(weights))
    monkeypatch.setenv("ECGFM_FINETUNED_SHA256", hashlib.sha256(weights.read_bytes()).hexdigest().upper())
    assert hub.resolve_checkpoint("finetuned").path == str(weights.resolve())


def test_local_checkpoint_with_another_sha256_fails_naming_file_and_pin(
    weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECGFM_FINETUNED_CHECKPOINT", str(weights))
    monkeypatch.setenv("ECGFM_FINETUNED_SHA256", "0" * 64)
    with pytest.raises(hub.ChecksumError, match=r"weights\.pt: sha256 is .* ECGFM_FINETUNED_SHA256 expects 0{64}"):
        hub.resolve_checkpoint("finetuned")


def test_hub_download_is_checked_against_the_known_hash_table(weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ECGFM_FINETUNED_CHECKPOINT", raising=False)
    monkeypatch.delenv("ECGFM_FINETUNED_SHA256", raising=False)
    monkeypatch.delenv("ECGFM_DEMO", raising=False)
    downloaded = hub.CheckpointSource(str(weights), "huggingface", hub.HF_REPO_ID, "abc123", "x.pt")
    monkeypatch.setattr(hub, "_hub_checkpoint", lambda kind, weights: downloaded)
    monkeypatch.setitem(hub.HF_FILE_SHA256, "finetuned", "f" * 64)
    with pytest.raises(hub.ChecksumError, match="truncated, corrupt or another version"):
        hub.resolve_checkpoint("finetuned")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    monkeypatch.setitem(hub.HF_FILE_SHA256, "finetuned", digest)
    assert hub.resolve_checkpoint("finetuned") == dataclasses.replace(downloaded, sha256=digest)


def test_real_checkpoint_without_a_pin_is_not_hashed_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECGFM_FINETUNED_CHECKPOINT", str(FINETUNED_CKPT))
    monkeypatch.delenv("ECGFM_FINETUNED_SHA256", raising=False)
    monkeypatch.setattr(hub, "file_sha256", lambda path: pytest.fail("hashed without a pin"))
    assert hub.resolve_checkpoint("finetuned").origin == "local"


def test_a_pinned_checkpoint_is_hashed_once_from_resolution_to_the_loaded_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ecgfm import checkpoint, inference

    digest = hashlib.sha256(FINETUNED_CKPT.read_bytes()).hexdigest()
    monkeypatch.setenv("ECGFM_FINETUNED_SHA256", digest)
    calls = []
    real_sha256 = checkpoint.file_sha256
    counting = lambda path: calls.append(path) or real_sha256(path)  # noqa: E731
    monkeypatch.setattr(hub, "file_sha256", counting)
    monkeypatch.setattr(inference, "file_sha256", counting)
    handle = inference.load_model("finetuned", str(FINETUNED_CKPT), device="cpu")
    assert handle.sha256 == digest and len(calls) == 1
