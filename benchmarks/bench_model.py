"""Raw model throughput: segments/s and ms per batch vs batch size, fp32 and the fast path (ecgfm.network.fast).

    python -m benchmarks.bench_model --checkpoint /tmp/demo-full/finetuned.pt --batch-sizes 1,2,4,8

A variant is ``<precision>[+fft][+compile]``: ``fp32`` is the reference model as loaded (weight norm computed on
every forward); anything else goes through :func:`ecgfm.network.fast.optimize_for_inference`. Inputs are random
``[B, 12, 2500]`` float32 segments made on the host and copied to the device inside the timed region (as the
service does). Each batch size is timed ``--iterations`` times after ``--warmup`` calls; a variant stops taking
larger batch sizes once it has used ``--budget-s`` seconds.
"""

from __future__ import annotations

import argparse
import gc
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import PARITY_CKPT_DIR, machine_info, markdown_table, write_results
from ecgfm.network.checkpoint import load_checkpoint
from ecgfm.network.fast import host_to_device, optimize_for_inference
from ecgfm.network.model import ECGFMClassifier

SEGMENT_SHAPE = (12, 2500)


def parse_variant(variant: str) -> dict[str, Any]:
    """``"bf16+fft+compile"`` -> ``{"precision": "bf16", "pos_conv": "fft", "compile": True}``."""
    precision, *options = variant.split("+")
    unknown = set(options) - {"fft", "compile"}
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} in variant {variant!r}")
    return {"precision": precision, "pos_conv": "fft" if "fft" in options else "conv", "compile": "compile" in options}


def load_variant(checkpoint: Path, variant: str, device: torch.device) -> torch.nn.Module:
    model = load_checkpoint(checkpoint).model.to(device)
    if variant == "fp32":
        return model
    return optimize_for_inference(model, **parse_variant(variant))


@torch.inference_mode()
def forward(model: torch.nn.Module, batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """Host-to-device copy, forward, the per-segment output back on the host (as classify/embed do)."""
    out = model(host_to_device(batch, device))
    out = out if isinstance(model, ECGFMClassifier) else out[0].mean(dim=1)
    return out.float().cpu()


def time_batch_size(
    model: torch.nn.Module, batch_size: int, device: torch.device, warmup: int, iterations: int
) -> dict[str, Any]:
    batch = np.random.default_rng(batch_size).standard_normal((batch_size, *SEGMENT_SHAPE), dtype=np.float32)
    for _ in range(warmup):
        forward(model, batch, device)
    times_ms = []
    for _ in range(iterations):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        forward(model, batch, device)  # .cpu() synchronises
        times_ms.append((time.perf_counter() - started) * 1000.0)
    median_ms = float(np.median(times_ms))
    return {
        "batch_size": batch_size,
        "ms_per_batch_median": round(median_ms, 2),
        "ms_per_batch_min": round(min(times_ms), 2),
        "segments_per_s": round(batch_size / (median_ms / 1000.0), 2),
        "segments_per_s_fastest": round(batch_size / (min(times_ms) / 1000.0), 2),  # least disturbed by others
        "iterations": iterations,
    }


def run(
    checkpoint: Path,
    variants: list[str],
    batch_sizes: list[int],
    device: torch.device,
    warmup: int,
    iterations: int,
    budget_s: float,
) -> dict[str, Any]:
    results: dict[str, Any] = {"checkpoint": str(checkpoint), "device": str(device), "variants": {}}
    for variant in variants:
        model = load_variant(checkpoint, variant, device)
        # weights as parameters plus buffers (the FFT variant keeps the positional conv's weight as a buffer)
        parameters = sum(t.numel() for t in [*model.parameters(), *model.buffers()])
        started = time.perf_counter()
        rows = []
        for batch_size in batch_sizes:
            if time.perf_counter() - started > budget_s:
                break
            row = time_batch_size(model, batch_size, device, warmup, iterations)
            print(
                f"{variant:>18} batch {batch_size:>5}: {row['ms_per_batch_median']:>10.2f} ms "
                f"{row['segments_per_s']:>10.2f} seg/s",
                flush=True,
            )
            rows.append(row)
        best = max(rows, key=lambda r: r["segments_per_s"]) if rows else None
        results["variants"][variant] = {"parameters": parameters, "rows": rows, "best": best}
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return results


def to_markdown(data: dict[str, Any]) -> str:
    machine = data["machine"]
    card = machine["gpu"] or "none"
    lines = [
        f"# Raw model: {Path(data['checkpoint']).name} on {data['device']}",
        "",
        f"Machine: {machine['cpu']}, {machine['cpu_cores']} cores, {machine['torch_threads']} torch threads, "
        f"GPU: {card}; torch {machine['torch']}; {machine['date_utc']}. Peak RSS of the process "
        f"{data['peak_rss_mb']} MB. Load average (1 min) at the end: {machine['load_average_1m']} "
        "(other processes share this machine; the min column is the least disturbed iteration).",
        "",
    ]
    rows = [
        [
            variant,
            info["parameters"],
            r["batch_size"],
            r["ms_per_batch_median"],
            r["ms_per_batch_min"],
            r["segments_per_s"],
            r.get("segments_per_s_fastest"),
        ]
        for variant, info in data["variants"].items()
        for r in info["rows"]
    ]
    headers = ["variant", "params", "batch", "ms/batch median", "ms/batch min", "seg/s (median)", "seg/s (min)"]
    lines.append(markdown_table(headers, rows))
    lines += ["", "Best per variant:", ""]
    best_rows = [
        [variant, info["best"]["batch_size"], info["best"]["segments_per_s"]]
        for variant, info in data["variants"].items()
        if info["best"]
    ]
    lines.append(markdown_table(["variant", "best batch", "segments/s"], best_rows))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=PARITY_CKPT_DIR / "ecgfm_small_finetuned.pt")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument(
        "--variants",
        default="fp32,fp32+fft,bf16+fft,bf16+fft+compile" if cuda else "fp32,fp32+fft,bf16,bf16+fft",
        help="comma-separated <precision>[+fft][+compile]",
    )
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32,64,128,256,512,1024" if cuda else "1,2,4,8,16,32")
    parser.add_argument("--warmup", type=int, default=3 if cuda else 1)
    parser.add_argument("--iterations", type=int, default=10 if cuda else 3)
    parser.add_argument("--budget-s", type=float, default=60.0, help="per variant; larger batches are skipped after")
    parser.add_argument("--name", default=None, help="results file name (default model_<device>_<checkpoint>)")
    args = parser.parse_args(argv)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # "fp32" on a GPU is TF32, as in the figures
        torch.backends.cudnn.allow_tf32 = True
    device = torch.device(args.device)
    data = run(
        args.checkpoint,
        args.variants.split(","),
        [int(b) for b in args.batch_sizes.split(",")],
        device,
        args.warmup,
        args.iterations,
        args.budget_s,
    )
    data["machine"] = machine_info()
    name = args.name or f"model_{device.type}_{args.checkpoint.parent.name}_{args.checkpoint.stem}"
    write_results(name, data, to_markdown(data))
    return data


if __name__ == "__main__":
    main()
