"""What every benchmark shares: the machine description and writing results as JSON and Markdown."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_DIR = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_DIR.parent / "shared" / "data"
PARITY_CKPT_DIR = REPO_DIR.parent / "shared" / "parity" / "ckpt"


def cpu_model() -> str:
    """The ``model name`` line of /proc/cpuinfo (lscpu's "Model name"), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, accelerator and library versions of this machine."""
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        memory_gib = None
    cuda = torch.cuda.is_available()
    return {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": memory_gib,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "load_average_1m": round(os.getloadavg()[0], 2),  # other processes on the machine skew CPU figures
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def machine_line(machine: dict[str, Any]) -> str:
    """One sentence naming the machine of a results file (from :func:`machine_info`)."""
    return (
        f"Machine: {machine['cpu']}, {machine['cpu_cores']} cores, GPU: {machine['gpu'] or 'none'}; "
        f"load average before the run {machine['load_average_1m']}; {machine['date_utc']}."
    )


def percentiles(values_ms: list[float]) -> dict[str, float | None]:
    """p50/p95/p99/mean of a list of milliseconds (None when empty)."""
    if not values_ms:
        return {"p50": None, "p95": None, "p99": None, "mean": None}
    array = np.asarray(values_ms, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(array, 50)), 2),
        "p95": round(float(np.percentile(array, 95)), 2),
        "p99": round(float(np.percentile(array, 99)), 2),
        "mean": round(float(array.mean()), 2),
    }


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join("" if cell is None else str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, data: dict[str, Any], markdown: str, out_dir: Path = RESULTS_DIR) -> Path:
    """``<out_dir>/<name>.json`` and ``<name>.md``; returns the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(markdown.rstrip() + "\n")
    print(f"wrote {json_path} and {json_path.with_suffix('.md')}")
    return json_path
