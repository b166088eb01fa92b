"""Saliency: the attention weights exactly as fairseq-signals returns them (``shared/parity/saliency_reference.npz``),
their quickstart reduction, and how they reach ``ecgfm predict --saliency`` and the typed results."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from ecgfm.cli import main as ecgfm_main
from ecgfm.inference import ModelHandle, load_model
from ecgfm.network.checkpoint import LoadedModel, load_checkpoint
from ecgfm.network.model import attention_max
from ecgfm.records.preprocess import preprocess
from ecgfm.results.outputs import ClinicalOutput, Saliency
from tests.conftest import CKPT_DIR, FINETUNED_CKPT, PARITY_DIR, PRETRAINED_CKPT

SALIENCY_TOL = {"atol": 1e-6, "rtol": 1e-5}  # the README's tolerance for saliency and attn_max
OUTPUT_TOL = {"atol": 1e-5, "rtol": 1e-5}
CASES = [(kind, padded) for kind in ("ft", "pt") for padded in (False, True)]
PADDED_LENGTHS = np.array([2000, 2500, 2500])  # padding_mask_in: row 0 padded from sample 2000


@pytest.fixture(scope="module")
def saliency_reference() -> dict[str, np.ndarray]:
    with np.load(PARITY_DIR / "saliency_reference.npz") as npz:
        return {key: npz[key] for key in npz.files}


def _model(kind: str, naming: str) -> LoadedModel:
    name = "finetuned" if kind == "ft" else "pretrained"
    return load_checkpoint(CKPT_DIR / f"ecgfm_small_{name}{'' if naming == 'legacy' else '_fsHEAD'}.pt")


def _key(kind: str, padded: bool, what: str) -> str:
    return f"{kind}_{'padded_' if padded else ''}{what}"


def _weights(loaded: LoadedModel, reference: dict, padded: bool) -> torch.Tensor:
    source = torch.from_numpy(reference["x_padded" if padded else "x"])
    mask = torch.from_numpy(reference["padding_mask_in"]) if padded else None
    with torch.inference_mode():
        return loaded.model(source, mask, need_weights=True)[-1]


@pytest.fixture(scope="module")
def finetuned() -> ModelHandle:
    return load_model("finetuned", str(FINETUNED_CKPT), device="cpu")


@pytest.fixture(scope="module")
def pretrained() -> ModelHandle:
    return load_model("pretrained", str(PRETRAINED_CKPT), device="cpu")


@pytest.mark.parametrize("naming", ["legacy", "fsHEAD"])
@pytest.mark.parametrize(("kind", "padded"), CASES, ids=[f"{k}-{'padded' if p else 'full'}" for k, p in CASES])
def test_attention_weights_equal_fairseq_signals_saliency(saliency_reference, kind, padded, naming):
    weights = _weights(_model(kind, naming), saliency_reference, padded)
    expected = saliency_reference[_key(kind, padded, "saliency_BLTT")]
    assert weights.shape == expected.shape == (3, 2, 156, 156)
    torch.testing.assert_close(weights, torch.from_numpy(expected), **SALIENCY_TOL)


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_the_quickstart_reduction_equals_fairseq_attn_max(saliency_reference, padded):
    weights = _weights(_model("ft", "legacy"), saliency_reference, padded)
    expected = torch.from_numpy(saliency_reference[_key("ft", padded, "attn_max_BT")])
    torch.testing.assert_close(attention_max(weights), expected, **SALIENCY_TOL)
    # the plausible mistakes the README lists are far off: max over queries, the first layer
    assert not torch.allclose(weights[:, -1].amax(dim=1), expected, **SALIENCY_TOL)
    assert not torch.allclose(weights[:, 0].amax(dim=-1), expected, **SALIENCY_TOL)


def test_padded_keys_get_zero_weight_and_rows_sum_to_one(saliency_reference):
    weights = _weights(_model("ft", "legacy"), saliency_reference, padded=True)
    assert torch.all(weights[0, :, :, 125:] == 0)  # row 0: 125 valid frames
    assert torch.all(weights[0, :, 125:, :125].sum(-1) > 0.99)  # padded query rows are kept, as in fairseq
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, 156), atol=1e-6, rtol=0)


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_logits_with_weights_requested_equal_fairseq_with_saliency_on(saliency_reference, padded):
    loaded = _model("ft", "legacy")
    source = torch.from_numpy(saliency_reference["x_padded" if padded else "x"])
    mask = torch.from_numpy(saliency_reference["padding_mask_in"]) if padded else None
    with torch.inference_mode():
        logits, _ = loaded.model(source, mask, need_weights=True)
        default = loaded.model(source, mask)
    for actual, name in ((logits, "logits_saliency_on"), (default, "logits_saliency_off")):
        torch.testing.assert_close(actual, torch.from_numpy(saliency_reference[_key("ft", padded, name)]), **OUTPUT_TOL)


def test_the_default_forward_keeps_the_fused_kernel_weights_use_an_explicit_softmax(saliency_reference, monkeypatch):
    loaded = _model("ft", "legacy")
    calls = []
    fused = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or fused(*a, **k))
    source = torch.from_numpy(saliency_reference["x"][:1])
    with torch.inference_mode():
        loaded.model(source)
        assert len(calls) == 2  # one per layer
        loaded.model(source, need_weights=True)
        assert len(calls) == 2  # not called when weights are asked for


def test_run_with_saliency_goes_through_the_lengths_path(finetuned, pretrained, saliency_reference):
    """Padding as lengths (the service's wire format) gives fairseq's padded-mask answer, for both models."""
    x, lengths = saliency_reference["x_padded"], PADDED_LENGTHS
    probabilities, reduced = finetuned.run_with_saliency(x, lengths, batch_size=2)
    np.testing.assert_allclose(reduced, saliency_reference["ft_padded_attn_max_BT"], **SALIENCY_TOL)
    expected = 1 / (1 + np.exp(-saliency_reference["ft_padded_logits_saliency_on"].astype(np.float64)))
    np.testing.assert_allclose(probabilities, expected, **OUTPUT_TOL)
    np.testing.assert_allclose(probabilities, finetuned.run(x, lengths), atol=1e-6)
    embeddings, reduced = pretrained.run_with_saliency(x, lengths)
    np.testing.assert_allclose(
        reduced, saliency_reference["pt_padded_saliency_BLTT"][:, -1].max(axis=2), **SALIENCY_TOL
    )
    np.testing.assert_allclose(embeddings, pretrained.run(x, lengths), atol=1e-5)


def test_half_precision_saliency_stays_close_to_fp32(saliency_reference):
    fast = load_model("finetuned", str(FINETUNED_CKPT), device="cpu", precision="bf16", pos_conv="fft")
    _, reduced = fast.run_with_saliency(saliency_reference["x"])
    assert reduced.dtype == np.float32
    np.testing.assert_allclose(reduced, saliency_reference["ft_attn_max_BT"], atol=2e-3)


def test_saliency_is_placed_on_the_record_time_axis():
    saliency = Saliency.from_segments(np.full((3, 156), 0.5, dtype=np.float32))
    assert saliency.step_s == pytest.approx(0.032)
    assert saliency.segment_start_s == [0.0, 5.0, 10.0]
    assert [len(row) for row in saliency.values] == [156, 156, 156]


def test_a_result_leaves_saliency_out_unless_it_was_asked_for(finetuned):
    prep = preprocess(np.random.default_rng(0).standard_normal((12, 5000)), 500)
    checkpoint = finetuned.checkpoint().public()
    probabilities, reduced = finetuned.run_with_saliency(prep.segments)
    plain = ClinicalOutput.from_segments(probabilities, prep, checkpoint).to_json()
    asked = ClinicalOutput.from_segments(probabilities, prep, checkpoint, saliency=reduced).to_json()
    assert "saliency" not in plain
    assert {k: v for k, v in asked.items() if k != "saliency"} == plain
    assert np.allclose(asked["saliency"]["values"], reduced)


def test_ecgfm_predict_saliency_matches_fairseq_per_segment(saliency_reference, tmp_path):
    """Two copies of the reference's standardised pseudo-ECG: preprocessing leaves them as they are, so each
    segment's saliency must be fairseq's reduction for that input, in the clinical and in the features body."""
    segment = saliency_reference["x"][2].astype(np.float64)
    record = tmp_path / "pseudo.json"
    record.write_text(json.dumps({"signal": np.concatenate([segment, segment], axis=1).tolist(), "fs": 500}))
    out = tmp_path / "out.jsonl"
    argv = ["predict", str(record), "--pretrained", str(PRETRAINED_CKPT), "--finetuned", str(FINETUNED_CKPT)]
    assert ecgfm_main([*argv, "--device", "cpu", "--saliency", "-o", str(out)]) == 0
    result = json.loads(out.read_text())
    expected = {
        "clinical": saliency_reference["ft_attn_max_BT"][2],
        "features": saliency_reference["pt_saliency_BLTT"][2, -1].max(axis=1),
    }
    for body, reduction in expected.items():
        saliency = result[body]["saliency"]
        assert saliency["segment_start_s"] == [0.0, 5.0] and saliency["step_s"] == pytest.approx(0.032)
        np.testing.assert_allclose(np.array(saliency["values"]), np.stack([reduction, reduction]), **SALIENCY_TOL)
    assert ecgfm_main([*argv, "--device", "cpu", "-o", str(out)]) == 0
    assert "saliency" not in json.loads(out.read_text())["clinical"]


def test_the_report_shades_each_lead_by_saliency_scaled_over_the_whole_record(finetuned, tmp_path):
    from ecgfm.inference import Predictor
    from ecgfm.records.readers import read_record
    from interpreter.findings import interpret, load_config
    from interpreter.report import SALIENCY_NOTE, plot_ecg_png, saliency_steps, write_reports
    from tests.conftest import DATA_DIR, TWELVE_LEAD_RECORDS

    record = read_record(DATA_DIR / TWELVE_LEAD_RECORDS[0])
    clinical = Predictor(finetuned=finetuned).predict(record, saliency=True)["clinical"]
    saliency = clinical["saliency"]
    edges, values, low, high = saliency_steps(saliency, clinical["duration_s"])
    everything = np.concatenate(saliency["values"])
    assert (low, high) == (everything.min(), everything.max())  # one scale for the record, not per segment
    assert len(values) == 156 * clinical["n_segments"] and edges[-1] <= clinical["duration_s"]
    short = saliency_steps({**saliency, "values": saliency["values"][:1], "segment_start_s": [0.0]}, 4.0)
    assert len(short[1]) == 125  # the padded steps after a 4 s record's end are not drawn
    plain = plot_ecg_png(record.signal, record.fs, record.lead_names)
    assert plot_ecg_png(record.signal, record.fs, record.lead_names, saliency=saliency) != plain
    interp = interpret(clinical["probabilities"], None, load_config(None), record=record.name)
    html = write_reports(interp, tmp_path, record, saliency=saliency)["html"].read_text()
    assert SALIENCY_NOTE.split(":")[0] in html and "attention, not causation" in html
    assert "saliency-note" not in write_reports(interp, tmp_path / "plain", record)["html"].read_text()
