"""``ecgfm convert IN OUT``: any readable record (hospital formats included) -> JSON, ``.npy`` or WFDB
(:mod:`ecgfm.records.writers`). What the reader derived or trimmed is printed to stderr as one JSON object."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ecgfm.records.readers import read_record
from ecgfm.records.record import ECGRecord, RecordError
from ecgfm.records.writers import OUTPUT_SUFFIXES, write_record


def add_convert_parser(commands: Any) -> None:
    convert = commands.add_parser(
        "convert",
        help="convert a record (DICOM, HL7 aECG, Philips, GE MUSE, SCP-ECG, JSON, CSV, .npy, WFDB) to JSON, .npy "
        "or WFDB",
    )
    convert.add_argument("input", help="the record to read (the format is told by its content or suffix)")
    convert.add_argument("output", help="the file to write: .json, .npy or .hea (WFDB)")
    convert.add_argument("--fs", type=float, help="sampling rate for .npy and .csv inputs")
    convert.set_defaults(run=run)


def summary(record: ECGRecord, output: Path) -> dict[str, Any]:
    """What stderr says about a conversion: where it went, and what the reader derived or trimmed."""
    report: dict[str, Any] = {
        "output": str(output),
        "fs": record.fs,
        "lead_names": list(record.lead_names),
        "samples": int(record.signal.shape[1]),
    }
    if record.conversion is not None:
        keys = ("format", "version", "units_in_file", "derived_leads", "extra_leads", "trimmed", "notes")
        report |= {key: record.conversion[key] for key in keys}
    return report


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        print(f"ecgfm: {output}: unsupported output type (use {', '.join(OUTPUT_SUFFIXES)})", file=sys.stderr)
        return 2
    try:
        record = read_record(args.input, fs=args.fs)
        write_record(record, output)
    except RecordError as exc:
        print(f"ecgfm: skipped {args.input}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary(record, output)), file=sys.stderr)
    return 0
