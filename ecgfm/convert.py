"""``ecgfm convert IN OUT``: any readable record (hospital formats included) -> JSON, ``.npy`` or WFDB.

The output's format is told by OUT's suffix: ``.json`` (the ``../shared/data/*.json`` schema: ``signal`` in mV
``[leads][samples]``, ``fs``, ``lead_names``, plus ``units`` and, for hospital formats, ``conversion``), ``.npy``
(``[leads, samples]`` float64 mV; the rate and lead names are printed), ``.hea`` (WFDB: ``.hea`` + ``.dat``, 16-bit
at 1 uV per count). What the reader derived or trimmed is printed to stderr as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ecgfm.records import ECGRecord, RecordError, read_record

OUTPUT_SUFFIXES = (".json", ".npy", ".hea")
WFDB_ADC_GAIN = 1000.0  # counts per mV: 1 uV per count, 16-bit (+-32.767 mV)


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


def record_json(record: ECGRecord) -> dict[str, Any]:
    """The ``../shared/data`` JSON schema: signal in mV, fs, lead_names (and how the file was read)."""
    body: dict[str, Any] = {
        "record": record.name,
        "fs": record.fs,
        "units": "mV",
        "lead_names": list(record.lead_names),
        "n_samples": int(record.signal.shape[1]),
        "duration_s": round(record.duration_s, 6),
    }
    if record.conversion is not None:
        body["conversion"] = record.conversion
    body["signal"] = record.signal.tolist()
    return body


def write_record(record: ECGRecord, output: Path) -> None:
    suffix = output.suffix.lower()
    if suffix == ".json":
        output.write_text(json.dumps(record_json(record)))
    elif suffix == ".npy":
        np.save(output, record.signal.astype(np.float64))
    elif suffix == ".hea":
        _write_wfdb(record, output)
    else:
        raise RecordError(f"{output}: unsupported output type {suffix!r} (use {', '.join(OUTPUT_SUFFIXES)})")


def _write_wfdb(record: ECGRecord, output: Path) -> None:
    import wfdb

    limit = 32767 / WFDB_ADC_GAIN
    if np.abs(record.signal).max() > limit:
        raise RecordError(f"{output}: amplitudes beyond +-{limit:g} mV do not fit WFDB format 16 at 1 uV per count")
    digital = np.round(record.signal * WFDB_ADC_GAIN).astype(np.int16).T
    wfdb.wrsamp(
        output.stem,
        fs=record.fs,
        units=["mV"] * len(record.lead_names),
        sig_name=list(record.lead_names),
        d_signal=digital,
        fmt=["16"] * len(record.lead_names),
        adc_gain=[WFDB_ADC_GAIN] * len(record.lead_names),
        baseline=[0] * len(record.lead_names),
        write_dir=str(output.parent),
    )


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
        return 1
    print(json.dumps(summary(record, output)), file=sys.stderr)
    return 0
