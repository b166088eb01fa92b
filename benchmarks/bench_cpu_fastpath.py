"""The CPU fast path side by side: fp32, fp32+fft, int8, int8+fft, static int8 and ONNX Runtime in one process.

    python -m benchmarks.bench_cpu_fastpath --checkpoint /tmp/ecgfm-demo-full/finetuned.pt --batch-sizes 1,4,8

Every variant is loaded first; then each round times one forward of every variant at every batch size, in turn,
so that a slow spell of this shared machine falls on all variants alike (the figures are medians over rounds; the
ratios are of medians from the same rounds). PyTorch variants run through :meth:`ecgfm.inference.ModelHandle.run`
(as the services do); ONNX Runtime runs the file ``ecgfm export`` writes (fp32), and its dynamic int8 quantization
of that file's weight MatMuls (``onnxruntime.quantization.quantize_dynamic``, per-channel int8 weights; attention's
activation-by-activation MatMuls and the convs stay fp32; 7-bit weights, ``reduce_range``, on a CPU without VNNI,
as ORT's docstring advises: its AVX2 int8 kernels saturate otherwise, 0.034 from fp32 instead of 0.0045), with as
many intra-op threads as torch has. Each variant's largest probability difference from fp32 on the benchmark's
inputs is recorded (random inputs: the self-check on real records is ecgfm.precision's job). The RSS added by
loading each variant, and the process's peak RSS, are recorded too. ``int8-static+fft`` (not in the default list) is
static int8 of the same layers, calibrated on the self-check's records, to compare with the dynamic int8 served.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import machine_info, markdown_table, write_results
from ecgfm.inference import load_model

TORCH_VARIANTS = {"fp32": ("fp32", "conv"), "fp32+fft": ("fp32", "fft"), "int8": ("int8", "conv"),
                  "int8+fft": ("int8", "fft")}  # fmt: skip


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def ort_runner(checkpoint: Path, quantized: bool, workdir: Path):
    """A ``run(segments) -> outputs`` over ONNX Runtime for the exported file (int8: its MatMuls quantized)."""
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ecgfm.network.export import export_onnx

    fp32_path = workdir / "model.onnx"
    if not fp32_path.exists():
        handle = load_model("finetuned", str(checkpoint), "cpu", "fp32", "conv", False, self_check=False)
        export_onnx(handle.loaded.model, fp32_path, "finetuned")
        del handle
    path = fp32_path
    if quantized:
        import onnx

        # The exporter's value_info annotations trip ONNX's shape inference inside quantize_dynamic (a [B, 64] vs
        # [B, 17] clash); without them, shapes are inferred afresh.
        stripped = onnx.load(str(fp32_path))
        del stripped.graph.value_info[:]
        onnx.save(stripped, str(workdir / "model.stripped.onnx"))
        path = workdir / "model.int8.onnx"
        quantize_dynamic(
            str(workdir / "model.stripped.onnx"),
            str(path),
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=not {"avx512_vnni", "avx_vnni"} & set(cpu_flags()),
            op_types_to_quantize=["MatMul"],
            extra_options={"MatMulConstBOnly": True},  # the weights' MatMuls only, not attention's QK^T and AV,
        )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(segments: np.ndarray) -> np.ndarray:
        mask = np.zeros((len(segments), segments.shape[-1]), dtype=bool)
        return session.run(None, {"source": segments, "padding_mask": mask})[0]

    return run


STATIC_INT8 = "int8-static+fft"  # measured against the served dynamic int8 (docs/performance.md), not served


def static_int8_runner(checkpoint: Path):
    """Static int8 of the same linear layers (eager mode: each ``nn.Linear`` of the transformer between a quant and
    a dequant stub, ``x86`` default qconfig: per-channel weights, histogram-calibrated activations), calibrated on
    the self-check's bundled records; everything else as int8+fft. Only for this comparison."""
    import warnings

    from torch import nn

    from ecgfm.precision import bundled_records, read_segments

    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao on every call
        warnings.simplefilter("ignore")
        from torch.ao.quantization import QuantWrapper, convert, get_default_qconfig, prepare

        handle = load_model("finetuned", str(checkpoint), "cpu", "fp32", "fft", False, self_check=False)
        transformer = handle.loaded.model.encoder.encoder

        def wrap_linears(module: nn.Module) -> None:
            for name, child in module.named_children():
                if isinstance(child, nn.Linear):
                    wrapped = QuantWrapper(child)
                    wrapped.qconfig = get_default_qconfig("x86")
                    setattr(module, name, wrapped)
                else:
                    wrap_linears(child)

        wrap_linears(transformer)
        prepare(transformer, inplace=True)
        calibration = read_segments(bundled_records())
        handle.run(calibration.segments, calibration.lengths)
        convert(transformer, inplace=True)
    return handle.run


def load_variants(checkpoint: Path, variants: list[str], workdir: Path) -> tuple[dict[str, Any], dict[str, float]]:
    runners, added_mb = {}, {}
    for variant in variants:
        gc.collect()
        before = rss_mb()
        if variant in TORCH_VARIANTS:
            precision, pos_conv = TORCH_VARIANTS[variant]
            handle = load_model("finetuned", str(checkpoint), "cpu", precision, pos_conv, False, self_check=False)
            runners[variant] = handle.run
        elif variant == STATIC_INT8:
            runners[variant] = static_int8_runner(checkpoint)
        elif variant in ("ort-fp32", "ort-int8"):
            runners[variant] = ort_runner(checkpoint, variant == "ort-int8", workdir)
        else:
            raise ValueError(f"unknown variant {variant!r}")
        runners[variant](np.zeros((1, 12, 2500), dtype=np.float32))  # lazy initialisation outside the timing
        gc.collect()
        added_mb[variant] = round(rss_mb() - before, 1)
        print(f"loaded {variant}: +{added_mb[variant]} MB", flush=True)
    return runners, added_mb


def run(checkpoint: Path, variants: list[str], batch_sizes: list[int], rounds: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    batches = {size: rng.standard_normal((size, 12, 2500), dtype=np.float32) for size in batch_sizes}
    with tempfile.TemporaryDirectory(prefix="ecgfm-bench-onnx-") as workdir:
        runners, added_mb = load_variants(checkpoint, variants, Path(workdir))
        times: dict[tuple[str, int], list[float]] = {(v, b): [] for v in variants for b in batch_sizes}
        outputs: dict[str, np.ndarray] = {}
        load = [os.getloadavg()[0]]
        for round_index in range(rounds):
            for size in batch_sizes:
                for variant in variants:
                    started = time.perf_counter()
                    out = runners[variant](batches[size])
                    times[variant, size].append(time.perf_counter() - started)
                    if size == max(batch_sizes):
                        outputs[variant] = out
            load.append(os.getloadavg()[0])
            print(f"round {round_index + 1}/{rounds} done, load average {load[-1]:.2f}", flush=True)
    reference = outputs.get("fp32")
    rows = []
    for variant in variants:
        for size in batch_sizes:
            median = float(np.median(times[variant, size]))
            fp32_median = float(np.median(times["fp32", size])) if "fp32" in variants else None
            fft_median = float(np.median(times["fp32+fft", size])) if "fp32+fft" in variants else None
            rows.append({
                "variant": variant,
                "batch_size": size,
                "ms_per_batch_median": round(median * 1000, 1),
                "ms_per_batch_min": round(min(times[variant, size]) * 1000, 1),
                "segments_per_s": round(size / median, 3),
                "vs_fp32": round(fp32_median / median, 2) if fp32_median else None,
                "vs_fp32_fft": round(fft_median / median, 2) if fft_median else None,
            })  # fmt: skip
    deviation = {
        variant: float(np.abs(out - reference).max()) for variant, out in outputs.items() if reference is not None
    }
    return {
        "checkpoint": str(checkpoint),
        "rounds": rounds,
        "rows": rows,
        "max_probability_difference_vs_fp32": deviation,
        "rss_added_by_loading_mb": added_mb,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_average_1m": {"start": load[0], "end": load[-1], "max": max(load)},
    }


def to_markdown(data: dict[str, Any]) -> str:
    machine = data["machine"]
    load = data["load_average_1m"]
    lines = [
        f"# CPU fast path side by side: {Path(data['checkpoint']).name}",
        "",
        f"Machine: {machine['cpu']}, {machine['cpu_cores']} cores, {machine['torch_threads']} torch threads; CPU "
        f"flags: {', '.join(data['cpu_flags']) or 'none of avx2/avx512_vnni/amx'}; torch {machine['torch']}; "
        f"{machine['date_utc']}. {data['rounds']} rounds, every variant in turn within a round. Load average (1 min) "
        f"{load['start']:.1f} at the start, {load['max']:.1f} at most, on {machine['cpu_cores']} cores: the machine "
        f"was shared with other work. Peak RSS of the process (all variants loaded): {data['peak_rss_mb']} MB.",
        "",
    ]
    headers = ["variant", "batch", "ms/batch median", "ms/batch min", "seg/s", "× fp32", "× fp32+fft"]
    table = [[r["variant"], r["batch_size"], r["ms_per_batch_median"], r["ms_per_batch_min"], r["segments_per_s"],
              r["vs_fp32"], r["vs_fp32_fft"]] for r in data["rows"]]  # fmt: skip
    lines += [markdown_table(headers, table), "", "Per variant:", ""]
    per_variant = [
        [
            variant,
            data["rss_added_by_loading_mb"][variant],
            f"{data['max_probability_difference_vs_fp32'].get(variant, 0):.2g}",
        ]
        for variant in data["rss_added_by_loading_mb"]
    ]
    lines.append(markdown_table(["variant", "RSS added by loading (MB)", "max prob. diff vs fp32 (random inputs)"],
                                per_variant))  # fmt: skip
    return "\n".join(lines)


def cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    with open("/proc/cpuinfo") as cpuinfo:
        flags = set(next(line for line in cpuinfo if line.startswith("flags")).split(":")[1].split())
    return [flag for flag in wanted if flag in flags]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a finetuned .pt (full size: demo-checkpoints)")
    parser.add_argument("--variants", default="fp32,fp32+fft,int8,int8+fft,ort-fp32,ort-int8")
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="cpu_fastpath_full")
    args = parser.parse_args(argv)
    data = run(args.checkpoint, args.variants.split(","), [int(b) for b in args.batch_sizes.split(",")], args.rounds)
    data["machine"] = machine_info()
    data["cpu_flags"] = cpu_flags()
    write_results(args.name, data, to_markdown(data))
    return data


if __name__ == "__main__":
    main()
