"""``ecgfm batch``: its arguments, exit statuses and messages (the job itself: :mod:`ecgfm.archive.batch`)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from ecgfm.archive.batch import (
    DEFAULT_PART_SECONDS,
    DEFAULT_PART_SIZE,
    DEFAULT_RECORDS_PER_BATCH,
    DEFAULT_STALL_TIMEOUT_S,
    BatchError,
    BatchJob,
    PreprocessOptions,
    StalledError,
    log,
    run_job,
)
from ecgfm.archive.inputs import DEFAULT_PATH_COLUMN, InputsError, discover_inputs
from ecgfm.archive.storage import Location, StorageError


def add_batch_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``ecgfm batch`` on the CLI's subcommands."""
    parser = commands.add_parser(
        "batch",
        help="score whole archives into a Parquet dataset on Ray Data (resumable; docs/batch.md)",
        description="Score ECG records (files, folders, globs, manifests) into a Parquet dataset, one row per input.",
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        help="record files, folders (recursive), globs, manifests (.txt, .csv, .parquet); local or s3://, gs:// URIs",
    )
    parser.add_argument(
        "--output", "-o", required=True, help="output folder of part files (a Parquet dataset), local or a URI"
    )
    parser.add_argument("--manifest", action="append", default=[], help="a manifest of paths (repeatable)")
    parser.add_argument("--path-column", default=DEFAULT_PATH_COLUMN, help="path column of CSV/Parquet manifests")
    parser.add_argument("--root", help="folder of relative manifest paths (default: the manifest's folder)")
    parser.add_argument("--resume", action="store_true", help="skip inputs already in the output, append the rest")
    parser.add_argument("--pretrained", help="pretrained .pt (default: $ECGFM_PRETRAINED_CHECKPOINT, else the hub)")
    parser.add_argument("--finetuned", help="finetuned .pt (default: $ECGFM_FINETUNED_CHECKPOINT, else the hub)")
    parser.add_argument("--only", choices=("clinical", "features"), help="run one model only")
    parser.add_argument("--per-segment", action="store_true", help="also write per-segment columns")
    parser.add_argument(
        "--saliency",
        action="store_true",
        help="also write <model>_saliency, per segment: where the model attended (attention, not cause; about "
        "1.3-1.5x the model time)",
    )
    parser.add_argument(
        "--probe",
        action="append",
        default=[],
        metavar="NAME.probe",
        help="also apply this probe (ecgfm probe fit) to each record's embedding: a probe_<name>_<target> column per "
        "target (repeatable; docs/probes.md)",
    )
    parser.add_argument("--fs", type=float, help="sampling rate for .npy and .csv files")
    parser.add_argument("--ignore-extra-leads", action="store_true", help="drop leads that are not one of the 12")
    parser.add_argument("--max-duration", type=float, default=None, help="refuse records longer than this (s)")
    parser.add_argument("--device", help="torch device of the actors (default: $ECGFM_DEVICE, auto)")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16", "int8", "auto"),
        help="fp32 (the reference), or a variant self-checked against it in each actor (default: $ECGFM_PRECISION)",
    )
    ray_group = parser.add_argument_group("Ray")
    ray_group.add_argument("--address", help="an existing cluster: auto or ray://HOST:10001 (default: a local Ray)")
    ray_group.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: every core)")
    ray_group.add_argument("--actors", type=int, help="actors per model (default: 1 on CPU, one per GPU)")
    ray_group.add_argument("--cpus-per-actor", type=float, help="Ray CPUs per model actor (default: a fraction)")
    ray_group.add_argument("--gpus-per-actor", type=float, help="Ray GPUs per model actor (default: GPUs shared)")
    ray_group.add_argument("--threads", type=int, help="torch threads per model actor")
    ray_group.add_argument(
        "--records-per-batch", type=int, default=DEFAULT_RECORDS_PER_BATCH, help="records per model call"
    )
    ray_group.add_argument("--batch-size", type=int, default=32, help="most segments per forward (as ecgfm predict)")
    ray_group.add_argument("--part-size", type=int, default=DEFAULT_PART_SIZE, help="rows per part file")
    ray_group.add_argument(
        "--part-seconds", type=float, default=DEFAULT_PART_SECONDS, help="commit a part at least this often (s)"
    )
    ray_group.add_argument(
        "--stall-timeout",
        type=float,
        default=DEFAULT_STALL_TIMEOUT_S,
        help=f"end the job (exit 1, --resume) when no record comes out for this long (s, default "
        f"{DEFAULT_STALL_TIMEOUT_S:g})",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (rates logged every minute)")
    parser.set_defaults(run=run_batch)
    return parser


def job_from_args(args: argparse.Namespace) -> BatchJob:
    """The :class:`BatchJob` of a parsed command line (expands the inputs; :class:`InputsError` if it cannot)."""
    if not args.inputs and not args.manifest:
        raise InputsError("no inputs: name record files, folders, globs or manifests")
    for name in ("records_per_batch", "batch_size", "part_size"):
        if getattr(args, name) < 1:
            raise InputsError(f"--{name.replace('_', '-')} must be at least 1")
    if not args.stall_timeout > 0:
        raise InputsError("--stall-timeout must be more than 0 seconds")
    Location.named(args.output)  # a URI with credentials or a query string in it is refused before anything runs
    inputs, warnings = discover_inputs(args.inputs, args.manifest, args.path_column, args.root)
    for warning in warnings:
        log(f"warning: {warning}")
    models = {"clinical": ("finetuned",), "features": ("pretrained",)}.get(args.only, ("finetuned", "pretrained"))
    return BatchJob(
        inputs=tuple(inputs),
        output=args.output,
        models=models,
        checkpoints={"pretrained": args.pretrained, "finetuned": args.finetuned},
        preprocess=PreprocessOptions(args.fs, args.max_duration, args.ignore_extra_leads),
        per_segment=args.per_segment,
        saliency=args.saliency,
        probes=tuple(args.probe),
        resume=args.resume,
        device=args.device,
        precision=args.precision,
        address=args.address,
        num_cpus=args.num_cpus,
        actors=args.actors,
        cpus_per_actor=args.cpus_per_actor,
        gpus_per_actor=args.gpus_per_actor,
        threads=args.threads,
        records_per_batch=args.records_per_batch,
        segment_batch_size=args.batch_size,
        part_size=args.part_size,
        part_seconds=args.part_seconds,
        stall_timeout=args.stall_timeout,
        progress=not args.no_progress,
    )


def run_batch(args: argparse.Namespace) -> int:
    """``ecgfm batch``: 0 when every input has its row (scored or with its error), 2 for a job that cannot start,
    1 for one that stopped part-way (interrupted, failed, or stalled past ``--stall-timeout``; rerun it with
    ``--resume``)."""
    try:
        job = job_from_args(args)
        _check_local_checkpoints(job)
    except (InputsError, BatchError, StorageError) as exc:
        print(f"ecgfm: {exc}", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, _raise_system_exit)
    try:
        summary = run_job(job)
    except BatchError as exc:
        print(f"ecgfm: {exc}", file=sys.stderr)
        return 2
    except StalledError as exc:
        print(f"ecgfm: batch stopped: {exc}", file=sys.stderr)
        print("ecgfm: committed parts are kept; rerun with --resume (on a cluster whose nodes are up)", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit):
        print("ecgfm: batch interrupted; committed parts are kept, rerun with --resume", file=sys.stderr)
        return 1
    except Exception as exc:  # Ray wraps a failed actor or task; the message is what the user can act on
        weights_error = _weights_error(exc)
        if weights_error is not None:  # a checkpoint an actor could not load: the job cannot start
            print(f"ecgfm: {weights_error}", file=sys.stderr)
            return 2
        print(f"ecgfm: batch failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("ecgfm: committed parts are kept; rerun with --resume", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    log(f"done: {summary.line()}; output {job.output}")
    return 0


def _check_local_checkpoints(job: BatchJob) -> None:
    """On a local Ray, a checkpoint path that is not a file fails now, not in an actor."""
    if job.address is not None:
        return
    for kind in job.models:
        path = job.checkpoints.get(kind)
        if path is not None and not Path(path).is_file():
            raise BatchError(f"{path}: no such {kind} checkpoint file")


def _weights_error(exc: BaseException) -> str | None:
    """The message of the CheckpointError or WeightsNotFoundError that stopped a model actor, if that is what
    Ray raised (an actor that dies in ``__init__`` comes back as ActorDiedError carrying the traceback as text)."""
    from ecgfm.network.checkpoint import CheckpointError
    from ecgfm.network.hub import WeightsNotFoundError

    cause = getattr(exc, "cause", None)
    for candidate in (cause, exc.__cause__, exc):
        if isinstance(candidate, CheckpointError | WeightsNotFoundError):
            return str(candidate).splitlines()[0] if str(candidate) else type(candidate).__name__
    for name in ("CheckpointError: ", "WeightsNotFoundError: "):
        text = str(exc)
        if name in text:
            return text.rsplit(name, 1)[1].splitlines()[0]
    return None


def _raise_system_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
