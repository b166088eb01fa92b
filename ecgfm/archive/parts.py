"""The output of ``ecgfm batch``: one Parquet schema, part files committed atomically, and what a resume skips.

The output folder holds ``part-<run>-<seq>.parquet`` files, each a complete Parquet file of whole rows (one row
per input record). In a local folder, a part is written to a hidden ``.part-....parquet.tmp`` beside it, flushed
to disk (fsync), then renamed onto its final name (``os.replace``, atomic on a POSIX file system), and the folder
is synced: a part is either complete or absent, whenever the job is killed. Readers skip the hidden temporary
files (pyarrow, pandas and Ray ignore names starting with ``.``; a ``*.parquet`` glob in DuckDB or polars does not
match them); :func:`remove_unfinished` deletes them when a job resumes.

In an object store (``s3://``, ``gs://``: :mod:`ecgfm.archive.storage`) there is no rename; there, the part is
serialized whole in memory and written once under its final name: an object becomes visible only complete (a
single PUT, or a multipart upload that is completed only when the stream is closed), and its size is checked
after the write. Committed parts are what a listing shows (*write then list*: S3 and GCS listings are strongly
consistent), so no separate manifest of parts can disagree with the bucket.

``--resume`` reads the ``path`` column of the committed parts (:func:`done_paths`) and scores only the other
inputs; since no input is ever in two parts of one run and a resumed run skips every committed path, every input
ends in exactly one row.

Types are plain Arrow types (string, int32, float64, bool, ``list<float32>``, ``list<list<float32>>``), which
pandas, polars, DuckDB and Spark read as they are. The schema's metadata key ``ecgfm`` holds a JSON object:
label names (the order of ``probabilities``), each label's aggregation over segments, the checkpoints, the
feature dimension, the options of the job and, with saliency columns, their time axis (:func:`job_metadata`).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ecgfm.archive.storage import Location
from ecgfm.labels import AGGREGATION, LABELS

FORMAT = "ecgfm-batch/1"
METADATA_KEY = b"ecgfm"
PART_PATTERN = re.compile(r"^part-[0-9A-Za-z]+-\d{6}\.parquet$")
TMP_PREFIX, TMP_SUFFIX = ".part-", ".parquet.tmp"
MODEL_KINDS = ("finetuned", "pretrained")

FLOATS = pa.list_(pa.float32())
# What every row says about its record (the read stage carries the same fields to the model stages).
RECORD_FIELDS = [
    pa.field("n_segments", pa.int32()),
    pa.field("duration_s", pa.float64()),
    pa.field("used_duration_s", pa.float64()),
    pa.field("padded", pa.bool_()),
    pa.field("constant_leads", pa.list_(pa.string())),
    pa.field("error", pa.string()),
]


def probe_column(probe: str, target: str) -> str:
    """The float32 column of one target of a probe (``ecgfm batch --probe``)."""
    return f"probe_{probe}_{target}"


def output_schema(
    models: Sequence[str],
    per_segment: bool,
    metadata: dict[str, Any] | None = None,
    saliency: bool = False,
    probe_columns: Sequence[str] = (),
) -> pa.Schema:
    """The columns of one row per record for the models run (``finetuned``: probabilities, ``pretrained``:
    features; with ``saliency``, ``<kind>_saliency`` ``[n_segments][T]`` for each; ``probe_columns``, float32, from
    the features); ``metadata`` becomes the schema's ``ecgfm`` key."""
    fields = [pa.field("path", pa.string(), nullable=False), pa.field("record", pa.string())]
    if "finetuned" in models:
        fields.append(pa.field("probabilities", FLOATS))
    if "pretrained" in models:
        fields.append(pa.field("features", FLOATS))
    fields += [pa.field(column, pa.float32()) for column in probe_columns]
    if per_segment and "finetuned" in models:
        fields.append(pa.field("segment_probabilities", pa.list_(FLOATS)))
    if per_segment and "pretrained" in models:
        fields.append(pa.field("segment_features", pa.list_(FLOATS)))
    fields += [pa.field(f"{kind}_saliency", pa.list_(FLOATS)) for kind in MODEL_KINDS if saliency and kind in models]
    fields += RECORD_FIELDS
    fields += [pa.field(f"{kind}_sha256", pa.string()) for kind in MODEL_KINDS if kind in models]
    fields.append(pa.field("demo", pa.bool_()))
    fields.append(pa.field("node", pa.string()))  # the Ray node that scored the record (IP/node id)
    schema = pa.schema(fields)
    if metadata is not None:
        schema = schema.with_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})
    return schema


def job_metadata(
    models: Sequence[str],
    per_segment: bool,
    options: dict[str, Any],
    checkpoints: dict[str, dict[str, Any]],
    saliency: dict[str, Any] | None = None,
    probes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """What the schema says about the job: labels and aggregation, checkpoints (no paths), options; ``saliency``
    (None without saliency columns) is their time axis: ``step_s``, ``segment_s``, ``steps_per_segment``;
    ``probes`` the probes of the ``probe_<name>_<target>`` columns (name, targets, the file's sha256)."""
    pretrained = checkpoints.get("pretrained")
    return {
        "format": FORMAT,
        "models": sorted(models),
        "per_segment": per_segment,
        "labels": list(LABELS) if "finetuned" in models else None,
        "aggregation": {label: AGGREGATION[label] for label in LABELS} if "finetuned" in models else None,
        "feature_dim": pretrained["embed_dim"] if pretrained else None,
        "checkpoints": checkpoints,
        "options": options,
        "saliency": saliency,
        "probes": probes or [],
    }


def as_location(directory: Path | str | Location) -> Location:
    return directory if isinstance(directory, Location) else Location(str(directory))


def read_metadata(part: Path | str | Location) -> dict[str, Any]:
    """The ``ecgfm`` metadata of one part (``{}`` if it has none)."""
    location = as_location(part)
    raw = (pq.read_schema(location.path, filesystem=location.filesystem).metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def read_part(part: Path | str | Location, columns: list[str] | None = None) -> pa.Table:
    """One part file (local or in an object store) as a table, with only ``columns`` when given."""
    location = as_location(part)
    return pq.read_table(location.path, columns=columns, filesystem=location.filesystem)


def committed_parts(directory: Path | str | Location) -> list[Location]:
    """The complete part files of an output folder (local or in an object store), sorted by name."""
    return [part for part in as_location(directory).files(recursive=False) if PART_PATTERN.match(part.name)]


def unfinished_parts(directory: Path | str | Location) -> list[Location]:
    """Temporary files of parts a killed job was writing (never visible as parts; none in an object store)."""
    files = as_location(directory).files(recursive=False)
    return [p for p in files if p.name.startswith(TMP_PREFIX) and p.name.endswith(TMP_SUFFIX)]


def remove_unfinished(directory: Path | str | Location) -> int:
    """Delete the temporary files left by a killed job; returns how many."""
    leftovers = unfinished_parts(directory)
    for part in leftovers:
        part.delete()
    return len(leftovers)


def done_paths(directory: Path | str | Location) -> set[str]:
    """The ``path`` of every row in the committed parts (what ``--resume`` skips)."""
    done: set[str] = set()
    for part in committed_parts(directory):
        done.update(read_part(part, ["path"]).column("path").to_pylist())
    return done


def read_rows(directory: Path | str | Location) -> list[dict[str, Any]]:
    """Every row of an output folder as a dict (for tests and small outputs; use a Parquet reader for large)."""
    rows: list[dict[str, Any]] = []
    for part in committed_parts(directory):
        rows += read_part(part).to_pylist()
    return rows


class PartWriter:
    """Writes tables as atomically committed part files ``part-<run>-<seq>.parquet`` of one schema."""

    def __init__(self, directory: Path | str | Location, schema: pa.Schema, run_id: str | None = None) -> None:
        self.directory = as_location(directory)
        self.schema = schema
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.parts: list[Location] = []
        self.directory.makedirs()

    def write(self, table: pa.Table) -> Location:
        """Commit ``table`` (cast to the schema) as the next part: locally tmp file, fsync, rename, fsync the
        folder; in an object store one whole write under the final name, its size checked."""
        table = table.select(self.schema.names).cast(self.schema)
        name = f"part-{self.run_id}-{len(self.parts):06d}.parquet"
        final = self.directory.child(name)
        if self.directory.remote:
            _write_object(final, table)
        else:
            tmp = (
                Path(self.directory.path)
                / f"{TMP_PREFIX}{name.removeprefix('part-').removesuffix('.parquet')}{TMP_SUFFIX}"
            )
            with open(tmp, "wb") as handle:
                pq.write_table(table, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, final.path)
            _fsync_directory(Path(self.directory.path))
        self.parts.append(final)
        return final


def _write_object(final: Location, table: pa.Table) -> None:
    """One object, visible only complete: the Parquet file built in memory, then written in one go."""
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    data = buffer.getvalue().to_pybytes()
    final.write_bytes(data)
    if final.info().size != len(data):  # never expected; a part that is not whole must not stay
        final.delete()
        raise OSError(f"{final}: the store kept {final.info().size} of {len(data)} bytes of the part")


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some file systems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_features(source: Path) -> tuple[pa.Table, dict[str, Any]]:
    """The scored rows of an ``ecgfm batch`` output (a folder of parts, or one part) with a ``features`` column:
    ``record``, ``path`` and ``features`` of every row without an error, and the job's metadata (its
    ``checkpoints`` say which pretrained weights). Raises ValueError when there is no such output."""
    parts = [source] if source.is_file() else committed_parts(source)
    if not parts:
        raise ValueError(f"{source}: no ecgfm batch output (no part-*.parquet files)")
    metadata = read_metadata(parts[0])
    if "pretrained" not in (metadata.get("models") or []):
        raise ValueError(f"{source}: this ecgfm batch output has no features column (it was run with --only clinical)")
    tables = [read_part(part, ["record", "path", "features", "error"]) for part in parts]
    table = pa.concat_tables(tables)
    mask = pc.and_(pc.is_null(table["error"]), pc.is_valid(table["features"]))
    return table.filter(mask).drop_columns(["error"]), metadata
