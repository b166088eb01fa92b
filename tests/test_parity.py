"""The plain-PyTorch model reproduces the real fairseq-signals models (``shared/parity``) in fp32 on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecgfm.network.checkpoint import LoadedModel, load_checkpoint
from ecgfm.network.model import masked_mean_pool, time_mean
from tests.conftest import CKPT_DIR

OUTPUT_TOL = {"atol": 1e-5, "rtol": 1e-5}  # logits, probabilities, pooled embeddings, time-means
HIDDEN_TOL = {"atol": 1e-4, "rtol": 1e-4}  # per-time-step hidden states and intermediates
NAMINGS = ["legacy", "fsHEAD"]  # weight_g/weight_v and parametrizations.weight.original0/1


def _load(kind: str, naming: str) -> LoadedModel:
    suffix = "" if naming == "legacy" else "_fsHEAD"
    return load_checkpoint(CKPT_DIR / f"ecgfm_small_{kind}{suffix}.pt")


def _close(actual: torch.Tensor, expected: np.ndarray, tol: dict) -> None:
    torch.testing.assert_close(actual, torch.from_numpy(expected), **tol)


@pytest.fixture(scope="module", params=NAMINGS)
def finetuned(request) -> LoadedModel:
    return _load("finetuned", request.param)


@pytest.fixture(scope="module", params=NAMINGS)
def pretrained(request) -> LoadedModel:
    return _load("pretrained", request.param)


def _inputs(reference, padded: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    if padded:
        return torch.from_numpy(reference["x_padded"]), torch.from_numpy(reference["padding_mask_in"])
    return torch.from_numpy(reference["x"]), None


@torch.inference_mode()
def test_finetuned_logits_and_probabilities_match_fairseq(finetuned, reference):
    logits = finetuned.model(torch.from_numpy(reference["x"]))
    _close(logits, reference["ft_logits"], OUTPUT_TOL)
    _close(torch.sigmoid(logits), reference["ft_sigmoid"], OUTPUT_TOL)


@torch.inference_mode()
def test_finetuned_padded_logits_and_encoder_out_match_fairseq(finetuned, reference):
    source, mask = _inputs(reference, padded=True)
    _close(finetuned.model(source, mask), reference["ft_logits_padded"], OUTPUT_TOL)
    hidden, frame_mask = finetuned.model.encoder(source, mask)
    assert torch.equal(frame_mask, torch.from_numpy(reference["ft_padding_mask_out_padded"]))
    # fairseq zeroes padded frames of encoder_out in place before pooling.
    _close(hidden.masked_fill(frame_mask[..., None], 0.0), reference["ft_encoder_out_padded"], HIDDEN_TOL)


@torch.inference_mode()
def test_finetuned_encoder_out_and_pooled_embedding_match_fairseq(finetuned, reference):
    hidden, frame_mask = finetuned.model.encoder(torch.from_numpy(reference["x"]))
    assert frame_mask is None
    _close(hidden, reference["ft_encoder_out"], HIDDEN_TOL)
    _close(masked_mean_pool(hidden, frame_mask), reference["ft_pooled_emb"], OUTPUT_TOL)


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@torch.inference_mode()
def test_pretrained_hidden_states_match_fairseq(pretrained, reference, padded):
    source, mask = _inputs(reference, padded)
    hidden, frame_mask = pretrained.model(source, mask)
    suffix = "_padded" if padded else ""
    _close(hidden, reference[f"pt_x{suffix}"], HIDDEN_TOL)
    if padded:
        assert torch.equal(frame_mask, torch.from_numpy(reference["pt_padding_mask_out_padded"]))
        assert int((~frame_mask[0]).sum()) == 125  # 2000 valid samples -> 125 frames
    else:
        _close(time_mean(hidden, frame_mask), reference["pt_x_time_mean"], OUTPUT_TOL)
        _close(masked_mean_pool(hidden, frame_mask), reference["pt_x_nonzero_mean"], OUTPUT_TOL)


@pytest.mark.parametrize("prefix", ["ft", "pt"])
@torch.inference_mode()
def test_every_intermediate_matches_fairseq(prefix, reference):
    loaded = _load("finetuned" if prefix == "ft" else "pretrained", "legacy")
    encoder = loaded.model.encoder if prefix == "ft" else loaded.model
    captured: dict[str, torch.Tensor] = {}

    def keep(name, transform=lambda output: output):
        return lambda module, args, output: captured.__setitem__(name, transform(output))

    hooks = [
        encoder.feature_extractor.register_forward_hook(keep("conv_features_BCT")),
        encoder.feature_projection.register_forward_hook(keep("feat_layer_norm_BTC", lambda o: o[0])),
        encoder.feature_projection.register_forward_hook(keep("post_extract_proj_BTD", lambda o: o[1])),
        encoder.pos_conv.register_forward_hook(keep("conv_pos_out_BTD")),
        encoder.encoder.register_forward_pre_hook(
            lambda m, args: captured.__setitem__("transformer_input_BTD", args[0])
        ),
        encoder.encoder.layer_norm.register_forward_hook(keep("encoder_layer_norm_out_BTD")),
        *(layer.register_forward_hook(keep(f"layer{i}_out_BTD")) for i, layer in enumerate(encoder.encoder.layers)),
    ]
    try:
        encoder(torch.from_numpy(reference["x"]))
    finally:
        for hook in hooks:
            hook.remove()
    names = sorted(
        k[len(prefix) + 1 :] for k in reference if k.startswith(prefix + "_") and k.endswith(("BCT", "BTC", "BTD"))
    )
    assert set(names) <= set(captured), f"intermediates not captured: {set(names) - set(captured)}"
    for name in names:
        _close(captured[name], reference[f"{prefix}_{name}"], HIDDEN_TOL)


@torch.inference_mode()
def test_pretrained_features_before_projection_match_fairseq(pretrained, reference):
    features = pretrained.model.feature_extractor(torch.from_numpy(reference["x"])).transpose(1, 2)
    normalised, _ = pretrained.model.feature_projection(features)
    _close(normalised, reference["pt_features"], HIDDEN_TOL)


@torch.inference_mode()
def test_one_segment_at_a_time_equals_the_batch(finetuned, reference):
    batch = finetuned.model(torch.from_numpy(reference["x"]))
    singles = torch.cat([finetuned.model(torch.from_numpy(reference["x"][i : i + 1])) for i in range(3)])
    torch.testing.assert_close(singles, batch, **OUTPUT_TOL)
