"""Closed-loop HTTP load generator (asyncio + httpx), run as its own process by ``bench_served``.

    python -m benchmarks.loadgen --url http://127.0.0.1:3000/clinical --body body.json --concurrency 8 --duration-s 30

``concurrency`` clients each post the same body back to back until ``duration-s`` has passed or ``max-requests``
were sent (the requests in flight then finish); prints one JSON object: requests, errors, records/s, latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import percentiles


async def client(
    http: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    deadline: float,
    budget: list[int],
    latencies_ms: list[float],
    errors: dict[str, int],
) -> None:
    while time.perf_counter() < deadline and budget[0] > 0:
        budget[0] -= 1
        started = time.perf_counter()
        try:
            response = await http.post(url, content=body, headers=headers)
            if response.status_code == 200:
                latencies_ms.append((time.perf_counter() - started) * 1000.0)
            else:
                errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1
        except httpx.HTTPError as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1


async def run(url: str, body: bytes, content_type: str, concurrency: int, duration_s: float, max_requests: int) -> dict:
    headers = {"content-type": content_type}
    latencies_ms: list[float] = []
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as http:
        started = time.perf_counter()
        deadline = started + duration_s
        budget = [max_requests]
        await asyncio.gather(
            *(client(http, url, body, headers, deadline, budget, latencies_ms, errors) for _ in range(concurrency))
        )
        elapsed = time.perf_counter() - started
    return {
        "url": url,
        "concurrency": concurrency,
        "elapsed_s": round(elapsed, 3),
        "ok": len(latencies_ms),
        "errors": errors,
        "records_per_s": round(len(latencies_ms) / elapsed, 3),
        "latency_ms": percentiles(latencies_ms),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", type=Path, required=True, help="file with the request body")
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--max-requests", type=int, default=10_000)
    args = parser.parse_args(argv)
    result = asyncio.run(
        run(args.url, args.body.read_bytes(), args.content_type, args.concurrency, args.duration_s, args.max_requests)
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
