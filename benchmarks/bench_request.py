"""The request path without the model: JSON decoding, validation and preprocessing of one 10 s 12-lead record.

    python -m benchmarks.bench_request

For every 10 s 12-lead record of ``../shared/data`` it builds the body a client posts (``{"signal": ..., "fs": ...}``
with the record's own numbers) and times, single-threaded (records/s per CPU core = 1000 / ms):

* ``json.loads`` and ``orjson.loads`` of the body (bare decoding);
* ``ECGRequest.model_validate_json``: what BentoML does with the body of ``/clinical`` (pydantic-core's JSON
  parser plus the contract's checks), and ``model_validate(orjson.loads(...))`` as the alternative;
* ``decoding.prepare``: lists -> array, validation, resampling, standardisation, segmentation;
* the binary alternative: ``np.load`` of the same signal as ``.npy`` bytes, then ``prepare`` on the array.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from benchmarks.common import DATA_DIR, machine_info, markdown_table, write_results
from ecgfm.records.preprocess import DEFAULT_MAX_DURATION_S as MAX_DURATION_S
from serving.contract import ECGRequest
from serving.decoding import prepare


def time_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000.0)
    return float(np.median(times))


def ten_second_records() -> list[dict[str, Any]]:
    """The 10 s, 12-lead records of ``../shared/data`` (index.json), as dicts."""
    index = json.loads((DATA_DIR / "index.json").read_text())["records"]
    names = [e["json"] for e in index if len(e["lead_names"]) == 12 and abs(e["duration_s"] - 10.0) < 1e-6]
    return [json.loads((DATA_DIR / name).read_text()) for name in names]


def npy_bytes(signal: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, signal, allow_pickle=False)
    return buffer.getvalue()


def stages(record: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    body = orjson.dumps({"signal": record["signal"], "fs": record["fs"]})
    parsed = orjson.loads(body)
    signal, fs = parsed["signal"], parsed["fs"]
    binary = npy_bytes(np.asarray(signal, dtype=np.float32))
    return {
        "json.loads": lambda: json.loads(body),
        "orjson.loads": lambda: orjson.loads(body),
        "ECGRequest.model_validate_json (BentoML's path)": lambda: ECGRequest.model_validate_json(body),
        "ECGRequest.model_validate(orjson.loads)": lambda: ECGRequest.model_validate(orjson.loads(body)),
        "prepare(lists)": lambda: prepare(signal, fs, None, False, max_duration_s=MAX_DURATION_S),
        "np.load(.npy)": lambda: np.load(io.BytesIO(binary), allow_pickle=False),
        "np.load(.npy) + prepare(array)": lambda: prepare(
            np.load(io.BytesIO(binary), allow_pickle=False), fs, None, False, max_duration_s=MAX_DURATION_S
        ),
    }


def run(repeats: int) -> dict[str, Any]:
    records = ten_second_records()
    per_stage: dict[str, list[float]] = {}
    sizes = {"json_bytes": [], "npy_bytes": []}
    for record in records:
        sizes["json_bytes"].append(len(orjson.dumps({"signal": record["signal"], "fs": record["fs"]})))
        sizes["npy_bytes"].append(len(npy_bytes(np.asarray(record["signal"], dtype=np.float32))))
        for name, fn in stages(record).items():
            per_stage.setdefault(name, []).append(time_ms(fn, repeats))
    summary = {
        name: {
            "ms_per_record": round(float(np.mean(values)), 3),
            "records_per_s_per_core": round(1000 / np.mean(values), 1),
        }
        for name, values in per_stage.items()
    }
    validate = per_stage["ECGRequest.model_validate_json (BentoML's path)"]
    prep = per_stage["prepare(lists)"]
    json_path = [v + p for v, p in zip(validate, prep, strict=True)]
    binary_path = per_stage["np.load(.npy) + prepare(array)"]
    summary["JSON request path (model_validate_json + prepare)"] = {
        "ms_per_record": round(float(np.mean(json_path)), 3),
        "records_per_s_per_core": round(1000 / np.mean(json_path), 1),
    }
    summary["binary request path (np.load + prepare)"] = {
        "ms_per_record": round(float(np.mean(binary_path)), 3),
        "records_per_s_per_core": round(1000 / np.mean(binary_path), 1),
    }
    return {
        "records": [r["record"] for r in records],
        "repeats": repeats,
        "mean_json_bytes": int(np.mean(sizes["json_bytes"])),
        "mean_npy_bytes": int(np.mean(sizes["npy_bytes"])),
        "stages": summary,
    }


def to_markdown(data: dict[str, Any]) -> str:
    machine = data["machine"]
    rows = [[name, s["ms_per_record"], s["records_per_s_per_core"]] for name, s in data["stages"].items()]
    return "\n".join(
        [
            "# Request path per 10 s 12-lead record (no model)",
            "",
            f"Machine: {machine['cpu']}, {machine['cpu_cores']} cores; one thread; {machine['date_utc']}. "
            f"Records: {', '.join(data['records'])} (mean body {data['mean_json_bytes']:,} bytes JSON, "
            f"{data['mean_npy_bytes']:,} bytes .npy float32); median of {data['repeats']} runs per record, "
            "mean over records.",
            "",
            markdown_table(["stage", "ms / record", "records/s per core"], rows),
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    data = run(args.repeats)
    data["machine"] = machine_info()
    print(to_markdown(data))
    write_results("request_path", data, to_markdown(data), *([args.out] if args.out else []))
    return data


if __name__ == "__main__":
    main()
