"""One-client latency over loopback against the raw forward of the same record, measured side by side.

    python -m benchmarks.bench_latency --size full --requests 40

The issue's CPU latency target is "p50 at one client <= raw forward + 15 ms". This measures it directly: a server
(``bentoml serve service:ECGFMService``; with ``--targets`` also the BentoML service with batching off and the plain
FastAPI baseline) runs on 127.0.0.1 while this process, a synchronous ``httpx.Client`` with pre-encoded bodies,
alternates one raw in-process ``ModelHandle.run`` of the record's two preprocessed segments (the same model
weights, loaded here) with one ``POST /clinical`` (JSON) and one ``POST /clinical/npy`` (binary). Interleaving
cancels the drift of a shared machine; the overhead reported is the median of the per-round differences
(served - raw) besides the two medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import httpx

from benchmarks.bench_served import (
    BODY_ENDPOINTS,
    RECORD,
    checkpoints,
    record_bodies,
    server,
)
from benchmarks.common import DATA_DIR, machine_info, machine_line, markdown_table, write_results
from ecgfm.inference import load_model
from ecgfm.records.preprocess import DEFAULT_MAX_DURATION_S
from serving.decoding import prepare

SETTLE_S = 0.2  # pause before each timed call, so that no call competes with the tail of the previous one


def summary(values_ms: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values_ms), 2), "min": round(min(values_ms), 2)}


def measure(target: str, port: int, size: str, record: dict[str, Any], requests: int, warmup: int) -> dict[str, Any]:
    pretrained, finetuned = checkpoints(size)
    handle = load_model("finetuned", finetuned)
    segments = prepare(
        record["signal"], record["fs"], None, False, max_duration_s=DEFAULT_MAX_DURATION_S
    ).record.segments
    payloads = record_bodies(record)
    raw_ms: list[float] = []
    served_ms: dict[str, list[float]] = {name: [] for name in BODY_ENDPOINTS}
    model_ms: list[float] = []  # the finetuned model service's own time per call (BentoML targets)
    with (
        server(target, port, pretrained, finetuned) as running,
        httpx.Client(base_url=running.url, timeout=600) as http,
    ):

        def busy_s() -> float | None:
            return None if target == "plain" else http.get("/status").json()["models"]["finetuned"]["busy_s"]

        for round_index in range(warmup + requests):
            counted = round_index >= warmup
            time.sleep(SETTLE_S)
            started = time.perf_counter()
            handle.run(segments)
            if counted:
                raw_ms.append((time.perf_counter() - started) * 1000.0)
            for name, (path, content_type) in BODY_ENDPOINTS.items():
                busy_before = busy_s()
                time.sleep(SETTLE_S)
                started = time.perf_counter()
                response = http.post(path, content=payloads[name], headers={"content-type": content_type})
                elapsed = (time.perf_counter() - started) * 1000.0
                response.raise_for_status()
                busy_after = busy_s()
                if counted:
                    served_ms[name].append(elapsed)
                    if busy_before is not None:
                        model_ms.append((busy_after - busy_before) * 1000.0)
    result: dict[str, Any] = {"raw_ms": summary(raw_ms), "endpoints": {}}
    if model_ms:  # served - model call = HTTP, decoding, preprocessing, the hop to the model service, the batcher
        result["model_call_ms"] = summary(model_ms)
    for name, values in served_ms.items():
        deltas = [served - raw for served, raw in zip(values, raw_ms, strict=True)]
        result["endpoints"][name] = {**summary(values), "overhead_ms_p50": round(statistics.median(deltas), 2)}
    return result


def to_markdown(data: dict[str, Any]) -> str:
    lines = [
        f"# One-client latency vs raw forward, {data['size']} model, one 10 s record ({RECORD}, 2 segments)",
        "",
        f"{machine_line(data['machine'])} {data['requests']} rounds after "
        f"{data['warmup']} warm-up rounds; each round: one raw forward, then one request per endpoint, sequentially.",
        "",
    ]
    rows = [
        [target, name, info["raw_ms"]["p50"], (info.get("model_call_ms") or {}).get("p50"), served["p50"],
         served["overhead_ms_p50"], served["min"]]
        for target, info in data["targets"].items() for name, served in info["endpoints"].items()
    ]  # fmt: skip
    headers = ["target", "body", "raw forward p50 ms", "model call in the service p50 ms", "served p50 ms",
               "overhead p50 ms (paired)", "served min ms"]  # fmt: skip
    lines.append(markdown_table(headers, rows))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["small", "full"], default="small")
    parser.add_argument("--targets", default="bentoml")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=12, help="rounds not counted (BentoML's batcher trains on ~10)")
    parser.add_argument("--port", type=int, default=3190)
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    record = json.loads((DATA_DIR / RECORD).read_text())
    data: dict[str, Any] = {"size": args.size, "record": RECORD, "requests": args.requests, "warmup": args.warmup,
                            "machine": machine_info(), "targets": {}}  # fmt: skip
    for offset, target in enumerate(args.targets.split(",")):
        data["targets"][target] = measure(target, args.port + offset, args.size, record, args.requests, args.warmup)
        print(target, json.dumps(data["targets"][target]), flush=True)
    write_results(args.name or f"latency_{args.size}", data, to_markdown(data))
    return data


if __name__ == "__main__":
    main()
