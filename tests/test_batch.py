"""``ecgfm batch`` as a user runs it: a real local Ray, real record files (some corrupt), real Parquet parts.

The Ray runs are few and shared (CI has 2 cores): one scores a nested archive of every input kind and is compared
with ``ecgfm predict`` on the same files; one adds the saliency columns to a few of them, compared with ``ecgfm
predict --saliency``; one is killed as soon as its first part is committed and resumed; one resumes a copy of the
first whose lost part was left as a complete temporary file (killed between fsync and rename). The input rules, the
part files and what ``--resume`` accepts are also tested without Ray. Every subprocess has a timeout.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from ecgfm.archive.batch import BatchError, BatchJob, check_output
from ecgfm.archive.inputs import InputsError, discover_inputs, is_manifest
from ecgfm.archive.parts import (
    PartWriter,
    committed_parts,
    done_paths,
    job_metadata,
    output_schema,
    remove_unfinished,
    unfinished_parts,
)
from ecgfm.labels import AGGREGATION, LABELS
from ecgfm.network.checkpoint import file_sha256
from ecgfm.records.readers import read_record
from tests.conftest import DATA_DIR, FINETUNED_CKPT, PRETRAINED_CKPT, REPO_DIR

CHECKPOINT_ARGS = ["--pretrained", str(PRETRAINED_CKPT), "--finetuned", str(FINETUNED_CKPT)]
RUN_TIMEOUT_S = 240  # a Ray job that hangs fails the test instead of blocking CI
FLOAT32_ATOL = 1e-6  # outputs are stored as float32; ecgfm predict writes the same values as float64
BAD_FILES = {
    "broken.json": '{"signal": [[1, 2',
    "sub/ragged.json": '{"signal": [[1, 2], [3]], "fs": 500}',
    "sub/deeper/empty.hea": "",
    "sub/deeper/garbage.npy": "not a numpy file",
}


def run_ecgfm(*args: str, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ecgfm", *args], cwd=REPO_DIR, capture_output=True, text=True, timeout=timeout
    )


def kill_once_a_part_is_committed(
    args: list[str], output: Path | str, env: dict[str, str] | None = None, timeout_s: float = RUN_TIMEOUT_S
) -> None:
    """Run ``ecgfm *args`` and SIGKILL it as soon as ``output`` holds a committed part (or it ends, or the time is
    up): a job killed part-way."""
    process = subprocess.Popen([sys.executable, "-m", "ecgfm", *args], cwd=REPO_DIR, env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout_s
        while not committed_parts(output) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)


def rows_by_path(output: Path) -> dict[str, dict]:
    rows = pads.dataset(output, format="parquet").to_table().to_pylist()
    counts = collections.Counter(row["path"] for row in rows)
    assert max(counts.values()) == 1, f"paths with more than one row: {[p for p, n in counts.items() if n > 1]}"
    return {row["path"]: row for row in rows}


def part_table(schema: pa.Schema, paths: list[str]) -> pa.Table:
    """Rows of ``schema`` with only ``path`` set (what the part writer and resume look at)."""
    columns = {field.name: pa.nulls(len(paths), field.type) for field in schema}
    return pa.table({**columns, "path": pa.array(paths, pa.string())})


def write_short_record(path: Path, seconds: float) -> None:
    """The first ``seconds`` of A1041 as a JSON record (3 s: one padded segment; 12 s: 2 segments and a tail)."""
    data = json.loads((DATA_DIR / "A1041.json").read_text())
    n = int(seconds * data["fs"])
    data["signal"] = [lead[:n] for lead in data["signal"]]
    data["record"] = path.stem
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A nested archive: JSON, CSV, .npy and WFDB records, a padded and a tail-dropping record, corrupt files, a
    file that is not a record, and a CSV manifest (``filename_hr`` column) of records elsewhere."""
    root = tmp_path_factory.mktemp("archive")
    (root / "folder" / "sub" / "deeper").mkdir(parents=True)
    folder = root / "folder"
    (folder / "A0689.json").write_text((DATA_DIR / "A0689.json").read_text())
    (folder / "sub" / "JS36330.csv").write_text((DATA_DIR / "JS36330.csv").read_text())
    np.save(folder / "sub" / "JS01048.npy", read_record(DATA_DIR / "JS01048.json").signal)
    for suffix in (".hea", ".mat"):
        name = "A0689" + suffix
        (folder / "sub" / "deeper" / name).write_bytes((DATA_DIR / "DeepPSP_cinc2021" / name).read_bytes())
    write_short_record(folder / "sub" / "short3s.json", 3.0)
    write_short_record(folder / "sub" / "tail12s.json", 12.0)
    for name, text in BAD_FILES.items():
        (folder / name).write_text(text)
    (folder / "README.txt").write_text("not a record")
    (root / "elsewhere" / "recs").mkdir(parents=True)
    (root / "elsewhere" / "recs" / "E05526.json").write_text((DATA_DIR / "E05526.json").read_text())
    (root / "elsewhere" / "db.csv").write_text("ecg_id,filename_hr\n1,recs/E05526.json\n2,recs/missing.json\n")
    return root


def scored_args(archive: Path, output: Path) -> list[str]:
    """``ecgfm batch`` over the folder, a glob and the manifest, with per-segment columns, into ``output``."""
    return [
        "batch",
        *CHECKPOINT_ARGS,
        "--per-segment",
        "--fs",
        "500",
        "--records-per-batch",
        "3",
        "--part-size",
        "5",
        "--no-progress",
        "--output",
        str(output),
        str(archive / "folder"),
        str(archive / "folder" / "sub" / "*.json"),  # the same files again: still one row each
        "--manifest",
        str(archive / "elsewhere" / "db.csv"),
        "--path-column",
        "filename_hr",
    ]


@pytest.fixture(scope="module")
def scored(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """One ``ecgfm batch`` over the folder, a glob and the manifest, with per-segment columns."""
    output = tmp_path_factory.mktemp("scored") / "out"
    done = run_ecgfm(*scored_args(archive, output))
    assert done.returncode == 0, done.stderr
    return done, output


GOOD_FOLDER_FILES = ["A0689.json", "sub/JS36330.csv", "sub/JS01048.npy", "sub/deeper/A0689.hea"]
GOOD_FOLDER_FILES += ["sub/short3s.json", "sub/tail12s.json"]
SALIENCY_FILES = ["A0689.json", "sub/short3s.json", "sub/tail12s.json", "sub/JS01048.npy"]  # padded, tail, 2 segments


@pytest.fixture(scope="module")
def scored_saliency(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ecgfm batch --saliency`` over a few records and a corrupt file, two records per model call."""
    output = tmp_path_factory.mktemp("saliency") / "out"
    files = [str(archive / "folder" / name) for name in [*SALIENCY_FILES, "broken.json"]]
    done = run_ecgfm(
        "batch", *CHECKPOINT_ARGS, "--saliency", "--fs", "500", "--records-per-batch", "2", "--no-progress",
        "--output", str(output), *files,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return output


def test_every_input_has_exactly_one_row_scored_or_with_its_error(archive, scored):
    _, output = scored
    rows = rows_by_path(output)
    folder = archive / "folder"
    expected = {str(folder / name) for name in GOOD_FOLDER_FILES + list(BAD_FILES)}
    expected |= {"recs/E05526.json", "recs/missing.json"}  # manifest paths as found
    assert set(rows) == expected
    errors = {path for path, row in rows.items() if row["error"] is not None}
    assert errors == {str(folder / name) for name in BAD_FILES} | {"recs/missing.json"}
    for path in expected - errors:
        assert rows[path]["n_segments"] >= 1 and len(rows[path]["probabilities"]) == len(LABELS)


def test_the_summary_counts_records_and_errors(scored):
    done, output = scored
    assert re.search(r"12 records written \(7 scored, 5 errors\) in \d+ parts, [\d.]+ s, [\d.]+ records/s", done.stderr)
    sizes = [pq.read_metadata(str(part)).num_rows for part in committed_parts(output)]
    assert sorted(sizes) == [2, 5, 5]  # --part-size 5: parts of 5 rows, but the last


RAY_NOISE_LINES = [  # what Ray printed on every clean local run before ecgfm batch filtered it
    "Token authentication is enabled for this Ray cluster",
    "has constructor arguments in the object store and max_restarts > 0",
    "Progress bars disabled",
    "execution finished in",
]


def test_a_run_prints_its_own_lines_not_rays_noise(scored):
    done, _ = scored
    assert [line for line in done.stderr.splitlines() if any(noise in line for noise in RAY_NOISE_LINES)] == []
    ours = [line for line in done.stderr.splitlines() if line.startswith("ecgfm batch: ")]
    assert ours[0].startswith("ecgfm batch: scoring 12 records") and ours[-1].startswith("ecgfm batch: done: ")


def test_the_stderr_filter_drops_only_the_known_noise_and_keeps_the_order(tmp_path):
    """What reaches file descriptor 2 while Ray runs (Python's writes and a C++ library's alike) is copied line by
    line, but for the known noise; the progress bar's stream goes straight to the real stderr."""
    script = f"""
import os, sys
sys.path.insert(0, {str(REPO_DIR)!r})
from ecgfm.archive.batch import quiet_ray_noise
with quiet_ray_noise() as terminal:
    os.write(2, b"[2026-12-02 14:47:36,821 E 1770 1770] core_worker.cc:2465: Actor with class name: "
                b"'MapWorker(MapBatches(ModelStage))' and ID: '724c02017db2131eee03163301000000' has constructor "
                b"arguments in the object store and max_restarts > 0. If the arguments ...\\n")
    print("2026-12-02 14:47:09,870\\tWARNING authentication_token_setup.py:85 -- Token authentication is enabled "
          "for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.", file=sys.stderr)
    os.write(2, b"[2026-12-02 14:47:37,000 E 1770 1770] core_worker.cc:99: a real C++ error\\n")
    print("ecgfm batch: our line", file=sys.stderr)
    os.write(2, b"half a line, ")
    os.write(2, b"then its end\\n")
    terminal.write("records: 50%\\r")
    os.write(2, b"no newline at the end")
print("after", file=sys.stderr)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)  # bytes: "\r" kept
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    assert stderr.replace("records: 50%\r", "") == (
        "[2026-12-02 14:47:37,000 E 1770 1770] core_worker.cc:99: a real C++ error\n"
        "ecgfm batch: our line\nhalf a line, then its end\nno newline at the endafter\n"
    )
    assert stderr.count("records: 50%\r") == 1


def test_the_local_ray_of_a_job_sends_no_usage_report():
    """docs/security.md: the local Ray that ``ecgfm batch`` starts has usage stats off, whatever the environment
    says (Ray's own ``ray.init`` turns them off for a cluster it starts; this checks that it still does)."""
    script = f"""
import sys, types
sys.path.insert(0, {str(REPO_DIR)!r})
from ray._common.usage.usage_lib import usage_stats_enabled
from ecgfm.archive.batch import ray_session
with ray_session(types.SimpleNamespace(address=None, num_cpus=1)):
    print(usage_stats_enabled())
"""
    env = {name: value for name, value in os.environ.items() if name != "RAY_USAGE_STATS_ENABLED"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "False"


def test_scores_equal_ecgfm_predict_on_the_same_records(archive, scored):
    _, output = scored
    rows = rows_by_path(output)
    files = [str(archive / "folder" / name) for name in GOOD_FOLDER_FILES]
    files.append(str(archive / "elsewhere" / "recs" / "E05526.json"))
    predicted = run_ecgfm("predict", *CHECKPOINT_ARGS, "--per-segment", "--fs", "500", *files)
    assert predicted.returncode == 0, predicted.stderr
    lines = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert len(lines) == len(files)
    for path, line in zip([*files[:-1], "recs/E05526.json"], lines, strict=True):
        row, clinical, features = rows[path], line["clinical"], line["features"]
        assert row["record"] == line["record"]
        np.testing.assert_allclose(row["probabilities"], list(clinical["probabilities"].values()), atol=FLOAT32_ATOL)
        np.testing.assert_allclose(row["features"], features["features"], atol=FLOAT32_ATOL)
        np.testing.assert_allclose(row["segment_probabilities"], clinical["segments"], atol=FLOAT32_ATOL)
        np.testing.assert_allclose(row["segment_features"], features["segments"], atol=FLOAT32_ATOL)
        for key in ("n_segments", "duration_s", "used_duration_s", "padded", "constant_leads"):
            assert row[key] == clinical[key], key
    short = rows[str(archive / "folder" / "sub" / "short3s.json")]
    tail = rows[str(archive / "folder" / "sub" / "tail12s.json")]
    assert (short["n_segments"], short["padded"]) == (1, True)
    assert (tail["n_segments"], tail["used_duration_s"]) == (2, 10.0)


def test_saliency_columns_equal_ecgfm_predict_saliency_on_the_same_records(archive, scored_saliency):
    rows = rows_by_path(scored_saliency)
    files = [str(archive / "folder" / name) for name in SALIENCY_FILES]
    predicted = run_ecgfm("predict", *CHECKPOINT_ARGS, "--saliency", "--fs", "500", *files)
    assert predicted.returncode == 0, predicted.stderr
    lines = [json.loads(line) for line in predicted.stdout.splitlines()]
    schema = pq.read_schema(str(committed_parts(scored_saliency)[0]))
    axis = json.loads(schema.metadata[b"ecgfm"])["saliency"]
    assert axis == {"step_s": 0.032, "segment_s": 5.0, "steps_per_segment": 156}
    for path, line in zip(files, lines, strict=True):
        row = rows[path]
        for column, body in (("finetuned_saliency", "clinical"), ("pretrained_saliency", "features")):
            saliency = line[body]["saliency"]
            assert schema.field(column).type == pa.list_(pa.list_(pa.float32()))
            assert len(row[column]) == row["n_segments"] == len(saliency["values"])
            np.testing.assert_allclose(row[column], saliency["values"], atol=FLOAT32_ATOL)
            # the metadata's axis places them as predict's step_s and segment_start_s do
            assert saliency["step_s"] == axis["step_s"] and {len(values) for values in row[column]} == {156}
            assert saliency["segment_start_s"] == [k * axis["segment_s"] for k in range(row["n_segments"])]
        # the outputs come from the same saliency forward as predict --saliency's
        probabilities = list(line["clinical"]["probabilities"].values())
        np.testing.assert_allclose(row["probabilities"], probabilities, atol=FLOAT32_ATOL)
        np.testing.assert_allclose(row["features"], line["features"]["features"], atol=FLOAT32_ATOL)
    assert [rows[files[i]]["n_segments"] for i in range(3)] == [2, 1, 2]  # A0689, short3s (padded), tail12s
    broken = rows[str(archive / "folder" / "broken.json")]
    assert broken["error"] and broken["finetuned_saliency"] is None and broken["pretrained_saliency"] is None


def test_without_the_flag_there_are_no_saliency_columns(scored):
    _, output = scored
    schema = pq.read_schema(str(committed_parts(output)[0]))
    assert not [name for name in schema.names if "saliency" in name]
    assert json.loads(schema.metadata[b"ecgfm"])["saliency"] is None


def test_a_bad_file_is_an_error_row_with_the_message_ecgfm_predict_gives(archive, scored):
    _, output = scored
    rows = rows_by_path(output)
    bad = [str(archive / "folder" / name) for name in ("broken.json", "sub/ragged.json")]
    predicted = run_ecgfm("predict", "--finetuned", str(FINETUNED_CKPT), "--only", "clinical", *bad)
    for path in bad:
        assert f"skipped {path}: {rows[path]['error']}" in predicted.stderr
        assert rows[path]["probabilities"] is None and rows[path]["n_segments"] is None
    assert "ragged leads" in rows[bad[1]]["error"]
    assert "no such file" in rows["recs/missing.json"]["error"]


def test_the_output_is_plain_parquet_that_pandas_reads_with_labels_and_checkpoints_in_its_metadata(scored):
    _, output = scored
    frame = pd.read_parquet(output)
    assert len(frame) == 12
    scored_rows = frame[frame["error"].isna()]
    assert all(len(p) == len(LABELS) for p in scored_rows["probabilities"])
    assert all(len(f) == 64 for f in scored_rows["features"])  # the small parity encoder
    assert set(frame["finetuned_sha256"]) == {file_sha256(FINETUNED_CKPT)}
    assert set(frame["pretrained_sha256"]) == {file_sha256(PRETRAINED_CKPT)}
    assert not frame["demo"].any()
    schema = pq.read_schema(str(committed_parts(output)[0]))
    assert schema.field("probabilities").type == pa.list_(pa.float32())
    assert schema.field("segment_features").type == pa.list_(pa.list_(pa.float32()))
    metadata = json.loads(schema.metadata[b"ecgfm"])
    assert metadata["labels"] == list(LABELS) and metadata["aggregation"] == AGGREGATION
    assert metadata["feature_dim"] == 64
    assert metadata["checkpoints"]["finetuned"]["sha256"] == file_sha256(FINETUNED_CKPT)
    assert "path" not in metadata["checkpoints"]["finetuned"]  # no file path of the machine that scored it


def test_a_job_killed_after_its_first_part_and_resumed_has_exactly_one_row_per_input(tmp_path):
    inputs = tmp_path / "in"
    for copy in range(10):
        (inputs / f"copy{copy}").mkdir(parents=True)
        for name in ("A0689.json", "JS01048.json"):
            (inputs / f"copy{copy}" / name).write_text((DATA_DIR / name).read_text())
    (inputs / "copy3" / "broken.json").write_text("{")
    output = tmp_path / "out"
    args = ["batch", "--finetuned", str(FINETUNED_CKPT), "--only", "clinical", "--output", str(output)]  # one actor
    args += ["--part-size", "1", "--records-per-batch", "1"]
    args += ["--no-progress", str(inputs)]
    kill_once_a_part_is_committed(args, output)
    before = rows_by_path(output)
    assert 1 <= len(before) < 21, "the job was not killed part-way"
    (output / ".part-killed-000009.parquet.tmp").write_bytes(b"PAR1 half a part")  # a part being written

    resumed = run_ecgfm(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    after = rows_by_path(output)
    assert set(after) == {str(p) for p in inputs.rglob("*.json")}
    assert {path: after[path] for path in before} == before  # committed rows are kept as they were
    assert f"{len(before)} of 21 inputs were already in the output" in resumed.stderr
    assert not list(output.glob(".part-*")), "the unfinished part was not removed"

    again = run_ecgfm(*args, "--resume")  # nothing left: no Ray started, still one row each
    assert again.returncode == 0 and "0 records written" in again.stderr and "21 of 21" in again.stderr
    assert rows_by_path(output) == after


def test_a_job_that_makes_no_progress_stops_after_the_stall_timeout_naming_what_is_stuck(tmp_path, archive):
    """A model actor that asks for more CPUs than the Ray has is never created: without the watchdog the job would
    wait for ever (as one whose actor's node is lost); with it, it stops with exit 1 and says why."""
    output = tmp_path / "out"
    started = time.monotonic()
    stalled = run_ecgfm(
        "batch", "--finetuned", str(FINETUNED_CKPT), "--only", "clinical", "--num-cpus", "1", "--cpus-per-actor", "2",
        "--stall-timeout", "15", "--no-progress", "-o", str(output), str(archive / "folder" / "A0689.json"),
    )  # fmt: skip
    assert stalled.returncode == 1, stalled.stderr
    assert "no record came out of the pipeline for 15 s (--stall-timeout)" in stalled.stderr
    assert "1 PENDING_CREATION (no node has the CPUs/GPUs it asks for" in stalled.stderr
    assert "rerun with --resume" in stalled.stderr
    assert time.monotonic() - started < RUN_TIMEOUT_S / 2 and committed_parts(output) == []


def test_a_complete_temporary_part_of_a_killed_job_is_not_taken_as_committed_and_its_inputs_are_scored_again(
    archive, scored, tmp_path
):
    """A job killed between a part's fsync and its rename leaves a valid Parquet file under the temporary name: its
    rows were never committed. A copy of the scored output loses one committed part, which comes back as such a
    temporary (its ``record`` column marked); --resume must score those inputs again, once, and delete it."""
    _, scored_output = scored
    output = tmp_path / "out"
    shutil.copytree(scored_output, output)
    parts = [Path(str(part)) for part in committed_parts(output)]  # local: the Location's path
    lost = next(part for part in parts if pq.read_metadata(part).num_rows == 5)
    lost_rows = pq.read_table(lost)
    lost_paths = set(lost_rows.column("path").to_pylist())
    marked = lost_rows.set_column(
        lost_rows.schema.get_field_index("record"), "record", pa.array(["from the temporary"] * 5, pa.string())
    )
    # named as PartWriter names a part's temporary: .part-<run>-<seq>.parquet.tmp
    temporary = output / f".{lost.name.removesuffix('.parquet')}.parquet.tmp"
    with open(temporary, "wb") as handle:
        pq.write_table(marked, handle)
    lost.unlink()
    assert pq.read_table(temporary).num_rows == 5  # a complete, readable Parquet file
    assert [Path(str(part)) for part in unfinished_parts(output)] == [temporary]
    before = rows_by_path(output)
    assert done_paths(output) == set(before) and not lost_paths & set(before)

    resumed = run_ecgfm(*scored_args(archive, output), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "removed 1 unfinished part files of a killed run" in resumed.stderr
    assert "7 of 12 inputs were already in the output" in resumed.stderr
    assert re.search(r"5 records written \(\d+ scored, \d+ errors\) in 1 parts", resumed.stderr), resumed.stderr
    assert unfinished_parts(output) == [] and not list(output.glob(".*"))
    after = rows_by_path(output)  # exactly one row per input
    assert set(after) == set(before) | lost_paths and len(after) == 12
    assert {path: after[path] for path in before} == before  # committed rows are kept as they were
    (new_part,) = {Path(str(part)) for part in committed_parts(output)} - set(parts)
    assert set(pq.read_table(new_part).column("path").to_pylist()) == lost_paths  # scored again, in a new part
    original = {row["path"]: row for row in lost_rows.to_pylist()}
    for path in lost_paths:
        assert after[path]["record"] != "from the temporary"
        assert after[path]["record"] == original[path]["record"] and after[path]["error"] == original[path]["error"]
        if original[path]["error"] is None:
            np.testing.assert_allclose(after[path]["probabilities"], original[path]["probabilities"], atol=FLOAT32_ATOL)


def test_an_output_folder_with_parts_needs_resume_and_the_same_options(tmp_path, archive):
    output = tmp_path / "out"
    models = ["finetuned", "pretrained"]
    metadata = job_metadata(models, False, {"fs": None, "max_duration_s": None, "ignore_extra_leads": False}, {})
    schema = output_schema(models, False, metadata)
    PartWriter(output, schema).write(part_table(schema, ["x.json"]))
    record = str(archive / "folder" / "A0689.json")
    refused = run_ecgfm("batch", *CHECKPOINT_ARGS, "--output", str(output), record, timeout=60)
    assert refused.returncode == 2 and "pass --resume" in refused.stderr
    other = run_ecgfm(
        "batch", *CHECKPOINT_ARGS, "--only", "clinical", "--resume", "-o", str(output), record, timeout=60
    )
    assert other.returncode == 2 and "another job" in other.stderr


def test_resume_refuses_another_saliency_flag_and_accepts_the_same(tmp_path, archive):
    models = ["finetuned", "pretrained"]
    options = {"fs": None, "max_duration_s": None, "ignore_extra_leads": False}
    axis = {"step_s": 0.032, "segment_s": 5.0, "steps_per_segment": 156}
    record = str(archive / "folder" / "A0689.json")
    for saliency in (False, True):
        output = tmp_path / f"out_{saliency}"
        schema = output_schema(models, False, job_metadata(models, False, options, {}, axis if saliency else None))
        PartWriter(output, schema).write(part_table(schema, ["x.json"]))
        other = run_ecgfm(
            "batch", *CHECKPOINT_ARGS, "--resume", "-o", str(output), record, *([] if saliency else ["--saliency"]),
            timeout=60,
        )  # fmt: skip
        assert other.returncode == 2, other.stderr
        assert f"another job (saliency: {saliency}, this job: {not saliency})" in other.stderr
        job = BatchJob(inputs=(), output=output, saliency=saliency, resume=True)
        assert check_output(job)[0] == {"x.json"}
    older = tmp_path / "older"  # an output written before saliency existed: no "saliency" key, no columns
    metadata = job_metadata(models, False, options, {})
    del metadata["saliency"]
    schema = output_schema(models, False, metadata)
    PartWriter(older, schema).write(part_table(schema, ["x.json"]))
    assert check_output(BatchJob(inputs=(), output=older, resume=True))[0] == {"x.json"}
    with pytest.raises(BatchError, match="saliency: False, this job: True"):
        check_output(BatchJob(inputs=(), output=older, saliency=True, resume=True))


def test_a_missing_checkpoint_or_manifest_column_fails_at_once_with_exit_2(tmp_path, archive):
    record = str(archive / "folder" / "A0689.json")
    missing = run_ecgfm(
        "batch", "--finetuned", str(tmp_path / "no.pt"), "--only", "clinical", "-o", str(tmp_path), record
    )
    assert missing.returncode == 2 and "no.pt: no such finetuned checkpoint file" in missing.stderr
    manifest = str(archive / "elsewhere" / "db.csv")
    no_column = run_ecgfm("batch", *CHECKPOINT_ARGS, "-o", str(tmp_path / "o"), "--manifest", manifest)
    assert no_column.returncode == 2 and "no column 'path'" in no_column.stderr and "--path-column" in no_column.stderr


# --- inputs and parts, without Ray ------------------------------------------------------------------------------


def test_a_folder_is_searched_recursively_for_record_files_each_wfdb_record_once(archive):
    inputs, warnings = discover_inputs([str(archive / "folder")])
    names = [Path(item.path).relative_to(archive / "folder").as_posix() for item in inputs]
    assert sorted(names) == sorted(GOOD_FOLDER_FILES + list(BAD_FILES))  # no .mat, no README.txt
    assert warnings == []


def test_globs_manifests_and_repeats_expand_to_each_path_once(archive, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\n\n{archive / 'folder' / 'A0689.json'}\nrelative/x.hea\n")
    table = tmp_path / "list.parquet"
    pq.write_table(pa.table({"path": ["a/b.json", "a/b.json"]}), table)
    inputs, warnings = discover_inputs(
        [str(archive / "folder" / "*.json"), str(listing), str(table), str(archive / "none*.json")], root="/data"
    )
    assert [(item.path, item.file) for item in inputs] == [
        (str(archive / "folder" / "A0689.json"), str(archive / "folder" / "A0689.json")),
        (str(archive / "folder" / "broken.json"), str(archive / "folder" / "broken.json")),
        ("relative/x.hea", "/data/relative/x.hea"),
        ("a/b.json", "/data/a/b.json"),
    ]
    assert warnings == [f"{archive / 'none*.json'}: the pattern matches no file"]


def test_a_csv_is_a_manifest_when_its_header_has_the_path_column_else_a_record(archive):
    assert not is_manifest(DATA_DIR / "JS36330.csv")  # lead names: a record
    assert is_manifest(archive / "elsewhere" / "db.csv", "filename_hr")
    assert not is_manifest(archive / "elsewhere" / "db.csv")  # no column "path": read as a record (an error row)
    inputs, _ = discover_inputs([str(archive / "elsewhere" / "db.csv")], path_column="filename_hr")
    assert [item.file for item in inputs] == [
        str(archive / "elsewhere" / "recs" / n) for n in ("E05526.json", "missing.json")
    ]
    with pytest.raises(InputsError, match="no column 'path'"):
        discover_inputs([], manifests=[str(archive / "elsewhere" / "db.csv")])


def test_a_named_file_that_is_missing_or_of_another_type_is_still_an_input():
    inputs, _ = discover_inputs(["nowhere/x.json", "notes.docx"])
    assert [item.path for item in inputs] == ["nowhere/x.json", "notes.docx"]


def test_a_part_is_complete_or_absent_and_readers_skip_an_unfinished_one(tmp_path):
    schema = output_schema(["finetuned"], False)
    writer = PartWriter(tmp_path, schema, run_id="r1")
    part = writer.write(part_table(schema, ["a", "b"]))
    assert part.name == "part-r1-000000.parquet" and os.listdir(tmp_path) == [part.name]
    (tmp_path / ".part-r1-000001.parquet.tmp").write_bytes(b"PAR1 truncated")
    assert pads.dataset(tmp_path, format="parquet").to_table().num_rows == 2  # the hidden tmp file is skipped
    assert done_paths(tmp_path) == {"a", "b"}
    assert remove_unfinished(tmp_path) == 1 and os.listdir(tmp_path) == [part.name]


def test_resume_refuses_another_precision_variant(tmp_path: Path) -> None:
    """Rows of an int8 run and of an fp32 run never share one output (the variant is in the job's metadata)."""
    from ecgfm.archive.batch import _check_same_checkpoints

    job = BatchJob(inputs=(), output=tmp_path / "out")
    int8 = {"sha256": "abc", "precision": {"variant": "int8+fft", "reference": False}}
    fp32 = {"sha256": "abc", "precision": {"variant": "fp32", "reference": True}}
    _check_same_checkpoints(job, {"checkpoints": {"finetuned": int8}}, {"finetuned": dict(int8)})
    with pytest.raises(BatchError, match="scored with the finetuned model in int8\\+fft, now fp32"):
        _check_same_checkpoints(job, {"checkpoints": {"finetuned": int8}}, {"finetuned": fp32})
    with pytest.raises(BatchError, match="in fp32, now int8\\+fft"):  # an output written before variants were recorded
        _check_same_checkpoints(job, {"checkpoints": {"finetuned": {"sha256": "abc"}}}, {"finetuned": int8})
