"""Fuzzing (fuzz/, docs/testing.md "Fuzzing"): every input a campaign found is replayed and must now be refused
with one of the project's documented errors, within the CPU bound; a short campaign per target finds nothing."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from fuzz import targets
from fuzz.__main__ import REPLAY_CPU_S
from tests.conftest import REPO_DIR

REGRESSIONS_DIR = REPO_DIR / "tests" / "fuzz_regressions"
FINDINGS = sorted(path for path in REGRESSIONS_DIR.glob("*/*") if path.is_file())
CAMPAIGN_S = 10  # per target in CI, plus 20-60 s of instrumented imports (the whole suite must stay under 30 min)


def test_the_kept_findings_cover_the_targets_that_had_findings() -> None:
    assert {path.parent.name for path in FINDINGS} <= set(targets.TARGETS)
    assert {"npy", "records"} <= {path.parent.name for path in FINDINGS}  # docs/testing.md lists what each was


@pytest.mark.parametrize("path", FINDINGS, ids=lambda path: f"{path.parent.name}/{path.name[:20]}")
def test_a_kept_finding_is_refused_with_a_documented_error_within_the_bound(path: Path) -> None:
    started = time.process_time()
    assert targets.run_one(path.parent.name, path.read_bytes()) == "refused"
    assert time.process_time() - started < REPLAY_CPU_S


@pytest.mark.parametrize("target", targets.TARGETS)
def test_every_seed_is_decoded_within_the_bound(target: str) -> None:
    """The seeds are readable records: a harness that refused everything would fuzz nothing but its refusal."""
    outcomes, cpu_s = {}, {}
    for name, data in targets.seeds(target).items():
        started = time.process_time()
        outcomes[name] = targets.run_one(target, data)
        cpu_s[name] = time.process_time() - started
    assert outcomes and set(outcomes.values()) == {"decoded"}, outcomes
    assert max(cpu_s.values()) < REPLAY_CPU_S, cpu_s


@pytest.mark.parametrize("target", targets.TARGETS)
def test_a_short_campaign_finds_nothing(target: str, tmp_path: Path) -> None:
    command = [str(REPO_DIR / "scripts" / "fuzz.sh"), target, "--seconds", str(CAMPAIGN_S), "--work", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=CAMPAIGN_S + 180)
    assert result.returncode == 0, result.stderr[-4000:]
    assert list((tmp_path / "findings").iterdir()) == []
    runs = re.search(r"Done (\d+) runs in", result.stderr)
    assert runs and int(runs.group(1)) > len(targets.seeds(target)), result.stderr[-2000:]  # beyond the seeds
    assert re.search(r"DONE\s+cov: [1-9]", result.stderr)  # with coverage feedback


def test_an_npy_header_that_claims_more_data_than_follows_is_a_400_before_any_allocation() -> None:
    """The fix of the npy finding: numpy allocates the shape a header claims before it reads the data."""
    import io

    import numpy as np

    from serving.contract import BadRequestError
    from serving.decoding import load_npy

    buffer = io.BytesIO()
    np.save(buffer, np.zeros((12, 10), dtype=np.float32))
    claimed = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": (12, 10_000_000_000)}  # 480 GB of float32
    np.lib.format.write_array_header_1_0(claimed, header)
    claimed.write(np.zeros((12, 10), dtype=np.float32).tobytes())
    with pytest.raises(BadRequestError, match="describes 480000000000 bytes of data but 480 follow it"):
        load_npy(claimed.getvalue())
    assert load_npy(buffer.getvalue()).shape == (12, 10)
    for body, message in ((b"{'signal': []}", "not a NumPy .npy array"), (b"\x93NUMPY\x01\x00", "not a NumPy")):
        with pytest.raises(BadRequestError, match=message):
            load_npy(body)
    strings, objects = io.BytesIO(), io.BytesIO()
    np.save(strings, np.array([["a"] * 5] * 12))
    np.save(objects, np.array([[object()] * 5] * 12, dtype=object), allow_pickle=True)
    for body in (strings.getvalue(), objects.getvalue()):
        with pytest.raises(BadRequestError, match="must hold numbers"):
            load_npy(body)


def test_ecgfm_predict_reads_npy_files_through_the_same_checked_loader(tmp_path) -> None:
    """The records finding: a .npy file whose header numpy's tokenizer cannot parse raised TokenError out of
    read_record (a traceback in ecgfm predict); the file path now shares the service's checked loader."""
    import io

    import numpy as np

    from ecgfm.records.readers import read_record
    from ecgfm.records.record import RecordError

    header_cut = tmp_path / "cut.npy"
    header_cut.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4',")
    claimed = io.BytesIO()
    np.lib.format.write_array_header_1_0(claimed, {"descr": "<f4", "fortran_order": False, "shape": (12, 10**10)})
    (tmp_path / "claimed.npy").write_bytes(claimed.getvalue() + bytes(480))
    for name, message in (("cut.npy", "not a NumPy .npy array"), ("claimed.npy", "describes 480000000000 bytes")):
        with pytest.raises(RecordError, match=f"{name}: .*{message}"):
            read_record(tmp_path / name, fs=500)


def test_a_json_record_nested_too_deep_or_with_a_number_past_float_is_a_record_error(tmp_path) -> None:
    """Inputs of the records target's JSON kind that escaped read_record before: RecursionError, OverflowError."""
    from ecgfm.records.readers import read_record
    from ecgfm.records.record import RecordError

    (tmp_path / "deep.json").write_text('{"signal": ' + "[" * 100_000 + "]" * 100_000 + ', "fs": 500}')
    (tmp_path / "huge_fs.json").write_text('{"signal": [[0.0, 1.0]], "lead_names": ["II"], "fs": 1' + "0" * 400 + "}")
    for name in ("deep.json", "huge_fs.json"):
        with pytest.raises(RecordError, match=name):
            read_record(tmp_path / name)
