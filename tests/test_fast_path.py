"""The fast inference path (``ecgfm.network.fast``) against the fairseq-signals reference outputs, on the CPU.

fp32 rearrangements (folded weight norm, FFT positional conv) keep the fp32 parity tolerances; bf16/fp16
transformers keep the fast path's documented tolerance (docs/performance.md): probabilities within 1e-2
absolute, embeddings and per-frame hidden states with cosine similarity >= 0.999.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch.nn.utils import parametrize

from ecgfm.inference import classify_segments, embed_segments, load_model
from ecgfm.network.checkpoint import load_checkpoint
from ecgfm.network.fast import (
    FFTPositionalEmbedding,
    HalfPrecisionTransformer,
    fold_weight_norm,
    host_to_device,
    optimize_for_inference,
    resolve_compile,
    resolve_pos_conv,
    resolve_precision,
)
from ecgfm.network.model import ECGFMClassifier, ECGFMEncoder, time_mean
from tests.conftest import FINETUNED_CKPT, PRETRAINED_CKPT

OUTPUT_TOL = {"atol": 1e-5, "rtol": 1e-5}  # fp32: logits, probabilities, time-means (as tests/test_parity.py)
HIDDEN_TOL = {"atol": 1e-4, "rtol": 1e-4}  # fp32: per-frame hidden states
FAST_PROBABILITY_ATOL = 1e-2  # half-precision transformer: probabilities, absolute
FAST_MIN_COSINE = 0.999  # half-precision transformer: embeddings and hidden states
HALF = ["bf16", "fp16"]


def _finetuned(**options) -> ECGFMClassifier:
    return optimize_for_inference(load_checkpoint(FINETUNED_CKPT).model, **options)


def _pretrained(**options) -> ECGFMEncoder:
    return optimize_for_inference(load_checkpoint(PRETRAINED_CKPT).model, **options)


def _min_cosine(actual: torch.Tensor, expected: np.ndarray) -> float:
    """Smallest cosine similarity between matching vectors (the last dim) of ``actual`` and ``expected``."""
    dim = actual.shape[-1]
    return float(F.cosine_similarity(actual.reshape(-1, dim), torch.from_numpy(expected).reshape(-1, dim)).min())


def test_folding_replaces_the_weight_norm_by_the_weight_it_computes():
    model = load_checkpoint(FINETUNED_CKPT).model
    normed_weight = model.encoder.pos_conv.conv.weight.detach().clone()
    fold_weight_norm(model)
    conv = model.encoder.pos_conv.conv
    assert not parametrize.is_parametrized(conv, "weight")
    assert torch.equal(conv.weight, normed_weight)


@torch.inference_mode()
def test_folded_fp32_logits_match_fairseq(reference):
    logits = _finetuned(precision="fp32")(torch.from_numpy(reference["x"]))
    torch.testing.assert_close(logits, torch.from_numpy(reference["ft_logits"]), **OUTPUT_TOL)


@torch.inference_mode()
def test_fft_positional_conv_matches_the_grouped_conv(reference):
    model = load_checkpoint(PRETRAINED_CKPT).model
    fold_weight_norm(model)
    x = torch.from_numpy(reference["pt_post_extract_proj_BTD"])
    fft = FFTPositionalEmbedding(model.pos_conv)
    torch.testing.assert_close(fft(x), model.pos_conv(x), **HIDDEN_TOL)
    torch.testing.assert_close(fft(x), torch.from_numpy(reference["pt_conv_pos_out_BTD"]), **HIDDEN_TOL)


@torch.inference_mode()
def test_fft_fp32_padded_logits_match_fairseq(reference):
    model = _finetuned(precision="fp32", pos_conv="fft")
    logits = model(torch.from_numpy(reference["x_padded"]), torch.from_numpy(reference["padding_mask_in"]))
    torch.testing.assert_close(logits, torch.from_numpy(reference["ft_logits_padded"]), **OUTPUT_TOL)


@torch.inference_mode()
def test_fft_fp32_hidden_states_match_fairseq(reference):
    hidden, _ = _pretrained(precision="fp32", pos_conv="fft")(torch.from_numpy(reference["x"]))
    torch.testing.assert_close(hidden, torch.from_numpy(reference["pt_x"]), **HIDDEN_TOL)


@pytest.mark.parametrize("precision", HALF)
@torch.inference_mode()
def test_half_precision_probabilities_within_fast_tolerance(reference, precision):
    probabilities = torch.sigmoid(_finetuned(precision=precision)(torch.from_numpy(reference["x"])))
    assert probabilities.dtype == torch.float32
    error = (probabilities - torch.from_numpy(reference["ft_sigmoid"])).abs().max()
    assert float(error) <= FAST_PROBABILITY_ATOL


@pytest.mark.parametrize("precision", HALF)
@torch.inference_mode()
def test_half_precision_padded_probabilities_within_fast_tolerance(reference, precision):
    model = _finetuned(precision=precision, pos_conv="fft")
    logits = model(torch.from_numpy(reference["x_padded"]), torch.from_numpy(reference["padding_mask_in"]))
    error = (torch.sigmoid(logits) - torch.sigmoid(torch.from_numpy(reference["ft_logits_padded"]))).abs().max()
    assert float(error) <= FAST_PROBABILITY_ATOL


@pytest.mark.parametrize("precision", HALF)
@torch.inference_mode()
def test_half_precision_embeddings_and_hidden_states_within_fast_tolerance(reference, precision):
    hidden, frame_mask = _pretrained(precision=precision)(torch.from_numpy(reference["x"]))
    assert hidden.dtype == torch.float32
    assert _min_cosine(time_mean(hidden, frame_mask), reference["pt_x_time_mean"]) >= FAST_MIN_COSINE
    assert _min_cosine(hidden, reference["pt_x"]) >= FAST_MIN_COSINE


def test_half_precision_keeps_conv_extractor_positional_conv_and_head_in_fp32():
    model = _finetuned(precision="bf16")
    assert isinstance(model.encoder.encoder, HalfPrecisionTransformer)
    assert all(p.dtype == torch.bfloat16 for p in model.encoder.encoder.parameters())
    fp32_parts = [model.encoder.feature_extractor, model.encoder.feature_projection, model.encoder.pos_conv]
    assert all(p.dtype == torch.float32 for part in fp32_parts for p in part.parameters())
    assert model.classifier.weight.dtype == torch.float32


def test_load_model_defaults_to_the_unchanged_fp32_model(monkeypatch):
    for name in ("ECGFM_PRECISION", "ECGFM_POS_CONV", "ECGFM_COMPILE"):
        monkeypatch.delenv(name, raising=False)
    handle = load_model("finetuned", str(FINETUNED_CKPT), device="cpu")
    assert handle.runtime() == {"device": "cpu", "precision": "fp32", "pos_conv": "conv", "compiled": False,
                                "variant": "fp32", "self_check": None}  # fmt: skip
    assert parametrize.is_parametrized(handle.loaded.model.encoder.pos_conv.conv, "weight")


def test_load_model_reads_the_fft_positional_conv_from_the_environment(monkeypatch, reference):
    monkeypatch.delenv("ECGFM_PRECISION", raising=False)
    monkeypatch.setenv("ECGFM_POS_CONV", "fft")
    handle = load_model("finetuned", str(FINETUNED_CKPT), device="cpu")
    assert handle.runtime()["pos_conv"] == "fft" and handle.precision == "fp32"
    assert handle.runtime()["variant"] == "fp32+fft" and handle.self_check.passed  # a variant: self-checked
    assert handle.self_check.max_probability_difference < 1e-5  # the same linear map
    assert isinstance(handle.loaded.model.encoder.pos_conv, FFTPositionalEmbedding)
    np.testing.assert_allclose(classify_segments(handle, reference["x"]), reference["ft_sigmoid"], **OUTPUT_TOL)


@pytest.mark.parametrize(("value", "expected"), [("", False), ("0", False), ("no", False), ("1", True), ("TRUE", True)])
def test_compile_flag_is_read_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("ECGFM_COMPILE", value)
    assert resolve_compile(None) is expected
    assert resolve_compile(not expected) is (not expected)  # an explicit argument wins


@pytest.mark.parametrize(
    ("resolve", "name", "value"),
    [(resolve_pos_conv, "ECGFM_POS_CONV", "fftw"), (resolve_compile, "ECGFM_COMPILE", "2")],
)
def test_unknown_fast_path_settings_in_the_environment_are_refused(monkeypatch, resolve, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name.removeprefix("ECGFM_").lower() + "|" + name):
        resolve(None)


def test_load_model_bf16_classifies_within_fast_tolerance(reference):
    handle = load_model("finetuned", str(FINETUNED_CKPT), device="cpu", precision="bf16")
    probabilities = classify_segments(handle, reference["x"])
    assert handle.precision == "bf16"
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, reference["ft_sigmoid"], atol=FAST_PROBABILITY_ATOL, rtol=0)


def test_load_model_reads_the_precision_from_the_environment(monkeypatch, reference):
    monkeypatch.setenv("ECGFM_PRECISION", "fp16")
    handle = load_model("pretrained", str(PRETRAINED_CKPT), device="cpu")
    embeddings = embed_segments(handle, reference["x"])
    assert handle.precision == "fp16"
    assert _min_cosine(torch.from_numpy(embeddings), reference["pt_x_time_mean"]) >= FAST_MIN_COSINE


@pytest.mark.parametrize(("device", "expected"), [("cpu", "fp32"), ("cuda", "bf16")])
def test_auto_precision_is_bf16_on_cuda_and_fp32_elsewhere(device, expected):
    assert resolve_precision("auto", torch.device(device)) == expected


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("int4", torch.device("cpu"))


def test_host_to_device_keeps_values_on_cpu():
    array = np.arange(24, dtype=np.float32).reshape(2, 12)
    assert torch.equal(host_to_device(array, torch.device("cpu")), torch.from_numpy(array))
