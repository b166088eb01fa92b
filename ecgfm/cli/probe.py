"""``ecgfm probe fit|predict``: its arguments, exit statuses and messages (the probes: :mod:`ecgfm.probes`).

``ecgfm probe predict`` writes JSON Lines, one line per record, the body of ``POST /probes/<name>`` led by the
record's name: ``{"record": ..., "probe": {"name": ..., "targets": [...], "probabilities": {target: p}},
"checkpoint": {... "sha256": ..., "demo": ...}, "demo": ..., "n_segments": ..., ...}`` (docs/probes.md).
Exit statuses: 0 done, 1 some records skipped (predict), 2 nothing could be done (the message says why).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import shlex
import sys
from pathlib import Path

import numpy as np


def add_probe_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``ecgfm probe fit`` and ``ecgfm probe predict`` on the CLI's subcommands."""
    parser = commands.add_parser(
        "probe",
        help="fit a probe (logistic regression) on ECG-FM embeddings for a new finding, or apply one (docs/probes.md)",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    fit = actions.add_parser("fit", help="fit a probe on embeddings and 0/1 labels; writes NAME.probe")
    fit.add_argument(
        "--embeddings",
        nargs="+",
        required=True,
        help="an `ecgfm batch` output folder (its features column), or record files to embed",
    )
    fit.add_argument("--labels", required=True, help="CSV: a 'record' column and one 0/1 column per target")
    fit.add_argument("--out", required=True, help="the probe file, NAME.probe (NAME: a-z, 0-9, _ and -)")
    fit.add_argument("--targets", help="comma-separated label columns to fit (default: every column but 'record')")
    fit.add_argument("--folds", type=int, default=5, help="k of the stratified k-folds (default 5)")
    fit.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the AUROC interval")
    fit.add_argument("--seed", type=int, default=0, help="seed of the folds and the bootstrap")
    fit.add_argument("--pretrained", help="pretrained .pt to embed records (default: as ecgfm predict)")
    fit.add_argument("--fs", type=float, help="sampling rate for .npy and .csv records")
    fit.add_argument("--device", help="torch device to embed records (default: cuda if available, else cpu)")
    predict = actions.add_parser("predict", help="apply a probe to records; one JSON line per record")
    predict.add_argument("probe", help="a NAME.probe file")
    predict.add_argument("records", nargs="+", help="record files, as for ecgfm predict")
    predict.add_argument("--output", "-o", help="JSON Lines file (default: stdout)")
    predict.add_argument("--pretrained", help="pretrained .pt (default: as ecgfm predict); must be the probe's")
    predict.add_argument("--fs", type=float, help="sampling rate for .npy and .csv records")
    predict.add_argument("--per-segment", action="store_true", help="also each 5 s segment's probabilities")
    predict.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.set_defaults(run=run_probe)
    return parser


def run_probe(args: argparse.Namespace) -> int:
    return _fit(args) if args.action == "fit" else _predict(args)


def _fail(message: str) -> int:
    print(f"ecgfm: {message}", file=sys.stderr)
    return 2


def read_labels(path: Path, targets: str | None) -> tuple[list[str], list[str], np.ndarray]:
    """The labels CSV: record names, target names and the ``[N, T]`` 0/1 matrix (ValueError says what is wrong)."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c for c in (reader.fieldnames or []) if c != "record"]
        if "record" not in (reader.fieldnames or []):
            raise ValueError(f"{path}: no 'record' column (the record names, as ecgfm batch's 'record' column)")
        chosen = [t.strip() for t in targets.split(",")] if targets else columns
        if not chosen or any(t not in columns for t in chosen):
            raise ValueError(f"{path}: targets {chosen}, but the label columns are {columns}")
        records, rows = [], []
        for line, row in enumerate(reader, start=2):
            values = [(row[t] or "").strip() for t in chosen]
            if any(v not in ("0", "1") for v in values):
                raise ValueError(f"{path}, line {line}: every label must be 0 or 1")
            records.append(row["record"])
            rows.append([int(v) for v in values])
    if len(set(records)) != len(records):
        raise ValueError(f"{path}: a record is named on two lines")
    return records, chosen, np.asarray(rows, dtype=np.int64).reshape(len(records), len(chosen))


def _embeddings(args: argparse.Namespace) -> tuple[dict[str, np.ndarray], str, bool, dict[str, object]]:
    """Record name -> embedding, the pretrained checkpoint's sha256 and demo flag, and where they came from."""
    sources = [Path(p) for p in args.embeddings]
    if len(sources) == 1 and (sources[0].is_dir() or sources[0].suffix == ".parquet"):
        from ecgfm.archive.parts import read_features

        table, metadata = read_features(sources[0])
        names = table["record"].to_pylist()
        if len(set(names)) != len(names):
            raise ValueError(f"{sources[0]}: a record name is on two rows; name records uniquely to label them")
        features = np.asarray(table["features"].to_pylist(), dtype=np.float64)
        pretrained = metadata["checkpoints"]["pretrained"]
        source = {"kind": "ecgfm batch", "rows": len(names)}
        return dict(zip(names, features, strict=True)), pretrained["sha256"], bool(pretrained["demo"]), source
    from ecgfm.probes.embeddings import encoder, record_features

    predictor = encoder(args.pretrained, args.device)
    handle = predictor.pretrained
    assert handle is not None
    embedded: dict[str, np.ndarray] = {}
    for item in record_features(predictor, args.embeddings, fs=args.fs):
        if item.features is None:
            print(f"ecgfm: skipped {item.path}: {item.error}", file=sys.stderr)
            continue
        if item.name in embedded:
            raise ValueError(f"{item.path}: the record name {item.name} is given twice")
        embedded[str(item.name)] = np.asarray(item.features.features)
    return embedded, handle.sha256, handle.demo, {"kind": "records", "files": len(args.embeddings)}


def _fit(args: argparse.Namespace) -> int:
    from ecgfm.network.checkpoint import CheckpointError
    from ecgfm.network.hub import WeightsNotFoundError
    from ecgfm.probes.fit import ProbeFitError, fit_probe
    from ecgfm.probes.probe import ProbeFileError, probe_name, save_probe

    try:
        name = probe_name(Path(args.out))
        records, targets, labels = read_labels(Path(args.labels), args.targets)
        embedded, sha256, demo, source = _embeddings(args)
    except (ValueError, OSError, CheckpointError, WeightsNotFoundError) as exc:
        return _fail(str(exc))
    missing = [r for r in records if r not in embedded]
    if missing:
        return _fail(
            f"{len(missing)} labelled records have no embedding ({', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}): the 'record' names must match the embedded records' names"
        )
    if len(embedded) > len(records):
        unlabelled = len(embedded) - len(records)
        print(f"ecgfm: {unlabelled} embedded records have no labels and are left out", file=sys.stderr)
    if demo:
        print("ecgfm: WARNING: embeddings of DEMO (random) weights: the probe is meaningless", file=sys.stderr)
    x = np.stack([embedded[r] for r in records])
    command = shlex.join(["ecgfm", *sys.argv[1:]]) if sys.argv[1:2] == ["probe"] else "ecgfm probe fit"
    try:
        probe = fit_probe(
            x,
            labels,
            targets,
            name=name,
            pretrained_sha256=sha256,
            demo=demo,
            folds=args.folds,
            bootstrap=args.bootstrap,
            seed=args.seed,
            command=command,
            source=source,
        )
        path = save_probe(probe, Path(args.out))
    except (ProbeFitError, ProbeFileError, OSError) as exc:
        return _fail(str(exc))
    for target, figures in probe.summary["targets"].items():
        low, high = figures["cv_auroc_95ci"]
        print(
            f"{target}: cross-validated AUROC {figures['cv_auroc']:.3f} (95% CI {low:.3f}-{high:.3f}) on "
            f"{len(records)} records, {figures['positives']} positive; C={figures['C']:g}",
            file=sys.stderr,
        )
    print(f"wrote {path} (fit on the pretrained checkpoint {sha256})")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ecgfm.network.checkpoint import CheckpointError
    from ecgfm.network.hub import WeightsNotFoundError
    from ecgfm.probes.embeddings import encoder, record_features
    from ecgfm.probes.probe import ProbeFileError, load_probe

    try:
        probe = load_probe(args.probe)
        predictor = encoder(args.pretrained, args.device)
        assert predictor.pretrained is not None
        probe.check_checkpoint(predictor.pretrained.sha256)
    except (ProbeFileError, CheckpointError, WeightsNotFoundError) as exc:
        return _fail(str(exc))
    if probe.demo or predictor.pretrained.demo:
        print("ecgfm: WARNING: DEMO (random) weights: the probe's outputs are meaningless", file=sys.stderr)
    failures = 0
    with open(args.output, "w") if args.output else contextlib.nullcontext(sys.stdout) as output:
        for item in record_features(predictor, args.records, fs=args.fs, per_segment=args.per_segment):
            if item.features is None:
                failures += 1
                print(f"ecgfm: skipped {item.path}: {item.error}", file=sys.stderr)
                continue
            output.write(json.dumps({"record": item.name, **probe.output(item.features).to_json()}) + "\n")
            output.flush()
    if failures:
        print(f"ecgfm: {failures} of {len(args.records)} records skipped", file=sys.stderr)
    return 1 if failures else 0
