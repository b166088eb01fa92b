"""The side-by-side benchmarks run end to end on the small parity model and measure what they say they measure.

Their figures are not asserted (speed lives in ``docs/performance.md``, measured by ``benchmarks/run_all.sh``);
what is asserted is the bookkeeping: raw and served both measured, the model call inside the served request,
utilisation a fraction, batches made of whole requests.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from benchmarks import bench_latency, bench_saturation
from benchmarks.bench_served import RECORD, SEGMENTS_PER_RECORD
from tests.conftest import load_json_record
from tests.launcher import free_port

pytestmark = pytest.mark.server


@pytest.fixture(autouse=True)
def own_bentoml_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Servers sharing a BentoML home wipe each other's Prometheus files at start (see conftest.bentoml_server)."""
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml_home"))
    monkeypatch.setenv("BENTOML_DO_NOT_TRACK", "true")


def test_latency_benchmark_pairs_each_raw_forward_with_served_requests() -> None:
    result = bench_latency.measure("bentoml", free_port(), "small", load_json_record(RECORD), requests=3, warmup=1)
    assert set(result["endpoints"]) == {"json", "npy"}
    served_p50 = [served["p50"] for served in result["endpoints"].values()]
    assert all(0 < served["min"] <= served["p50"] for served in result["endpoints"].values())
    assert 0 < result["raw_ms"]["min"] <= result["raw_ms"]["p50"]
    assert 0 < result["model_call_ms"]["p50"] < max(served_p50)  # the model call is one part of a request


def test_saturation_benchmark_alternates_raw_and_served_windows() -> None:
    args = argparse.Namespace(
        size="small", concurrency=2, bodies="npy", pairs=1, window_s=2.0, raw_batch_size=2, port=free_port()
    )
    data = bench_saturation.run(args)
    row = data["pairs"]["npy"][0]
    assert row["errors"] == {}
    assert row["raw_segments_per_s"] > 0 and row["segments_per_s"] > 0
    assert 0 < row["utilisation"] <= 1.0
    assert row["mean_batch_size"] >= SEGMENTS_PER_RECORD  # a model call holds whole requests
    assert row["served_over_raw"] == pytest.approx(row["segments_per_s"] / row["raw_segments_per_s"], rel=1e-2)
    assert data["summary"]["npy"]["served_over_raw"] == row["served_over_raw"]


def test_cpu_fastpath_benchmark_times_every_variant_in_the_same_rounds() -> None:
    from benchmarks import bench_cpu_fastpath
    from benchmarks.common import PARITY_CKPT_DIR

    variants = ["fp32", "fp32+fft", "int8+fft", "int8-static+fft"]
    data = bench_cpu_fastpath.run(PARITY_CKPT_DIR / "ecgfm_small_finetuned.pt", variants, [1, 2], rounds=2)
    rows = {(row["variant"], row["batch_size"]): row for row in data["rows"]}
    assert set(rows) == {(variant, size) for variant in variants for size in (1, 2)}
    for (_, size), row in rows.items():
        fp32 = rows["fp32", size]
        # the file rounds ms to 0.1 and ratios to 0.01: a few ms per small-model batch leaves a few % of rounding
        assert row["segments_per_s"] == pytest.approx(size / (row["ms_per_batch_median"] / 1000), rel=0.05)
        assert row["vs_fp32"] == pytest.approx(fp32["ms_per_batch_median"] / row["ms_per_batch_median"], rel=0.05)
    deviation = data["max_probability_difference_vs_fp32"]
    assert deviation["fp32"] == 0 and deviation["fp32+fft"] < 1e-5 and 0 < deviation["int8+fft"] < 1e-2
    assert 0 < deviation["int8-static+fft"] < 1e-1  # quantized (not fp32), and not wrecked by its calibration
    assert set(data["rss_added_by_loading_mb"]) == set(variants) and data["peak_rss_mb"] > 0
