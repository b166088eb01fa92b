"""``ecgfm evaluate PREDICTIONS --labels LABELS --out DIR``: ECG-FM measured against a site's own labels
(:mod:`ecgfm.evaluation`; docs/evaluation.md). Refused input: one message, exit status 2, nothing written."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError("expected a number in (0, 1], e.g. 0.9")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("expected an integer >= 1")
    return value


def add_evaluate_parser(commands: Any) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="measure ECG-FM against a site's own labels (AUROC, AUPRC, operating points, calibration, with "
        "confidence intervals) and choose thresholds for the interpreter",
    )
    evaluate.add_argument(
        "predictions", help="ecgfm predict -o JSON Lines, an ecgfm batch output folder (Parquet), or probe predictions"
    )
    evaluate.add_argument(
        "--labels",
        required=True,
        help="a CSV with 'record' and one 0/1 column per label, a CSV with 'record' and 'snomed' (SNOMED CT codes, "
        "';'-separated), or a folder of WFDB headers with '# Dx:' lines (PhysioNet/CinC 2021)",
    )
    evaluate.add_argument(
        "--out", required=True, help="new folder: metrics.json, metrics.csv, report.html, thresholds.yaml"
    )
    evaluate.add_argument(
        "--target-sensitivity",
        type=_fraction,
        help="choose each label's threshold as the highest one reaching this sensitivity (default: Youden's J)",
    )
    evaluate.add_argument("--bootstrap", type=_positive, default=1000, help="bootstrap resamples (default 1000)")
    evaluate.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    evaluate.add_argument(
        "--thresholds",
        help="the interpreter's thresholds file to measure (default: $ECGFM_THRESHOLDS, else "
        "interpreter/thresholds.yaml)",
    )
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ecgfm.evaluation.errors import EvaluationInputError
    from ecgfm.evaluation.metrics import Bootstrap
    from ecgfm.evaluation.run import EvaluationOptions, evaluate
    from ecgfm.settings import InterpreterSettings, SettingsError

    try:
        options = EvaluationOptions(
            predictions=Path(args.predictions),
            labels=Path(args.labels),
            out=Path(args.out),
            target_sensitivity=args.target_sensitivity,
            bootstrap=Bootstrap(args.bootstrap, args.seed),
            thresholds=args.thresholds or InterpreterSettings.from_env().thresholds,
            quiet=args.quiet,
        )
        evaluate(options)
    except (EvaluationInputError, SettingsError, OSError) as exc:
        print(f"ecgfm evaluate: {exc}", file=sys.stderr)
        return 2
    return 0
