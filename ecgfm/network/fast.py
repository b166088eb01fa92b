"""The fast inference path: the same ECG-FM forward, rearranged for throughput.

:func:`optimize_for_inference` changes a loaded model in place, for inference only:

* the positional conv's weight norm is folded into a plain weight once (it was recomputed on every forward);
* ``pos_conv="fft"`` replaces the grouped positional conv (kernel 128, 16 groups at full size) by an exactly
  equivalent FFT formulation (``rfft`` -> per-frequency grouped matmul -> ``irfft``), about 35x fewer FLOPs;
* ``precision="bf16"`` / ``"fp16"`` runs the transformer layers (and their LayerNorms) in half precision while the
  conv feature extractor, its fp32 GroupNorm, the feature projection, the positional conv and the classifier head
  stay fp32; the transformer takes and returns fp32, so callers see fp32 tensors;
* ``precision="int8"`` (CPU only) quantizes the transformer's linear layers to int8 (:mod:`ecgfm.network.quantize`),
  everything else fp32; it is served only after the self-check of :mod:`ecgfm.precision`;
* ``compile=True`` wraps the forward with ``torch.compile`` (``mode="reduce-overhead"`` uses CUDA graphs on a GPU).

fp32 without these options is the reference (``tests/test_parity.py``). The tolerance of the fast path against
fp32 is documented in ``docs/performance.md`` and tested in ``tests/test_fast_path.py``: probabilities within
1e-2 absolute, embeddings and hidden states with cosine similarity >= 0.999.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ecgfm.network.model import ConvolutionalPositionalEmbedding, ECGFMClassifier, ECGFMEncoder, TransformerEncoder
from ecgfm.network.quantize import INT8_DEVICE, quantize_transformer
from ecgfm.settings import RuntimeSettings

Precision = Literal["fp32", "bf16", "fp16", "int8"]
PosConv = Literal["conv", "fft"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str | None, device: torch.device) -> Precision:
    """``precision`` (else ``ECGFM_PRECISION``, else fp32) for ``device``; ``auto`` is bf16 on CUDA, else fp32."""
    value = (precision or RuntimeSettings.from_env().precision).strip().lower()
    if value == "auto":
        value = "bf16" if device.type == "cuda" else "fp32"
    if value not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} or auto, not {value!r}")
    if value == "int8" and device.type != INT8_DEVICE:
        raise ValueError(f"precision int8 runs on the CPU only (PyTorch's quantized kernels), not on {device}")
    return value  # type: ignore[return-value]


def resolve_pos_conv(pos_conv: str | None) -> PosConv:
    """``pos_conv``, else ``ECGFM_POS_CONV``, else ``"conv"``."""
    value = (pos_conv or RuntimeSettings.from_env().pos_conv).strip().lower()
    if value not in get_args(PosConv):
        raise ValueError(f"pos_conv must be one of {', '.join(get_args(PosConv))}, not {value!r}")
    return value  # type: ignore[return-value]


def resolve_compile(compile: bool | None) -> bool:
    """``compile``, else ``ECGFM_COMPILE``, else False."""
    return RuntimeSettings.from_env().compile if compile is None else compile


def backbone(model: ECGFMEncoder | ECGFMClassifier) -> ECGFMEncoder:
    """The :class:`ECGFMEncoder` inside a classifier, or the encoder itself."""
    return model.encoder if isinstance(model, ECGFMClassifier) else model


def fold_weight_norm(model: ECGFMEncoder | ECGFMClassifier) -> None:
    """Replace the weight-normed positional conv by a plain ``nn.Conv1d`` holding the weight it computes.

    A new module rather than ``parametrize.remove_parametrizations``: that one edits the parametrized class,
    which deep copies of the model share.
    """
    positional = backbone(model).pos_conv
    conv = positional.conv
    if not parametrize.is_parametrized(conv, "weight"):
        return
    plain = nn.Conv1d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        groups=conv.groups,
        bias=conv.bias is not None,
        device=conv.bias.device if conv.bias is not None else None,
    )
    with torch.no_grad():
        plain.weight.copy_(conv.weight)
        if conv.bias is not None:
            plain.bias.copy_(conv.bias)
    positional.conv = plain.eval()


class FFTPositionalEmbedding(nn.Module):
    """:class:`~ecgfm.network.model.ConvolutionalPositionalEmbedding` computed with FFTs (same input, output and math).

    The grouped conv ``y[t] = b + sum_s w[s] x[t + s - k//2]`` (SamePad-trimmed to ``T`` steps) is a linear
    correlation; in the frequency domain it is one ``[Cout, Cin]`` matmul per group and frequency.
    """

    def __init__(self, positional: ConvolutionalPositionalEmbedding) -> None:
        super().__init__()
        conv = positional.conv
        if parametrize.is_parametrized(conv, "weight"):
            raise ValueError("fold the weight norm first (fold_weight_norm)")
        self.kernel_size = conv.kernel_size[0]
        self.padding = conv.padding[0]
        self.groups = conv.groups
        weight = conv.weight.detach().float()  # [Cout_total, Cin, k]
        out_total, cin, kernel = weight.shape
        # [G, Cout, Cin, k], kernel flipped so that a convolution computes the conv's cross-correlation.
        flipped = weight.flip(-1).reshape(self.groups, out_total // self.groups, cin, kernel)
        self.register_buffer("flipped_weight", flipped)
        bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros(out_total)
        self.register_buffer("bias", bias)
        self._spectra: dict[tuple[int, torch.device], Tensor] = {}

    def _weight_spectrum(self, n_fft: int, device: torch.device) -> Tensor:
        """``rfft`` of the flipped kernel, ``[F, G, Cin, Cout]`` complex, cached per FFT length and device."""
        key = (n_fft, device)
        if key not in self._spectra:
            spectrum = torch.fft.rfft(self.flipped_weight.to(device), n=n_fft)  # [G, Cout, Cin, F]
            self._spectra[key] = spectrum.permute(3, 0, 2, 1).contiguous()
        return self._spectra[key]

    def forward(self, x: Tensor) -> Tensor:
        """
        Args:
            x (Tensor): shape ``[B, T, D]``.
        Returns:
            Tensor: the positional branch ``[B, T, D]``, as the conv version computes it.
        """
        batch, frames, dim = x.shape
        n_fft = frames + self.kernel_size - 1
        spectrum_x = torch.fft.rfft(x.float().transpose(1, 2), n=n_fft)  # [B, D, F]
        grouped = spectrum_x.reshape(batch, self.groups, dim // self.groups, -1).permute(3, 1, 0, 2)  # [F, G, B, Cin]
        product = torch.matmul(grouped, self._weight_spectrum(n_fft, x.device))  # [F, G, B, Cout]
        y = torch.fft.irfft(product.permute(2, 1, 3, 0).reshape(batch, dim, -1), n=n_fft)  # [B, D, n_fft]
        start = self.kernel_size - 1 - self.padding
        y = y[..., start : start + frames] + self.bias[:, None]
        return F.gelu(y).transpose(1, 2).to(x.dtype)


class HalfPrecisionTransformer(nn.Module):
    """A :class:`~ecgfm.network.model.TransformerEncoder` held in bf16/fp16 that takes and returns fp32 tensors."""

    def __init__(self, encoder: TransformerEncoder, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self.inner = encoder.to(dtype)

    def forward(
        self, x: Tensor, padding_mask: Tensor | None = None, need_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """
        Args:
            x (Tensor): fp32 ``[B, T, D]``.
            padding_mask (Tensor or None): ``[B, T]``, True at padded frames.
            need_weights: also return the attention weights (fp32 ``[B, num_layers, T, T]``).
        Returns:
            Tensor: fp32 ``[B, T, D]``; with ``need_weights``, a tuple of it and the weights.
        """
        if need_weights:
            hidden, weights = self.inner(x.to(self.dtype), padding_mask, need_weights=True)
            return hidden.float(), weights.float()
        return self.inner(x.to(self.dtype), padding_mask).float()


def optimize_for_inference(
    model: ECGFMEncoder | ECGFMClassifier,
    precision: Precision = "fp32",
    pos_conv: PosConv = "conv",
    compile: bool = False,
    compile_mode: str | None = None,
) -> ECGFMEncoder | ECGFMClassifier:
    """Make ``model`` (already on its device) an inference-only fast model, in place; returns it.

    Args:
        model: a model from :func:`ecgfm.network.checkpoint.load_checkpoint`, in eval mode.
        precision: ``"fp32"`` (the reference), ``"bf16"`` / ``"fp16"`` for the transformer layers, or ``"int8"`` for
            the transformer's linear layers (CPU).
        pos_conv: ``"conv"`` (the grouped conv) or ``"fft"`` (the equivalent FFT formulation).
        compile: wrap the forward with ``torch.compile`` (first calls per input shape are slow).
        compile_mode: ``torch.compile`` mode; default ``"reduce-overhead"`` (CUDA graphs) on CUDA, else default.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    model.eval()
    encoder = backbone(model)
    fold_weight_norm(model)
    if pos_conv == "fft":
        encoder.pos_conv = FFTPositionalEmbedding(encoder.pos_conv)
    elif pos_conv != "conv":
        raise ValueError(f"pos_conv must be 'conv' or 'fft', not {pos_conv!r}")
    if precision in HALF_DTYPES and not isinstance(encoder.encoder, HalfPrecisionTransformer):
        encoder.encoder = HalfPrecisionTransformer(encoder.encoder, HALF_DTYPES[precision])
    if precision == "int8":
        if next(model.parameters()).device.type != INT8_DEVICE:
            raise ValueError("precision int8 runs on the CPU only (PyTorch's quantized kernels)")
        encoder.encoder = quantize_transformer(encoder.encoder)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if compile:
        device_type = next(model.parameters()).device.type
        mode = compile_mode or ("reduce-overhead" if device_type == "cuda" else None)
        model.compile(mode=mode, dynamic=False)
    return model


def host_to_device(array: np.ndarray, device: torch.device) -> Tensor:
    """A contiguous numpy array as a tensor on ``device``; through pinned memory (asynchronous copy) on CUDA."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
