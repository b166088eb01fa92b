"""``ecgfm batch``: score whole ECG archives into a Parquet dataset on Ray Data, on one machine or a cluster.

The job, from inputs to part files (``docs/batch.md``):

1. the driver expands the inputs (:mod:`ecgfm.archive.inputs`) and, with ``--resume``, drops those already in the
   output (:func:`ecgfm.archive.parts.done_paths`);
2. **read** (Ray tasks, CPU): :func:`read_batch` reads each record (:func:`ecgfm.records.read_record`; a record
   in an object store is first copied into the task's temporary folder, :func:`ecgfm.archive.storage.fetch_record`)
   and preprocesses it (:func:`ecgfm.records.preprocess.preprocess`), with the options of ``ecgfm predict``; a
   record that fails is an error row carrying the message, never a failed task;
3. **models** (one Ray actor pool per model, ``map_batches`` with :class:`ModelStage`, which loads its checkpoint
   once with :func:`ecgfm.inference.load_model` and the service's runtime settings): the segments of the batch's
   records are concatenated with their lengths and run through :meth:`ecgfm.inference.ModelHandle.run`, then
   aggregated per record exactly as ``ecgfm predict`` does (:func:`ecgfm.labels.aggregate_probabilities`; the
   mean over segments for features); with ``--saliency`` through
   :meth:`~ecgfm.inference.ModelHandle.run_with_saliency` instead, adding each model's per-segment saliency; with
   ``--probe``, the pretrained stage applies each probe to the record's embedding (:mod:`ecgfm.probes`): a
   ``probe_<name>_<target>`` column per target, the values ``ecgfm probe predict`` gives;
4. **write** (the driver): rows stream back (``iter_batches``) and are committed as part files by
   :class:`ecgfm.archive.parts.PartWriter` (tmp file, fsync, rename; one whole object in an object store): a part
   is complete or absent. A watchdog ends the job (:class:`StalledError`) when no row comes out for
   ``--stall-timeout`` seconds (a lost node whose actors cannot come back, a pool that cannot be scheduled).

Ray runs locally by default (an instance started for the job on 127.0.0.1, no dashboard, its temporary files in a
temporary folder, stopped at the end), or on an existing cluster with ``--address``.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import logging
import math
import os
import queue
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ecgfm.archive.inputs import BatchInput
from ecgfm.archive.parts import (
    FLOATS,
    RECORD_FIELDS,
    PartWriter,
    committed_parts,
    done_paths,
    job_metadata,
    output_schema,
    probe_column,
    read_metadata,
    remove_unfinished,
)
from ecgfm.archive.storage import Location, StorageError, fetch_record, is_uri
from ecgfm.records.preprocess import LEAD_ORDER, SEGMENT_SAMPLES

if TYPE_CHECKING:
    from ecgfm.network.model import ECGFMConfig

DEFAULT_RECORDS_PER_BATCH = 16  # records per model call (~32 segments of 10 s records)
DEFAULT_PART_SIZE = 1000  # rows per part file
DEFAULT_PART_SECONDS = 300.0  # a part is committed at least this often while rows are pending
# No row out of the pipeline for this long ends the job (exit 1, --resume): longer than a model actor's start
# (checkpoint load, or a download from the Hub) and than one batch on a slow CPU, short enough not to hang a night.
DEFAULT_STALL_TIMEOUT_S = 900.0
PROGRESS_LOG_S = 60.0  # how often a run without a progress bar logs its rates
READ_CPUS = 1.0  # Ray CPUs per read task
# Default Ray CPUs of a model actor: below READ_CPUS, so that Ray Data does not fuse the read tasks into the actor
# (it fuses maps with equal resource requests; the reads would then run one at a time inside the model's actor).
MAX_DEFAULT_ACTOR_CPUS = 0.9
CHECKPOINT_COLUMN = "_checkpoint_{kind}"  # the stage's public checkpoint (JSON), moved into the schema metadata
SALIENCY_AXIS_COLUMN = "_saliency_axis_{kind}"  # with --saliency: the stage's time axis (JSON), into the metadata

# What a read task hands to the model stages: the record's fields and its segments as float32 bytes.
READ_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string()),
        pa.field("record", pa.string()),
        *RECORD_FIELDS,
        pa.field("demo", pa.bool_()),
        pa.field("segments", pa.large_binary()),  # float32 [n_segments, 12, 2500]
        pa.field("lengths", pa.large_binary()),  # int32 [n_segments]: valid samples of each segment
    ]
)


class BatchError(RuntimeError):
    """A job that cannot start or go on (bad options, an output folder of another job); the message says why."""


class StalledError(RuntimeError):
    """No row came out of the pipeline for ``--stall-timeout`` seconds; the message names what is stuck."""


@dataclass(frozen=True)
class PreprocessOptions:
    """The record options of ``ecgfm predict``: sampling rate for ``.npy``/``.csv``, longest record, extra leads."""

    fs: float | None = None
    max_duration_s: float | None = None
    ignore_extra_leads: bool = False


@dataclass(frozen=True)
class BatchJob:
    """Everything one ``ecgfm batch`` run needs (from the command line: :func:`ecgfm.cli.batch.job_from_args`)."""

    inputs: tuple[BatchInput, ...]
    output: str  # a local folder or an object store URI (s3://bucket/prefix)
    models: tuple[str, ...] = ("finetuned", "pretrained")
    checkpoints: dict[str, str | None] = field(default_factory=dict)  # kind -> path (None: settings, demo, Hub)
    preprocess: PreprocessOptions = PreprocessOptions()
    per_segment: bool = False
    saliency: bool = False
    probes: tuple[str, ...] = ()  # probe files (--probe) applied to the features
    resume: bool = False
    device: str | None = None
    precision: str | None = None  # None: ECGFM_PRECISION (a variant is self-checked in each actor, ecgfm.precision)
    address: str | None = None  # None: a local Ray for the job
    num_cpus: int | None = None  # of the local Ray (default: every core)
    actors: int | None = None  # per model (default: 1, or one per GPU)
    cpus_per_actor: float | None = None
    gpus_per_actor: float | None = None
    threads: int | None = None  # torch threads per actor
    records_per_batch: int = DEFAULT_RECORDS_PER_BATCH
    segment_batch_size: int = 32  # ecgfm.inference.DEFAULT_BATCH_SIZE (not imported here: it imports torch)
    part_size: int = DEFAULT_PART_SIZE
    part_seconds: float = DEFAULT_PART_SECONDS
    stall_timeout: float = DEFAULT_STALL_TIMEOUT_S
    progress: bool = True

    def options(self) -> dict[str, Any]:
        """What must be equal for a resumed job to continue this one (stored in the schema metadata)."""
        return dataclasses.asdict(self.preprocess)

    def probe_metadata(self) -> list[dict[str, Any]]:
        """Each probe of ``--probe``: name, targets and the file's sha256 (a resumed job must have the same);
        :class:`BatchError` for a probe file that cannot be used or a job without the features it needs."""
        from ecgfm.network.checkpoint import file_sha256
        from ecgfm.probes.probe import ProbeFileError, load_probe

        if self.probes and "pretrained" not in self.models:
            raise BatchError("--probe needs the pretrained model's embeddings: leave out --only clinical")
        described = []
        for path in self.probes:
            try:
                probe = load_probe(path)
            except ProbeFileError as exc:
                raise BatchError(str(exc)) from None
            described.append({"name": probe.name, "targets": list(probe.targets), "sha256": file_sha256(path)})
        if len({item["name"] for item in described}) != len(described):
            raise BatchError("two --probe files have the same name")
        return sorted(described, key=lambda item: item["name"])

    def probe_columns(self) -> list[str]:
        return [probe_column(p["name"], t) for p in self.probe_metadata() for t in p["targets"]]


@dataclass
class BatchSummary:
    """What a run did: ``records`` rows written now (``errors`` of them error rows), ``skipped`` already there."""

    inputs: int
    skipped: int
    records: int = 0
    errors: int = 0
    parts: int = 0
    seconds: float = 0.0
    per_node: collections.Counter[str] = field(default_factory=collections.Counter)  # scored rows per node

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (
            f"{self.records} records written ({self.records - self.errors} scored, {self.errors} errors) in "
            f"{self.parts} parts, {self.seconds:.1f} s, {self.records_per_s:.2f} records/s; "
            f"{self.skipped} of {self.inputs} inputs were already in the output"
        )

    def nodes_line(self) -> str:
        """Which nodes scored how many records (``127.0.0.1/3f2a9c1b: 180``, by count)."""
        return ", ".join(f"{node}: {count}" for node, count in self.per_node.most_common()) or "none"


# --- read stage (Ray tasks) ------------------------------------------------------------------------------------


def read_batch(batch: pa.Table, options: PreprocessOptions) -> pa.Table:
    """Read and preprocess each record of ``batch`` (columns ``path``, ``file``): one :data:`READ_SCHEMA` row each."""
    rows = [
        read_one(path, file, options)
        for path, file in zip(batch["path"].to_pylist(), batch["file"].to_pylist(), strict=True)
    ]
    return pa.Table.from_pylist(rows, schema=READ_SCHEMA)


def read_one(path: str, file: str, options: PreprocessOptions) -> dict[str, Any]:
    """One record's row: its segments, or its error message (as ``ecgfm predict`` words it)."""
    from ecgfm.inference import record_lengths
    from ecgfm.records.preprocess import ECGInputError, preprocess
    from ecgfm.records.readers import read_record
    from ecgfm.records.record import RecordError

    row: dict[str, Any] = {"path": path, "demo": False}
    if is_uri(file):
        with tempfile.TemporaryDirectory(prefix="ecgfm-record-") as folder:
            try:
                local = fetch_record(Location(file), Path(folder))
            except (OSError, StorageError) as exc:
                return {**row, "error": f"{file}: cannot fetch the record ({exc})"}
            found = read_one(path, str(local), options)
            if found.get("error"):  # the message names the object, not the task's temporary copy
                found["error"] = found["error"].replace(str(local), file).replace(folder, file.rsplit("/", 1)[0])
            return found
    try:
        record = read_record(file, fs=options.fs)
        row["record"] = record.name
        prep = preprocess(
            record.signal,
            record.fs,
            record.lead_names,
            max_duration_s=options.max_duration_s,
            ignore_extra_leads=options.ignore_extra_leads,
        )
    except (RecordError, ECGInputError) as exc:
        return {**row, "error": str(exc)}
    except Exception as exc:  # a corrupt file may break a reader in any way; it is still one error row
        return {**row, "error": f"{file}: {type(exc).__name__}: {exc}"}
    lengths = record_lengths(prep)
    if lengths is None:
        lengths = np.full(prep.n_segments, SEGMENT_SAMPLES)
    return {
        **row,
        "n_segments": prep.n_segments,
        "duration_s": round(prep.duration_s, 6),
        "used_duration_s": round(prep.used_duration_s, 6),
        "padded": prep.padding_mask is not None,
        "constant_leads": list(prep.constant_leads),
        "segments": np.ascontiguousarray(prep.segments, dtype=np.float32).tobytes(),
        "lengths": np.asarray(lengths, dtype=np.int32).tobytes(),
    }


# --- model stages (Ray actors) ---------------------------------------------------------------------------------


class ModelStage:
    """One model in an actor: loads its checkpoint once, then adds its outputs to each batch of records.

    The finetuned stage adds ``probabilities`` (record level, label order) and ``finetuned_sha256``; the pretrained
    stage ``features`` and ``pretrained_sha256``; with ``per_segment`` also ``segment_probabilities`` /
    ``segment_features``; with ``saliency`` also ``<kind>_saliency`` (``[n_segments][T]``, the values ``ecgfm
    predict --saliency`` gives; the outputs then come from the same saliency forward, as in ``predict``). The last
    stage drops the segments and adds ``node``, the Ray node that ran it (:func:`node_name`).
    """

    def __init__(
        self,
        kind: str,
        path: str | None,
        weights: Any,
        runtime: Any,
        threads: int | None,
        segment_batch_size: int,
        per_segment: bool,
        last: bool,
        saliency: bool = False,
        probes: tuple[str, ...] = (),
    ) -> None:
        import torch

        from ecgfm.inference import load_model
        from ecgfm.probes.probe import load_probe

        if threads:
            torch.set_num_threads(threads)
        self.kind = kind
        self.handle = load_model(kind, path, weights=weights, runtime=runtime)  # type: ignore[arg-type]
        self.checkpoint_json = self.handle.checkpoint().public().model_dump_json()
        self.segment_batch_size = segment_batch_size
        self.per_segment = per_segment
        self.last = last
        self.saliency = saliency
        self.saliency_axis_json = json.dumps(saliency_axis(self.handle.loaded.config)) if saliency else ""
        self.node = node_name()
        self.probes = sorted((load_probe(path) for path in probes), key=lambda probe: probe.name)
        for probe in self.probes:  # checked by the driver on a local Ray; on a cluster, here
            probe.check_checkpoint(self.handle.sha256, f"the pretrained checkpoint of this job ({self.handle.sha256})")

    def __call__(self, batch: pa.Table) -> pa.Table:
        from ecgfm.labels import aggregate_probabilities

        n_segments = batch["n_segments"].to_pylist()
        scored = [
            i
            for i, (n, error) in enumerate(zip(n_segments, batch["error"].to_pylist(), strict=True))
            if error is None and n
        ]
        records: list[list[float] | None] = [None] * len(batch)
        segments_out: list[list[list[float]] | None] = [None] * len(batch)
        saliency_out: list[list[list[float]] | None] = [None] * len(batch)
        probe_out = {
            probe_column(probe.name, target): [None] * len(batch) for probe in self.probes for target in probe.targets
        }
        if scored:
            blobs, blob_lengths = batch["segments"].to_pylist(), batch["lengths"].to_pylist()
            shape = (-1, len(LEAD_ORDER), SEGMENT_SAMPLES)
            segments = np.concatenate([np.frombuffer(blobs[i], np.float32).reshape(shape) for i in scored])
            lengths = np.concatenate([np.frombuffer(blob_lengths[i], np.int32) for i in scored])
            if self.saliency:
                outputs, reduced = self.handle.run_with_saliency(segments, lengths, self.segment_batch_size)
            else:
                outputs, reduced = self.handle.run(segments, lengths, self.segment_batch_size), None
            start = 0
            for i in scored:
                per_segment = outputs[start : start + n_segments[i]]
                if reduced is not None:  # float32, as ecgfm predict's values before JSON
                    saliency_out[i] = reduced[start : start + n_segments[i]].tolist()
                start += n_segments[i]
                if self.kind == "finetuned":  # as ClinicalOutput.from_segments
                    record = aggregate_probabilities(per_segment)
                else:  # as FeaturesOutput.from_segments
                    record = np.asarray(per_segment, dtype=np.float64).mean(axis=0)
                    for probe in self.probes:  # as ecgfm probe predict: from the float64 embedding
                        for target, p in zip(probe.targets, probe.probabilities(record), strict=True):
                            probe_out[probe_column(probe.name, target)][i] = float(p)
                records[i] = record.astype(np.float32).tolist()
                segments_out[i] = per_segment.astype(np.float32).tolist() if self.per_segment else None
        name = "probabilities" if self.kind == "finetuned" else "features"
        n = len(batch)
        batch = batch.append_column(pa.field(name, FLOATS), pa.array(records, FLOATS))
        for column, values in probe_out.items():
            batch = batch.append_column(pa.field(column, pa.float32()), pa.array(values, pa.float32()))
        if self.per_segment:
            batch = batch.append_column(f"segment_{name}", pa.array(segments_out, pa.list_(FLOATS)))
        if self.saliency:
            batch = batch.append_column(f"{self.kind}_saliency", pa.array(saliency_out, pa.list_(FLOATS)))
            axis_column = SALIENCY_AXIS_COLUMN.format(kind=self.kind)
            batch = batch.append_column(axis_column, pa.array([self.saliency_axis_json] * n))
        batch = batch.append_column(f"{self.kind}_sha256", pa.array([self.handle.sha256] * n, pa.string()))
        batch = batch.append_column(CHECKPOINT_COLUMN.format(kind=self.kind), pa.array([self.checkpoint_json] * n))
        demo = [bool(d) or self.handle.demo for d in batch["demo"].to_pylist()]
        batch = batch.set_column(batch.schema.get_field_index("demo"), "demo", pa.array(demo, pa.bool_()))
        if not self.last:
            return batch
        return batch.drop_columns(["segments", "lengths"]).append_column("node", pa.array([self.node] * n))


def node_name() -> str:
    """This Ray node as the summary names it: its IP and the first 8 hex digits of its node id (one machine may
    hold several nodes, as in the tests)."""
    import ray

    context = ray.get_runtime_context()
    return f"{ray.util.get_node_ip_address()}/{context.get_node_id()[:8]}"


def saliency_axis(config: ECGFMConfig) -> dict[str, Any]:
    """Where the saliency values of a model of this architecture lie on the record's time axis:
    ``steps_per_segment`` (T) steps of ``step_s`` per segment, segment k starting at ``k * segment_s``; computed as
    :meth:`ecgfm.results.outputs.Saliency.from_segments` places ``ecgfm predict``'s (ECG-FM: 156 steps of 0.032 s,
    5 s)."""
    from ecgfm.results.outputs import Saliency

    steps = config.frames(SEGMENT_SAMPLES)
    placed = Saliency.from_segments(np.zeros((2, steps)))
    return {"step_s": placed.step_s, "segment_s": placed.segment_start_s[1], "steps_per_segment": steps}


# --- the job ---------------------------------------------------------------------------------------------------


def plan_resources(job: BatchJob, cluster_cpus: float, cluster_gpus: float) -> dict[str, Any]:
    """Actors per model, CPUs/GPUs per actor and torch threads, from the job's options and the cluster's size.

    CPU only: one actor per model, asking for a fraction of a CPU so that read tasks always find one (an actor
    pool that asks for every CPU starves the reads and hangs), with the cores split between the models' threads.
    With GPUs (and a device that is not ``cpu``): one actor per GPU and model, the models sharing each GPU.
    """
    n_models = len(job.models)
    use_gpu = cluster_gpus > 0 and (job.device or "auto") != "cpu" and job.gpus_per_actor != 0
    actors = job.actors or (max(1, int(cluster_gpus)) if use_gpu else 1)
    total = actors * n_models
    gpus = job.gpus_per_actor if job.gpus_per_actor is not None else (min(1.0, cluster_gpus / total) if use_gpu else 0)
    cpus = job.cpus_per_actor
    if cpus is None:
        cpus = round(min(MAX_DEFAULT_ACTOR_CPUS, max(cluster_cpus - READ_CPUS, 0.1) / total), 3)
    threads = job.threads or max(1, int(cluster_cpus // total) if job.address is None else int(max(cpus, 1)))
    return {"actors": actors, "cpus_per_actor": cpus, "gpus_per_actor": gpus, "threads": threads}


def check_output(job: BatchJob) -> tuple[set[str], dict[str, Any]]:
    """The paths already scored (``--resume``) and the metadata of the existing parts; refuses an output of
    another job (other models, options, per-segment or saliency columns) and a non-empty output without
    ``--resume``."""
    try:
        parts = committed_parts(job.output)
    except StorageError as exc:
        raise BatchError(f"--output {exc}") from exc
    if not parts:
        return set(), {}
    if not job.resume:
        raise BatchError(
            f"{job.output} already holds {len(parts)} part files; pass --resume to continue that job, "
            "or choose another --output folder"
        )
    metadata = read_metadata(parts[0])
    expected = {
        "models": sorted(job.models),
        "per_segment": job.per_segment,
        "saliency": job.saliency,
        "options": job.options(),
        "probes": job.probe_metadata(),
    }
    found = {  # the saliency time axis, or None (or absent: older); no probes (or absent: older)
        **metadata,
        "saliency": bool(metadata.get("saliency")),
        "probes": metadata.get("probes") or [],
    }
    for key, value in expected.items():
        if found.get(key) != value:
            raise BatchError(
                f"{job.output} holds the output of another job ({key}: {found.get(key)!r}, "
                f"this job: {value!r}); resume it with the same options, or choose another --output folder"
            )
    return done_paths(job.output), metadata


def run_job(job: BatchJob) -> BatchSummary:
    """Score ``job.inputs`` into ``job.output``; returns what was done. Raises :class:`BatchError` if it cannot."""
    _check_probes(job)
    Location(str(job.output)).makedirs()
    done, previous = check_output(job)
    removed = remove_unfinished(job.output)
    if removed:
        log(f"removed {removed} unfinished part files of a killed run")
    todo = [item for item in job.inputs if item.path not in done]
    summary = BatchSummary(inputs=len(job.inputs), skipped=len(job.inputs) - len(todo))
    if not todo:
        return summary
    started = time.monotonic()
    with quiet_ray_noise() as terminal, ray_session(job) as (cluster_cpus, cluster_gpus):
        plan = plan_resources(job, cluster_cpus, cluster_gpus)
        log(
            f"scoring {len(todo)} records ({summary.skipped} already in the output) with "
            f"{', '.join(job.models)}: {plan['actors']} actor(s) per model, {plan['cpus_per_actor']} CPU, "
            f"{plan['gpus_per_actor']} GPU, {plan['threads']} torch thread(s) each"
        )
        dataset = build_dataset(job, todo, plan)
        try:
            _write_parts(job, dataset, len(todo), previous, summary, progress_to=terminal)
        finally:
            summary.seconds = time.monotonic() - started
            if summary.per_node:
                log(f"records per node: {summary.nodes_line()}")
    return summary


def _check_probes(job: BatchJob) -> None:
    """Every ``--probe`` can be used and, on a local Ray, was fit on this job's pretrained checkpoint (else
    :class:`BatchError` naming both sha256s, before Ray starts; on a cluster the actor checks it)."""
    job.probe_metadata()
    if not job.probes or job.address is not None:
        return
    from ecgfm.network.checkpoint import file_sha256
    from ecgfm.network.hub import WeightsNotFoundError, resolve_checkpoint
    from ecgfm.probes.probe import ProbeFileError, load_probe
    from ecgfm.settings import WeightsSettings

    try:
        source = resolve_checkpoint("pretrained", job.checkpoints.get("pretrained"), WeightsSettings.from_env())
    except WeightsNotFoundError:
        return  # the pretrained actor reports it (ecgfm.cli.batch: exit 2)
    sha256 = source.sha256 or file_sha256(source.path)
    for path in job.probes:
        try:
            load_probe(path).check_checkpoint(sha256, f"this job's pretrained checkpoint ({Path(source.path).name})")
        except ProbeFileError as exc:
            raise BatchError(str(exc)) from None


def build_dataset(job: BatchJob, todo: Sequence[BatchInput], plan: dict[str, Any]):
    """The Ray Data pipeline: items → read tasks → one actor pool per model."""
    import ray.data

    from ecgfm.settings import RuntimeSettings, WeightsSettings

    weights, runtime = WeightsSettings.from_env(), RuntimeSettings.from_env()  # the driver's, sent to the actors
    if job.device is not None:
        runtime = dataclasses.replace(runtime, device=job.device)
    if job.precision is not None:
        runtime = dataclasses.replace(runtime, precision=job.precision)
    items = [{"path": item.path, "file": item.file} for item in todo]
    blocks = max(1, math.ceil(len(items) / job.records_per_batch))
    dataset = ray.data.from_items(items, override_num_blocks=blocks)
    dataset = dataset.map_batches(
        read_batch,
        batch_size=job.records_per_batch,
        batch_format="pyarrow",
        fn_kwargs={"options": job.preprocess},
        num_cpus=READ_CPUS,
    )
    for index, kind in enumerate(job.models):
        gpu = {"num_gpus": plan["gpus_per_actor"]} if plan["gpus_per_actor"] else {}
        dataset = dataset.map_batches(
            ModelStage,
            fn_constructor_kwargs={
                "kind": kind,
                "path": job.checkpoints.get(kind),
                "weights": weights,
                "runtime": runtime,
                "threads": plan["threads"],
                "segment_batch_size": job.segment_batch_size,
                "per_segment": job.per_segment,
                "last": index == len(job.models) - 1,
                "saliency": job.saliency,
                "probes": job.probes if kind == "pretrained" else (),
            },
            batch_size=job.records_per_batch,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=plan["actors"]),
            num_cpus=plan["cpus_per_actor"],
            **gpu,
        )
    return dataset


def _write_parts(
    job: BatchJob,
    dataset: Any,
    total: int,
    previous: dict[str, Any],
    summary: BatchSummary,
    progress_to: io.TextIOBase | None = None,
) -> None:
    from tqdm import tqdm

    writer: PartWriter | None = None
    pending: list[pa.Table] = []
    pending_rows = 0
    last_commit = time.monotonic()
    progress = tqdm(
        total=total, desc="records", unit="rec", file=progress_to or sys.stderr, disable=not job.progress, mininterval=1
    )
    rates = Rates(total, log_every=None if job.progress else PROGRESS_LOG_S)

    def commit(rows: int) -> None:
        """Write the first ``rows`` pending rows as one part; the rest stay pending."""
        nonlocal pending, pending_rows, last_commit
        if writer is None or rows == 0:
            return
        table = pa.concat_tables(pending)
        part, rest = table.slice(0, rows), table.slice(rows)
        writer.write(part)
        summary.parts += 1
        summary.records += part.num_rows
        summary.errors += part.num_rows - part["error"].null_count
        pending, pending_rows, last_commit = ([rest] if rest.num_rows else []), rest.num_rows, time.monotonic()

    try:
        for batch in watched_batches(dataset, job.stall_timeout):
            if batch.num_rows == 0:
                continue
            nodes = batch["node"].to_pylist()
            summary.per_node.update(nodes)
            rates.update(nodes)
            checkpoints = {}
            for kind in job.models:
                column = CHECKPOINT_COLUMN.format(kind=kind)
                checkpoints[kind] = json.loads(batch[column][0].as_py())
                batch = batch.drop_columns([column])
            axes = []
            for kind in job.models if job.saliency else ():
                column = SALIENCY_AXIS_COLUMN.format(kind=kind)
                axes.append(json.loads(batch[column][0].as_py()))
                batch = batch.drop_columns([column])
            if writer is None:
                _check_same_checkpoints(job, previous, checkpoints)
                axis = _one_saliency_axis(job, axes) if job.saliency else None
                probes = job.probe_metadata()
                metadata = job_metadata(
                    job.models, job.per_segment, job.options(), checkpoints, saliency=axis, probes=probes
                )
                schema = output_schema(
                    job.models, job.per_segment, metadata, saliency=job.saliency, probe_columns=job.probe_columns()
                )
                writer = PartWriter(job.output, schema)
            pending.append(batch)
            pending_rows += batch.num_rows
            progress.set_postfix_str(f"errors={summary.errors}, parts={summary.parts}; {rates.line()}", refresh=False)
            progress.update(batch.num_rows)
            while pending_rows >= job.part_size:  # parts of exactly part_size rows, but the last
                commit(job.part_size)
            if pending_rows and time.monotonic() - last_commit >= job.part_seconds:
                commit(pending_rows)
        commit(pending_rows)
    except StalledError:  # the rows that did come are whole: keep them
        commit(pending_rows)
        raise
    finally:
        progress.close()


def watched_batches(dataset: Any, stall_timeout: float) -> Iterator[pa.Table]:
    """The dataset's batches as they come (``iter_batches``, read in a thread); :class:`StalledError` when none
    comes for ``stall_timeout`` seconds. The time the caller spends on a batch (writing a part) does not count."""
    batches: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=2)

    def pump() -> None:
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1):
                batches.put(("batch", batch))
            batches.put(("end", None))
        except BaseException as exc:  # handed to the caller, who raises it
            batches.put(("error", exc))

    # Ray warns that a ray.init outside the main thread cannot set its SIGTERM handler; ours is set (ecgfm.cli.batch)
    logging.getLogger("ray._private.worker").addFilter(lambda record: "SIGTERM handler" not in record.getMessage())
    threading.Thread(target=pump, name="ecgfm-batch-rows", daemon=True).start()
    while True:
        try:
            kind, value = batches.get(timeout=stall_timeout)
        except queue.Empty:
            raise StalledError(stall_message(stall_timeout)) from None
        if kind == "end":
            return
        if kind == "error":
            raise value
        yield value


STATE_HINTS = {  # what an actor state means for the user (Ray's actor table)
    "PENDING_CREATION": " (no node has the CPUs/GPUs it asks for, or its node is starting)",
    "RESTARTING": " (its node was lost; waiting for a node with room for it)",
    "DEPENDENCIES_UNREADY": " (its arguments are not available)",
}


def stall_message(stall_timeout: float) -> str:
    """What is stuck: the job's model actors that are not alive (restarting, waiting for resources or for their
    arguments) and the nodes that died, as Ray's control store (GCS) knows them."""
    import ray

    found = []
    try:
        from ray._private import state  # the actor table without the dashboard (DeveloperAPI)

        job_id = ray.JobID.from_hex(ray.get_runtime_context().get_job_id())
        stuck = collections.Counter(
            actor["State"]
            for actor in state.actors(job_id=job_id).values()
            if actor["State"] != "ALIVE" and "ModelStage" in actor["ActorClassName"]
        )
        if stuck:
            states = ", ".join(f"{n} {what}" + STATE_HINTS.get(what, "") for what, n in sorted(stuck.items()))
            found.append(f"model actors (MapBatches(ModelStage)) not alive: {states}")
        dead = [f"{node['NodeManagerAddress']}/{node['NodeID'][:8]}" for node in ray.nodes() if not node["Alive"]]
        if dead:
            found.append(f"lost nodes {', '.join(dead)}")
    except Exception as exc:  # Ray Client, or a GCS that does not answer: say so, the stall stands
        found.append(f"Ray's state could not be read ({type(exc).__name__})")
    where = "; ".join(found) or "every model actor is alive (a read task or a transfer is stuck)"
    return f"no record came out of the pipeline for {stall_timeout:g} s (--stall-timeout): {where}"


class Rates:
    """Records/s overall and per node (over the last minute) for the progress bar, or as a log line every
    ``log_every`` seconds when there is no bar (a cluster job's log)."""

    WINDOW_S = 60.0

    def __init__(self, total: int, log_every: float | None) -> None:
        self.total, self.done, self.log_every = total, 0, log_every
        self.started = self.last_log = time.monotonic()
        self.recent: collections.deque[tuple[float, str]] = collections.deque()

    def update(self, nodes: list[str]) -> None:
        now = time.monotonic()
        self.done += len(nodes)
        self.recent.extend((now, node) for node in nodes)
        while self.recent and self.recent[0][0] < now - self.WINDOW_S:
            self.recent.popleft()
        if self.log_every is not None and now - self.last_log >= self.log_every:
            self.last_log = now
            log(f"{self.done} of {self.total} records; {self.line()}")

    def line(self) -> str:
        now = time.monotonic()
        overall = self.done / max(now - self.started, 1e-9)
        window = min(self.WINDOW_S, max(now - self.started, 1e-9))
        per_node = collections.Counter(node for _, node in self.recent)
        nodes = ", ".join(f"{node} {count / window:.2f}" for node, count in sorted(per_node.items()))
        return f"{overall:.2f} records/s; per node (records/s, last minute): {nodes or '-'}"


def _one_saliency_axis(job: BatchJob, axes: list[dict[str, Any]]) -> dict[str, Any]:
    """The models' common saliency time axis (ECG-FM's finetuned model keeps its pretrained feature extractor)."""
    if any(axis != axes[0] for axis in axes):
        raise BatchError(
            f"the models' saliency steps differ ({', '.join(map(json.dumps, axes))}): their feature extractors are "
            "not alike; score each model with --saliency in a job of its own (--only)"
        )
    return axes[0]


def _check_same_checkpoints(job: BatchJob, previous: dict[str, Any], checkpoints: dict[str, Any]) -> None:
    for kind, info in checkpoints.items():
        before = (previous.get("checkpoints") or {}).get(kind)
        if before is not None and before.get("sha256") != info.get("sha256"):
            raise BatchError(
                f"{job.output} was scored with another {kind} checkpoint (sha256 {before.get('sha256')}, now "
                f"{info.get('sha256')}); resume with the same weights, or choose another --output folder"
            )
        variant, variant_before = (
            (entry.get("precision") or {}).get("variant", "fp32") for entry in (info, before or {})
        )
        if before is not None and variant_before != variant:
            raise BatchError(
                f"{job.output} was scored with the {kind} model in {variant_before}, now {variant}; resume with the "
                "same --precision, or choose another --output folder"
            )


class ray_session:  # noqa: N801 (a context manager used as a function)
    """A Ray for the job: a local instance (127.0.0.1, no dashboard, temporary files in a temporary folder,
    stopped and removed at the end) or a connection to ``job.address``; yields the cluster's CPUs and GPUs."""

    def __init__(self, job: BatchJob) -> None:
        self.job = job
        self.temp_dir: str | None = None

    def __enter__(self) -> tuple[float, float]:
        import ray
        import ray.data

        # Workers of the local Ray import ecgfm from where this process does (Ray expands ${PYTHONPATH}).
        package_root = str(Path(__file__).resolve().parents[2])
        runtime_env = {"env_vars": {"PYTHONPATH": f"{package_root}{os.pathsep}${{PYTHONPATH}}"}}
        if self.job.address is None:
            self.temp_dir = tempfile.mkdtemp(prefix="ecgfm-ray-")
            ray.init(
                address="local",
                num_cpus=self.job.num_cpus or os.cpu_count() or 1,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                _temp_dir=self.temp_dir,
                logging_level="warning",
                runtime_env=runtime_env,
            )
        else:  # workers of a cluster import ecgfm from their own environment (docs/batch.md)
            ray.init(address=self.job.address, logging_level="warning")
        if self.job.address is not None:
            log(auth_line())
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours (records written) is enough
        context.print_on_execution_start = False
        resources = ray.cluster_resources()
        return float(resources.get("CPU", 1)), float(resources.get("GPU", 0))

    def __exit__(self, *exc_info: object) -> None:
        import ray

        ray.shutdown()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def auth_line() -> str:
    """The cluster's authentication mode, and what a worker node needs to join it (Ray 2.60 token auth)."""
    try:
        from ray._private.authentication.authentication_utils import get_authentication_mode_name
        from ray._raylet import get_authentication_mode

        mode = get_authentication_mode_name(get_authentication_mode())
    except ImportError:  # another Ray than requirements.txt's
        return "Ray authentication: unknown (this Ray has no token authentication)"
    if mode == "token":
        return (
            "Ray authentication: token. A worker node joins with RAY_AUTH_MODE=token and the cluster's token in "
            "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (docs/batch.md, 'On a Ray cluster')"
        )
    return (
        f"Ray authentication: {mode}. Anyone who reaches the cluster's ports can run code on it; a worker node "
        "joins without a token (started without RAY_AUTH_MODE=token). Token authentication: docs/batch.md"
    )


def log(message: str) -> None:
    print(f"ecgfm batch: {message}", file=sys.stderr, flush=True)


# Lines Ray writes on every clean run, saying nothing about the job; every other line of Ray's is let through.
RAY_NOISE = (
    # a local ray.init() turns token authentication on by default and says so (it stays on)
    re.compile(r"WARNING authentication_token_setup\.py:\d+ -- Token authentication is enabled for this Ray cluster\."),
    # the core worker flags every actor whose constructor arguments are in the object store while it may restart:
    # Ray Data passes its context and transform to each actor of a pool so (ray-project/ray#57733)
    re.compile(
        r"core_worker\.cc:\d+: Actor with class name: '[^']*' and ID: '[0-9a-f]+' has constructor arguments in "
        r"the object store and max_restarts > 0\."
    ),
    # Ray Data's progress bars are off on purpose (ours counts records, errors and parts)
    re.compile(r"WARNING __init__\.py:\d+ -- Progress bars disabled\. To enable, set"),
    # Ray Data's own line at the end of the dataset; ours follows with the counts
    re.compile(r"INFO streaming_executor\.py:\d+ -- .*Dataset \S+ execution finished in [\d.]+ seconds"),
)


class quiet_ray_noise:  # noqa: N801 (a context manager used as a function)
    """While Ray runs, what is written to this process's stderr (file descriptor 2: Python, and Ray's C++ core
    worker, which no logging setting reaches without hiding its real errors too) goes through a pipe and is
    copied to the real stderr line by line, but for the lines :data:`RAY_NOISE` matches. Yields a text stream on
    the real stderr, for the progress bar (which redraws a line in place, so it cannot wait for a line's end)."""

    def __init__(self, noise: Sequence[re.Pattern[str]] = RAY_NOISE) -> None:
        self.noise = noise

    def __enter__(self) -> io.TextIOBase:
        sys.stderr.flush()
        self.saved = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self.thread = threading.Thread(
            target=self._copy, args=(read_end, os.dup(self.saved)), name="ecgfm-stderr", daemon=True
        )
        self.thread.start()
        self.terminal = io.TextIOWrapper(io.FileIO(os.dup(self.saved), "w"), write_through=True)
        return self.terminal

    def __exit__(self, *exc_info: object) -> None:
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.terminal.close()
        # the pipe ends when no process holds it (Ray's are stopped by now); a straggler's lines still get through
        self.thread.join(timeout=5)

    def _copy(self, read_end: int, out: int) -> None:
        """Copy the pipe to ``out`` (its own descriptor) until every writer has closed it, dropping the noise."""
        pending = b""
        with open(read_end, "rb", buffering=0) as pipe, open(out, "wb", buffering=0) as sink:
            while chunk := pipe.read(65536):
                *lines, pending = (pending + chunk).split(b"\n")
                self._write(sink, b"".join(line + b"\n" for line in lines if not self._is_noise(line)))
            if pending and not self._is_noise(pending):
                self._write(sink, pending)

    def _is_noise(self, line: bytes) -> bool:
        text = line.decode("utf-8", "replace")
        return any(pattern.search(text) for pattern in self.noise)

    @staticmethod
    def _write(sink: io.RawIOBase, data: bytes) -> None:
        try:
            while data:
                data = data[sink.write(data) :]
        except OSError:  # the real stderr is gone: keep draining the pipe so that no writer blocks on it
            pass
