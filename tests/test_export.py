"""``ecgfm export --format onnx`` (``ecgfm.network.export``): the file ONNX Runtime runs matches PyTorch and the
real fairseq-signals outputs on the parity fixture at the parity tolerances, padded segments and any batch size
included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from ecgfm.inference import load_model
from ecgfm.network.export import OPSET
from ecgfm.network.model import time_mean
from tests.conftest import FINETUNED_CKPT, PRETRAINED_CKPT, REPO_DIR

OUTPUT_TOL = {"atol": 1e-5, "rtol": 1e-5}  # as tests/test_parity.py: probabilities and time-means
CHECKPOINTS = {"finetuned": FINETUNED_CKPT, "pretrained": PRETRAINED_CKPT}


@pytest.fixture(scope="module", params=["finetuned", "pretrained"])
def exported(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The parity checkpoint of one kind, exported by the command line."""
    kind = request.param
    out = tmp_path_factory.mktemp("onnx") / f"{kind}.onnx"
    result = subprocess.run(
        [sys.executable, "-m", "ecgfm", "export", "--format", "onnx", "--kind", kind,
         "--checkpoint", str(CHECKPOINTS[kind]), str(out)],
        cwd=REPO_DIR, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote {out} (ONNX opset {OPSET}" in result.stdout
    return kind, out


def _session(path: Path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_the_file_declares_the_documented_inputs_outputs_and_opset(exported):
    kind, path = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert max(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")) == OPSET
    session = _session(path)
    inputs = {i.name: (i.shape, i.type) for i in session.get_inputs()}
    assert inputs["source"][1] == "tensor(float)" and inputs["source"][0][1:] == [12, 2500]
    assert inputs["padding_mask"][1] == "tensor(bool)" and inputs["padding_mask"][0][1:] == [2500]
    assert isinstance(inputs["source"][0][0], str)  # a named, dynamic batch axis
    (output,) = session.get_outputs()
    assert output.name == {"finetuned": "probabilities", "pretrained": "embedding"}[kind]
    assert output.shape[1] == (17 if kind == "finetuned" else 64)


def test_onnx_runtime_matches_fairseq_and_pytorch(exported, reference):
    kind, path = exported
    session = _session(path)
    whole = np.zeros((3, 2500), dtype=bool)
    padded_mask = reference["padding_mask_in"][:, 0]
    got = session.run(None, {"source": reference["x"], "padding_mask": whole})[0]
    got_padded = session.run(None, {"source": reference["x_padded"], "padding_mask": padded_mask})[0]
    if kind == "finetuned":
        expected = reference["ft_sigmoid"]
        expected_padded = torch.sigmoid(torch.from_numpy(reference["ft_logits_padded"])).numpy()
    else:
        expected = reference["pt_x_time_mean"]
        hidden, mask = (
            torch.from_numpy(reference["pt_x_padded"]),
            torch.from_numpy(reference["pt_padding_mask_out_padded"]),
        )
        expected_padded = time_mean(hidden, mask).numpy()
    assert padded_mask.any() and not np.allclose(expected, expected_padded)  # the mask matters
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(expected), **OUTPUT_TOL)
    torch.testing.assert_close(torch.from_numpy(got_padded), torch.from_numpy(expected_padded), **OUTPUT_TOL)

    handle = load_model(kind, str(CHECKPOINTS[kind]), "cpu", "fp32")
    lengths = 2500 - padded_mask.sum(axis=1)
    torch.testing.assert_close(
        torch.from_numpy(got_padded), torch.from_numpy(handle.run(reference["x_padded"], lengths)), **OUTPUT_TOL
    )


def test_the_batch_axis_is_dynamic(exported, reference):
    _, path = exported
    session = _session(path)
    batch = np.concatenate([reference["x"], reference["x"], reference["x"][:1]])  # 7 segments
    whole = np.zeros((len(batch), 2500), dtype=bool)
    seven = session.run(None, {"source": batch, "padding_mask": whole})[0]
    one = session.run(None, {"source": batch[:1], "padding_mask": whole[:1]})[0]
    assert seven.shape[0] == 7
    torch.testing.assert_close(torch.from_numpy(one[0]), torch.from_numpy(seven[6]), **OUTPUT_TOL)
