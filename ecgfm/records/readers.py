"""Reading ECG records from files: JSON, CSV, NumPy ``.npy`` and WFDB (``.hea`` + signal files).

Every reader returns an :class:`ECGRecord` holding the signal as it is in the file (no resampling, no
reordering); :mod:`ecgfm.records.preprocess` turns it into model input.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import tempfile
import tokenize
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from ecgfm.records.record import ECGRecord, RecordError

SUPPORTED_SUFFIXES = (".json", ".csv", ".npy", ".hea")
# Hospital formats (ecgfm.records.formats), recognised by their content whatever the suffix.
FILE_FORMATS = (
    "DICOM (.dcm)",
    "HL7 aECG (.xml)",
    "Philips Sierra/PageWriter (.xml)",
    "GE MUSE (.xml)",
    "SCP-ECG (.scp)",
)


def read_record(path: str | Path, fs: float | None = None, lead_names: list[str] | None = None) -> ECGRecord:
    """Read one record, choosing the reader from the file suffix.

    Args:
        path: a ``.json``, ``.csv``, ``.npy`` or ``.hea`` file; a WFDB record may also be named without suffix
            (``data/100``) or by its ``.dat`` / ``.mat`` / ``.atr`` file; any other file is read by
            :func:`ecgfm.records.formats.read_file` when its content is DICOM, HL7 aECG, Philips, GE MUSE or SCP-ECG.
        fs: sampling rate, required for ``.npy`` and ``.csv`` (unless the JSON/WFDB file has its own).
        lead_names: lead names for ``.npy`` (default: the standard 12-lead order).
    """
    path = Path(path)
    header = _wfdb_header_for(path)
    if header is not None:
        path = header
    if not path.is_file():
        raise RecordError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            return _read_json(path)
        if suffix == ".csv":
            return _read_csv(path, fs)
        if suffix == ".npy":
            return _read_npy(path, fs, lead_names)
        if suffix == ".hea":
            return _read_wfdb(path)
    except RecordError:
        raise
    # OverflowError: a number past float's range (an "fs" of 400 digits); RecursionError: JSON nested past Python's
    # recursion limit (json raises it cleanly)
    except (OSError, ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
        raise RecordError(f"{path}: {exc}") from exc
    from ecgfm.records.formats import UnknownFormatError, read_file

    try:
        return read_file(path)
    except UnknownFormatError:
        supported = ", ".join((*SUPPORTED_SUFFIXES, *FILE_FORMATS))
        raise RecordError(f"{path}: unsupported file type {suffix!r} (supported: {supported})") from None
    except RecordError as exc:
        raise RecordError(f"{path}: {exc}") from None


def _wfdb_header_for(path: Path) -> Path | None:
    """The ``.hea`` of a WFDB record named without suffix (``data/100``) or by a signal/annotation file."""
    if path.suffix.lower() in (".json", ".csv", ".npy", ".hea"):
        return None
    candidates = [Path(f"{path}.hea")] if not path.is_file() else []
    if path.suffix.lower() in (".dat", ".mat", ".atr", ".xyz"):
        candidates.append(path.with_suffix(".hea"))
    return next((c for c in candidates if c.is_file()), None)


def _float_signal(path: Path, signal: Any) -> np.ndarray:
    from ecgfm.records.preprocess import ECGInputError, as_signal_array

    try:
        return as_signal_array(signal)
    except ECGInputError as exc:
        raise RecordError(f"{path}: {exc}") from exc


def _read_json(path: Path) -> ECGRecord:
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or "signal" not in data:
        raise RecordError(f"{path}: a JSON record needs a 'signal' field (list of leads)")
    if "fs" not in data:
        raise RecordError(f"{path}: a JSON record needs an 'fs' field (sampling rate in Hz)")
    signal = _float_signal(path, data["signal"])
    names = data.get("lead_names") or _default_names(path, signal.shape[0])
    metadata = {k: v for k, v in data.items() if k not in {"signal", "fs", "lead_names", "record"}}
    return ECGRecord(str(data.get("record", path.stem)), signal, float(data["fs"]), list(names), metadata)


def _read_csv(path: Path, fs: float | None) -> ECGRecord:
    if fs is None:
        raise RecordError(f"{path}: CSV files carry no sampling rate; pass fs (--fs)")
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise RecordError(f"{path}: empty CSV (expected a header row of lead names)")
        rows = [row for row in reader if row]
    names = [name.strip() for name in header]
    try:
        samples = np.array(rows, dtype=np.float64)
    except ValueError as exc:
        raise RecordError(f"{path}: every CSV cell must be a number ({exc})") from exc
    if samples.ndim != 2 or samples.shape[1] != len(names):
        raise RecordError(f"{path}: rows do not all have {len(names)} columns")
    return ECGRecord(path.stem, samples.T.copy(), float(fs), names)


# What numpy's .npy reader raises on bytes that are not an .npy file (its header is parsed with tokenize and
# ast.literal_eval: TokenError and SyntaxError too; found by fuzzing, docs/testing.md "Fuzzing").
NPY_ERRORS = (ValueError, OSError, EOFError, SyntaxError, TypeError, OverflowError, tokenize.TokenError)


def npy_array(data: bytes) -> np.ndarray:
    """A numeric array from ``.npy`` bytes (``numpy.lib.format``, no pickle). The header is checked before any
    allocation: its shape and dtype must account for exactly the bytes that follow (numpy would otherwise allocate
    the shape the header claims, however large, before finding the data short).

    Raises:
        RecordError: not an ``.npy`` file, a header that does not match the data, or not numbers.
    """
    stream = io.BytesIO(data)
    try:
        version = npy_format.read_magic(stream)
        read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        shape, _, dtype = read_header(stream)
        if dtype.kind not in "iuf":
            raise RecordError("the .npy array must hold numbers (integer or float)")
        expected = math.prod(shape) * dtype.itemsize
        if expected != len(data) - stream.tell():
            raise RecordError(
                f"the .npy header describes {expected} bytes of data but {len(data) - stream.tell()} follow it"
            )
        return np.load(io.BytesIO(data), allow_pickle=False)
    except RecordError:
        raise
    except NPY_ERRORS as exc:
        raise RecordError(f"not a NumPy .npy array written by numpy.save ({type(exc).__name__})") from None


def _read_npy(path: Path, fs: float | None, lead_names: list[str] | None) -> ECGRecord:
    if fs is None:
        raise RecordError(f"{path}: .npy files carry no sampling rate; pass fs (--fs)")
    try:
        array = npy_array(path.read_bytes())
    except RecordError as exc:
        raise RecordError(f"{path}: {exc}") from None
    signal = _float_signal(path, array)
    names = lead_names or _default_names(path, signal.shape[0])
    return ECGRecord(path.stem, signal, float(fs), list(names))


def _default_names(path: Path, n_leads: int) -> list[str]:
    from ecgfm.records.preprocess import LEAD_ORDER

    if n_leads != len(LEAD_ORDER):
        raise RecordError(f"{path}: {n_leads} leads and no lead names; name the leads")
    return list(LEAD_ORDER)


def _read_wfdb(path: Path) -> ECGRecord:
    import wfdb

    record_name = str(path.with_suffix(""))
    try:
        try:
            record = wfdb.rdrecord(record_name, physical=True)
        except ValueError as exc:
            # Some PhysioNet/CinC headers name the record "E05526.mat" on their first line, which wfdb rejects.
            first = path.read_text(errors="replace").splitlines()[0] if path.stat().st_size else ""
            if not re.match(r"^\S+\.\w+\s", first):
                raise RecordError(f"{path}: {exc}") from exc
            record = _read_wfdb_with_fixed_header(path)
    except (RecordError, OSError):
        raise
    except Exception as exc:  # wfdb on a malformed header or signal file: IndexError, AttributeError, ... (fuzzing)
        raise RecordError(f"{path}: not a readable WFDB record ({type(exc).__name__})") from None
    if record.p_signal is None or not record.fs:
        raise RecordError(f"{path}: the WFDB record has no signal or no sampling rate")
    signal = np.asarray(record.p_signal, dtype=np.float64).T
    metadata: dict[str, Any] = {"units": list(record.units or []), "header_comments": list(record.comments or [])}
    return ECGRecord(path.stem, signal, float(record.fs), list(record.sig_name), metadata)


def _read_wfdb_with_fixed_header(path: Path):
    import wfdb

    lines = path.read_text().splitlines()
    first = lines[0].split()
    first[0] = Path(first[0]).stem
    with tempfile.TemporaryDirectory() as tmp:
        fixed = Path(tmp) / path.name
        fixed.write_text("\n".join([" ".join(first), *lines[1:]]) + "\n")
        for line in lines[1:]:
            parts = line.split()
            if parts and not line.startswith("#") and (path.parent / parts[0]).is_file():
                target = Path(tmp) / parts[0]
                if not target.exists():
                    shutil.copy(path.parent / parts[0], target)
        return wfdb.rdrecord(str(fixed.with_suffix("")), physical=True)
