"""How far each fast-path variant lands from fp32 as loaded and from fairseq-signals' outputs, on the parity fixture.

``python -m benchmarks.bench_fast_tolerance`` (seconds on a CPU): the small parity checkpoints of ``shared/parity``,
the fixture's three unpadded segments (``x``) and, for the classifier, its padded segments too. For every variant
of ``ecgfm.network.fast.optimize_for_inference`` it records the largest absolute difference of logits and probabilities,
and the smallest cosine similarity of the embedding (time mean) and of the per-frame hidden states, against

* ``fp32``: the same checkpoint as loaded, unchanged (what the fast path replaces), and
* ``fairseq``: the outputs the real fairseq-signals models computed (``reference_outputs.npz``).

Writes ``benchmarks/results/fast_path_tolerance_<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from benchmarks.common import PARITY_CKPT_DIR, machine_info, markdown_table, write_results
from ecgfm.network.checkpoint import load_checkpoint
from ecgfm.network.fast import optimize_for_inference
from ecgfm.network.model import time_mean

REFERENCE = PARITY_CKPT_DIR.parent / "reference_outputs.npz"
FINETUNED = PARITY_CKPT_DIR / "ecgfm_small_finetuned.pt"
PRETRAINED = PARITY_CKPT_DIR / "ecgfm_small_pretrained.pt"
VARIANTS = {  # name: optimize_for_inference options
    "fp32 folded": {"precision": "fp32"},
    "fp32+fft": {"precision": "fp32", "pos_conv": "fft"},
    "bf16": {"precision": "bf16"},
    "bf16+fft": {"precision": "bf16", "pos_conv": "fft"},
    "fp16": {"precision": "fp16"},
    "fp16+fft": {"precision": "fp16", "pos_conv": "fft"},
}


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def _min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    dim = a.shape[-1]
    return float(F.cosine_similarity(a.double().reshape(-1, dim), b.double().reshape(-1, dim)).min())


@torch.inference_mode()
def _outputs(options: dict[str, str] | None, ref: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Logits (plain and padded) of the classifier, hidden states and their time mean of the encoder."""
    classifier = load_checkpoint(FINETUNED).model.eval()
    encoder = load_checkpoint(PRETRAINED).model.eval()
    if options is not None:
        classifier = optimize_for_inference(classifier, **options)
        encoder = optimize_for_inference(encoder, **options)
    x = torch.from_numpy(ref["x"])
    hidden, frame_mask = encoder(x)
    return {
        "logits": classifier(x),
        "logits_padded": classifier(torch.from_numpy(ref["x_padded"]), torch.from_numpy(ref["padding_mask_in"])),
        "hidden": hidden,
        "embedding": time_mean(hidden, frame_mask),
    }


def _compare(out: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> dict[str, float]:
    return {
        "logits_max_abs": _max_abs(out["logits"], base["logits"]),
        "logits_padded_max_abs": _max_abs(out["logits_padded"], base["logits_padded"]),
        "probabilities_max_abs": _max_abs(torch.sigmoid(out["logits"]), torch.sigmoid(base["logits"])),
        "probabilities_padded_max_abs": _max_abs(
            torch.sigmoid(out["logits_padded"]), torch.sigmoid(base["logits_padded"])
        ),
        "embedding_min_cosine": _min_cosine(out["embedding"], base["embedding"]),
        "hidden_min_cosine_per_frame": _min_cosine(out["hidden"], base["hidden"]),
        "hidden_max_abs": _max_abs(out["hidden"], base["hidden"]),
    }


def measure() -> dict[str, Any]:
    ref = dict(np.load(REFERENCE))
    fairseq = {
        "logits": torch.from_numpy(ref["ft_logits"]),
        "logits_padded": torch.from_numpy(ref["ft_logits_padded"]),
        "hidden": torch.from_numpy(ref["pt_x"]),
        "embedding": torch.from_numpy(ref["pt_x_time_mean"]),
    }
    fp32 = _outputs(None, ref)
    variants = {"fp32 as loaded": {"against_fairseq": _compare(fp32, fairseq)}}
    for name, options in VARIANTS.items():
        out = _outputs(options, ref)
        variants[name] = {
            "options": options,
            "against_fp32": _compare(out, fp32),
            "against_fairseq": _compare(out, fairseq),
        }
    return {"device": "cpu", "checkpoints": [FINETUNED.name, PRETRAINED.name], "variants": variants}


def to_markdown(data: dict[str, Any]) -> str:
    rows = []
    for name, variant in data["variants"].items():
        for against in ("against_fp32", "against_fairseq"):
            if against not in variant:
                continue
            m = variant[against]
            rows.append(
                [
                    name,
                    against.removeprefix("against_"),
                    f"{max(m['logits_max_abs'], m['logits_padded_max_abs']):.2g}",
                    f"{max(m['probabilities_max_abs'], m['probabilities_padded_max_abs']):.2g}",
                    f"{m['embedding_min_cosine']:.6f}",
                    f"{m['hidden_min_cosine_per_frame']:.6f}",
                    f"{m['hidden_max_abs']:.2g}",
                ]
            )
    headers = ["variant", "against", "logits max abs", "probabilities max abs", "embedding min cosine",
               "hidden min cosine per frame", "hidden max abs"]  # fmt: skip
    return (
        "# Fast path against fp32 and fairseq-signals, parity fixture (small model), CPU\n\n"
        f"Checkpoints {', '.join(data['checkpoints'])}; 3 segments, plain and padded (logits and probabilities: "
        "the larger of the two).\n\n" + markdown_table(headers, rows)
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="fast_path_tolerance_cpu")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    data = {**measure(), "machine": machine_info()}
    write_results(args.name, data, to_markdown(data))
    return data


if __name__ == "__main__":
    main()
