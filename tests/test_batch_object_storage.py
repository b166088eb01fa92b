"""``ecgfm batch`` reading and writing an S3 bucket, as a user with an S3-compatible store does.

The store is moto's S3 server (``moto[server]``, a dev requirement) started by the test on 127.0.0.1; the job gets
the endpoint and keys from the standard variables only (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``). One job scores an archive in the bucket (JSON records, a WFDB record, a corrupt file,
a manifest with a missing record) into the bucket and is compared with ``ecgfm predict`` on the same records; one
is killed after its first committed part and resumed. Every subprocess has a timeout.
"""

from __future__ import annotations

import collections
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from ecgfm.archive.parts import committed_parts, read_rows
from ecgfm.archive.storage import Location
from tests.conftest import DATA_DIR, FINETUNED_CKPT, PRETRAINED_CKPT, REPO_DIR
from tests.launcher import HOST, ServerProcess, free_port
from tests.test_batch import kill_once_a_part_is_committed

CHECKPOINT_ARGS = ["--pretrained", str(PRETRAINED_CKPT), "--finetuned", str(FINETUNED_CKPT)]
RUN_TIMEOUT_S = 300
FLOAT32_ATOL = 1e-6
BUCKET = "ecgfm-archive"
RECORDS = {  # object name below s3://BUCKET/in/ -> local file it is a copy of
    "A0689.json": DATA_DIR / "A0689.json",
    "nested/JS01048.json": DATA_DIR / "JS01048.json",
    "nested/wfdb/A0689.hea": DATA_DIR / "DeepPSP_cinc2021" / "A0689.hea",
    "nested/wfdb/A0689.mat": DATA_DIR / "DeepPSP_cinc2021" / "A0689.mat",
}


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """moto's S3 server on a free loopback port; yields the environment a user sets (endpoint, keys)."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    command = [str(Path(sys.executable).with_name("moto_server")), "-H", HOST, "-p", str(port)]
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "ecgfm-test-key",
        "AWS_SECRET_ACCESS_KEY": f"secret-{secrets.token_hex(12)}",
        "AWS_ENDPOINT_URL": f"http://{HOST}:{port}",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    with ServerProcess(command, env, log, port, ready_path="/moto-api/", start_timeout_s=60):
        saved = {key: os.environ.get(key) for key in env if key.startswith("AWS_")}
        os.environ.update({key: value for key, value in env.items() if key.startswith("AWS_")})  # for pyarrow here
        try:
            s3, bucket = pafs.FileSystem.from_uri(f"s3://{BUCKET}?allow_bucket_creation=true")  # reads the endpoint
            s3.create_dir(bucket)
            yield env
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def upload(prefix: str, files: dict[str, Path | bytes]) -> None:
    for name, content in files.items():
        data = content if isinstance(content, bytes) else content.read_bytes()
        Location(f"s3://{BUCKET}/{prefix}/{name}").write_bytes(data)


def bucket_names(prefix: str) -> list[str]:
    return [item.name for item in Location(f"s3://{BUCKET}/{prefix}").files()]


def run_ecgfm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ecgfm", *args], cwd=REPO_DIR, env=env, capture_output=True, text=True,
        timeout=RUN_TIMEOUT_S,
    )  # fmt: skip


def rows_by_path(output: str) -> dict[str, dict]:
    rows = read_rows(output)
    counts = collections.Counter(row["path"] for row in rows)
    assert rows and max(counts.values()) == 1, f"paths with more than one row: {counts.most_common(3)}"
    return {row["path"]: row for row in rows}


def test_an_archive_in_a_bucket_is_scored_into_the_bucket_as_ecgfm_predict_scores_it(s3_env, tmp_path):
    upload("in", {**RECORDS, "nested/broken.json": b'{"signal": [[1, 2'})
    upload("lists", {"extra.txt": b"# records elsewhere in the bucket\nE05526.json\nmissing.json\n"})
    upload("lists", {"E05526.json": DATA_DIR / "E05526.json"})
    output = f"s3://{BUCKET}/out"
    done = run_ecgfm(
        s3_env, "batch", *CHECKPOINT_ARGS, "--part-size", "3", "--no-progress", "--output", output,
        f"s3://{BUCKET}/in", f"s3://{BUCKET}/lists/extra.txt",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = rows_by_path(output)
    uri = f"s3://{BUCKET}/in/"
    scored = {uri + "A0689.json", uri + "nested/JS01048.json", uri + "nested/wfdb/A0689.hea", "E05526.json"}
    assert set(rows) == scored | {uri + "nested/broken.json", "missing.json"}
    assert {path for path, row in rows.items() if row["error"] is None} == scored
    assert rows[uri + "nested/broken.json"]["error"].startswith(uri + "nested/broken.json: ")
    assert "no such file" in rows["missing.json"]["error"]
    assert "/tmp" not in rows["missing.json"]["error"]  # the object is named, not the read task's copy

    local = [DATA_DIR / "A0689.json", DATA_DIR / "JS01048.json", DATA_DIR / "DeepPSP_cinc2021" / "A0689.hea"]
    local.append(DATA_DIR / "E05526.json")
    predicted = run_ecgfm(s3_env, "predict", *CHECKPOINT_ARGS, *map(str, local))
    assert predicted.returncode == 0, predicted.stderr
    lines = [json.loads(line) for line in predicted.stdout.splitlines()]
    order = [uri + "A0689.json", uri + "nested/JS01048.json", uri + "nested/wfdb/A0689.hea", "E05526.json"]
    for path, line in zip(order, lines, strict=True):
        row = rows[path]
        assert row["record"] == line["record"]
        np.testing.assert_allclose(
            row["probabilities"], list(line["clinical"]["probabilities"].values()), atol=FLOAT32_ATOL
        )
        np.testing.assert_allclose(row["features"], line["features"]["features"], atol=FLOAT32_ATOL)
        assert row["n_segments"] == line["clinical"]["n_segments"]

    names = bucket_names("out")
    assert len(names) == 2 and all(name.startswith("part-") and name.endswith(".parquet") for name in names)
    secret = s3_env["AWS_SECRET_ACCESS_KEY"]
    for part in committed_parts(output):
        assert secret.encode() not in part.read_bytes() and s3_env["AWS_ENDPOINT_URL"].encode() not in part.read_bytes()
    assert secret not in done.stderr and secret not in done.stdout


def test_a_bucket_job_killed_after_its_first_part_and_resumed_has_exactly_one_row_per_record(s3_env):
    records = {f"copy{i}/{name}": DATA_DIR / name for i in range(6) for name in ("A0689.json", "JS01048.json")}
    upload("kill/in", records)
    output = f"s3://{BUCKET}/kill/out"
    args = ["batch", "--finetuned", str(FINETUNED_CKPT), "--only", "clinical", "--output", output]
    args += ["--part-size", "1", "--records-per-batch", "1", "--no-progress", f"s3://{BUCKET}/kill/in"]
    kill_once_a_part_is_committed(args, output, env=s3_env, timeout_s=RUN_TIMEOUT_S)
    before = rows_by_path(output)
    assert 1 <= len(before) < len(records), "the job was not killed part-way"
    for part in committed_parts(output):  # every object under out/ is a whole Parquet file
        assert pq.read_metadata(part.path, filesystem=part.filesystem).num_rows == 1

    resumed = run_ecgfm(s3_env, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    after = rows_by_path(output)
    assert set(after) == {f"s3://{BUCKET}/kill/in/{name}" for name in records}
    assert {path: after[path] for path in before} == before
    assert f"{len(before)} of {len(records)} inputs were already in the output" in resumed.stderr
    assert len(bucket_names("kill/out")) == len(records)  # one object per part, nothing else


def test_credentials_in_a_uri_are_refused_without_echoing_them(s3_env):
    refused = run_ecgfm(s3_env, "batch", "--output", "s3://AKIAEXAMPLE:hunter2@bucket/out", "x.json")
    assert refused.returncode == 2
    assert "credentials do not go into a URI" in refused.stderr and "hunter2" not in refused.stderr
