"""int8 for the transformer's linear layers: PyTorch's dynamic quantization (``torch.ao.quantization``), CPU only.

Every ``nn.Linear`` inside the transformer layers (attention q/k/v/out projections, feed-forward fc1/fc2) becomes a
dynamically quantized linear layer: int8 weights, quantized **per output channel**, and the activations quantized
per tensor on each call from their observed range (so no calibration data is needed), the matmul in integer units
(fbgemm / oneDNN: AVX2, AVX-512 VNNI where the CPU has it). Everything else stays fp32: the convolutional feature
extractor and its GroupNorm, the feature projection, the positional conv, every LayerNorm and the classifier head
(OpenVINO's int8 wav2vec2 lost half its accuracy until the feature-extractor convs stayed in floating point).

Dynamic rather than static quantization: static int8 would also quantize the activations between layers with fixed
ranges from calibration records, which the attention softmax and the GELU's outputs tolerate worst, and it needs
calibration data at load; measured side by side, static was no faster and further from fp32 (docs/performance.md,
"CPU fast path").

Quantization error depends on the weights' ranges, so a model is never served in int8 unproven:
:func:`ecgfm.inference.load_model` runs the self-check (:mod:`ecgfm.precision`) on it first.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ecgfm.network.model import TransformerEncoder

INT8_DEVICE = "cpu"  # PyTorch's quantized linear kernels (fbgemm, oneDNN) are CPU kernels


def quantize_transformer(transformer: TransformerEncoder) -> nn.Module:
    """The transformer with its ``nn.Linear`` layers dynamically quantized to int8 (per-channel weights).

    The transformer's own modules are replaced (``inplace``); its LayerNorms stay fp32.
    """
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        return quantize_dynamic(transformer, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)


def quantized_linear_count(module: nn.Module) -> int:
    """How many dynamically quantized linear layers ``module`` holds (what ``/status`` can count on)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    return sum(isinstance(child, DynamicQuantizedLinear) for child in module.modules())
