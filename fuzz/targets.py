"""The fuzz targets: each takes the fuzzer's bytes, feeds them to one reader through the entry its callers use,
and lets through only a decoded record or the project's own documented errors (:data:`ALLOWED`). Anything else
escapes and is a finding; so is an input that takes over a second or memory over the campaign's bound
(``fuzz/__main__.py``). The seeds of each target come from ``sample_data/`` and ``../shared/data/formats/``.

* ``file``: :func:`serving.decoding.decode_file`, what ``POST /<route>/file`` runs (:func:`ecgfm.records.formats.
  read_bytes`: DICOM, HL7 aECG, Philips, GE MUSE, SCP-ECG, then :func:`~serving.decoding.prepare`);
* ``records``: :func:`ecgfm.records.readers.read_record` then preprocessing, what ``ecgfm predict`` runs on a JSON,
  CSV, ``.npy`` or WFDB file (the first byte chooses the kind; WFDB: header, a NUL byte, the signal file);
* ``npy``: :func:`serving.decoding.decode_npy`, what ``POST /<route>/npy?fs=500`` runs;
* ``json``: :class:`serving.contract.ECGRequest` (the JSON body, as BentoML validates it) then
  :func:`~serving.decoding.prepare`, what ``POST /clinical`` runs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from ecgfm.records.preprocess import DEFAULT_MAX_DURATION_S, ECGInputError, preprocess
from ecgfm.records.readers import read_record
from ecgfm.records.record import RecordError
from serving.contract import ANSWERED_ERRORS, ECGRequest
from serving.decoding import decode_file, decode_npy, prepare

REPO_DIR = Path(__file__).resolve().parents[1]
SHARED_FORMATS = REPO_DIR.parent / "shared" / "data" / "formats"
SAMPLES = REPO_DIR / "sample_data"
RECORD_KINDS = ("json", "csv", "npy", "wfdb")  # the records target's first byte, modulo 4
SEED_SAMPLES = 1250  # 2.5 s at 500 Hz: the record seeds are cut to this (a short input mutates faster)

# The documented outcomes of a bad input: contract.ERRORS (400, 413, 415, 422 ...) for the service; for
# ecgfm predict, RecordError and ECGInputError (the record is skipped with its message, exit status 1).
ALLOWED: dict[str, tuple[type[Exception], ...]] = {
    "file": ANSWERED_ERRORS,
    "records": (RecordError, ECGInputError),
    "npy": ANSWERED_ERRORS,
    "json": (*ANSWERED_ERRORS, ValidationError),  # ValidationError: BentoML's 400 for a body off the schema
}


def fuzz_file(data: bytes) -> object:
    return decode_file(data, None, max_duration_s=DEFAULT_MAX_DURATION_S)


def fuzz_npy(data: bytes) -> object:
    return decode_npy(data, "500", None, None, max_duration_s=DEFAULT_MAX_DURATION_S)


def fuzz_json(data: bytes) -> object:
    request = ECGRequest.model_validate_json(data)
    return prepare(request.signal, request.fs, request.lead_names, False, max_duration_s=DEFAULT_MAX_DURATION_S)


def _safe_name(token: bytes) -> str | None:
    name = token.decode("ascii", "replace")
    if not name or len(name) > 64 or "/" in name or "\\" in name or name.startswith(".") or "\x00" in name:
        return None
    return name


def write_record_files(data: bytes, directory: Path) -> Path:
    """The records target's input as files in ``directory``: the first byte picks the kind; a WFDB input is the
    header, a NUL byte and the signal file's bytes, written under each file name the header's signal lines give."""
    kind = RECORD_KINDS[data[0] % len(RECORD_KINDS)] if data else "json"
    content = data[1:]
    if kind != "wfdb":
        path = directory / f"record.{kind}"
        path.write_bytes(content)
        return path
    header, _, signal = content.partition(b"\x00")
    path = directory / "record.hea"
    path.write_bytes(header)
    for line in header.splitlines()[1:13]:
        name = _safe_name(line.split(b" ", 1)[0]) if line.strip() and not line.startswith(b"#") else None
        if name and name != "record.hea":
            (directory / name).write_bytes(signal)
    return path


def fuzz_records(data: bytes) -> object:
    directory = Path(tempfile.mkdtemp(prefix="ecgfm-fuzz-"))
    try:
        record = read_record(write_record_files(data, directory), fs=500.0)
        signal, lead_names = record.model_input()
        return preprocess(signal, record.fs, lead_names, max_duration_s=DEFAULT_MAX_DURATION_S)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


TARGETS: dict[str, Callable[[bytes], object]] = {
    "file": fuzz_file,
    "records": fuzz_records,
    "npy": fuzz_npy,
    "json": fuzz_json,
}


def run_one(target: str, data: bytes) -> str:
    """``decoded`` or ``refused`` (one of the target's :data:`ALLOWED` errors); any other exception escapes."""
    try:
        TARGETS[target](data)
    except ALLOWED[target]:
        return "refused"
    return "decoded"


# ---- seeds ------------------------------------------------------------------------------------------------------


def _short_record(name: str) -> dict:
    record = json.loads((SAMPLES / name).read_text())
    return {
        "signal": [lead[:SEED_SAMPLES] for lead in record["signal"]],
        "fs": record["fs"],
        "lead_names": record.get("lead_names"),
    }


def _npy_bytes(signal: object) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.asarray(signal, dtype=np.float32))
    return buffer.getvalue()


def seeds(target: str) -> dict[str, bytes]:
    """The seed corpus of ``target``: real files, the record samples cut to 2.5 s."""
    hospital = {
        path.name: path.read_bytes()
        for path in sorted(SHARED_FORMATS.glob("*/*"))
        if path.is_file() and ".decoded." not in path.name and path.name != "README.md"
    }
    hospital.setdefault("hl7_Example_aECG.xml", (SAMPLES / "hl7_Example_aECG.xml").read_bytes())
    short = _short_record("JS06908.json")
    if target == "file":
        return hospital
    if target == "npy":
        return {"JS06908_2.5s.npy": _npy_bytes(short["signal"]), "JS36330.npy": (SAMPLES / "JS36330.npy").read_bytes()}
    if target == "json":
        named = _short_record("JS36330.json")
        return {
            "JS06908_2.5s.json": json.dumps({"signal": short["signal"], "fs": short["fs"]}).encode(),
            "JS36330_2.5s_named.json": json.dumps(named).encode(),
        }
    csv_lines = (SAMPLES / "JS36330.csv").read_bytes().splitlines(keepends=True)[: SEED_SAMPLES + 1]
    kinds = {kind: bytes([index]) for index, kind in enumerate(RECORD_KINDS)}
    return {
        "json_JS06908_2.5s": kinds["json"] + json.dumps(short).encode(),
        "csv_JS36330_2.5s": kinds["csv"] + b"".join(csv_lines),
        "npy_JS06908_2.5s": kinds["npy"] + _npy_bytes(short["signal"]),
        "wfdb_JS36330": kinds["wfdb"]
        + (SAMPLES / "JS36330.hea").read_bytes()
        + b"\x00"
        + (SAMPLES / "JS36330.mat").read_bytes(),
    }
