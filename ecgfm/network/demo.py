"""Random-init demo checkpoints in the official fairseq-signals format, for trying the product offline.

They load through the same :func:`ecgfm.network.checkpoint.load_checkpoint` as the published files and carry the
marker :data:`ecgfm.network.checkpoint.DEMO_MARKER`, so every report on a model loaded from them says "demo".
Their outputs are meaningless.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from ecgfm.labels import LABELS
from ecgfm.network.checkpoint import DEMO_MARKER, config_from_cfg, to_fairseq_state_dict
from ecgfm.network.model import ECGFMClassifier, ECGFMEncoder

DemoSize = Literal["full", "small"]

# Architecture fields of cfg["model"] as fairseq-signals writes them.
_ARCHITECTURES: dict[str, dict] = {
    "full": {
        "conv_feature_layers": "[(256, 2, 2)] * 4",
        "encoder_embed_dim": 768,
        "encoder_layers": 12,
        "encoder_ffn_embed_dim": 3072,
        "encoder_attention_heads": 12,
        "conv_pos": 128,
        "conv_pos_groups": 16,
        "final_dim": 256,
    },
    "small": {
        "conv_feature_layers": "[(32, 2, 2)] * 4",
        "encoder_embed_dim": 64,
        "encoder_layers": 2,
        "encoder_ffn_embed_dim": 128,
        "encoder_attention_heads": 4,
        "conv_pos": 16,
        "conv_pos_groups": 4,
        "final_dim": 32,
    },
}
_TASKS = {"pretrained": "ecg_pretraining", "finetuned": "ecg_classification"}
_COMMON_FIELDS = {"in_d": 12, "conv_bias": False, "extractor_mode": "default", "layer_norm_first": False}


def demo_cfg_model(size: DemoSize, kind: Literal["pretrained", "finetuned"]) -> dict:
    """The ``cfg["model"]`` dict of a demo checkpoint."""
    if size not in _ARCHITECTURES:
        raise ValueError(f"demo size must be one of {sorted(_ARCHITECTURES)}, got {size!r}")
    cfg = {**_COMMON_FIELDS, **_ARCHITECTURES[size]}
    if kind == "pretrained":
        return {"_name": "wav2vec2_cmsc", **cfg, "quantize_targets": True, "latent_vars": 320, "latent_groups": 2}
    return {"_name": "ecg_transformer_classifier", **cfg, "num_labels": len(LABELS), "no_pretrained_weights": True}


def write_demo_checkpoints(directory: str | Path, size: DemoSize = "full", seed: int = 0) -> tuple[Path, Path]:
    """Write ``pretrained.pt`` and ``finetuned.pt`` (same random encoder, random head) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    pretrained_cfg = demo_cfg_model(size, "pretrained")
    finetuned_cfg = demo_cfg_model(size, "finetuned")
    encoder = ECGFMEncoder(config_from_cfg(pretrained_cfg, "pretrained"))
    classifier = ECGFMClassifier(config_from_cfg(finetuned_cfg, "finetuned"))
    classifier.encoder.load_state_dict(encoder.state_dict())
    paths = []
    for name, model, cfg in (("pretrained", encoder, pretrained_cfg), ("finetuned", classifier, finetuned_cfg)):
        path = directory / f"{name}.pt"
        checkpoint = {
            "args": None,
            "cfg": {"_name": None, "model": cfg, "task": {"_name": _TASKS[name]}},
            "model": to_fairseq_state_dict(model),
            "criterion": None,
            "optimizer_history": [],
            "task_state": {},
            "extra_state": {},
            "last_optimizer_state": None,
            DEMO_MARKER: True,
        }
        tmp = path.with_suffix(".tmp")
        torch.save(checkpoint, tmp)
        tmp.replace(path)
        paths.append(path)
    return paths[0], paths[1]
