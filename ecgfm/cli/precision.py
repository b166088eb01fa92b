"""``ecgfm check-precision`` (a variant against fp32 on a site's own records), ``ecgfm export`` (ONNX), and the
``--precision`` / ``--pos-conv`` options of ``ecgfm predict``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

PRECISION_CHOICES = ("fp32", "bf16", "fp16", "int8", "auto")


def add_variant_arguments(parser: argparse.ArgumentParser) -> None:
    """``--precision`` and ``--pos-conv``: a variant other than the fp32 reference is self-checked before it runs."""
    parser.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        help="fp32 (the reference), or a variant self-checked against it first (default: $ECGFM_PRECISION)",
    )
    parser.add_argument(
        "--pos-conv", choices=("conv", "fft"), help="the positional conv as an FFT (default: $ECGFM_POS_CONV)"
    )


def add_check_precision_parser(commands: Any) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "check-precision",
        help="run records through a variant (int8 ...) and the fp32 reference, print per-label deviations",
        description="The start-up self-check (ecgfm.precision) on your own records: exit 0 when every model stays "
        "within the bound (probabilities 0.01, embedding cosine 0.999), 1 when one does not, 2 when it cannot run.",
    )
    parser.add_argument("records", nargs="+", help=".json, .csv, .npy, WFDB .hea or hospital files")
    parser.add_argument("--pretrained", help="pretrained .pt (default: $ECGFM_PRETRAINED_CHECKPOINT, else the hub)")
    parser.add_argument("--finetuned", help="finetuned .pt (default: $ECGFM_FINETUNED_CHECKPOINT, else the hub)")
    parser.add_argument("--only", choices=("clinical", "features"), help="check one model only")
    parser.add_argument("--fs", type=float, help="sampling rate for .npy and .csv files")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    add_variant_arguments(parser)
    parser.set_defaults(run=run_check_precision)
    return parser


def add_export_parser(commands: Any) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "export",
        help="write a model as ONNX (fp32; for ONNX Runtime, Triton or an edge device)",
        description="Inputs source float32 [batch, 12, 2500] and padding_mask bool [batch, 2500]; output "
        "probabilities [batch, 17] (finetuned) or embedding [batch, D] (pretrained); dynamic batch axis "
        "(ecgfm/network/export.py, docs/deployment.md).",
    )
    parser.add_argument("out", help="the .onnx file to write")
    parser.add_argument("--format", choices=("onnx",), default="onnx")
    parser.add_argument("--kind", choices=("finetuned", "pretrained"), required=True)
    parser.add_argument("--checkpoint", help="the .pt (default: $ECGFM_<KIND>_CHECKPOINT, demo, else the hub)")
    parser.set_defaults(run=run_export)
    return parser


def run_check_precision(args: argparse.Namespace) -> int:
    from ecgfm.inference import check_against, load_model
    from ecgfm.network.checkpoint import CheckpointError
    from ecgfm.network.hub import WeightsNotFoundError
    from ecgfm.precision import read_segments
    from ecgfm.records.preprocess import ECGInputError
    from ecgfm.records.record import RecordError

    kinds = {"clinical": ("finetuned",), "features": ("pretrained",)}.get(args.only, ("finetuned", "pretrained"))
    try:
        checked = read_segments(
            args.records, args.fs, lambda path, exc: print(f"ecgfm: skipped {path}: {exc}", file=sys.stderr)
        )
        handles = {}
        for kind in kinds:
            path = args.finetuned if kind == "finetuned" else args.pretrained
            variant = load_model(kind, path, args.device, args.precision, args.pos_conv, self_check=False)
            if variant.reference:
                print(f"ecgfm: {variant.variant} is the reference: name a variant (--precision int8 ...)")
                return 2
            reference = load_model(kind, path, args.device, "fp32", "conv", False, self_check=False)
            handles[kind] = (variant, reference)
    except (CheckpointError, WeightsNotFoundError, RecordError, ECGInputError, ValueError) as exc:
        print(f"ecgfm: {exc}", file=sys.stderr)
        return 2
    failed = False
    for kind, (variant, reference) in handles.items():
        comparison = check_against(variant, reference, checked)
        summary = comparison.summary
        verdict = "within the bound" if summary.passed else "OUTSIDE THE BOUND: do not serve it on these weights"
        if summary.max_probability_difference is not None:
            deviation = f"largest probability difference {summary.max_probability_difference:.5f}"
        else:
            deviation = f"smallest embedding cosine {summary.min_embedding_cosine:.6f}"
        print(
            f"{kind} {variant.variant} vs fp32 on {summary.segments} segments of {len(summary.records)} records: "
            f"{deviation} (bound {summary.bound}): {verdict}"
        )
        for label, difference in (comparison.per_label or {}).items():
            print(f"  {label:<48} {difference:.5f}")
        failed |= not summary.passed
    return 1 if failed else 0


def run_export(args: argparse.Namespace) -> int:
    from ecgfm.inference import load_model
    from ecgfm.network.checkpoint import CheckpointError
    from ecgfm.network.export import INPUT_NAMES, OPSET, OUTPUT_NAMES, export_onnx
    from ecgfm.network.hub import WeightsNotFoundError

    try:
        handle = load_model(args.kind, args.checkpoint, "cpu", "fp32", "conv", False, self_check=False)
    except (CheckpointError, WeightsNotFoundError) as exc:
        print(f"ecgfm: {exc}", file=sys.stderr)
        return 2
    out = export_onnx(handle.loaded.model, args.out, args.kind)
    if handle.demo:
        print("ecgfm: WARNING: DEMO (random) weights exported", file=sys.stderr)
    print(
        f"wrote {out} (ONNX opset {OPSET}; inputs {', '.join(INPUT_NAMES)}; output {OUTPUT_NAMES[args.kind]}; "
        f"checkpoint sha256 {handle.sha256})"
    )
    return 0
