"""Command line: ``python -m interpreter hr RECORD`` and ``python -m interpreter report ...``.

Examples::

    python -m interpreter hr ../shared/data/MIT-LCP_wfdb-python/100.hea
    python -m interpreter report rec1.json rec2.hea --url http://localhost:3000 --out reports/
    python -m interpreter report rec1.json --finetuned ft.pt --out reports/ --saliency
    python -m interpreter report rec1.json --results results.jsonl --out reports/ --thresholds my.yaml
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ecgfm.labels import LABELS
from ecgfm.records.readers import read_record
from ecgfm.records.record import ECGRecord, RecordError
from ecgfm.settings import InterpreterSettings, ServingSettings
from interpreter import DISCLAIMER
from interpreter.findings import ConfigError, interpret, load_config
from interpreter.heart_rate import detect_heart_rate
from interpreter.report import (
    DEMO_BANNER,
    is_demo,
    summary_row,
    write_fhir_bundle,
    write_hl7v2_message,
    write_reports,
    write_summary_csv,
)


class InputError(ValueError):
    """Bad command-line input; the message says what to fix."""


def _read(path: str, fs: float | None) -> ECGRecord:
    return read_record(path, fs=fs)


def heart_rate_of(record: ECGRecord) -> dict[str, Any]:
    """Heart-rate measurement of one record as a JSON-ready dict."""
    result = detect_heart_rate(record.signal, record.fs, record.lead_names).to_dict()
    return {"record": record.name, **result}


def _cmd_hr(args: argparse.Namespace) -> int:
    record = _read(args.record, args.fs)
    print(json.dumps(heart_rate_of(record)))
    return 0


def _probabilities_from(obj: dict[str, Any], where: str) -> dict[str, float]:
    """Find the 17 probabilities in one API result (``clinical.probabilities``, ``probabilities`` or flat)."""
    for candidate in (
        obj.get("clinical", {}).get("probabilities") if isinstance(obj.get("clinical"), dict) else None,
        obj.get("probabilities"),
        obj,
    ):
        if isinstance(candidate, dict):
            probs = {}
            for label in LABELS:
                for key in (label, f"p_{label}", f"prob_{label}"):
                    if key in candidate and candidate[key] not in ("", None):
                        probs[label] = float(candidate[key])
                        break
            if len(probs) == len(LABELS):
                return probs
    raise InputError(
        f"{where}: no probabilities for all 17 labels (expected 'clinical.probabilities', "
        "'probabilities' or one column per label)"
    )


def load_results(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read earlier API results (JSON Lines, a JSON list, or CSV) keyed by record name.

    Each value has ``probabilities`` (17 labels) and ``meta`` (model, checkpoint, demo when present).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such results file")
    text = path.read_text(encoding="utf-8")
    objects: list[dict[str, Any]]
    if path.suffix.lower() == ".csv":
        objects = list(csv.DictReader(text.splitlines()))
    elif text.lstrip().startswith("["):
        objects = json.loads(text)
    else:
        objects = [json.loads(line) for line in text.splitlines() if line.strip()]
    results: dict[str, dict[str, Any]] = {}
    for i, obj in enumerate(objects, 1):
        where = f"{path}: entry {i}"
        name = obj.get("record")
        if not name:
            raise InputError(f"{where}: no 'record' name")
        clinical = obj.get("clinical") if isinstance(obj.get("clinical"), dict) else obj
        meta = {k: clinical[k] for k in ("model", "checkpoint", "demo", "n_segments") if k in clinical}
        saliency = clinical.get("saliency") if isinstance(clinical.get("saliency"), dict) else None
        results[str(name)] = {"probabilities": _probabilities_from(obj, where), "meta": meta, "saliency": saliency}
    return results


def clinical_from_url(url: str, record: ECGRecord, timeout: float = 120.0, saliency: bool = False) -> dict[str, Any]:
    """POST the record to ``{url}/clinical`` and return the JSON answer (with ``$ECGFM_API_KEY`` when set);
    ``saliency`` asks for the answer's ``saliency`` too (``"saliency": true``)."""
    request_body: dict[str, Any] = {"signal": record.signal.tolist(), "fs": record.fs, "lead_names": record.lead_names}
    if saliency:
        request_body["saliency"] = True
    body = json.dumps(request_body)
    headers = {"Content-Type": "application/json"}
    api_key = ServingSettings.from_env().api_key  # the server's optional API key (docs/security.md)
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url.rstrip("/") + "/clinical", data=body.encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise InputError(
            f"{url}/clinical answered {exc.code} for {record.name}: {exc.read().decode(errors='replace')[:500]}"
        ) from exc
    except urllib.error.URLError as exc:
        raise InputError(f"cannot reach {url}: {exc.reason}") from exc


def _local_predictor(finetuned: str) -> Callable[[ECGRecord, bool], dict[str, Any]]:
    """``/clinical`` bodies computed in process (with ``saliency`` when the second argument is true);
    interpretation needs the finetuned model only."""
    from ecgfm.inference import Predictor
    from ecgfm.network.checkpoint import CheckpointError
    from ecgfm.network.hub import WeightsNotFoundError

    try:
        predictor = Predictor.from_paths(finetuned=finetuned, load_pretrained=False)
    except (CheckpointError, WeightsNotFoundError) as exc:
        raise InputError(str(exc)) from None
    return lambda record, saliency: predictor.predict(record, saliency=saliency)["clinical"]


def _meta_from(clinical: dict[str, Any], how: str) -> dict[str, Any]:
    meta = {"probabilities_from": how}
    meta.update({k: clinical[k] for k in ("model", "demo", "n_segments") if k in clinical})
    if isinstance(clinical.get("checkpoint"), dict):
        meta["checkpoint"] = json.dumps(clinical["checkpoint"], sort_keys=True)
    return meta


def _cmd_report(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    config = load_config(args.thresholds or InterpreterSettings.from_env().thresholds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # predict(record, saliency): a /clinical body. The probabilities always come from the plain answer; with
    # --saliency a second answer with "saliency" is fetched for the drawing only (the saliency forward's
    # probabilities differ from the plain forward's by ~1e-7, and a report's must be exactly /clinical's).
    predict: Callable[[ECGRecord, bool], dict[str, Any]] | None = None
    results: dict[str, dict[str, Any]] = {}
    if args.saliency and args.format != "reports":
        raise InputError(f"--saliency draws on the HTML report; --format {args.format} has no drawing (leave out one)")
    if args.results:
        results = load_results(args.results)
    elif args.url:
        url = args.url

        def predict(record: ECGRecord, saliency: bool) -> dict[str, Any]:
            return clinical_from_url(url, record, saliency=saliency)

    else:
        predict = _local_predictor(args.finetuned)

    jobs: list[tuple[str, str | None]] = [(Path(p).stem, p) for p in args.records]
    if args.results and not args.records:
        jobs = [(name, None) for name in results]
    rows = []
    for name, path in tqdm(
        jobs, desc="interpreting", unit="record", file=sys.stderr, disable=args.quiet or len(jobs) < 2
    ):
        record = _read(path, args.fs) if path else None
        key = record.name if record else name
        saliency = None
        if predict is not None:
            clinical = predict(record, False)
            probs = _probabilities_from(clinical, f"{key}: model answer")
            meta = _meta_from(clinical, args.url or "local checkpoints")
            if args.saliency and record is not None:
                saliency = predict(record, True).get("saliency")
                if not isinstance(saliency, dict):
                    raise InputError(f"{args.url or args.finetuned}: no 'saliency' in the answer for {key}")
        else:
            entry = results.get(key) or results.get(name)
            if entry is None:
                raise InputError(f"{args.results}: no result for record {key!r}")
            probs = entry["probabilities"]
            meta = {"probabilities_from": str(args.results), **entry["meta"]}
            if args.saliency and record is not None:
                saliency = entry.get("saliency")
                if saliency is None:
                    raise InputError(
                        f"{args.results}: the result for {key!r} has no 'saliency' (write it with ecgfm predict "
                        "--saliency, or leave out --saliency)"
                    )
        heart_rate = None
        if record is not None:
            heart_rate = detect_heart_rate(record.signal, record.fs, record.lead_names).to_dict()
        interp = interpret(probs, heart_rate, config, record=key)
        if args.format == "fhir":
            write_fhir_bundle(interp, out, demo=is_demo(meta))
        elif args.format == "hl7v2":
            write_hl7v2_message(interp, out, demo=is_demo(meta))
        else:
            write_reports(interp, out, record, meta, saliency=saliency)
        rows.append(summary_row(interp, demo=is_demo(meta)))
    csv_path = write_summary_csv(rows, out / "summary.csv")
    print(f"{len(rows)} report(s) in {out}; summary {csv_path}", file=sys.stderr)
    demos = sum(bool(row["demo"]) for row in rows)
    if demos:
        print(f"{demos} of {len(rows)} report(s): {DEMO_BANNER}", file=sys.stderr)
    print(DISCLAIMER, file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m interpreter", description="Interpret ECG-FM results. " + DISCLAIMER
    )
    sub = parser.add_subparsers(dest="command", required=True)
    hr = sub.add_parser("hr", help="detect R peaks and print the heart rate of one record as JSON")
    hr.add_argument("record", help="a .json, .csv, .npy or .hea record")
    hr.add_argument("--fs", type=float, help="sampling rate, for .csv/.npy records")
    hr.set_defaults(func=_cmd_hr)

    rep = sub.add_parser("report", help="write text/JSON/HTML reports and summary.csv")
    rep.add_argument("records", nargs="*", help="record files (any format ecgfm reads)")
    source = rep.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", help="URL of a running ecgfm-serve API (POST {url}/clinical)")
    source.add_argument("--finetuned", help="local finetuned checkpoint")
    source.add_argument("--results", help="earlier API results: JSON Lines, JSON list or CSV")
    rep.add_argument("--out", required=True, help="output folder")
    rep.add_argument(
        "--thresholds",
        help="YAML merged into interpreter/thresholds.yaml, e.g. the thresholds.yaml of ecgfm evaluate (default: "
        "$ECGFM_THRESHOLDS when set)",
    )
    rep.add_argument("--fs", type=float, help="sampling rate, for .csv/.npy records")
    rep.add_argument("--quiet", action="store_true", help="no progress bar")
    rep.add_argument(
        "--saliency",
        action="store_true",
        help="draw where the model attended on the HTML report's plot (each lead shaded, a lead II rhythm strip "
        "with a saliency band; attention, not causation): with --url a second /clinical request with "
        '"saliency": true and with --finetuned a second forward (the probabilities still come from the plain '
        "answer), with --results the results' own saliency (ecgfm predict --saliency)",
    )
    rep.add_argument(
        "--format",
        choices=("reports", "fhir", "hl7v2"),
        default="reports",
        help="reports: <record>.txt/.json/.html (default); fhir: <record>.fhir.json, a FHIR R4 Bundle (heart rate, "
        "the reported findings SNOMED CT coded, the 17 probabilities, the research-use statement); hl7v2: "
        "<record>.hl7, an HL7 v2.5.1 ORU^R01 message (ER7) with the same content",
    )
    rep.set_defaults(func=_cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "report" and not args.records and not args.results:
        print("error: give record files (or --results for reports without heart rate)", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (InputError, RecordError, ConfigError, OSError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
