"""``ecgfm`` command line: ``predict`` records to JSON Lines, write ``demo-checkpoints``, ``inspect`` a checkpoint;
``batch``, ``convert`` and ``probe`` have a module each."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from tqdm import tqdm

from ecgfm.cli.precision import add_variant_arguments

if TYPE_CHECKING:
    from ecgfm.inference import Predictor


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ecgfm", description="ECG-FM inference without fairseq-signals.")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="run ECG-FM on records, write one JSON object per record")
    predict.add_argument("records", nargs="+", help=".json, .csv, .npy or WFDB .hea files")
    predict.add_argument("--pretrained", help="pretrained .pt (default: $ECGFM_PRETRAINED_CHECKPOINT, else the hub)")
    predict.add_argument("--finetuned", help="finetuned .pt (default: $ECGFM_FINETUNED_CHECKPOINT, else the hub)")
    predict.add_argument("--only", choices=("clinical", "features"), help="run one model only")
    predict.add_argument("--output", "-o", help="JSON Lines file (default: stdout)")
    predict.add_argument("--fs", type=float, help="sampling rate for .npy and .csv files")
    predict.add_argument("--per-segment", action="store_true", help="also output per-segment results")
    predict.add_argument(
        "--saliency",
        action="store_true",
        help="add 'saliency' to each body: where in the tracing the model attended, per segment (attention, not cause)",
    )
    predict.add_argument(
        "--ignore-extra-leads", action="store_true", help="drop leads that are not one of the 12 (e.g. Frank leads)"
    )
    predict.add_argument("--max-duration", type=float, default=None, help="refuse records longer than this (s)")
    predict.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    add_variant_arguments(predict)
    predict.add_argument(
        "--format",
        choices=("json", "fhir", "hl7v2"),
        default="json",
        help="fhir: one FHIR R4 Bundle per line (ecgfm.results.fhir); hl7v2: one HL7 v2.5.1 ORU^R01 message per record "
        "(ER7, segments ended by carriage returns, a newline after each message; the labels only, no PID: "
        "ecgfm.results.hl7v2)",
    )
    predict.add_argument(
        "--fhir-bundle",
        choices=("collection", "transaction"),
        help="with --format fhir: the Bundle's type (default collection); transaction to POST it to a FHIR server's "
        "base URL (each entry with request POST <type>)",
    )

    demo = commands.add_parser("demo-checkpoints", help="write random-init checkpoints in the official format")
    demo.add_argument("--out", required=True, help="directory for pretrained.pt and finetuned.pt")
    demo.add_argument("--size", choices=("full", "small"), default="full")
    demo.add_argument("--seed", type=int, default=0)

    inspect = commands.add_parser("inspect", help="describe a checkpoint (kind, architecture, parameters)")
    inspect.add_argument("checkpoint")

    download = commands.add_parser(
        "download", help="fetch both published checkpoints from the Hugging Face Hub and print the variables to set"
    )
    download.add_argument("--revision", help="Hub revision (a commit hash pins it; default: $ECGFM_HF_REVISION)")
    download.add_argument("--to", help="put the files in this folder (default: the Hugging Face cache, $HF_HOME)")

    from ecgfm.cli.batch import add_batch_parser
    from ecgfm.cli.convert import add_convert_parser
    from ecgfm.cli.evaluate import add_evaluate_parser
    from ecgfm.cli.precision import add_check_precision_parser, add_export_parser
    from ecgfm.cli.probe import add_probe_parser

    add_batch_parser(commands)  # ecgfm batch: ecgfm/cli/batch.py
    add_convert_parser(commands)  # ecgfm convert: ecgfm/cli/convert.py
    add_evaluate_parser(commands)  # ecgfm evaluate: ecgfm/cli/evaluate.py
    add_probe_parser(commands)  # ecgfm probe fit|predict: ecgfm/cli/probe.py
    add_check_precision_parser(commands)  # ecgfm check-precision: ecgfm/cli/precision.py
    add_export_parser(commands)  # ecgfm export: ecgfm/cli/precision.py

    args = parser.parse_args(argv)
    if args.command == "predict" and args.fhir_bundle and args.format != "fhir":
        parser.error("--fhir-bundle is for --format fhir")
    if args.command == "predict" and args.format == "hl7v2" and args.only == "features":
        parser.error("--format hl7v2 carries the labels' probabilities: leave out --only features")
    if args.command in ("batch", "convert", "evaluate", "probe", "check-precision", "export"):
        return args.run(args)
    if args.command == "predict":
        return _predict(args)
    if args.command == "demo-checkpoints":
        return _demo(args)
    if args.command == "download":
        return _download(args)
    return _inspect(args)


def _predict(args: argparse.Namespace) -> int:
    from ecgfm.inference import Predictor
    from ecgfm.network.checkpoint import CheckpointError
    from ecgfm.network.hub import WeightsNotFoundError

    try:
        predictor = Predictor.from_paths(
            args.pretrained,
            args.finetuned,
            load_pretrained=args.only != "clinical" and args.format != "hl7v2",  # HL7 v2 has no place for an embedding
            load_finetuned=args.only != "features",
            device=args.device,
            precision=args.precision,
            pos_conv=args.pos_conv,
        )
    except (CheckpointError, WeightsNotFoundError, ValueError) as exc:
        print(f"ecgfm: {exc}", file=sys.stderr)
        return 2
    for handle in (predictor.pretrained, predictor.finetuned):
        if handle is not None and handle.demo:
            print(f"ecgfm: WARNING: the {handle.kind} model has DEMO (random) weights", file=sys.stderr)
        if handle is not None and handle.self_check is not None:
            from ecgfm.inference import check_line

            print(f"ecgfm: {check_line(handle)}", file=sys.stderr)

    with open(args.output, "w") if args.output else contextlib.nullcontext(sys.stdout) as output:
        failures = _predict_records(predictor, args, output)
    if failures:  # bad input: every other record is still written
        print(f"ecgfm: {failures} of {len(args.records)} records skipped", file=sys.stderr)
    return 2 if failures else 0


def _predict_records(predictor: Predictor, args: argparse.Namespace, output: TextIO) -> int:
    """Predict each record into ``output``; returns how many were skipped."""
    from ecgfm.records.preprocess import ECGInputError
    from ecgfm.records.readers import read_record
    from ecgfm.records.record import RecordError

    failures = 0
    progress = tqdm(args.records, desc="records", unit="rec", file=sys.stderr, disable=len(args.records) < 2)
    for path in progress:
        try:
            record = read_record(path, fs=args.fs)
            result = predictor.predict(
                record,
                per_segment=args.per_segment,
                saliency=args.saliency,
                max_duration_s=args.max_duration,
                ignore_extra_leads=args.ignore_extra_leads,
            )
        except (RecordError, ECGInputError) as exc:
            failures += 1
            progress.write(f"ecgfm: skipped {path}: {exc}", file=sys.stderr)
            continue
        output.write(_formatted(result, args) + "\n")
        output.flush()
    return failures


def _formatted(result: dict, args: argparse.Namespace) -> str:
    """One record's result as ``--format`` asks: a JSON line, a FHIR Bundle on one line, or an HL7 v2 message."""
    if args.format == "fhir":
        from ecgfm.results.fhir import bundle_for_result

        return json.dumps(bundle_for_result(result, bundle_type=args.fhir_bundle or "collection"))
    if args.format == "hl7v2":
        from ecgfm.results.hl7v2 import message_for_result

        return message_for_result(result)
    return json.dumps(result)


def _download(args: argparse.Namespace) -> int:
    """Both checkpoints (progress bars on stderr), then the two ``export`` lines on stdout."""
    from ecgfm.network.hub import WeightsNotFoundError, download
    from ecgfm.settings import WeightsSettings

    try:
        sources = download(args.revision, args.to)
    except WeightsNotFoundError as exc:
        print(f"ecgfm: {exc}", file=sys.stderr)
        return 2
    for kind, source in sources.items():
        print(f"export {WeightsSettings.env_var(f'{kind}_checkpoint')}={shlex.quote(source.path)}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ecgfm.network.demo import write_demo_checkpoints

    pretrained, finetuned = write_demo_checkpoints(Path(args.out), size=args.size, seed=args.seed)
    print(f"wrote {pretrained} and {finetuned} (DEMO: random weights, outputs are meaningless)")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ecgfm.network.checkpoint import CheckpointError, load_checkpoint

    try:
        loaded = load_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        print(f"ecgfm: {exc}", file=sys.stderr)
        return 2
    summary = {
        "kind": loaded.kind,
        "model_type": loaded.model_name,
        "demo": loaded.demo,
        "parameters": loaded.num_parameters,
        "config": asdict(loaded.config),
    }
    print(json.dumps(summary, indent=2))
    return 0
