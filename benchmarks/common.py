"""What every benchmark shares: the machine description and writing results as JSON and Markdown."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
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
        f"1-minute load average {machine['load_average_1m']} at {machine['date_utc']}."
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


SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")  # environment variables never written to a results file


def git_commit(repo: Path = REPO_DIR) -> dict[str, Any]:
    """Short hash of HEAD, whether tracked files (results files aside) differ from it, and which (None: unknown)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    head = git("rev-parse", "--short", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    lines = [] if status is None else [line[3:] for line in status.splitlines() if line.strip()]
    changed = None if status is None else [path for path in lines if not path.startswith("benchmarks/results/")]
    return {
        "commit": head.strip() if head else None,
        "dirty": None if changed is None else bool(changed),
        "changed_files": changed,
    }


def command_line(argv: list[str] | None = None) -> str:
    """The command that runs this process: ``python -m <module> <args>`` for a module, else ``python <argv>``."""
    argv = list(sys.argv if argv is None else argv)
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name not in ("__main__", None):
        return shlex.join(["python", "-m", spec.name.removesuffix(".__main__"), *argv[1:]])
    return shlex.join(["python", *argv])


def provenance(machine: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a results file needs to be traced: commit, command line, ECGFM_* settings and the machine line."""
    environment = {
        name: value
        for name, value in sorted(os.environ.items())
        if name.startswith("ECGFM_") and not any(word in name for word in SECRET_WORDS)
    }
    return {
        **git_commit(),
        "command": command_line(),
        "environment": environment,
        "machine": machine_line(machine or machine_info()),
    }


def provenance_markdown(record: dict[str, Any]) -> str:
    """The provenance of a results file as one Markdown paragraph."""
    if record.get("commit") is None:
        commit = "commit unknown"
    elif record.get("dirty"):
        commit = f"commit `{record['commit']}` with uncommitted changes in {', '.join(record['changed_files'])}"
    else:
        commit = f"commit `{record['commit']}` (clean tree)"
    settings = " ".join(f"{name}={value}" for name, value in record.get("environment", {}).items())
    return (
        f"Provenance: {commit}; command `{record['command']}`"
        + (f" with `{settings}`" if settings else "")
        + f". {record['machine']}"
    )


def write_results(name: str, data: dict[str, Any], markdown: str, out_dir: Path = RESULTS_DIR) -> Path:
    """``<out_dir>/<name>.json`` and ``<name>.md``, both with the run's :func:`provenance`; returns the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {**data, "provenance": provenance(data.get("machine"))}
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(markdown.rstrip() + "\n\n" + provenance_markdown(data["provenance"]) + "\n")
    print(f"wrote {json_path} and {json_path.with_suffix('.md')}")
    return json_path
