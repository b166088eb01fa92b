"""``python -m fuzz TARGET [--seconds N] [--work DIR]``: one atheris campaign on a target of :mod:`fuzz.targets`.

The corpus starts from the target's seeds (written into ``DIR/corpus``, which keeps growing across campaigns).
Findings, written to ``DIR/findings/`` (and the campaign ends with a non-zero status): an input that escapes with
an exception the target does not allow (``crash-*``), one that takes over :data:`HANG_CPU_S` of CPU time
(``slow-*``: CPU, not wall-clock time, so that a busy shared machine does not make findings; libFuzzer's
``-timeout`` of :data:`WALL_TIMEOUT_S` catches a true hang), and the process passing :data:`RSS_LIMIT_MB`
(``-rss_limit_mb``, ``oom-*``). libFuzzer's final statistics (executions,
coverage ``cov``/``ft``, corpus size) go to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import atheris

# A finding: one input taking more CPU time than this, instrumented. Coverage instrumentation makes the readers
# 5-8 times slower (the SCP-ECG seed: 0.13 s plain, 1.05 s instrumented), so this is the 1 s bound of the service
# (REPLAY_CPU_S, which tests/test_fuzz.py applies to every kept input, uninstrumented) times that overhead.
REPLAY_CPU_S = 1.0
HANG_CPU_S = 8.0
WALL_TIMEOUT_S = 20  # libFuzzer's -timeout: an input still running after this long (a loop that never ends)
RSS_LIMIT_MB = 3072  # a finding: the process passing this (the interpreter with torch and numpy loaded is ~600 MB)
INSTRUMENTED = ("ecgfm", "serving", "pydicom", "defusedxml", "sierraecg", "ecgdatakit", "wfdb")


class SlowInputError(Exception):
    """One input took more than HANG_CPU_S of CPU time."""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=("file", "records", "npy", "json"))
    parser.add_argument("--seconds", type=int, default=60, help="length of the campaign (default 60)")
    parser.add_argument("--work", type=Path, help="corpus and findings folder (default .fuzz/TARGET)")
    parser.add_argument("--runs", type=int, help="stop after this many inputs instead (for a quick check)")
    args = parser.parse_args(argv)
    work = args.work or Path(".fuzz") / args.target
    corpus, findings = work / "corpus", work / "findings"
    corpus.mkdir(parents=True, exist_ok=True)
    findings.mkdir(parents=True, exist_ok=True)

    with atheris.instrument_imports(include=list(INSTRUMENTED)):
        import ecgdatakit.parsing.parsers.scp_ecg  # noqa: F401  (the readers import these lazily: here, instrumented)
        import pydicom  # noqa: F401
        import sierraecg  # noqa: F401
        import wfdb  # noqa: F401

        from fuzz import targets

    for name, data in targets.seeds(args.target).items():
        (corpus / f"seed-{name}").write_bytes(data)

    def one_input(data: bytes) -> None:
        started = time.process_time()
        try:
            targets.run_one(args.target, data)
        except Exception:  # a finding: kept here (libFuzzer's own crash file is not always written for Python)
            (findings / f"crash-{hashlib.sha1(data).hexdigest()}").write_bytes(data)
            raise
        if (spent := time.process_time() - started) > HANG_CPU_S:
            (findings / f"slow-{hashlib.sha1(data).hexdigest()}").write_bytes(data)
            raise SlowInputError(f"{spent:.2f} s of CPU time for one input of {len(data)} bytes (bound {HANG_CPU_S} s)")

    libfuzzer = [
        sys.argv[0],
        str(corpus),
        f"-timeout={WALL_TIMEOUT_S}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-artifact_prefix={findings}/",
        "-print_final_stats=1",
        f"-max_total_time={args.seconds}",
    ]
    if args.runs is not None:
        libfuzzer.append(f"-runs={args.runs}")
    atheris.Setup(libfuzzer, one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
