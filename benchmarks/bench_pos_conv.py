"""The positional conv alone at full size: the grouped Conv1d vs its FFT formulation (``ecgfm.network.fast``).

    python -m benchmarks.bench_pos_conv --batch-sizes 1,8

Same weights in both (a random weight-normed ``ConvolutionalPositionalEmbedding`` of the published architecture:
768 channels, kernel 128, 16 groups, 156 frames), fp32; reports ms per call (median and fastest of
``--iterations``) and the largest absolute difference between the two outputs.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch

from benchmarks.common import machine_info, markdown_table, write_results
from ecgfm.network.fast import FFTPositionalEmbedding, fold_weight_norm
from ecgfm.network.model import ConvolutionalPositionalEmbedding, ECGFMConfig, ECGFMEncoder

FRAMES = 156  # frames of one 5 s segment


@torch.inference_mode()
def time_ms(module: torch.nn.Module, x: torch.Tensor, iterations: int) -> list[float]:
    module(x)
    times = []
    for _ in range(iterations):
        if x.is_cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        module(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - started) * 1000.0)
    return times


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    device = torch.device(args.device)
    encoder = ECGFMEncoder(ECGFMConfig()).eval()
    fold_weight_norm(encoder)
    conv: ConvolutionalPositionalEmbedding = encoder.pos_conv.to(device)
    fft = FFTPositionalEmbedding(conv).to(device)
    rows = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        x = torch.randn(batch_size, FRAMES, encoder.config.embed_dim, device=device)
        with torch.inference_mode():
            diff = float((conv(x) - fft(x)).abs().max())
        for name, module in (("grouped conv", conv), ("fft", fft)):
            times = time_ms(module, x, args.iterations)
            rows.append({"impl": name, "batch_size": batch_size, "ms_median": round(float(np.median(times)), 2),
                         "ms_min": round(min(times), 2), "max_abs_diff": diff})  # fmt: skip
            print(rows[-1], flush=True)
    data = {"device": str(device), "rows": rows, "machine": machine_info()}
    machine = data["machine"]
    markdown = "\n".join([
        f"# Positional conv at full size on {device}: grouped Conv1d vs FFT (fp32)",
        "",
        f"Machine: {machine['cpu']}, {machine['cpu_cores']} cores, GPU: {machine['gpu'] or 'none'}; load average "
        f"{machine['load_average_1m']}; {machine['date_utc']}.",
        "",
        markdown_table(["implementation", "batch", "ms median", "ms min", "max abs diff"],
                       [[r["impl"], r["batch_size"], r["ms_median"], r["ms_min"], f"{r['max_abs_diff']:.1e}"]
                        for r in rows]),
    ])  # fmt: skip
    write_results(f"pos_conv_{device.type}", data, markdown)
    return data


if __name__ == "__main__":
    main()
