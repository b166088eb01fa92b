"""The cost of saliency: ``ModelHandle.run`` (fused attention) against ``run_with_saliency`` (explicit softmax and
the attention weights of every layer), same model, same segments, alternating runs.

    python -m benchmarks.bench_saliency --checkpoint /tmp/demo-full/finetuned.pt --batch-sizes 1,8

Inputs are random ``[B, 12, 2500]`` float32 segments; each batch size is timed ``--iterations`` times per path
after one warm-up call of each, the two paths alternating so that drift on a shared machine hits both alike.
Writes ``benchmarks/results/<--name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import machine_info, markdown_table, write_results
from ecgfm.inference import load_model


def time_paths(handle, batch: np.ndarray, iterations: int) -> dict[str, list[float]]:
    """Milliseconds per call of each path, alternating (one warm-up call each first)."""
    paths = {"fused": lambda: handle.run(batch), "saliency": lambda: handle.run_with_saliency(batch)}
    for call in paths.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(iterations):
        for name, call in paths.items():
            started = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - started) * 1e3)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a finetuned or pretrained .pt")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--name", default="saliency_cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    kind = "finetuned" if "finetuned" in Path(args.checkpoint).name else "pretrained"
    handle = load_model(kind, args.checkpoint, device=args.device, precision=args.precision)
    rng = np.random.default_rng(0)
    rows, results = [], []
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        batch = rng.standard_normal((batch_size, 12, 2500)).astype(np.float32)
        times = time_paths(handle, batch, args.iterations)
        fused, saliency = (float(np.median(times[name])) for name in ("fused", "saliency"))
        medians = {"fused_median_ms": fused, "saliency_median_ms": saliency, "ratio": saliency / fused}
        results.append({"batch_size": batch_size, **{f"{name}_ms": times[name] for name in times}, **medians})
        rows.append([batch_size, f"{fused:.1f}", f"{saliency:.1f}", f"{saliency / fused:.2f}x"])
        print(rows[-1], flush=True)
    config = handle.loaded.config
    model = f"{kind}, {config.num_layers} layers, D={config.embed_dim}, {handle.device}, {handle.precision}"
    data = {"model": model, "iterations": args.iterations, "threads": torch.get_num_threads(), "results": results,
            "machine": machine_info()}  # fmt: skip
    table = markdown_table(["batch", "fused median ms", "saliency median ms", "saliency / fused"], rows)
    write_results(args.name, data, f"# Saliency cost ({model}, {torch.get_num_threads()} threads)\n\n{table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
