"""Memory soak: the BentoML service under steady load for ``--duration-s`` (default 10 minutes), RSS sampled.

    python -m benchmarks.soak --size small --concurrency 4 --duration-s 600

Starts ``bentoml serve`` on 127.0.0.1 as :mod:`benchmarks.bench_served` does, drives it with
:mod:`benchmarks.loadgen` in a separate process, samples the RSS of the server's process tree every
``--every-s`` seconds, and reports the first, last and peak samples and the growth over the second half.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_served import (
    PYTHON,
    RECORD,
    RssSampler,
    checkpoints,
    record_bodies,
    server,
)
from benchmarks.common import DATA_DIR, REPO_DIR, machine_info, markdown_table, write_results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["small", "full"], default="small")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--every-s", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=3190)
    args = parser.parse_args(argv)
    record = json.loads((DATA_DIR / RECORD).read_text())
    pretrained, finetuned = checkpoints(args.size)
    samples: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        body_path = Path(tmp) / "body.json"
        body_path.write_bytes(record_bodies(record)["json"])
        with server("bentoml", args.port, pretrained, finetuned) as running:
            base_url = running.url
            sampler = RssSampler(running.process.pid)
            cmd = [
                PYTHON, "-m", "benchmarks.loadgen", "--url", f"{base_url}/clinical", "--body", str(body_path),
                "--concurrency", str(args.concurrency), "--duration-s", str(args.duration_s),
                "--max-requests", "10000000",
            ]  # fmt: skip
            load = subprocess.Popen(cmd, cwd=REPO_DIR, stdout=subprocess.PIPE)
            started = time.perf_counter()
            while load.poll() is None:
                samples.append((round(time.perf_counter() - started, 1), round(sampler.current_mb(), 1)))
                time.sleep(args.every_s)
            load_result = json.loads(load.stdout.read().decode().strip().splitlines()[-1])
    rss = [mb for _, mb in samples]
    half = len(rss) // 2
    data = {
        "size": args.size,
        "concurrency": args.concurrency,
        "duration_s": args.duration_s,
        "load": load_result,
        "rss_mb_first": rss[0],
        "rss_mb_last": rss[-1],
        "rss_mb_peak": max(rss),
        "rss_mb_growth_second_half": round(rss[-1] - rss[half], 1),
        "samples": samples,
        "machine": machine_info(),
    }
    markdown = "\n".join([
        f"# Memory soak: BentoML service, {args.size} model, {args.concurrency} clients, {args.duration_s:g} s",
        "",
        f"{load_result['ok']} requests ({load_result['records_per_s']} records/s, errors {load_result['errors']}); "
        f"RSS of the process tree sampled every {args.every_s:g} s. Machine: {data['machine']['cpu']}, "
        f"{data['machine']['cpu_cores']} cores.",
        "",
        markdown_table(
            ["first MB", "peak MB", "last MB", "growth over the second half MB"],
            [[data["rss_mb_first"], data["rss_mb_peak"], data["rss_mb_last"], data["rss_mb_growth_second_half"]]],
        ),
    ])  # fmt: skip
    write_results(f"soak_{args.size}", data, markdown)
    return data


if __name__ == "__main__":
    main()
