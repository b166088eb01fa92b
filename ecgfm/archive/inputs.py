"""Which records an ``ecgfm batch`` job scores: files, folders (recursive), globs and manifests, expanded to a list.

Each input is a :class:`BatchInput`: ``path`` is the path *as found* (what the output's ``path`` column says and
what ``--resume`` matches), ``file`` is where it is read from (``path`` joined to the manifest's root). Rules:

* a **folder** is searched recursively for the record files :func:`ecgfm.records.read_record` reads (``.json``,
  ``.csv``, ``.npy``, ``.hea``; a WFDB record counts once, by its header); other files are not inputs;
* a **glob** (``*``, ``?``, ``[``; ``**`` recurses) expands to the files and folders it matches;
* a **manifest** lists paths: a text file (``.txt``, ``.lst``: one path a line, ``#`` comments), or a table with
  a path column (``--path-column``, default ``path``): ``.parquet``, or a ``.csv`` whose header holds that column
  (a CSV *record* has lead names instead); ``--manifest FILE`` forces a file to be read as one. Relative paths
  are taken from ``--root`` (default: the manifest's folder), as MIMIC-IV-ECG's ``record_list.csv`` (``path``)
  and PTB-XL's ``ptbxl_database.csv`` (``filename_hr``) are written;
* any other named **file** is a record, even one that does not exist or has an unknown suffix: it becomes an error
  row, as ``ecgfm predict`` reports it;
* a **URI** of an object store (``s3://bucket/prefix``, ``gs://...``; :mod:`ecgfm.archive.storage`) is a folder
  (every record object below the prefix), a manifest or a record by the same rules; a manifest's relative paths
  are then taken from the manifest's prefix (or ``--root``, which may be a URI too). Globs are not expanded in
  object stores (name the prefix, or list the records in a manifest).

The same ``path`` listed twice is one input (the first). An unusable manifest is a :class:`InputsError` (a usage
error, raised before anything runs), never a record error.
"""

from __future__ import annotations

import csv
import glob
import io
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ecgfm.archive.storage import Location, StorageError, is_uri
from ecgfm.records.readers import SUPPORTED_SUFFIXES

TEXT_MANIFEST_SUFFIXES = (".txt", ".lst")
TABLE_MANIFEST_SUFFIXES = (".parquet", ".csv")
DEFAULT_PATH_COLUMN = "path"
GLOB_CHARACTERS = frozenset("*?[")


class InputsError(ValueError):
    """An input list that cannot be expanded (a manifest without its column, an unreadable manifest, ...)."""


@dataclass(frozen=True)
class BatchInput:
    """One record to score: ``path`` as found (the output's key), ``file`` the path it is read from."""

    path: str
    file: str


def discover_inputs(
    inputs: Sequence[str],
    manifests: Sequence[str] = (),
    path_column: str = DEFAULT_PATH_COLUMN,
    root: str | None = None,
) -> tuple[list[BatchInput], list[str]]:
    """Every record of ``inputs`` (files, folders, globs, manifests) and ``manifests``, each once, in order.

    Returns the inputs and warnings (a glob or a folder without records) for the user.
    """
    found: dict[str, BatchInput] = {}
    warnings: list[str] = []
    for item in _expand(inputs, manifests, path_column, root, warnings):
        found.setdefault(item.path, item)
    return list(found.values()), warnings


def _expand(
    inputs: Sequence[str], manifests: Sequence[str], path_column: str, root: str | None, warnings: list[str]
) -> Iterator[BatchInput]:
    for manifest in manifests:
        yield from read_manifest(manifest, path_column, root)
    for name in inputs:
        if is_uri(name):
            yield from _uri(name, path_column, root, warnings)
            continue
        path = Path(name)
        if path.is_dir():
            yield from _folder(path, warnings)
        elif path.is_file() and is_manifest(path, path_column):
            yield from read_manifest(name, path_column, root)
        elif not path.exists() and GLOB_CHARACTERS & set(name):
            matches = sorted(glob.glob(name, recursive=True))
            if not matches:
                warnings.append(f"{name}: the pattern matches no file")
            for match in matches:
                yield from (_folder(Path(match), warnings) if Path(match).is_dir() else [BatchInput(match, match)])
        else:
            yield BatchInput(name, name)  # a record, readable or not: an error row if not


def _folder(folder: Path, warnings: list[str]) -> Iterator[BatchInput]:
    files = sorted(p for p in _walk(folder) if p.suffix.lower() in SUPPORTED_SUFFIXES)
    if not files:
        warnings.append(f"{folder}: no record files ({', '.join(SUPPORTED_SUFFIXES)}) in this folder")
    for file in files:
        yield BatchInput(str(file), str(file))


def _uri(name: str, path_column: str, root: str | None, warnings: list[str]) -> Iterator[BatchInput]:
    """An input in an object store: a prefix (its record objects), a manifest or a record."""
    location = _location(name)
    try:
        is_file = location.is_file()
        folder = [] if is_file else location.files()
    except StorageError as exc:
        raise InputsError(str(exc)) from exc
    if folder:
        records = [item for item in folder if Path(item.name).suffix.lower() in SUPPORTED_SUFFIXES]
        if not records:
            warnings.append(f"{name}: no record files ({', '.join(SUPPORTED_SUFFIXES)}) under this prefix")
        yield from (BatchInput(item.uri, item.uri) for item in records)
    elif is_file and is_manifest(name, path_column):
        yield from read_manifest(name, path_column, root)
    elif GLOB_CHARACTERS & set(name.split("://", 1)[1]):
        raise InputsError(f"{name}: globs are not expanded in an object store; name the prefix or a manifest")
    else:
        yield BatchInput(name, name)  # a record, readable or not: an error row if not


def _location(name: str) -> Location:
    try:
        return Location.named(name)
    except StorageError as exc:
        raise InputsError(str(exc)) from exc


def _walk(folder: Path) -> Iterable[Path]:
    for directory, _subdirs, names in os.walk(folder, followlinks=True):
        for name in names:
            yield Path(directory) / name


def is_manifest(path: Path | str, path_column: str = DEFAULT_PATH_COLUMN) -> bool:
    """Text and Parquet lists are manifests; a CSV is one when its header has ``path_column`` (else a record)."""
    suffix = Path(str(path)).suffix.lower()
    if suffix in TEXT_MANIFEST_SUFFIXES or suffix == ".parquet":
        return True
    if suffix != ".csv":
        return False
    try:
        location = Location(str(path))
        with location.filesystem.open_input_stream(location.path) as stream:
            first = stream.read(1 << 16).decode().splitlines()[:1]
        header = next(csv.reader(first), [])
    except (OSError, ValueError, csv.Error):  # UnicodeDecodeError and StorageError are ValueErrors
        return False
    return path_column in [name.strip() for name in header]


def read_manifest(manifest: str, path_column: str = DEFAULT_PATH_COLUMN, root: str | None = None) -> list[BatchInput]:
    """The paths a manifest lists, each read from ``root`` (default: the manifest's folder) unless absolute (or a
    URI). The manifest and ``root`` may be in an object store."""
    location = _location(manifest)
    base = _location(root) if root is not None else location.parent()
    suffix = Path(manifest).suffix.lower()
    try:
        if suffix in TEXT_MANIFEST_SUFFIXES:
            lines = (line.strip() for line in location.read_text().splitlines())
            values = [line for line in lines if line and not line.startswith("#")]
        elif suffix == ".parquet":
            values = _parquet_column(location, path_column)
        elif suffix == ".csv":
            values = _csv_column(location, path_column)
        else:
            raise InputsError(
                f"{manifest}: a manifest is a {', '.join(TEXT_MANIFEST_SUFFIXES + TABLE_MANIFEST_SUFFIXES)} file"
            )
    except InputsError:
        raise
    except (OSError, ValueError) as exc:  # also pyarrow's ArrowInvalid and a CSV that is not text
        raise InputsError(f"{manifest}: cannot read the manifest ({exc})") from exc
    return [BatchInput(value, value if _absolute(value) else base.child(value).uri) for value in values]


def _absolute(value: str) -> bool:
    return is_uri(value) or Path(value).is_absolute()


def _csv_column(location: Location, column: str) -> list[str]:
    with io.StringIO(location.read_text(), newline="") as handle:
        reader = csv.DictReader(handle)
        if column not in (reader.fieldnames or []):
            raise InputsError(f"{location}: no column {column!r} (columns: {', '.join(reader.fieldnames or [])}); "
                              "name the path column with --path-column")  # fmt: skip
        return [row[column].strip() for row in reader if row[column] and row[column].strip()]


def _parquet_column(location: Location, column: str) -> list[str]:
    import pyarrow.parquet as pq

    names = pq.read_schema(location.path, filesystem=location.filesystem).names
    if column not in names:
        raise InputsError(
            f"{location}: no column {column!r} (columns: {', '.join(names)}); name the path column with --path-column"
        )
    values = pq.read_table(location.path, columns=[column], filesystem=location.filesystem).column(column).to_pylist()
    return [str(value).strip() for value in values if value is not None and str(value).strip()]
