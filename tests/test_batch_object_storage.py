"""``ecgfm batch`` reading and writing a bucket, as a user with an S3-compatible store or Google Cloud Storage does.

The stores are started by the test on 127.0.0.1 (dev requirements): moto's S3 server (``moto[server]``) and
gcp-storage-emulator, a GCS emulator. The job gets the endpoint and credentials from each store's standard variables
only: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` for S3; ``CLOUD_STORAGE_EMULATOR_ENDPOINT``
(google-cloud-cpp's, which pyarrow's GCS client reads) and ``GOOGLE_APPLICATION_CREDENTIALS`` (a made-up service
account's key, made with ``cryptography``, which moto needs) for GCS. One job scores an archive in the bucket (JSON
records, a WFDB record, a corrupt file, a manifest with a missing record) into the bucket, is compared with
``ecgfm predict`` on the same records and resumed with nothing left to do; one (S3 only, the slow one) is killed
after its first committed part and resumed. Every subprocess has a timeout.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ecgfm.archive.parts import committed_parts, read_rows
from ecgfm.archive.storage import Location
from tests.conftest import DATA_DIR, FINETUNED_CKPT, PRETRAINED_CKPT, REPO_DIR
from tests.launcher import HOST, ServerProcess, free_port
from tests.test_batch import kill_once_a_part_is_committed

CHECKPOINT_ARGS = ["--pretrained", str(PRETRAINED_CKPT), "--finetuned", str(FINETUNED_CKPT)]
RUN_TIMEOUT_S = 300
FLOAT32_ATOL = 1e-6
BUCKET = "ecgfm-archive"
RECORDS = {  # object name below <scheme>://BUCKET/in/ -> local file it is a copy of
    "A0689.json": DATA_DIR / "A0689.json",
    "nested/JS01048.json": DATA_DIR / "JS01048.json",
    "nested/wfdb/A0689.hea": DATA_DIR / "DeepPSP_cinc2021" / "A0689.hea",
    "nested/wfdb/A0689.mat": DATA_DIR / "DeepPSP_cinc2021" / "A0689.mat",
}


@dataclass(frozen=True)
class Store:
    """The bucket ``BUCKET`` of a store on loopback as a job sees it: ``env`` is the environment of a user of the
    store; ``secret`` (a credential) and ``endpoint`` must not reach the output or the job's messages."""

    scheme: str
    env: dict[str, str]
    secret: str
    endpoint: str

    def uri(self, name: str) -> str:
        """``<scheme>://BUCKET/<name>``."""
        return f"{self.scheme}://{BUCKET}/{name}"


@contextlib.contextmanager
def user_environment(variables: dict[str, str]) -> Iterator[None]:
    """``variables`` set in this process too while the store runs, for pyarrow here (uploads, read-back)."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in variables.items():
            patch.setenv(key, value)
        yield


@contextlib.contextmanager
def moto_s3(folder: Path) -> Iterator[Store]:
    """moto's S3 server on a free loopback port, the bucket created through pyarrow."""
    port = free_port()
    endpoint, secret = f"http://{HOST}:{port}", f"secret-{secrets.token_hex(12)}"
    variables = {
        "AWS_ACCESS_KEY_ID": "ecgfm-test-key",
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    env = {**os.environ, **variables}
    command = [str(Path(sys.executable).with_name("moto_server")), "-H", HOST, "-p", str(port)]
    with (
        ServerProcess(command, env, folder / "moto.log", port, ready_path="/moto-api/", start_timeout_s=60),
        user_environment(variables),
    ):
        s3, bucket = pafs.FileSystem.from_uri(f"s3://{BUCKET}?allow_bucket_creation=true")  # reads the endpoint
        s3.create_dir(bucket)
        yield Store("s3", env, secret, endpoint)


def write_service_account_key(path: Path, token_uri: str) -> str:
    """A key file of a made-up service account with a new RSA key at ``path``; returns the private key (PEM).

    google-cloud-cpp signs its tokens with the key itself (self-signed JWTs): nothing asks ``token_uri``.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    account = {
        "type": "service_account",
        "project_id": "ecgfm-test",
        "private_key_id": secrets.token_hex(20),
        "private_key": private_key,
        "client_email": "ecgfm-test@ecgfm-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    }
    path.write_text(json.dumps(account))
    return private_key


@contextlib.contextmanager
def gcs_emulator(folder: Path) -> Iterator[Store]:
    """gcp-storage-emulator on a free loopback port, in memory, with the bucket.

    pyarrow's GCS client always uses the default credentials (without any it waits for a GCE metadata server), so
    the user's environment names a service account key (made up: the emulator checks none).
    """
    port = free_port()
    endpoint = f"http://{HOST}:{port}"
    private_key = write_service_account_key(folder / "service-account.json", token_uri=f"{endpoint}/token")
    variables = {
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": endpoint,
        "GOOGLE_APPLICATION_CREDENTIALS": str(folder / "service-account.json"),
    }
    command = [str(Path(sys.executable).with_name("gcp-storage-emulator")), "start", "--host", HOST]
    command += ["--port", str(port), "--in-memory", "--default-bucket", BUCKET]
    with (
        ServerProcess(command, dict(os.environ), folder / "emulator.log", port, ready_path="/", start_timeout_s=60),
        user_environment(variables),
    ):
        yield Store("gs", {**os.environ, **variables}, private_key.splitlines()[1], endpoint)


@pytest.fixture(scope="module", params=["s3", "gs"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """The bucket on moto's S3 server (``s3``) or on the GCS emulator (``gs``)."""
    start = {"s3": moto_s3, "gs": gcs_emulator}[request.param]
    with start(tmp_path_factory.mktemp(request.param)) as started:
        yield started


def upload(store: Store, prefix: str, files: dict[str, Path | bytes]) -> None:
    for name, content in files.items():
        data = content if isinstance(content, bytes) else content.read_bytes()
        Location(store.uri(f"{prefix}/{name}")).write_bytes(data)


def bucket_names(store: Store, prefix: str) -> list[str]:
    return [item.name for item in Location(store.uri(prefix)).files()]


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


def test_an_archive_in_a_bucket_is_scored_into_the_bucket_as_ecgfm_predict_scores_it(store):
    upload(store, "in", {**RECORDS, "nested/broken.json": b'{"signal": [[1, 2'})
    upload(store, "lists", {"extra.txt": b"# records elsewhere in the bucket\nE05526.json\nmissing.json\n"})
    upload(store, "lists", {"E05526.json": DATA_DIR / "E05526.json"})
    output = store.uri("out")
    args = ["batch", *CHECKPOINT_ARGS, "--part-size", "3", "--no-progress", "--output", output]
    args += [store.uri("in"), store.uri("lists/extra.txt")]
    done = run_ecgfm(store.env, *args)
    assert done.returncode == 0, done.stderr
    rows = rows_by_path(output)
    uri = store.uri("in/")
    scored = {uri + "A0689.json", uri + "nested/JS01048.json", uri + "nested/wfdb/A0689.hea", "E05526.json"}
    assert set(rows) == scored | {uri + "nested/broken.json", "missing.json"}
    assert {path for path, row in rows.items() if row["error"] is None} == scored
    assert rows[uri + "nested/broken.json"]["error"].startswith(uri + "nested/broken.json: ")
    assert "no such file" in rows["missing.json"]["error"]
    assert "/tmp" not in rows["missing.json"]["error"]  # the object is named, not the read task's copy

    local = [DATA_DIR / "A0689.json", DATA_DIR / "JS01048.json", DATA_DIR / "DeepPSP_cinc2021" / "A0689.hea"]
    local.append(DATA_DIR / "E05526.json")
    predicted = run_ecgfm(store.env, "predict", *CHECKPOINT_ARGS, *map(str, local))
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

    names = bucket_names(store, "out")
    assert len(names) == 2 and all(name.startswith("part-") and name.endswith(".parquet") for name in names)
    for part in committed_parts(output):
        assert store.secret.encode() not in part.read_bytes() and store.endpoint.encode() not in part.read_bytes()
    assert store.secret not in done.stderr and store.secret not in done.stdout

    resumed = run_ecgfm(store.env, *args, "--resume")  # resume reads the committed parts back: nothing left to do
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(rows)} of {len(rows)} inputs were already in the output" in resumed.stderr
    assert bucket_names(store, "out") == names


@pytest.mark.parametrize("store", ["s3"], indirect=True)  # S3 only: it passes on GCS too, in 30-45 s more
def test_a_bucket_job_killed_after_its_first_part_and_resumed_has_exactly_one_row_per_record(store):
    records = {f"copy{i}/{name}": DATA_DIR / name for i in range(6) for name in ("A0689.json", "JS01048.json")}
    upload(store, "kill/in", records)
    output = store.uri("kill/out")
    args = ["batch", "--finetuned", str(FINETUNED_CKPT), "--only", "clinical", "--output", output]
    args += ["--part-size", "1", "--records-per-batch", "1", "--no-progress", store.uri("kill/in")]
    kill_once_a_part_is_committed(args, output, env=store.env, timeout_s=RUN_TIMEOUT_S)
    before = rows_by_path(output)
    assert 1 <= len(before) < len(records), "the job was not killed part-way"
    for part in committed_parts(output):  # every object under out/ is a whole Parquet file
        assert pq.read_metadata(part.path, filesystem=part.filesystem).num_rows == 1

    resumed = run_ecgfm(store.env, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    after = rows_by_path(output)
    assert set(after) == {store.uri(f"kill/in/{name}") for name in records}
    assert {path: after[path] for path in before} == before
    assert f"{len(before)} of {len(records)} inputs were already in the output" in resumed.stderr
    assert len(bucket_names(store, "kill/out")) == len(records)  # one object per part, nothing else


def test_credentials_in_a_uri_are_refused_without_echoing_them(store):
    refused = run_ecgfm(store.env, "batch", "--output", f"{store.scheme}://AKIAEXAMPLE:hunter2@bucket/out", "x.json")
    assert refused.returncode == 2
    assert "credentials do not go into a URI" in refused.stderr and "hunter2" not in refused.stderr


def test_a_query_string_in_a_bucket_uri_is_refused_rather_than_read_as_a_name(store):
    """pyarrow would take ``?endpoint_override=...`` as part of the object's name: refused, saying what to set."""
    query = "?endpoint_override=127.0.0.1:9"
    for args in (("--output", store.uri("out") + query, "x.json"), ("--output", "out", store.uri("in") + query)):
        refused = run_ecgfm(store.env, "batch", *args)
        assert refused.returncode == 2, refused.stderr
        assert "a query string (?...) is not read" in refused.stderr and "127.0.0.1:9" not in refused.stderr
