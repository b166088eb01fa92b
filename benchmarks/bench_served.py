"""The served API under concurrent load, side by side: plain FastAPI (one forward per request), the BentoML
service with batching off, and the BentoML service with adaptive batching.

    python -m benchmarks.bench_served --size small --concurrency 1,8,32 --duration-s 15

Each target is started on loopback (127.0.0.1) with the same checkpoints, driven by :mod:`benchmarks.loadgen` in
a separate process at each concurrency level (POST ``/clinical`` with one 10 s 12-lead record of
``../shared/data``, i.e. two 5 s segments; ``--body npy``: ``POST /clinical/npy`` with the same signal as a float32
``.npy``), then stopped. Per level: records/s, p50/p95/p99 latency, errors, the batch sizes and the busy share
(utilisation) of the finetuned model service (from ``GET /status``) and the peak RSS of the server's process tree.
"Batching off" is ``ECGFM_MAX_BATCH_SIZE=2``: every model call holds exactly one request's two segments.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import psutil

from benchmarks.common import (
    DATA_DIR,
    PARITY_CKPT_DIR,
    REPO_DIR,
    machine_info,
    machine_line,
    markdown_table,
    write_results,
)
from tests.launcher import ServerProcess, bentoml_command, server_env, uvicorn_command

RECORD = "JS01048.json"  # 10 s, 12 leads
RECORD_FS = 500  # its sampling rate (the fs query parameter of /clinical/npy)
BODY_ENDPOINTS = {  # request body kind -> (path, content type)
    "json": ("/clinical", "application/json"),
    "npy": (f"/clinical/npy?fs={RECORD_FS}", "application/octet-stream"),
}
SEGMENTS_PER_RECORD = 2
FULL_DEMO_DIR = Path(os.environ.get("ECGFM_BENCH_FULL_DIR", Path(tempfile.gettempdir()) / "ecgfm-demo-full"))
TARGETS = ("plain", "bentoml-nobatch", "bentoml")
PYTHON = sys.executable
BENTOML = str(Path(sys.executable).with_name("bentoml"))


def checkpoints(size: str) -> tuple[Path, Path]:
    """(pretrained, finetuned): the parity fixture (small) or demo checkpoints of the full architecture."""
    if size == "small":
        return PARITY_CKPT_DIR / "ecgfm_small_pretrained.pt", PARITY_CKPT_DIR / "ecgfm_small_finetuned.pt"
    pretrained, finetuned = FULL_DEMO_DIR / "pretrained.pt", FULL_DEMO_DIR / "finetuned.pt"
    if not finetuned.exists():
        cmd = [PYTHON, "-m", "ecgfm", "demo-checkpoints", "--out", str(FULL_DEMO_DIR), "--size", "full"]
        subprocess.run(cmd, check=True, cwd=REPO_DIR)
    return pretrained, finetuned


def server(target: str, port: int, pretrained: Path, finetuned: Path) -> ServerProcess:
    """``target`` on ``127.0.0.1:port`` with these checkpoints (not started yet: use it as a context manager);
    its log is ``bench_served_<target>.log`` in the temp folder."""
    env = {"ECGFM_PRETRAINED_CHECKPOINT": str(pretrained), "ECGFM_FINETUNED_CHECKPOINT": str(finetuned)}
    if target == "plain":
        command = uvicorn_command("benchmarks.plain_fastapi_app:app", port)
    else:
        if target == "bentoml-nobatch":
            env["ECGFM_MAX_BATCH_SIZE"] = str(SEGMENTS_PER_RECORD)
        command = bentoml_command(port)
    log_path = Path(tempfile.gettempdir()) / f"bench_served_{target}.log"
    # the plain baseline has no /readyz; its /health answers once the model is loaded
    environ = server_env(env, inherit_settings=True)
    # 900 s: a variant other than fp32 (ECGFM_PRECISION=int8 ...) is self-checked at start, by the start-up hook and
    # again by each model worker, which at full size on a busy 2-core machine took more than 300 s
    return ServerProcess(command, environ, log_path, port, "/health", start_timeout_s=900, stop_timeout_s=30)


def finetuned_stats(base_url: str) -> dict[str, Any]:
    """The finetuned model service's counters from ``GET /status`` (batch-size histogram, busy time, ...)."""
    return httpx.get(f"{base_url}/status", timeout=30).json()["models"]["finetuned"]


class RssSampler(threading.Thread):
    """Peak RSS (MB) of a process and all its descendants, sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.peak_mb = 0.0
        self.stop_event = threading.Event()

    def current_mb(self) -> float:
        total = 0
        for process in [self.root, *self.root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
        return total / 2**20

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.peak_mb = max(self.peak_mb, self.current_mb())
            time.sleep(0.2)


def record_bodies(record: dict[str, Any]) -> dict[str, bytes]:
    """A record as each kind of request body: ``json`` (``{"signal", "fs"}``) and ``npy`` (the signal, float32)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(record["signal"], dtype=np.float32))
    return {"json": orjson.dumps({"signal": record["signal"], "fs": record["fs"]}), "npy": buffer.getvalue()}


def endpoint(body_path: Path) -> tuple[str, str]:
    """(path, content type) of ``POST /clinical`` for a ``.json`` body, of ``/clinical/npy`` for a ``.npy`` one."""
    return BODY_ENDPOINTS[body_path.suffix.removeprefix(".")]


def run_level(base_url: str, body_path: Path, concurrency: int, duration_s: float, max_requests: int) -> dict:
    """One closed-loop load level; adds what the finetuned model service saw meanwhile: batch sizes, and its busy
    share of the level (utilisation) and segments per busy second."""
    before = finetuned_stats(base_url)
    path, content_type = endpoint(body_path)
    cmd = [
        PYTHON, "-m", "benchmarks.loadgen", "--url", base_url + path, "--body", str(body_path),
        "--content-type", content_type, "--concurrency", str(concurrency), "--duration-s", str(duration_s),
        "--max-requests", str(max_requests),
    ]  # fmt: skip
    completed = subprocess.run(cmd, cwd=REPO_DIR, capture_output=True, check=True, timeout=duration_s + 900)
    result = json.loads(completed.stdout.decode().strip().splitlines()[-1])
    after = finetuned_stats(base_url)
    observed = Counter(after["batch_sizes"]) - Counter(before["batch_sizes"])
    result["segments_per_s"] = round(result["records_per_s"] * SEGMENTS_PER_RECORD, 3)
    result["batch_sizes"] = dict(sorted(observed.items(), key=lambda kv: int(kv[0])))
    calls = sum(observed.values())
    segments = sum(int(k) * v for k, v in observed.items())
    result["mean_batch_size"] = round(segments / calls, 2) if calls else None
    busy_s = after["busy_s"] - before["busy_s"]
    result["utilisation"] = round(busy_s / result["elapsed_s"], 3)
    result["model_segments_per_busy_s"] = round(segments / busy_s, 3) if busy_s else None
    return result


def bench_target(
    target: str, port: int, size: str, body_path: Path, levels: list[int], duration_s: float, max_requests: int
) -> dict[str, Any]:
    pretrained, finetuned = checkpoints(size)
    with server(target, port, pretrained, finetuned) as running:
        base_url, startup_s = running.url, running.startup_s
        sampler = RssSampler(running.process.pid)
        idle_rss_mb = round(sampler.current_mb(), 1)
        sampler.start()
        # one request to warm up (first forward, connection pools)
        path, content_type = endpoint(body_path)
        subprocess.run(
            [PYTHON, "-m", "benchmarks.loadgen", "--url", base_url + path, "--body", str(body_path),
             "--content-type", content_type, "--max-requests", "2", "--duration-s", "600"],
            cwd=REPO_DIR, capture_output=True, check=True, timeout=900,
        )  # fmt: skip
        results = []
        for concurrency in levels:
            row = run_level(base_url, body_path, concurrency, duration_s, max_requests)
            print(
                f"{target:>16} c={concurrency:<3} {row['records_per_s']:>8.2f} rec/s  p50 {row['latency_ms']['p50']} ms"
                f"  p99 {row['latency_ms']['p99']} ms  mean batch {row['mean_batch_size']}  errors {row['errors']}",
                flush=True,
            )
            results.append(row)
        sampler.stop_event.set()
        sampler.join()
        return {"startup_s": startup_s, "idle_rss_mb": idle_rss_mb, "peak_rss_mb": round(sampler.peak_mb, 1),
                "levels": results}  # fmt: skip


def to_markdown(data: dict[str, Any]) -> str:
    lines = [
        f"# Served API, {data['size']} model, POST {endpoint(Path('body.' + data['body']))[0]} with one 10 s record "
        f"({SEGMENTS_PER_RECORD} segments)",
        "",
        f"{machine_line(data['machine'])} {data['duration_s']} s per level (at most {data['max_requests']} "
        "requests), closed loop.",
        "",
    ]
    rows = []
    for target, info in data["targets"].items():
        if "error" in info:
            rows.append([target, "-", "-", "-", "-", "-", "-", info["error"], "-"])
            continue
        for row in info["levels"]:
            latency = row["latency_ms"]
            rows.append([
                target, row["concurrency"], row["records_per_s"], row["segments_per_s"], latency["p50"],
                latency["p95"], latency["p99"], row["mean_batch_size"], row["errors"] or "",
            ])  # fmt: skip
    headers = ["target", "clients", "records/s", "segments/s", "p50 ms", "p95 ms", "p99 ms", "mean batch", "errors"]
    lines.append(markdown_table(headers, rows))
    lines += ["", markdown_table(
        ["target", "startup s", "idle RSS MB (process tree)", "peak RSS MB"],
        [[t, i.get("startup_s"), i.get("idle_rss_mb"), i.get("peak_rss_mb")] for t, i in data["targets"].items()],
    )]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["small", "full"], default="small")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--duration-s", type=float, default=15.0)
    parser.add_argument("--max-requests", type=int, default=5000)
    parser.add_argument("--port", type=int, default=3170)
    parser.add_argument("--body", choices=["json", "npy"], default="json", help="POST /clinical or /clinical/npy")
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    record = json.loads((DATA_DIR / RECORD).read_text())
    data: dict[str, Any] = {"size": args.size, "record": RECORD, "body": args.body, "duration_s": args.duration_s,
                            "max_requests": args.max_requests, "machine": machine_info(), "targets": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        body_path = Path(tmp) / f"body.{args.body}"
        body_path.write_bytes(record_bodies(record)[args.body])
        levels = [int(c) for c in args.concurrency.split(",")]
        for offset, target in enumerate(args.targets.split(",")):
            try:
                data["targets"][target] = bench_target(
                    target, args.port + offset, args.size, body_path, levels, args.duration_s, args.max_requests
                )
            except (RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
                print(f"{target}: {exc}", file=sys.stderr)
                data["targets"][target] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    write_results(args.name or f"served_{args.size}", data, to_markdown(data))
    return data


if __name__ == "__main__":
    main()
