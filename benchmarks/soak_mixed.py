"""Sustained mixed load: /clinical, /features and /both, JSON and .npy, at a fixed rate for ``--duration-s``.

    python -m benchmarks.soak_mixed --rate 20 --duration-s 600

Starts ``bentoml serve`` on 127.0.0.1 (small held-out models unless ``--size full``) and sends requests open-loop
at ``--rate`` per second (a new request every 1/rate s, however long the others take; at most ``--max-in-flight``
at once), cycling over the six route and body kinds. Reports, per minute: requests, errors by status, latency
percentiles, and the RSS of the server's process tree; the verdict is zero errors, the last minute's p50 and p99
against the first's, and the memory growth over the second half. Written to benchmarks/results/soak_mixed_<size>.
This is the check of BentoML#5540 ("Session is closed" from a service calling a batchable dependency at ~10 req/s)
and BentoML#5642 on this service's shape.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import time
from typing import Any

import httpx
import numpy as np

from benchmarks.bench_served import RECORD, RECORD_FS, RssSampler, checkpoints, server
from benchmarks.common import DATA_DIR, machine_info, machine_line, markdown_table, percentiles, write_results

ROUTES = ("/clinical", "/features", "/both")


def bodies(record: dict) -> list[tuple[str, bytes, str]]:
    """(path, body, content type) for each route, as JSON and as .npy."""
    as_json = json.dumps({"signal": record["signal"], "fs": record["fs"]}).encode()
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(record["signal"], dtype=np.float32))
    kinds = [(path, as_json, "application/json") for path in ROUTES]
    return kinds + [(f"{path}/npy?fs={RECORD_FS}", buffer.getvalue(), "application/octet-stream") for path in ROUTES]


async def drive(url: str, rate: float, duration_s: float, max_in_flight: int, record: dict) -> list[tuple]:
    """Open-loop load; every outcome as (second sent, path, status or exception name, ms)."""
    kinds = bodies(record)
    outcomes: list[tuple] = []
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
    gate = asyncio.Semaphore(max_in_flight)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(120.0), limits=limits) as http:
        started = time.perf_counter()

        async def one(n: int, sent_s: float) -> None:
            path, content, content_type = kinds[n % len(kinds)]
            t0 = time.perf_counter()
            try:
                response = await http.post(path, content=content, headers={"content-type": content_type})
                status: int | str = response.status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            finally:
                gate.release()
            outcomes.append((sent_s, path.split("?")[0], status, (time.perf_counter() - t0) * 1000.0))

        tasks, n = [], 0
        while (now := time.perf_counter() - started) < duration_s:
            await gate.acquire()
            tasks.append(asyncio.create_task(one(n, now)))
            n += 1
            await asyncio.sleep(max(0.0, n / rate - (time.perf_counter() - started)))
        await asyncio.gather(*tasks)
    return outcomes


def per_minute(outcomes: list[tuple], rss: list[tuple[float, float]]) -> list[dict[str, Any]]:
    minutes: dict[int, list[tuple]] = collections.defaultdict(list)
    for outcome in outcomes:
        minutes[int(outcome[0] // 60)].append(outcome)
    rows = []
    for minute in sorted(minutes):
        batch = minutes[minute]
        ok_ms = [ms for _, _, status, ms in batch if status == 200]
        errors = collections.Counter(str(status) for _, _, status, _ in batch if status != 200)
        in_minute = [mb for t, mb in rss if minute * 60 <= t < (minute + 1) * 60]
        rows.append({
            "minute": minute + 1,
            "requests": len(batch),
            "requests_per_s": round(len(batch) / 60, 2),
            "errors": dict(errors),
            "latency_ms": percentiles(ok_ms),
            "rss_mb": round(max(in_minute), 1) if in_minute else None,
        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["small", "full"], default="small")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--max-in-flight", type=int, default=32)
    parser.add_argument("--port", type=int, default=3191)
    args = parser.parse_args(argv)
    record = json.loads((DATA_DIR / RECORD).read_text())
    pretrained, finetuned = checkpoints(args.size)
    rss: list[tuple[float, float]] = []
    with server("bentoml", args.port, pretrained, finetuned) as running:
        sampler = RssSampler(running.process.pid)
        started = time.perf_counter()

        async def sample() -> None:
            while True:
                rss.append((time.perf_counter() - started, sampler.current_mb()))
                await asyncio.sleep(5)

        async def run() -> list[tuple]:
            sampling = asyncio.create_task(sample())
            try:
                return await drive(running.url, args.rate, args.duration_s, args.max_in_flight, record)
            finally:
                sampling.cancel()

        outcomes = asyncio.run(run())
        elapsed = time.perf_counter() - started
    minutes = per_minute(outcomes, rss)
    errors = collections.Counter(str(status) for _, _, status, _ in outcomes if status != 200)
    half = len(rss) // 2
    data = {
        "size": args.size,
        "rate_per_s": args.rate,
        "duration_s": args.duration_s,
        "requests": len(outcomes),
        "achieved_per_s": round(len(outcomes) / elapsed, 2),
        "errors": dict(errors),
        "latency_ms": percentiles([ms for _, _, status, ms in outcomes if status == 200]),
        "minutes": minutes,
        "rss_mb_first": round(rss[0][1], 1),
        "rss_mb_last": round(rss[-1][1], 1),
        "rss_mb_growth_second_half": round(rss[-1][1] - rss[half][1], 1),
        "machine": machine_info(),
    }
    rows = [
        [m["minute"], m["requests"], m["requests_per_s"], sum(m["errors"].values()), m["latency_ms"]["p50"],
         m["latency_ms"]["p99"], m["rss_mb"]]
        for m in minutes
    ]  # fmt: skip
    markdown = "\n".join([
        f"# Mixed soak: {args.size} models, {args.rate:g} requests/s for {args.duration_s:g} s",
        "",
        f"{len(outcomes)} requests over /clinical, /features, /both (JSON and .npy, in turn), "
        f"{data['achieved_per_s']}/s achieved; errors: {dict(errors) or 'none'}. RSS of the server's process tree: "
        f"{data['rss_mb_first']} MB first, {data['rss_mb_last']} MB last, "
        f"{data['rss_mb_growth_second_half']:+} MB over the second half. {machine_line(data['machine'])}",
        "",
        markdown_table(["minute", "requests", "per s", "errors", "p50 ms", "p99 ms", "RSS MB (peak)"], rows),
    ])  # fmt: skip
    write_results(f"soak_mixed_{args.size}", data, markdown)
    return data


if __name__ == "__main__":
    main()
