"""int8 (``ecgfm.network.quantize``) and the self-check of every variant against fp32 (``ecgfm.precision``), on the
parity checkpoints and real records: passes and answers within the bound on held-out records; a checkpoint made so
that int8 cannot stay within it is refused by ``load_model``, ``ecgfm predict --precision int8`` and
``ecgfm check-precision``."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ecgfm.inference import load_model
from ecgfm.network.quantize import quantized_linear_count
from ecgfm.precision import (
    COSINE_BOUND,
    PROBABILITY_BOUND,
    SELF_CHECK_RECORDS,
    PrecisionCheckError,
    SelfCheckHandoff,
    compare,
    read_segments,
)
from tests.conftest import DATA_DIR, FINETUNED_CKPT, PRETRAINED_CKPT, REPO_DIR, TWELVE_LEAD_RECORDS

CHECKPOINTS = {"finetuned": FINETUNED_CKPT, "pretrained": PRETRAINED_CKPT}
HELD_OUT = [DATA_DIR / name for name in TWELVE_LEAD_RECORDS if name not in SELF_CHECK_RECORDS]
OUTLIER = 1000.0  # one feed-forward channel's activation in every layer: the range an int8 activation scale spans


def write_outlier_checkpoint(out: Path) -> Path:
    """The finetuned parity checkpoint, in the official format, made so that int8 cannot stay within the bound but
    fp32 computes what the original does: in every layer, feed-forward channel 0 gets a bias of ``OUTLIER`` (its
    activation dominates the per-tensor int8 scale of ``fc2``'s input, so the other channels round to nothing) and
    ``fc2`` reads nothing from that channel (its column is zero, so fp32 is unchanged up to the channel's old
    contribution)."""
    checkpoint = torch.load(FINETUNED_CKPT, map_location="cpu", weights_only=True)
    state = checkpoint["model"]
    for key in list(state):
        if key.endswith("fc1.bias"):
            state[key][0] = OUTLIER
        elif key.endswith("fc2.weight"):
            state[key][:, 0] = 0.0
    torch.save(checkpoint, out)
    return out


@pytest.fixture(scope="module")
def outlier_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_outlier_checkpoint(tmp_path_factory.mktemp("outlier") / "finetuned.pt")


def ecgfm_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ecgfm", *args], cwd=REPO_DIR, capture_output=True, text=True, timeout=300
    )


def test_int8_quantizes_the_transformer_linears_only():
    handle = load_model("finetuned", str(FINETUNED_CKPT), "cpu", "int8", "fft", self_check=False)
    model = handle.loaded.model
    layers = handle.loaded.config.num_layers
    assert quantized_linear_count(model.encoder.encoder) == 6 * layers  # q, k, v, out, fc1, fc2 per layer
    assert quantized_linear_count(model) == 6 * layers
    assert type(model.classifier) is nn.Linear and model.classifier.weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.encoder.feature_extractor.parameters())
    assert all(type(m) is nn.LayerNorm for m in model.encoder.encoder.modules() if "LayerNorm" in type(m).__name__)


@pytest.mark.parametrize("kind", ["finetuned", "pretrained"])
def test_int8_passes_the_self_check_and_agrees_with_fp32_on_held_out_records(kind: str):
    int8 = load_model(kind, str(CHECKPOINTS[kind]), "cpu", "int8", "fft")
    check = int8.self_check
    assert check is not None and check.passed and check.records == list(SELF_CHECK_RECORDS)
    assert check.segments == len(read_segments([REPO_DIR / "sample_data" / n for n in SELF_CHECK_RECORDS]).segments)
    block = int8.checkpoint().public().precision
    assert block.variant == "int8+fft" and block.reference is False and block.self_check == check

    reference = load_model(kind, str(CHECKPOINTS[kind]), "cpu", "fp32", "conv", False)
    assert reference.self_check is None and reference.checkpoint().precision.reference is True
    held_out = read_segments(HELD_OUT)
    assert len(held_out.records) == len(HELD_OUT) >= 4 and not set(held_out.records) & set(SELF_CHECK_RECORDS)
    got, want = int8.run(held_out.segments, held_out.lengths), reference.run(held_out.segments, held_out.lengths)
    if kind == "finetuned":
        difference = np.abs(got - want).max()
        assert 0 < difference <= PROBABILITY_BOUND  # quantized (not bit-equal), and within the bound
        assert check.max_probability_difference == pytest.approx(
            compare(kind, *_bundled_outputs(int8, reference), check.records).summary.max_probability_difference
        )
    else:
        cosine = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        assert cosine.min() >= COSINE_BOUND and not np.array_equal(got, want)


def _bundled_outputs(variant, reference) -> tuple[np.ndarray, np.ndarray]:
    bundled = read_segments([REPO_DIR / "sample_data" / name for name in SELF_CHECK_RECORDS])
    return variant.run(bundled.segments, bundled.lengths), reference.run(bundled.segments, bundled.lengths)


def test_the_outlier_checkpoint_is_sound_in_fp32_and_refused_in_int8(outlier_checkpoint: Path):
    segments = read_segments(HELD_OUT[:2])
    original = load_model("finetuned", str(FINETUNED_CKPT), "cpu", "fp32").run(segments.segments)
    outlier = load_model("finetuned", str(outlier_checkpoint), "cpu", "fp32").run(segments.segments)
    assert np.abs(outlier - original).max() < 0.05  # fp32 still answers about what the original does
    with pytest.raises(PrecisionCheckError) as refused:
        load_model("finetuned", str(outlier_checkpoint), "cpu", "int8", "fft")
    message = str(refused.value)
    assert "finetuned model in int8+fft fails the self-check" in message and "bound 0.01" in message
    assert "ECGFM_PRECISION=fp32" in message and all(name in message for name in SELF_CHECK_RECORDS)


def test_compare_reports_the_largest_difference_per_label_and_the_least_cosine():
    reference = np.full((3, 17), 0.5, dtype=np.float32)
    variant = reference.copy()
    variant[1, 4] += 0.02
    variant[2, 0] -= 0.005
    comparison = compare("finetuned", variant, reference, ["a.json"])
    assert comparison.summary.max_probability_difference == pytest.approx(0.02)
    assert not comparison.summary.passed and comparison.summary.segments == 3
    per_label = list(comparison.per_label.values())
    assert per_label[4] == pytest.approx(0.02) and per_label[0] == pytest.approx(0.005) and per_label[1] == 0
    assert compare("finetuned", reference + 0.01, reference, ["a"]).summary.passed  # the bound itself passes

    embeddings = np.array([[1.0, 0.0], [1.0, 1.0]])
    turned = np.array([[1.0, 0.05], [1.0, 1.0]])  # cosine of the first row: 0.99875
    check = compare("pretrained", turned, embeddings, ["a"]).summary
    assert check.min_embedding_cosine == pytest.approx(1 / np.sqrt(1 + 0.05**2)) and not check.passed


def test_int8_is_refused_on_a_gpu_device():
    from ecgfm.network.fast import resolve_precision

    with pytest.raises(ValueError, match="int8 runs on the CPU only"):
        resolve_precision("int8", torch.device("cuda"))


def test_check_precision_prints_per_label_deviations_and_fails_over_the_bound(outlier_checkpoint: Path):
    held_out = [str(path) for path in HELD_OUT[:2]]
    passed = ecgfm_cli("check-precision", "--precision", "int8", "--only", "clinical", "--finetuned",
                       str(FINETUNED_CKPT), *held_out)  # fmt: skip
    assert passed.returncode == 0, passed.stderr
    lines = passed.stdout.splitlines()
    assert lines[0].startswith("finetuned int8 vs fp32 on ") and lines[0].endswith("within the bound")
    assert len(lines) == 1 + 17 and "Sinus rhythm" in passed.stdout
    deviations = [float(line.split()[-1]) for line in lines[1:]]
    assert max(deviations) == pytest.approx(float(lines[0].split("difference ")[1].split()[0]), abs=1e-5)

    failed = ecgfm_cli("check-precision", "--precision", "int8", "--only", "clinical", "--finetuned",
                       str(outlier_checkpoint), *held_out)  # fmt: skip
    assert failed.returncode == 1 and "OUTSIDE THE BOUND" in failed.stdout
    assert max(float(line.split()[-1]) for line in failed.stdout.splitlines()[1:]) > PROBABILITY_BOUND


def test_predict_with_int8_reports_the_self_check_or_refuses_with_one_message(outlier_checkpoint: Path):
    import json

    record = str(REPO_DIR / "sample_data" / "JS36330.json")
    served = ecgfm_cli(
        "predict", "--only", "clinical", "--precision", "int8", "--finetuned", str(FINETUNED_CKPT), record
    )
    assert served.returncode == 0, served.stderr
    precision = json.loads(served.stdout)["clinical"]["checkpoint"]["precision"]
    assert precision["variant"] == "int8" and precision["self_check"]["passed"] is True
    assert "passed the self-check against fp32" in served.stderr

    refused = ecgfm_cli("predict", "--only", "clinical", "--precision", "int8", "--finetuned",
                        str(outlier_checkpoint), record)  # fmt: skip
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.count("fails the self-check") == 1 and "Traceback" not in refused.stderr


def test_the_server_s_self_check_is_handed_to_its_workers_for_the_same_weights_only(tmp_path, monkeypatch):
    """The start-up hook saves what it measured; a worker (a child of the server) loading the same file as the same
    variant takes it instead of loading an fp32 copy; other weights, another variant or another server: measured."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    server, worker = SelfCheckHandoff(os.getpid(), worker=False), SelfCheckHandoff(os.getpid(), worker=True)

    def load(pos_conv: str, handoff: SelfCheckHandoff):
        return load_model("finetuned", str(FINETUNED_CKPT), "cpu", "int8", pos_conv, handoff=handoff)

    measured = load("fft", server)
    assert measured.self_check is not None and not measured.self_check_taken
    assert not load("fft", server).self_check_taken  # the server's hook always measures
    taken = load("fft", worker)
    assert taken.self_check_taken and taken.self_check == measured.self_check
    assert not load("conv", worker).self_check_taken  # another variant
    assert not load("fft", SelfCheckHandoff(os.getpid() + 1, worker=True)).self_check_taken  # another server
    assert worker.take("finetuned", "0" * 64, "int8+fft") is None  # other weights
    assert worker.take("pretrained", measured.sha256, "int8+fft") is None
    folder = next(tmp_path.glob("ecgfm-serve-self-check-*"))
    assert folder.stat().st_mode & 0o777 == 0o700
    folder.chmod(0o777)  # not private: another user could have written there
    assert worker.take("finetuned", measured.sha256, "int8+fft") is None
