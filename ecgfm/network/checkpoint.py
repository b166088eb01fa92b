"""Loading official ECG-FM / fairseq-signals checkpoints into :mod:`ecgfm.network.model`.

A checkpoint is a ``torch.save`` dict with ``cfg`` (plain dict), ``model`` (state dict) and optimizer state.
It is read with ``weights_only=True``. The architecture comes from ``cfg["model"]`` alone, the kind from
``cfg["model"]["_name"]``; keys are mapped with one explicit rule per family and loaded strictly: anything
unexpected raises :class:`CheckpointError` naming the file and the key.

To compare with fairseq-signals, load the same file with its ``build_model_from_checkpoint`` and compare
outputs with ``torch.testing.assert_close``; ``tests/test_parity.py`` does this against the recorded outputs
of the real code in ``shared/parity``.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ecgfm.network.model import ECGFMClassifier, ECGFMConfig, ECGFMEncoder, build_model

ModelKind = Literal["pretrained", "finetuned"]

PRETRAINED_MODEL_NAMES = frozenset({"wav2vec2_cmsc", "wav2vec2"})
FINETUNED_MODEL_NAMES = frozenset({"ecg_transformer_classifier"})

# Top-level key that only `python -m ecgfm demo-checkpoints` writes: its weights are random.
DEMO_MARKER = "ecgfm_serve_demo"

# Pretraining-only parameters of wav2vec2 / wav2vec2_cmsc (masking, quantizers and the contrastive heads),
# unused for features or classification.
_DROPPED = re.compile(r"^(mask_emb|(quantizer|project_q|final_proj|target_glu)\..*)$")

# One entry per key family: (fairseq-signals name, ecgfm name). {n} is a layer index, {p} "weight" or "bias",
# {proj} one of the attention projections. Finetuned checkpoints hold the same keys under "encoder.".
_KEY_FAMILIES: tuple[tuple[str, str], ...] = (
    # "feature_extractor.conv_layers.3.0.weight" -> "feature_extractor.layers.3.conv.weight"
    ("feature_extractor.conv_layers.{n}.0.{p}", "feature_extractor.layers.{n}.conv.{p}"),
    # "feature_extractor.conv_layers.0.2.bias" (the GroupNorm) -> "feature_extractor.layers.0.norm.bias"
    ("feature_extractor.conv_layers.{n}.2.{p}", "feature_extractor.layers.{n}.norm.{p}"),
    # "layer_norm.weight" -> "feature_projection.layer_norm.weight"
    ("layer_norm.{p}", "feature_projection.layer_norm.{p}"),
    # "post_extract_proj.weight" -> "feature_projection.projection.weight"
    ("post_extract_proj.{p}", "feature_projection.projection.{p}"),
    # "conv_pos.pos_conv.0.bias" -> "pos_conv.conv.bias"
    ("conv_pos.pos_conv.0.bias", "pos_conv.conv.bias"),
    # "conv_pos.pos_conv.0.parametrizations.weight.original0" (g; legacy name "...0.weight_g")
    #   -> "pos_conv.conv.parametrizations.weight.original0"
    ("conv_pos.pos_conv.0.parametrizations.weight.original0", "pos_conv.conv.parametrizations.weight.original0"),
    # "conv_pos.pos_conv.0.parametrizations.weight.original1" (v; legacy name "...0.weight_v") -> "...original1"
    ("conv_pos.pos_conv.0.parametrizations.weight.original1", "pos_conv.conv.parametrizations.weight.original1"),
    # "encoder.layer_norm.weight" -> "encoder.layer_norm.weight"
    ("encoder.layer_norm.{p}", "encoder.layer_norm.{p}"),
    # "encoder.layers.0.self_attn.q_proj.weight" -> "encoder.layers.0.attention.q_proj.weight"
    ("encoder.layers.{n}.self_attn.{proj}.{p}", "encoder.layers.{n}.attention.{proj}.{p}"),
    # "encoder.layers.0.self_attn_layer_norm.weight" -> "encoder.layers.0.attention_layer_norm.weight"
    ("encoder.layers.{n}.self_attn_layer_norm.{p}", "encoder.layers.{n}.attention_layer_norm.{p}"),
    # "encoder.layers.0.fc1.weight" -> "encoder.layers.0.feed_forward.fc1.weight"
    ("encoder.layers.{n}.{fc}.{p}", "encoder.layers.{n}.feed_forward.{fc}.{p}"),
    # "encoder.layers.0.final_layer_norm.weight" -> "encoder.layers.0.final_layer_norm.weight"
    ("encoder.layers.{n}.final_layer_norm.{p}", "encoder.layers.{n}.final_layer_norm.{p}"),
)
# The finetuned head: "proj.weight" -> "classifier.weight".
_HEAD_FAMILY = ("proj.{p}", "classifier.{p}")

# fairseq-signals before 2025-01 (torch.nn.utils.weight_norm) named the weight-norm tensors differently.
_LEGACY_WEIGHT_NORM = {
    "conv_pos.pos_conv.0.weight_g": "conv_pos.pos_conv.0.parametrizations.weight.original0",
    "conv_pos.pos_conv.0.weight_v": "conv_pos.pos_conv.0.parametrizations.weight.original1",
}

_PLACEHOLDERS = {"n": r"\d+", "p": "weight|bias", "proj": "q_proj|k_proj|v_proj|out_proj", "fc": "fc1|fc2"}


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = re.escape(template)
    for name, alternatives in _PLACEHOLDERS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{alternatives})")
    return re.compile(f"^{pattern}$")


def _rename(key: str, families: tuple[tuple[str, str], ...], reverse: bool = False) -> str | None:
    for fairseq_name, ecgfm_name in families:
        source, target = (ecgfm_name, fairseq_name) if reverse else (fairseq_name, ecgfm_name)
        match = _template_regex(source).match(key)
        if match:
            return target.format(**match.groupdict())
    return None


# fairseq-signals defaults for architecture fields (ECGTransformerConfig), used only if a cfg lacks a field.
_CFG_DEFAULTS: dict[str, Any] = {
    "conv_feature_layers": "[(256, 2, 2)] * 4",
    "in_d": 12,
    "conv_bias": False,
    "extractor_mode": "default",
    "encoder_embed_dim": 768,
    "encoder_layers": 12,
    "encoder_attention_heads": 12,
    "encoder_ffn_embed_dim": 3072,
    "layer_norm_first": False,
    "conv_pos": 128,
    "conv_pos_groups": 16,
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong with it."""


@dataclass
class LoadedModel:
    """A model built and loaded from one checkpoint, with what is needed to report on it."""

    kind: ModelKind
    model: ECGFMEncoder | ECGFMClassifier
    config: ECGFMConfig
    path: Path
    model_name: str
    demo: bool

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def parse_conv_layers(spec: str) -> tuple[tuple[int, int, int], ...]:
    """Parse fairseq's ``conv_feature_layers`` string (``"[(256, 2, 2)] * 4"``) without ``eval``.

    Lists/tuples of integers combined with ``+`` and ``*`` are accepted; anything else raises ``ValueError``.
    """

    def evaluate(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return evaluate(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [evaluate(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = evaluate(node.left), evaluate(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported expression in conv_feature_layers: {spec!r}")

    layers = evaluate(ast.parse(spec, mode="eval"))
    if not isinstance(layers, list) or not layers:
        raise ValueError(f"conv_feature_layers must be a non-empty list: {spec!r}")
    for layer in layers:
        if not (isinstance(layer, tuple) and len(layer) == 3 and all(isinstance(v, int) and v > 0 for v in layer)):
            raise ValueError(f"each conv layer must be (dim, kernel, stride) of positive ints: {spec!r}")
    return tuple(layers)


def config_from_cfg(cfg_model: dict[str, Any], kind: ModelKind) -> ECGFMConfig:
    """Build :class:`ECGFMConfig` from a checkpoint's ``cfg["model"]`` dict."""

    def get(name: str) -> Any:
        return cfg_model.get(name, _CFG_DEFAULTS.get(name))

    if cfg_model.get("quantize_input"):
        raise ValueError("quantize_input=True is not supported (it changes the forward pass; ECG-FM does not use it)")
    if get("extractor_mode") != "default":
        raise ValueError(f"extractor_mode {get('extractor_mode')!r} is not supported (ECG-FM uses 'default')")
    num_labels = 0
    if kind == "finetuned":
        num_labels = cfg_model.get("num_labels")
        if not isinstance(num_labels, int) or num_labels <= 0:
            raise ValueError(f"a classifier cfg needs a positive num_labels, got {num_labels!r}")
    return ECGFMConfig(
        conv_layers=parse_conv_layers(get("conv_feature_layers")),
        in_channels=int(get("in_d")),
        conv_bias=bool(get("conv_bias")),
        embed_dim=int(get("encoder_embed_dim")),
        num_layers=int(get("encoder_layers")),
        num_heads=int(get("encoder_attention_heads")),
        ffn_dim=int(get("encoder_ffn_embed_dim")),
        layer_norm_first=bool(get("layer_norm_first")),
        conv_pos=int(get("conv_pos")),
        conv_pos_groups=int(get("conv_pos_groups")),
        num_labels=num_labels,
    )


def model_kind(model_name: str) -> ModelKind:
    """``"pretrained"`` or ``"finetuned"`` from ``cfg["model"]["_name"]``; ``ValueError`` for anything else."""
    if model_name in PRETRAINED_MODEL_NAMES:
        return "pretrained"
    if model_name in FINETUNED_MODEL_NAMES:
        return "finetuned"
    known = sorted(PRETRAINED_MODEL_NAMES | FINETUNED_MODEL_NAMES)
    raise ValueError(f"model type {model_name!r} is not an ECG-FM model (expected one of {known})")


def map_state_dict(state: dict[str, torch.Tensor], kind: ModelKind) -> dict[str, torch.Tensor]:
    """Rename fairseq-signals keys to :mod:`ecgfm.network.model` keys; drop pretraining-only tensors.

    Raises ``ValueError`` naming the first key that no rule knows.
    """
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        prefix, backbone_key = "", key
        if kind == "finetuned":
            head_key = _rename(key, (_HEAD_FAMILY,))
            if head_key is not None:
                mapped[head_key] = tensor
                continue
            if not key.startswith("encoder."):
                raise ValueError(f"unexpected key {key!r} in a finetuned checkpoint")
            prefix, backbone_key = "encoder.", key[len("encoder.") :]
        backbone_key = _LEGACY_WEIGHT_NORM.get(backbone_key, backbone_key)
        if _DROPPED.match(backbone_key):
            continue
        new_key = _rename(backbone_key, _KEY_FAMILIES)
        if new_key is None:
            raise ValueError(f"unexpected key {key!r} in a {kind} checkpoint")
        mapped[prefix + new_key] = tensor
    return mapped


def to_fairseq_state_dict(model: ECGFMEncoder | ECGFMClassifier) -> dict[str, torch.Tensor]:
    """The inverse of :func:`map_state_dict`: this model's weights under fairseq-signals' legacy names."""
    legacy = {v: k for k, v in _LEGACY_WEIGHT_NORM.items()}
    state: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        prefix = ""
        if isinstance(model, ECGFMClassifier):
            head_key = _rename(key, (_HEAD_FAMILY,), reverse=True)
            if head_key is not None:
                state[head_key] = tensor
                continue
            prefix, key = "encoder.", key[len("encoder.") :]
        fairseq_key = _rename(key, _KEY_FAMILIES, reverse=True)
        if fairseq_key is None:
            raise ValueError(f"no fairseq-signals name for {key!r}")
        state[prefix + legacy.get(fairseq_key, fairseq_key)] = tensor
    return state


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``, with errors that say which file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated download or wrong file?): {exc}"
        ) from exc
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "cfg" not in checkpoint:
        raise CheckpointError(f"{path}: not a fairseq-signals checkpoint (expected a dict with 'cfg' and 'model')")
    cfg = checkpoint["cfg"]
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or "_name" not in cfg["model"]:
        raise CheckpointError(f"{path}: cfg['model']['_name'] is missing, cannot tell which model this is")
    return checkpoint


def load_checkpoint(
    path: str | Path,
    expected_kind: ModelKind | None = None,
    cache_dir: str | Path | None = None,
    sha256: str | None = None,
) -> LoadedModel:
    """Build the model described by a checkpoint and load its weights strictly.

    Args:
        path: an official ``.pt`` file (or one from ``python -m ecgfm demo-checkpoints``).
        expected_kind: if given, a checkpoint of the other kind raises :class:`CheckpointError`.
        cache_dir: if given, read and write a stripped copy there (:func:`read_checkpoint_cached`).
        sha256: the file's sha256 when the caller has it already (keys the stripped copy).
    """
    path = Path(path)
    checkpoint = read_checkpoint(path) if cache_dir is None else read_checkpoint_cached(path, cache_dir, sha256)
    cfg_model = checkpoint["cfg"]["model"]
    model_name = str(cfg_model["_name"])
    try:
        kind = model_kind(model_name)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    if expected_kind is not None and kind != expected_kind:
        raise CheckpointError(
            f"{path}: this is a {kind} checkpoint ({model_name}), but a {expected_kind} one was expected"
        )
    try:
        config = config_from_cfg(cfg_model, kind)
        model = build_model(config)
        state = {k: v.float() for k, v in map_state_dict(checkpoint["model"], kind).items()}
        _load_strict(model, state)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    return LoadedModel(kind, model, config, path, model_name, demo=bool(checkpoint.get(DEMO_MARKER, False)))


def read_checkpoint_cached(path: str | Path, cache_dir: str | Path, sha256: str | None = None) -> dict[str, Any]:
    """:func:`read_checkpoint` through a stripped copy: ``<cache_dir>/<sha256 of the file>.safetensors``.

    The published files are ~1.1 GB, two thirds of it optimizer state. The stripped copy holds only ``cfg["model"]``
    (as metadata) and the weights the models use, under their official names, so later start-ups read a third of
    the bytes and never unpickle. It is keyed by the original file's sha256: another file never hits it. An
    unreadable copy is rewritten; a cache folder that cannot be written only costs the speed-up.
    """
    path = Path(path)
    cached = Path(cache_dir) / f"{sha256 or file_sha256(path)}.safetensors"
    if cached.is_file():
        try:
            return _read_stripped(cached)
        except Exception:  # a truncated or foreign cache file: rebuild it from the original
            cached.unlink(missing_ok=True)
    checkpoint = read_checkpoint(path)
    with contextlib.suppress(OSError):  # a read-only cache folder only costs the speed-up
        _write_stripped(checkpoint, cached)
    return checkpoint


def _write_stripped(checkpoint: dict[str, Any], target: Path) -> None:
    from safetensors.torch import save_file

    weights = {
        key: tensor.contiguous()
        for key, tensor in checkpoint["model"].items()
        if not _DROPPED.match(key.removeprefix("encoder."))
    }
    metadata = {
        "cfg_model": json.dumps(checkpoint["cfg"]["model"]),
        DEMO_MARKER: str(bool(checkpoint.get(DEMO_MARKER))),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    save_file(weights, str(partial), metadata=metadata)
    partial.replace(target)


def _read_stripped(cached: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(cached), framework="pt") as handle:
        metadata = handle.metadata() or {}
        weights = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    return {
        "cfg": {"model": json.loads(metadata["cfg_model"])},
        "model": weights,
        DEMO_MARKER: metadata.get(DEMO_MARKER) == "True",
    }


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"missing weights for {len(missing)} parameters, e.g. {missing[:3]}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"shape of {key} is {tuple(tensor.shape)} but cfg['model'] implies {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state, strict=True)


def pretraining_head_parameters(cfg_model: dict[str, Any]) -> int:
    """Parameters a ``wav2vec2_cmsc`` checkpoint holds beyond the encoder (mask_emb, quantizer, projections).

    Used to state the published parameter count (90,883,072) of the pretrained model, whose pretraining
    heads are not built here.
    """
    embed_dim = int(cfg_model.get("encoder_embed_dim", 768))
    conv_dim = parse_conv_layers(cfg_model.get("conv_feature_layers", _CFG_DEFAULTS["conv_feature_layers"]))[-1][0]
    final_dim = int(cfg_model.get("final_dim") or embed_dim)
    groups, num_vars = int(cfg_model.get("latent_groups", 2)), int(cfg_model.get("latent_vars", 320))
    latent_dim = int(cfg_model.get("latent_dim") or final_dim)
    var_dim = latent_dim // groups
    total = embed_dim  # mask_emb
    if cfg_model.get("quantize_targets", True):
        total += groups * num_vars * var_dim  # quantizer.vars
        total += conv_dim * groups * num_vars + groups * num_vars  # quantizer.weight_proj
        total += latent_dim * final_dim + final_dim  # project_q
    else:
        total += conv_dim * final_dim + final_dim  # project_q
    total += embed_dim * final_dim + final_dim  # final_proj
    return total


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
