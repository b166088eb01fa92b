"""Records written back out, for ``ecgfm convert`` (:mod:`ecgfm.cli.convert`): JSON, ``.npy`` or WFDB.

The format is told by the output's suffix: ``.json`` (the ``../shared/data/*.json`` schema: ``signal`` in mV
``[leads][samples]``, ``fs``, ``lead_names``, plus ``units`` and, for hospital formats, ``conversion``), ``.npy``
(``[leads, samples]`` float64 mV; the rate and lead names are printed), ``.hea`` (WFDB: ``.hea`` + ``.dat``, 16-bit
at 1 uV per count). What the reader derived or trimmed is printed to stderr as one JSON object.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ecgfm.records.record import ECGRecord, RecordError

OUTPUT_SUFFIXES = (".json", ".npy", ".hea")
WFDB_ADC_GAIN = 1000.0  # counts per mV: 1 uV per count, 16-bit (+-32.767 mV)


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
