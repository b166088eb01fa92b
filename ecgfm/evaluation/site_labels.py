"""What a site knows about its records: the reference labels ``ecgfm evaluate`` measures ECG-FM against.

Three forms, told by the path and the CSV's columns:

* a CSV with a ``record`` column and one 0/1 column per label (an empty cell: that record is not labelled for that
  label and is left out of that label's figures);
* a CSV with a ``record`` column and a ``snomed`` column of ``;``-separated SNOMED CT codes (commas also accepted);
* a folder of WFDB headers (``*.hea``) whose comment lines carry the PhysioNet/CinC Challenge 2021 ``# Dx:`` line of
  comma-separated SNOMED CT codes (the record is the file's stem, as ``ecgfm predict`` names it).

SNOMED CT codes become ECG-FM labels through the one table of :mod:`ecgfm.terminology`
(:func:`~ecgfm.terminology.labels_implied_by`). A code that implies no label is counted (per code, on how many
records, with the challenge's name from ``challenge_dx.csv``), never dropped silently; a label that no code can
imply is not evaluable from codes.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from ecgfm.evaluation.errors import EvaluationInputError, listed
from ecgfm.terminology import TERMINOLOGY, labels_implied_by, mapped_codes

RECORD_COLUMN, SNOMED_COLUMN = "record", "snomed"
CODE_SEPARATORS = re.compile(r"[;,\s]+")
DX_LINE = re.compile(r"^#\s*Dx\s*:\s*(?P<codes>.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class UnmappedCode:
    """A SNOMED CT code of the site's labels that implies no ECG-FM label."""

    code: str
    name: str | None  # the challenge's name, when the code is in its mapping
    records: int


@dataclass(frozen=True)
class SiteLabels:
    """Reference labels ``[records, labels]`` (1, 0, or NaN: not labelled) for the predictions' labels."""

    records: list[str]
    labels: list[str]
    truth: np.ndarray
    source: str
    form: str  # "0/1 columns", "SNOMED CT codes" or "WFDB headers (# Dx:)"
    not_evaluable: dict[str, str] = field(default_factory=dict)  # label -> why no figure can be given
    unmapped_codes: list[UnmappedCode] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)  # headers without a # Dx: line


@cache
def challenge_names() -> dict[str, str]:
    """SNOMED CT code -> the PhysioNet/CinC Challenge 2021's name (``challenge_dx.csv``, a copy of its mapping)."""
    text = (resources.files("ecgfm.evaluation") / "challenge_dx.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return {row["code"]: row["name"] for row in rows}


def read_site_labels(path: str | Path, labels: list[str]) -> SiteLabels:
    """The reference labels in ``path`` for ``labels`` (the predictions' labels), in one of the three forms."""
    path = Path(path)
    if path.is_dir():
        return _from_headers(path, labels)
    if not path.is_file():
        raise EvaluationInputError(f"{path}: no such labels file or folder")
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        columns = [column.strip() for column in reader.fieldnames or []]
        rows = [{(key or "").strip(): (value or "").strip() for key, value in row.items()} for row in reader]
    if RECORD_COLUMN not in columns:
        raise EvaluationInputError(f"{path}: no '{RECORD_COLUMN}' column (columns: {columns})")
    names = [row[RECORD_COLUMN] for row in rows]
    _check_records(names, str(path))
    if SNOMED_COLUMN in columns:
        extra = [column for column in columns if column not in (RECORD_COLUMN, SNOMED_COLUMN)]
        if extra:
            raise EvaluationInputError(
                f"{path}: unknown column(s) {extra} beside '{SNOMED_COLUMN}'; a labels CSV has either a "
                f"'{SNOMED_COLUMN}' column or one 0/1 column per label"
            )
        codes = {
            row[RECORD_COLUMN]: _codes(row[SNOMED_COLUMN], f"{path}: record {row[RECORD_COLUMN]!r}") for row in rows
        }
        return _from_codes(codes, labels, str(path), "SNOMED CT codes")
    return _from_columns(rows, [c for c in columns if c != RECORD_COLUMN], labels, str(path))


def _check_records(names: list[str], source: str) -> None:
    if any(not name for name in names):
        raise EvaluationInputError(f"{source}: a row has no record name")
    seen: set[str] = set()
    duplicates = sorted({name for name in names if name in seen or seen.add(name)})
    if duplicates:
        raise EvaluationInputError(
            f"{source}: {len(duplicates)} record(s) labelled more than once: {listed(duplicates)}; keep one row each"
        )


def _from_columns(rows: list[dict[str, str]], columns: list[str], labels: list[str], source: str) -> SiteLabels:
    unknown = [column for column in columns if column not in labels]
    if unknown:
        raise EvaluationInputError(
            f"{source}: unknown label column(s) {unknown}; the predictions' labels are {labels} (or give a "
            f"'{SNOMED_COLUMN}' column of SNOMED CT codes)"
        )
    truth = np.full((len(rows), len(labels)), np.nan)
    for i, row in enumerate(rows):
        for column in columns:
            value = row[column]
            if value in ("1", "1.0", "0", "0.0"):
                truth[i, labels.index(column)] = float(value)
            elif value:
                raise EvaluationInputError(
                    f"{source}: record {row[RECORD_COLUMN]!r}, column {column!r}: {value!r} is not 0, 1 or empty"
                )
    not_evaluable = {label: f"no '{label}' column in {source}" for label in labels if label not in columns}
    return SiteLabels([row[RECORD_COLUMN] for row in rows], labels, truth, source, "0/1 columns", not_evaluable)


def _codes(text: str, where: str) -> set[str]:
    codes = {code for code in CODE_SEPARATORS.split(text) if code}
    bad = sorted(code for code in codes if not code.isdigit())
    if bad:
        raise EvaluationInputError(f"{where}: {bad} are not SNOMED CT codes (digits only)")
    return codes


def _from_headers(folder: Path, labels: list[str]) -> SiteLabels:
    headers = sorted(folder.glob("*.hea"))
    if not headers:
        raise EvaluationInputError(f"{folder}: no WFDB headers (*.hea) in it")
    codes: dict[str, set[str]] = {}
    unlabelled = []
    for header in headers:
        lines = [line.strip() for line in header.read_text(encoding="utf-8", errors="replace").splitlines()]
        found = [match["codes"] for line in lines if (match := DX_LINE.match(line))]
        if not found:
            unlabelled.append(header.stem)
            continue
        codes[header.stem] = _codes(",".join(found), str(header))
    if not codes:
        raise EvaluationInputError(f"{folder}: no header has a '# Dx:' line (PhysioNet/CinC 2021 labels)")
    site = _from_codes(codes, labels, str(folder), "WFDB headers (# Dx:)")
    return SiteLabels(**{**site.__dict__, "unlabelled": unlabelled})


def _from_codes(codes: dict[str, set[str]], labels: list[str], source: str, form: str) -> SiteLabels:
    records = list(codes)
    truth = np.full((len(records), len(labels)), np.nan)
    not_evaluable = {}
    for j, label in enumerate(labels):
        row = TERMINOLOGY.get(label)
        if row is None:
            not_evaluable[label] = "not an ECG-FM label: SNOMED CT codes map to ECG-FM's 17 labels only"
        elif not row.implied_by and not row.implied_by_all_of:
            not_evaluable[label] = "no SNOMED CT code implies this label (ecgfm/terminology.py)"
        else:
            truth[:, j] = [label in labels_implied_by(codes[name]) for name in records]
    known, names = mapped_codes(), challenge_names()
    counts = Counter(code for name in records for code in codes[name] if code not in known)
    unmapped = [
        UnmappedCode(code, names.get(code), n)
        for code, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    ]
    return SiteLabels(records, labels, truth, source, form, not_evaluable, unmapped)
