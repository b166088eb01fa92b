"""Records/s of ``ecgfm batch`` against ``ecgfm predict`` on the same machine, records and checkpoints.

    python -m benchmarks.bench_batch --size full --records 24 --pairs 2

Both commands run as a user runs them (a subprocess each, wall clock from start to exit: model loading and, for
``batch``, the local Ray's start are included) on ``--records`` copies of the 10 s 12-lead records of
``shared/data`` in a nested folder. Runs alternate ``predict, batch, batch, predict, ...`` so that drift of a noisy
machine hits both alike; the ratio is taken per pair. ``batch`` also reports its own records/s (from Ray's start
to the last part). Checkpoints: demo weights of ``--size`` (full: the real architecture, random weights) or
``--pretrained``/``--finetuned``. Writes ``benchmarks/results/batch_<size>.{json,md}`` (or ``--name``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import DATA_DIR, REPO_DIR, machine_info, machine_line, markdown_table, write_results

TEN_SECOND_RECORDS = [
    entry["json"]
    for entry in json.loads((DATA_DIR / "index.json").read_text())["records"]
    if len(entry["lead_names"]) == 12 and entry["duration_s"] == 10.0
]


def make_records(folder: Path, count: int) -> list[Path]:
    """``count`` JSON records (copies of the 10 s 12-lead records), 8 to a sub-folder."""
    paths = []
    for i in range(count):
        name = TEN_SECOND_RECORDS[i % len(TEN_SECOND_RECORDS)]
        target = folder / f"group{i // 8:03d}" / f"{i:05d}_{name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DATA_DIR / name, target)
        paths.append(target)
    return paths


def timed(command: list[str], timeout_s: float) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_DIR, capture_output=True, text=True, timeout=timeout_s)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return elapsed, done.stderr


def run_predict(records: list[Path], checkpoints: list[str], out: Path, timeout_s: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "ecgfm", "predict", *checkpoints, "--output", str(out), *map(str, records)]
    wall, _ = timed(command, timeout_s)
    lines = out.read_text().splitlines()
    if len(lines) != len(records):
        raise RuntimeError(f"predict wrote {len(lines)} lines for {len(records)} records")
    return {"command": "predict", "wall_s": round(wall, 2), "records_per_s": round(len(records) / wall, 3)}


def run_batch(folder: Path, n: int, checkpoints: list[str], out: Path, extra: list[str], timeout_s: float) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "ecgfm", "batch", *checkpoints, "--output", str(out), "--no-progress"]
    wall, stderr = timed([*command, *extra, str(folder)], timeout_s)
    match = re.search(r"(\d+) records written \((\d+) scored, (\d+) errors\).*?([\d.]+) records/s", stderr)
    if not match or int(match.group(2)) != n:
        raise RuntimeError(f"batch did not score {n} records:\n{stderr[-3000:]}")
    return {
        "command": "batch",
        "wall_s": round(wall, 2),
        "records_per_s": round(n / wall, 3),
        "engine_records_per_s": float(match.group(4)),  # the CLI's own figure: Ray start to the last part
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("full", "small"), default="full", help="demo checkpoints of this size")
    parser.add_argument("--pretrained", help="pretrained .pt instead of demo weights")
    parser.add_argument("--finetuned", help="finetuned .pt instead of demo weights")
    parser.add_argument("--records", type=int, default=24)
    parser.add_argument("--pairs", type=int, default=2, help="predict/batch pairs, alternating order")
    parser.add_argument("--batch-args", default="", help="extra arguments of ecgfm batch (one string)")
    parser.add_argument("--timeout-s", type=float, default=1800)
    parser.add_argument("--name", help="results file name (default: batch_<size>)")
    args = parser.parse_args()

    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="ecgfm-bench-batch-") as tmp:
        tmp_path = Path(tmp)
        if args.pretrained and args.finetuned:
            pretrained, finetuned = args.pretrained, args.finetuned
        else:
            from ecgfm.network.demo import write_demo_checkpoints

            pretrained, finetuned = map(str, write_demo_checkpoints(tmp_path / "ckpt", size=args.size))
        checkpoints = ["--pretrained", pretrained, "--finetuned", finetuned]
        folder = tmp_path / "records"
        records = make_records(folder, args.records)
        runs: list[dict[str, Any]] = []
        for pair in range(args.pairs):
            order = ("predict", "batch") if pair % 2 == 0 else ("batch", "predict")
            for which in order:
                if which == "predict":
                    result = run_predict(records, checkpoints, tmp_path / "out.jsonl", args.timeout_s)
                else:
                    extra = args.batch_args.split()
                    result = run_batch(folder, len(records), checkpoints, tmp_path / "out", extra, args.timeout_s)
                result["pair"] = pair
                runs.append(result)
                print(json.dumps(result), flush=True)

    ratios = []
    for pair in range(args.pairs):
        by = {run["command"]: run for run in runs if run["pair"] == pair}
        ratios.append(round(by["batch"]["records_per_s"] / by["predict"]["records_per_s"], 3))
    data = {
        "benchmark": "batch",
        "size": "checkpoints given" if args.pretrained else args.size,
        "records": args.records,
        "record_kind": "10 s 12-lead JSON records (2 segments each), copies of shared/data",
        "batch_args": args.batch_args,
        "runs": runs,
        "ratio_per_pair": ratios,
        "ratio_median": statistics.median(ratios),
        "machine": machine,
    }
    rows = [[r["pair"], r["command"], r["wall_s"], r["records_per_s"], r.get("engine_records_per_s", "")] for r in runs]
    markdown = "\n\n".join(
        [
            f"# ecgfm batch vs ecgfm predict ({data['size']} checkpoints, {args.records} records)",
            "Wall clock of each command from start to exit (model loading and, for batch, Ray's start included); "
            "runs alternate. `engine rec/s`: batch's own figure, from Ray's start to the last part.",
            markdown_table(["pair", "command", "wall s", "records/s", "engine rec/s"], rows),
            f"batch/predict records/s per pair: {ratios}; median **{data['ratio_median']}**.",
            machine_line(machine),
        ]
    )
    write_results(args.name or f"batch_{args.size}", data, markdown)


if __name__ == "__main__":
    main()
