"""Where the weights come from (``ecgfm.network.hub``): sha256 pins of local files and Hub downloads, hashed once."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from ecgfm.network import hub
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
    from ecgfm import inference
    from ecgfm.network import checkpoint

    digest = hashlib.sha256(FINETUNED_CKPT.read_bytes()).hexdigest()
    monkeypatch.setenv("ECGFM_FINETUNED_SHA256", digest)
    calls = []
    real_sha256 = checkpoint.file_sha256
    counting = lambda path: calls.append(path) or real_sha256(path)  # noqa: E731
    monkeypatch.setattr(hub, "file_sha256", counting)
    monkeypatch.setattr(inference, "file_sha256", counting)
    handle = inference.load_model("finetuned", str(FINETUNED_CKPT), device="cpu")
    assert handle.sha256 == digest and len(calls) == 1


COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Hugging Face cache (the layout huggingface_hub writes) holding the parity checkpoints under the published
    file names at revision ``main``, and no network: what a site has after ``ecgfm download``."""
    from tests.conftest import PRETRAINED_CKPT

    home = tmp_path / "hf"
    repo = home / "hub" / "models--wanglab--ecg-fm"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for kind, source in (("pretrained", PRETRAINED_CKPT), ("finetuned", FINETUNED_CKPT)):
        (snapshot / hub.HF_FILENAMES[kind]).write_bytes(source.read_bytes())
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setitem(hub.HF_FILE_SIZES, "pretrained", PRETRAINED_CKPT.stat().st_size)
    for name in ("ECGFM_PRETRAINED_CHECKPOINT", "ECGFM_FINETUNED_CHECKPOINT", "ECGFM_DEMO", "ECGFM_FINETUNED_SHA256"):
        monkeypatch.delenv(name, raising=False)
    return snapshot


def test_download_finds_both_files_in_the_hub_cache_without_the_network(hub_cache: Path) -> None:
    sources = hub.download()
    assert {kind: Path(source.path) for kind, source in sources.items()} == {
        kind: hub_cache / name for kind, name in hub.HF_FILENAMES.items()
    }
    assert {source.origin for source in sources.values()} == {"huggingface"}
    assert sources["finetuned"].revision == "main" and sources["finetuned"].repo_id == "wanglab/ecg-fm"


def test_download_checks_the_pinned_sha256(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECGFM_FINETUNED_SHA256", "0" * 64)
    with pytest.raises(hub.ChecksumError, match=r"ECGFM_FINETUNED_SHA256 expects 0{64}"):
        hub.download()


def test_a_truncated_hub_file_is_refused_by_its_published_size(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(hub.HF_FILE_SIZES, "pretrained", 1_090_825_421)
    with pytest.raises(hub.WeightsNotFoundError, match="truncated or corrupt; delete it and download again"):
        hub.download()


def test_an_unreachable_hub_fails_in_seconds_naming_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    started = time.monotonic()
    with pytest.raises(hub.WeightsNotFoundError, match=r"Set ECGFM_PRETRAINED_CHECKPOINT to a local \.pt file"):
        hub.download(to_dir=str(tmp_path / "weights"))
    assert time.monotonic() - started < hub.HUB_PROBE_TIMEOUT_S + 5


def test_download_command_prints_the_variables_to_set(hub_cache: Path, capsys: pytest.CaptureFixture) -> None:
    from ecgfm.cli import main

    assert main(["download"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [
        f"export ECGFM_PRETRAINED_CHECKPOINT={hub_cache / hub.HF_FILENAMES['pretrained']}",
        f"export ECGFM_FINETUNED_CHECKPOINT={hub_cache / hub.HF_FILENAMES['finetuned']}",
    ]
