"""Served throughput against the raw model's, in alternating windows on the same machine.

    python -m benchmarks.bench_saturation --size full --concurrency 4 --pairs 4 --window-s 30

The issue's CPU throughput target is "served >= 90 % of the raw model's best throughput on the same machine". On a
shared machine the speed of the CPU drifts by 10-20 % from one minute to the next, so a raw figure from another run
cannot be compared with a served one. This benchmark alternates the two: a raw window (a separate process with the
finetuned model loaded, ``classify_segments`` on ``--raw-batch-size`` segments back to back), then a served window
(``bentoml serve service:ECGFMService`` on 127.0.0.1, driven by :mod:`benchmarks.loadgen` at ``--concurrency``
closed-loop clients, one 10 s record per request), ``--pairs`` times per request body (JSON ``/clinical`` and binary
``/clinical/npy``). Only one of the two runs at a time; the idle one waits.

Per served window it also reads the finetuned model service's ``/status``: the share of the window its model was
busy (utilisation) and the segments it ran per busy second. Served / raw = utilisation x (in-service model speed /
raw speed): the first factor is time the batcher or the request path left the model idle, the second is the model
running slower in the service than alone (the API process and the load generator take CPU from it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_served import (
    RECORD,
    SEGMENTS_PER_RECORD,
    checkpoints,
    record_bodies,
    run_level,
    server,
)
from benchmarks.common import DATA_DIR, REPO_DIR, machine_info, machine_line, markdown_table, write_results

PYTHON = sys.executable
SUMMARY_KEYS = ("raw_segments_per_s", "segments_per_s", "served_over_raw", "utilisation", "in_service_model_over_raw",
                "p50_ms")  # fmt: skip


def raw_worker(checkpoint: Path, batch_size: int) -> None:
    """Serve raw windows over stdin/stdout: a line ``<seconds>`` in, ``{"segments": n, "elapsed_s": t}`` out."""
    from ecgfm.inference import classify_segments, load_model

    handle = load_model("finetuned", checkpoint)
    batch = np.random.default_rng(0).standard_normal((batch_size, 12, 2500), dtype=np.float32)
    classify_segments(handle, batch, batch_size=batch_size)
    print("ready", flush=True)
    for line in sys.stdin:
        window_s = float(line)
        started = time.perf_counter()
        segments = 0
        while time.perf_counter() - started < window_s:
            classify_segments(handle, batch, batch_size=batch_size)
            segments += batch_size
        print(json.dumps({"segments": segments, "elapsed_s": time.perf_counter() - started}), flush=True)


def served_window(base_url: str, body_path: Path, concurrency: int, window_s: float) -> dict[str, Any]:
    level = run_level(base_url, body_path, concurrency, window_s, max_requests=10**9)
    kept = ("segments_per_s", "errors", "utilisation", "model_segments_per_busy_s", "mean_batch_size")
    return {"p50_ms": level["latency_ms"]["p50"], **{key: level[key] for key in kept}}


def write_bodies(directory: Path) -> dict[str, Path]:
    record = json.loads((DATA_DIR / RECORD).read_text())
    paths = {}
    for kind, body in record_bodies(record).items():
        paths[kind] = directory / f"body.{kind}"
        paths[kind].write_bytes(body)
    return paths


def run(args: argparse.Namespace) -> dict[str, Any]:
    pretrained, finetuned = checkpoints(args.size)
    raw = subprocess.Popen(
        [PYTHON, "-m", "benchmarks.bench_saturation", "--raw-worker", str(finetuned), str(args.raw_batch_size)],
        cwd=REPO_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert raw.stdin is not None and raw.stdout is not None
    if raw.stdout.readline().strip() != "ready":
        raise RuntimeError("the raw worker did not start")
    data: dict[str, Any] = {"pairs": {name: [] for name in args.bodies.split(",")}}
    try:
        with server("bentoml", args.port, pretrained, finetuned) as running, tempfile.TemporaryDirectory() as tmp:
            base_url = running.url
            paths = write_bodies(Path(tmp))
            for name in data["pairs"]:  # warm-up: the batcher trains on its first ~10 calls
                served_window(base_url, paths[name], args.concurrency, 10)
            for pair in range(args.pairs):
                for name, pairs in data["pairs"].items():
                    raw.stdin.write(f"{args.window_s}\n")
                    raw.stdin.flush()
                    raw_result = json.loads(raw.stdout.readline())
                    raw_rate = raw_result["segments"] / raw_result["elapsed_s"]
                    served = served_window(base_url, paths[name], args.concurrency, args.window_s)
                    row = {"raw_segments_per_s": round(raw_rate, 3), **served}
                    row["served_over_raw"] = round(served["segments_per_s"] / raw_rate, 3)
                    row["in_service_model_over_raw"] = round((served["model_segments_per_busy_s"] or 0) / raw_rate, 3)
                    pairs.append(row)
                    print(f"pair {pair} {name}: {json.dumps(row)}", flush=True)
    finally:
        raw.stdin.close()
        raw.wait(timeout=60)
    data["summary"] = {
        name: {key: round(statistics.median(row[key] for row in pairs), 3) for key in SUMMARY_KEYS}
        for name, pairs in data["pairs"].items()
    }
    return data


def to_markdown(data: dict[str, Any]) -> str:
    lines = [
        f"# Served vs raw throughput in alternating windows, {data['size']} model, {data['concurrency']} clients",
        "",
        f"{machine_line(data['machine'])} Raw: batch {data['raw_batch_size']}; "
        f"served: POST one 10 s record ({SEGMENTS_PER_RECORD} segments) per request; {data['window_s']} s windows, "
        f"{data['n_pairs']} raw/served pairs per body.",
        "",
    ]
    headers = ["body", "pair", "raw seg/s", "served seg/s", "served / raw", "utilisation", "in-service model / raw",
               "mean batch", "p50 ms", "errors"]  # fmt: skip
    rows = [
        [name, i, row["raw_segments_per_s"], row["segments_per_s"], row["served_over_raw"], row["utilisation"],
         row["in_service_model_over_raw"], row["mean_batch_size"], row["p50_ms"], row["errors"] or ""]
        for name, pairs in data["pairs"].items() for i, row in enumerate(pairs)
    ]  # fmt: skip
    lines.append(markdown_table(headers, rows))
    lines += ["", "Medians over the pairs:", ""]
    headers = ["body", "raw seg/s", "served seg/s", "served / raw", "utilisation", "in-service model / raw", "p50 ms"]
    rows = [
        [name, s["raw_segments_per_s"], s["segments_per_s"], s["served_over_raw"], s["utilisation"],
         s["in_service_model_over_raw"], s["p50_ms"]]
        for name, s in data["summary"].items()
    ]  # fmt: skip
    lines.append(markdown_table(headers, rows))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--raw-worker"]:
        raw_worker(Path(argv[1]), int(argv[2]))
        return None
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["small", "full"], default="full")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--bodies", default="json,npy")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--window-s", type=float, default=30.0)
    parser.add_argument("--raw-batch-size", type=int, default=8)
    parser.add_argument("--port", type=int, default=3210)
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    data = {"size": args.size, "concurrency": args.concurrency, "window_s": args.window_s, "n_pairs": args.pairs,
            "raw_batch_size": args.raw_batch_size, "machine": machine_info(), **run(args)}  # fmt: skip
    write_results(args.name or f"saturation_{args.size}_c{args.concurrency}", data, to_markdown(data))
    return data


if __name__ == "__main__":
    main()
