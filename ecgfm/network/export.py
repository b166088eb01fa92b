"""ECG-FM as an ONNX file (``ecgfm export --format onnx``): what ONNX Runtime, Triton or an edge device runs.

The exported graph is the fp32 reference (the grouped positional conv, no fast-path rearrangement) with the
post-processing ``ModelHandle.run`` does, so that one call gives the answer:

* inputs: ``source`` float32 ``[batch, 12, 2500]`` (preprocessed segments, :func:`ecgfm.records.preprocess.preprocess`)
  and ``padding_mask`` bool ``[batch, 2500]`` (True at padded trailing samples; all False for whole segments);
* output: ``probabilities`` float32 ``[batch, 17]`` (finetuned: sigmoid of the logits, labels in
  :data:`ecgfm.labels.LABELS` order) or ``embedding`` float32 ``[batch, D]`` (pretrained: the mean of the hidden states
  over valid frames);
* the batch axis is dynamic; the segment length is fixed (2500 samples: 5 s at 500 Hz);
* opset :data:`OPSET` (ONNX Runtime 1.17+ runs it; Triton's onnxruntime backend likewise).

Exported with PyTorch's ``torch.onnx.export(dynamo=True)`` (``onnxscript`` builds the graph); checked against
PyTorch on the parity fixture in ``tests/test_export.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ecgfm.network.model import ECGFMClassifier, ECGFMEncoder, masked_mean_pool, time_mean

OPSET = 18
INPUT_NAMES = ("source", "padding_mask")
OUTPUT_NAMES = {"finetuned": "probabilities", "pretrained": "embedding"}


class ExportableModel(nn.Module):
    """One model's whole answer from segments and an always-present padding mask (no data-dependent branch)."""

    def __init__(self, model: ECGFMEncoder | ECGFMClassifier) -> None:
        super().__init__()
        self.classifier = model.classifier if isinstance(model, ECGFMClassifier) else None
        self.encoder = model.encoder if isinstance(model, ECGFMClassifier) else model

    def forward(self, source: Tensor, padding_mask: Tensor) -> Tensor:
        """
        Args:
            source (Tensor): float32 ``[B, 12, 2500]``.
            padding_mask (Tensor): bool ``[B, 2500]``, True at padded samples.
        Returns:
            Tensor: probabilities ``[B, 17]`` (finetuned) or the embedding ``[B, D]`` (pretrained).
        """
        encoder = self.encoder
        features = encoder.feature_extractor(source).transpose(1, 2)
        _, x = encoder.feature_projection(features)
        lengths = encoder.config.frames((~padding_mask).sum(-1))
        frame_mask = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]
        x = x + encoder.pos_conv(x)
        hidden = encoder.encoder(x, frame_mask)
        if self.classifier is None:
            return time_mean(hidden, frame_mask)
        return torch.sigmoid(self.classifier(masked_mean_pool(hidden, frame_mask)))


def export_onnx(model: ECGFMEncoder | ECGFMClassifier, out: str | Path, kind: str, opset: int = OPSET) -> Path:
    """Write ``model`` (fp32, on the CPU, as loaded) to ``out`` as ONNX; returns the path."""
    out = Path(out)
    exportable = ExportableModel(model).eval()
    example = (torch.zeros(2, 12, 2500), torch.zeros(2, 2500, dtype=torch.bool))
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(
            exportable,
            example,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAMES[kind]],
            dynamic_shapes={"source": {0: batch}, "padding_mask": {0: batch}},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    program.save(str(out))
    return out
