"""ECG-FM in plain PyTorch: the wav2vec 2.0-style ECG transformer of fairseq-signals.

One module per block of the architecture (conv feature extractor, feature projection, convolutional
positional embedding, self-attention, feed-forward, encoder layer), numerically equal to
fairseq-signals' ``ECGTransformerModel`` / ``Wav2Vec2CMSCModel`` in eval mode. The official checkpoints are
read by :mod:`ecgfm.network.checkpoint`; sizes always come from the checkpoint's own ``cfg["model"]``.

Shapes: ``B`` batch, ``L`` input samples (2500 for a 5 s segment at 500 Hz), ``T`` frames after the
feature extractor (156 for 2500 samples), ``C`` conv channels, ``D`` embedding dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn


@dataclass(frozen=True)
class ECGFMConfig:
    """Architecture hyper-parameters (fairseq-signals ``cfg.model`` field names in comments).

    The defaults are the published ECG-FM base model (90.9 M parameters).
    """

    conv_layers: tuple[tuple[int, int, int], ...] = ((256, 2, 2),) * 4  # conv_feature_layers (dim, k, stride)
    in_channels: int = 12  # in_d
    conv_bias: bool = False  # conv_bias
    embed_dim: int = 768  # encoder_embed_dim
    num_layers: int = 12  # encoder_layers
    num_heads: int = 12  # encoder_attention_heads
    ffn_dim: int = 3072  # encoder_ffn_embed_dim
    layer_norm_first: bool = False  # layer_norm_first
    conv_pos: int = 128  # conv_pos (kernel size of the positional conv)
    conv_pos_groups: int = 16  # conv_pos_groups
    num_labels: int = 0  # num_labels of the finetuned head; 0 for the pretrained encoder
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.embed_dim % self.conv_pos_groups:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by conv_pos_groups {self.conv_pos_groups}")

    @property
    def conv_dim(self) -> int:
        return self.conv_layers[-1][0]

    def frames(self, samples: Any) -> Any:
        """Frames ``T`` the feature extractor makes of ``samples`` input samples (an int or an integer tensor),
        as fairseq-signals computes them: ``(n - kernel) // stride + 1`` for each conv."""
        for _, kernel, stride in self.conv_layers:
            samples = (samples - kernel) // stride + 1
        return samples


class ConvFeatureExtractor(nn.Module):
    """Strided 1-D convolutions over the raw leads (fairseq-signals ``extractor_mode="default"``).

    Each layer is Conv1d(k, s) -> GELU; the first also has a GroupNorm with one group per channel
    (per-channel normalisation over time), computed in fp32.
    """

    def __init__(self, config: ECGFMConfig) -> None:
        super().__init__()
        layers = []
        in_dim = config.in_channels
        for index, (dim, kernel, stride) in enumerate(config.conv_layers):
            layers.append(ConvLayerBlock(in_dim, dim, kernel, stride, config.conv_bias, group_norm=index == 0))
            in_dim = dim
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        """
        Args:
            x (Tensor): shape ``[B, leads, L]``.
        Returns:
            Tensor: shape ``[B, C, T]``.
        """
        for layer in self.layers:
            x = layer(x)
        return x


class ConvLayerBlock(nn.Module):
    """Conv1d -> (fp32 GroupNorm(C, C)) -> exact GELU."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int, stride: int, bias: bool, group_norm: bool) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_dim, out_dim, kernel, stride=stride, bias=bias)
        self.norm = nn.GroupNorm(out_dim, out_dim, affine=True) if group_norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = F.group_norm(
                x.float(), self.norm.num_groups, self.norm.weight.float(), self.norm.bias.float(), self.norm.eps
            ).type_as(x)
        return F.gelu(x)


class FeatureProjection(nn.Module):
    """LayerNorm over conv channels, then a linear map to the embedding dim (``post_extract_proj``)."""

    def __init__(self, config: ECGFMConfig) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.conv_dim, eps=config.layer_norm_eps)
        self.projection = (
            nn.Linear(config.conv_dim, config.embed_dim) if config.conv_dim != config.embed_dim else nn.Identity()
        )

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """
        Args:
            features (Tensor): shape ``[B, T, C]``.
        Returns:
            (Tensor, Tensor): the normalised features ``[B, T, C]`` (wav2vec2's "features") and their
            projection ``[B, T, D]``.
        """
        normalised = self.layer_norm(features)
        return normalised, self.projection(normalised)


class ConvolutionalPositionalEmbedding(nn.Module):
    """Grouped Conv1d over time (``padding=k//2``), trimmed to the input length (SamePad), then GELU.

    The weight is weight-normalised over dim 2 as in the checkpoints: ``w = g * v / ||v||`` with the norm
    taken over dims (0, 1) for each kernel tap (``original0`` = g ``[1, 1, k]``, ``original1`` = v).
    """

    def __init__(self, config: ECGFMConfig) -> None:
        super().__init__()
        self.kernel_size = config.conv_pos
        conv = nn.Conv1d(
            config.embed_dim,
            config.embed_dim,
            kernel_size=config.conv_pos,
            padding=config.conv_pos // 2,
            groups=config.conv_pos_groups,
        )
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)

    def forward(self, x: Tensor) -> Tensor:
        """
        Args:
            x (Tensor): shape ``[B, T, D]``.
        Returns:
            Tensor: the positional branch ``[B, T, D]`` (to be added to ``x`` by the caller).
        """
        y = self.conv(x.transpose(1, 2))
        if self.kernel_size % 2 == 0:
            y = y[..., :-1]
        return F.gelu(y).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out projections.

    By default through the fused ``scaled_dot_product_attention``. With ``need_weights=True`` it computes the
    attention explicitly, as ``torch.nn.functional.multi_head_attention_forward`` does when fairseq-signals asks it
    for weights (``q`` scaled by ``1/sqrt(head_dim)``, ``-inf`` at padded keys, softmax over keys), and also returns
    the post-softmax weights averaged over heads (``average_attn_weights=True``).
    """

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(
        self, x: Tensor, key_padding_mask: Tensor | None = None, need_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """
        Args:
            x (Tensor): shape ``[B, T, D]``.
            key_padding_mask (Tensor or None): shape ``[B, T]``, True at padded frames.
            need_weights: also return the attention weights.
        Returns:
            Tensor: shape ``[B, T, D]``; with ``need_weights``, a tuple of it and the head-mean attention weights
            ``[B, T, T]`` (query, key; rows sum to 1, 0 at padded keys, padded query rows kept).
        """
        batch, frames, dim = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(batch, frames, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        if not need_weights:
            attn_mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            return self.out_proj(out.transpose(1, 2).reshape(batch, frames, dim))
        scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)  # [B, H, T, T]
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        weights = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        out = self.out_proj((weights @ v).transpose(1, 2).reshape(batch, frames, dim))
        return out, weights.mean(dim=1)


class FeedForward(nn.Module):
    """``fc2(gelu(fc1(x)))``."""

    def __init__(self, embed_dim: int, ffn_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class EncoderLayer(nn.Module):
    """Transformer layer: post-LN (ECG-FM) or pre-LN when ``layer_norm_first``."""

    def __init__(self, config: ECGFMConfig) -> None:
        super().__init__()
        self.layer_norm_first = config.layer_norm_first
        self.attention = SelfAttention(config.embed_dim, config.num_heads)
        self.attention_layer_norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config.embed_dim, config.ffn_dim)
        self.final_layer_norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)

    def forward(
        self, x: Tensor, key_padding_mask: Tensor | None = None, need_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """
        Args:
            x (Tensor): shape ``[B, T, D]``.
            key_padding_mask (Tensor or None): shape ``[B, T]``, True at padded frames.
            need_weights: also return the attention weights of this layer.
        Returns:
            Tensor: shape ``[B, T, D]``; with ``need_weights``, a tuple of it and the weights ``[B, T, T]``.
        """
        attention = partial(self.attention, key_padding_mask=key_padding_mask, need_weights=need_weights)
        if self.layer_norm_first:
            attended = attention(self.attention_layer_norm(x))
            x = x + (attended[0] if need_weights else attended)
            x = x + self.feed_forward(self.final_layer_norm(x))
        else:
            attended = attention(x)
            x = self.attention_layer_norm(x + (attended[0] if need_weights else attended))
            x = self.final_layer_norm(x + self.feed_forward(x))
        return (x, attended[1]) if need_weights else x


class TransformerEncoder(nn.Module):
    """Padded frames zeroed, LayerNorm before the layers (post-LN) or after them (pre-LN), then the layers."""

    def __init__(self, config: ECGFMConfig) -> None:
        super().__init__()
        self.layer_norm_first = config.layer_norm_first
        self.layer_norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))

    def forward(
        self, x: Tensor, padding_mask: Tensor | None = None, need_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """
        Args:
            x (Tensor): transformer input ``[B, T, D]`` (features plus positional branch).
            padding_mask (Tensor or None): shape ``[B, T]``, True at padded frames.
            need_weights: also return every layer's attention weights (fairseq-signals' ``saliency``).
        Returns:
            Tensor: shape ``[B, T, D]``; with ``need_weights``, a tuple of it and the weights stacked over layers,
            ``[B, num_layers, T, T]``.
        """
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        weights = []
        for layer in self.layers:
            if need_weights:
                x, layer_weights = layer(x, padding_mask, need_weights=True)
                weights.append(layer_weights)
            else:
                x = layer(x, padding_mask)
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return (x, torch.stack(weights, dim=1)) if need_weights else x


class ECGFMEncoder(nn.Module):
    """The ECG-FM backbone: raw 12-lead segments to per-frame hidden states (the pretrained model's ``x``)."""

    def __init__(self, config: ECGFMConfig) -> None:
        super().__init__()
        self.config = config
        self.feature_extractor = ConvFeatureExtractor(config)
        self.feature_projection = FeatureProjection(config)
        self.pos_conv = ConvolutionalPositionalEmbedding(config)
        self.encoder = TransformerEncoder(config)

    def frame_padding_mask(self, padding_mask: Tensor | None, frames: int) -> Tensor | None:
        """Map a sample-level padding mask to frames, as fairseq-signals does.

        Args:
            padding_mask (Tensor or None): bool ``[B, L]`` or ``[B, leads, L]`` (True = padded sample; all
                leads must be padded alike, only the first lead is read).
            frames: ``T``.
        Returns:
            Tensor or None: bool ``[B, T]``, True at frames at or after each row's output length; None when
            no sample is padded.
        """
        if padding_mask is None or not bool(padding_mask.any()):
            return None
        if padding_mask.dim() == 3:
            padding_mask = padding_mask[:, 0]
        lengths = self.config.frames((~padding_mask).sum(-1))
        positions = torch.arange(frames, device=padding_mask.device)
        return positions[None, :] >= lengths.clamp(min=0)[:, None]

    def forward(
        self, source: Tensor, padding_mask: Tensor | None = None, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None] | tuple[Tensor, Tensor | None, Tensor]:
        """
        Args:
            source (Tensor): shape ``[B, leads, L]``, standardised leads in ECG-FM order.
            padding_mask (Tensor or None): bool ``[B, L]`` or ``[B, leads, L]``, True at padded samples.
            need_weights: also return the attention weights (explicit softmax instead of the fused kernel).
        Returns:
            (Tensor, Tensor or None): hidden states ``[B, T, D]`` and the frame padding mask ``[B, T]``
            (None when nothing is padded); with ``need_weights`` a third element, the head-mean post-softmax
            attention weights of every layer ``[B, num_layers, T, T]`` (fairseq-signals' ``saliency``).
        """
        features = self.feature_extractor(source).transpose(1, 2)
        _, x = self.feature_projection(features)
        frame_mask = self.frame_padding_mask(padding_mask, x.shape[1])
        x = x + self.pos_conv(x)
        if need_weights:
            hidden, weights = self.encoder(x, frame_mask, need_weights=True)
            return hidden, frame_mask, weights
        return self.encoder(x, frame_mask), frame_mask


def masked_mean_pool(hidden: Tensor, frame_mask: Tensor | None) -> Tensor:
    """fairseq-signals' classifier pooling: padded frames zeroed, then sum / count of non-zero values.

    Args:
        hidden (Tensor): shape ``[B, T, D]``.
        frame_mask (Tensor or None): shape ``[B, T]``, True at padded frames.
    Returns:
        Tensor: shape ``[B, D]``; per feature, the mean over the frames where it is non-zero (the mean over
        valid frames unless an activation is exactly 0).
    """
    if frame_mask is not None:
        hidden = hidden.masked_fill(frame_mask.unsqueeze(-1), 0.0)
    return hidden.sum(dim=1) / (hidden != 0).sum(dim=1)


def time_mean(hidden: Tensor, frame_mask: Tensor | None) -> Tensor:
    """Plain mean over valid frames (ECG-FM's per-segment embedding from the pretrained model).

    Args:
        hidden (Tensor): shape ``[B, T, D]``.
        frame_mask (Tensor or None): shape ``[B, T]``, True at padded frames.
    Returns:
        Tensor: shape ``[B, D]``.
    """
    if frame_mask is None:
        return hidden.mean(dim=1)
    valid = (~frame_mask).unsqueeze(-1).to(hidden.dtype)
    return (hidden * valid).sum(dim=1) / valid.sum(dim=1)


class ECGFMClassifier(nn.Module):
    """ECG-FM finetuned classifier (``ecg_transformer_classifier``): encoder, non-zero-mean pooling, ``proj``."""

    def __init__(self, config: ECGFMConfig) -> None:
        super().__init__()
        if config.num_labels <= 0:
            raise ValueError("a classifier needs num_labels > 0")
        self.config = config
        self.encoder = ECGFMEncoder(config)
        self.classifier = nn.Linear(config.embed_dim, config.num_labels)

    def forward(
        self, source: Tensor, padding_mask: Tensor | None = None, need_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """
        Args:
            source (Tensor): shape ``[B, leads, L]``.
            padding_mask (Tensor or None): bool ``[B, L]`` or ``[B, leads, L]``.
            need_weights: also return the attention weights ``[B, num_layers, T, T]`` (see :class:`ECGFMEncoder`).
        Returns:
            Tensor: logits ``[B, num_labels]`` (no sigmoid); with ``need_weights``, a tuple of them and the weights.
        """
        if need_weights:
            hidden, frame_mask, weights = self.encoder(source, padding_mask, need_weights=True)
            return self.classifier(masked_mean_pool(hidden, frame_mask)), weights
        hidden, frame_mask = self.encoder(source, padding_mask)
        return self.classifier(masked_mean_pool(hidden, frame_mask))


def attention_max(weights: Tensor) -> Tensor:
    """ECG-FM quickstart's saliency reduction: the last layer, for each query step its largest weight on any key.

    Args:
        weights (Tensor): ``[B, num_layers, T, T]`` from ``forward(..., need_weights=True)``.
    Returns:
        Tensor: shape ``[B, T]`` (``saliency[:, -1].max(axis=2)``).
    """
    return weights[:, -1].amax(dim=-1)


def build_model(config: ECGFMConfig) -> ECGFMEncoder | ECGFMClassifier:
    """The classifier when ``config.num_labels > 0``, else the pretrained encoder; in eval mode."""
    model = ECGFMClassifier(config) if config.num_labels > 0 else ECGFMEncoder(config)
    return model.eval()
