"""Loading official checkpoints: kinds, both weight-norm namings, strictness, clear errors, full-size counts."""

from __future__ import annotations

import json

import pytest
import torch

from ecgfm.network.checkpoint import (
    CheckpointError,
    config_from_cfg,
    load_checkpoint,
    parse_conv_layers,
    pretraining_head_parameters,
    to_fairseq_state_dict,
)
from ecgfm.network.demo import write_demo_checkpoints
from ecgfm.network.model import build_model
from tests.conftest import CKPT_DIR, FINETUNED_CKPT, PARITY_DIR, PRETRAINED_CKPT

PRETRAINING_ONLY = ("mask_emb", "quantizer", "project_q", "final_proj")


def _raw(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _save_modified(tmp_path, source, change) -> str:
    checkpoint = _raw(source)
    change(checkpoint)
    path = tmp_path / "modified.pt"
    torch.save(checkpoint, path)
    return str(path)


@pytest.mark.parametrize(
    ("filename", "kind", "model_type"),
    [
        ("ecgfm_small_pretrained.pt", "pretrained", "wav2vec2_cmsc"),
        ("ecgfm_small_finetuned.pt", "finetuned", "ecg_transformer_classifier"),
        ("ecgfm_small_pretrained_fsHEAD.pt", "pretrained", "wav2vec2_cmsc"),
        ("ecgfm_small_finetuned_fsHEAD.pt", "finetuned", "ecg_transformer_classifier"),
    ],
)
def test_kind_and_architecture_come_from_the_checkpoint_cfg(filename, kind, model_type):
    loaded = load_checkpoint(CKPT_DIR / filename)
    cfg_model = _raw(CKPT_DIR / filename)["cfg"]["model"]
    assert (loaded.kind, loaded.model_name, loaded.demo) == (kind, model_type, False)
    assert loaded.config.embed_dim == cfg_model["encoder_embed_dim"]
    assert loaded.config.num_layers == cfg_model["encoder_layers"]
    assert loaded.config.conv_pos == cfg_model["conv_pos"]
    assert not loaded.model.training


@pytest.mark.parametrize("kind", ["pretrained", "finetuned"])
def test_both_weight_norm_namings_load_the_same_weights(kind):
    legacy = load_checkpoint(CKPT_DIR / f"ecgfm_small_{kind}.pt").model.state_dict()
    head = load_checkpoint(CKPT_DIR / f"ecgfm_small_{kind}_fsHEAD.pt").model.state_dict()
    assert legacy.keys() == head.keys()
    assert all(torch.equal(legacy[k], head[k]) for k in legacy)


@pytest.mark.parametrize("path", [PRETRAINED_CKPT, FINETUNED_CKPT])
def test_weights_export_back_to_the_official_names_unchanged(path):
    loaded = load_checkpoint(path)
    original = {k: v for k, v in _raw(path)["model"].items() if not k.startswith(PRETRAINING_ONLY)}
    exported = to_fairseq_state_dict(loaded.model)
    assert exported.keys() == original.keys()
    assert all(torch.equal(exported[k], original[k]) for k in original)


def test_a_checkpoint_of_the_wrong_kind_is_refused_naming_the_file():
    with pytest.raises(CheckpointError, match=r"ecgfm_small_pretrained\.pt.*pretrained checkpoint.*finetuned"):
        load_checkpoint(PRETRAINED_CKPT, expected_kind="finetuned")


def test_an_unknown_weight_key_is_refused_naming_the_key(tmp_path):
    path = _save_modified(
        tmp_path, FINETUNED_CKPT, lambda c: c["model"].__setitem__("encoder.extra.weight", torch.zeros(1))
    )
    with pytest.raises(CheckpointError, match=r"modified\.pt.*'encoder\.extra\.weight'"):
        load_checkpoint(path)


def test_a_missing_weight_is_refused(tmp_path):
    path = _save_modified(tmp_path, FINETUNED_CKPT, lambda c: c["model"].pop("proj.bias"))
    with pytest.raises(CheckpointError, match=r"missing weights.*classifier\.bias"):
        load_checkpoint(path)


def test_a_weight_with_the_wrong_shape_is_refused(tmp_path):
    path = _save_modified(
        tmp_path, FINETUNED_CKPT, lambda c: c["cfg"]["model"].__setitem__("encoder_ffn_embed_dim", 256)
    )
    with pytest.raises(CheckpointError, match=r"shape of .*fc1\.weight"):
        load_checkpoint(path)


def test_an_unknown_model_type_is_refused(tmp_path):
    path = _save_modified(tmp_path, PRETRAINED_CKPT, lambda c: c["cfg"]["model"].__setitem__("_name", "resnet"))
    with pytest.raises(CheckpointError, match=r"'resnet' is not an ECG-FM model"):
        load_checkpoint(path)


def test_a_pretrained_model_that_quantizes_its_input_is_refused_not_approximated(tmp_path):
    path = _save_modified(tmp_path, PRETRAINED_CKPT, lambda c: c["cfg"]["model"].__setitem__("quantize_input", True))
    with pytest.raises(CheckpointError, match=r"quantize_input=True is not supported"):
        load_checkpoint(path)


def test_a_truncated_file_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "truncated.pt"
    path.write_bytes(PRETRAINED_CKPT.read_bytes()[:200_000])
    with pytest.raises(CheckpointError, match=r"truncated\.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(path)


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match=r"weights\.pt: not a fairseq-signals checkpoint"):
        load_checkpoint(path)


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match=r"nothere\.pt: checkpoint file not found"):
        load_checkpoint(tmp_path / "nothere.pt")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("[(256, 2, 2)] * 4", ((256, 2, 2),) * 4),
        ("[(512, 10, 5)] + [(512, 3, 2)] * 2", ((512, 10, 5), (512, 3, 2), (512, 3, 2))),
    ],
)
def test_conv_layer_specs_are_parsed_without_eval(spec, expected):
    assert parse_conv_layers(spec) == expected


@pytest.mark.parametrize("spec", ["__import__('os').getcwd()", "[(256, 2)] * 4", "[]", "[(256, 2, -2)]"])
def test_invalid_conv_layer_specs_are_refused(spec):
    with pytest.raises(ValueError):
        parse_conv_layers(spec)


def test_full_size_models_have_the_published_parameter_counts():
    configs = json.loads((PARITY_DIR / "configs_full.json").read_text())
    pretrained_cfg = next(v for k, v in configs.items() if k.startswith("full_pretrained"))
    finetuned_cfg = configs["full_finetuned_cfg_model"]
    encoder = build_model(config_from_cfg(pretrained_cfg, "pretrained"))
    classifier = build_model(config_from_cfg(finetuned_cfg, "finetuned"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(classifier) == 90_386_321
    assert count(encoder) + pretraining_head_parameters(pretrained_cfg) == 90_883_072


def test_pretraining_head_count_equals_the_dropped_tensors_of_a_real_checkpoint():
    raw = _raw(PRETRAINED_CKPT)
    dropped = sum(v.numel() for k, v in raw["model"].items() if k.startswith(PRETRAINING_ONLY))
    assert pretraining_head_parameters(raw["cfg"]["model"]) == dropped


def test_demo_checkpoints_load_with_the_same_loader_and_say_demo(tmp_path):
    pretrained_path, finetuned_path = write_demo_checkpoints(tmp_path, size="small")
    pretrained, finetuned = load_checkpoint(pretrained_path), load_checkpoint(finetuned_path)
    assert (pretrained.kind, pretrained.demo) == ("pretrained", True)
    assert (finetuned.kind, finetuned.demo, finetuned.config.num_labels) == ("finetuned", True, 17)
    # The finetuned demo encoder is the pretrained demo encoder, as for the published pair.
    encoder_state = finetuned.model.encoder.state_dict()
    assert all(torch.equal(v, encoder_state[k]) for k, v in pretrained.model.state_dict().items())
    assert "cfg" in _raw(pretrained_path) and _raw(pretrained_path)["cfg"]["model"]["_name"] == "wav2vec2_cmsc"


def _state(loaded) -> dict:
    return loaded.model.state_dict()


@pytest.mark.parametrize("path", [PRETRAINED_CKPT, FINETUNED_CKPT])
def test_a_stripped_copy_is_written_once_and_loads_the_same_model(tmp_path, path, monkeypatch):
    import ecgfm.network.checkpoint as checkpoint_module

    first = load_checkpoint(path, cache_dir=tmp_path)
    (cached,) = tmp_path.glob("*.safetensors")
    assert cached.stem == checkpoint_module.file_sha256(path)
    assert cached.stat().st_size < path.stat().st_size  # no optimizer state, no pretraining heads

    def no_original(_path):
        raise AssertionError("the original .pt must not be read when its stripped copy exists")

    monkeypatch.setattr(checkpoint_module, "read_checkpoint", no_original)
    second = load_checkpoint(path, cache_dir=tmp_path)
    assert (second.kind, second.model_name, second.config) == (first.kind, first.model_name, first.config)
    assert all(torch.equal(v, _state(second)[k]) for k, v in _state(first).items())


def test_a_corrupt_stripped_copy_is_rebuilt_from_the_original(tmp_path):
    load_checkpoint(FINETUNED_CKPT, cache_dir=tmp_path)
    (cached,) = tmp_path.glob("*.safetensors")
    cached.write_bytes(b"not safetensors")
    loaded = load_checkpoint(FINETUNED_CKPT, cache_dir=tmp_path)
    reference = load_checkpoint(FINETUNED_CKPT)
    assert all(torch.equal(v, _state(loaded)[k]) for k, v in _state(reference).items())
    assert cached.stat().st_size > 1000  # rewritten


def test_the_demo_flag_survives_the_stripped_copy(tmp_path):
    _, finetuned_path = write_demo_checkpoints(tmp_path / "demo", size="small")
    load_checkpoint(finetuned_path, cache_dir=tmp_path / "cache")
    assert load_checkpoint(finetuned_path, cache_dir=tmp_path / "cache").demo is True
    assert load_checkpoint(FINETUNED_CKPT, cache_dir=tmp_path / "cache").demo is False


def test_load_model_uses_the_weights_cache_folder_from_the_environment(tmp_path, monkeypatch):
    from ecgfm.inference import load_model

    monkeypatch.setenv("ECGFM_WEIGHTS_CACHE_DIR", str(tmp_path))
    handle = load_model("finetuned", str(FINETUNED_CKPT), device="cpu")
    assert (tmp_path / f"{handle.sha256}.safetensors").is_file()
