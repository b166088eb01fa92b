"""``ecgfm batch --address`` on a real three-node Ray cluster that loses a worker node mid-job.

The test starts a head and two worker nodes with Ray's CLI (``ray start``), as a cluster user does: ports chosen
free, a temporary folder per node, token authentication with one token for all (``RAY_AUTH_MODE=token``,
``RAY_AUTH_TOKEN``). Ray's CLI gives a node the machine's own address even when asked for 127.0.0.1
(``services.resolve_ip_for_localhost``): the nodes listen there, behind the token. Sizes suit CI's 2 cores: the
head has no CPU for tasks (the driver runs there), each worker node 3 logical CPUs and one model actor of 1.6 CPUs
(so the two actors land on different nodes and each node keeps a CPU for read tasks). When a sixth of the records
are committed, the worker node that scored most of them is killed (its raylet, workers and agents: the process
group its ``ray start`` made, and their children), so that its work must move to the other one. The job must then
end, either finished or stopped with a message (the lost actor's restart has nowhere to go: ``--stall-timeout``),
and with ``--resume`` if it stopped, every record is in the output exactly once, scored by the two nodes.
Nodes are always killed and their folders removed at the end (by process group and folder, never ``ray stop``,
which stops every Ray of the machine).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from ecgfm.archive.parts import committed_parts, read_rows
from tests.conftest import DATA_DIR, FINETUNED_CKPT, REPO_DIR
from tests.launcher import HOST, free_port

RAY = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT_S = 180
RUN_TIMEOUT_S = 420
STALL_TIMEOUT_S = 100  # above a model actor's start on a loaded 2-core runner (two worker nodes starting Python)
N_RECORDS = 36


@dataclass
class RayNode:
    name: str
    process_group: int


@dataclass
class Cluster:
    address: str
    env: dict[str, str]
    token: str
    nodes: list[RayNode]
    root: Path


def ray_start(name: str, root: Path, env: dict[str, str], *args: str) -> RayNode:
    """``ray start`` for one node in a session (process group) of its own, every port free, files under root."""
    ports = {
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--metrics-export-port": free_port(),
    }
    command = [RAY, "start", "--node-ip-address", HOST, "--temp-dir", str(root / name), "--disable-usage-stats"]
    command += [str(item) for pair in ports.items() for item in pair] + list(args)
    started = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    output, _ = started.communicate(timeout=START_TIMEOUT_S)
    node = RayNode(name, started.pid)  # the session leader's pid is the group of every process it started
    if started.returncode != 0:
        kill_node(node)
        raise RuntimeError(f"ray start ({name}) failed:\n{output[-3000:]}")
    return node


def node_processes(node: RayNode) -> list[psutil.Process]:
    """Every live process of the node: its process group (raylet, agents) and their children (the workers)."""
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):  # a process that ended while we looked
            if os.getpgid(process.pid) == node.process_group and process.status() != psutil.STATUS_ZOMBIE:
                found[process.pid] = process
                found.update((child.pid, child) for child in process.children(recursive=True))
    return list(found.values())


def kill_node(node: RayNode) -> None:
    """SIGKILL to the whole node at once, as when a machine dies; returns once none of its processes runs."""
    processes = node_processes(node)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(node.process_group, signal.SIGKILL)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(processes, timeout=30)


@contextlib.contextmanager
def ray_cluster(workers: int = 2, cpus_per_worker: int = 3) -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="ecgfm-cluster-"))
    token = secrets.token_hex(32)
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}
    env["RAY_raylet_start_wait_time_s"] = "150"  # a raylet registers slowly on a busy 2-core runner (default 30)
    env["PYTHONPATH"] = str(REPO_DIR)  # workers import this checkout's ecgfm (on a real cluster: the image)
    nodes: list[RayNode] = []
    try:
        gcs = free_port()
        nodes.append(
            ray_start(
                "head", root, env, "--head", "--port", str(gcs), "--num-cpus", "0", "--include-dashboard", "false",
                "--dashboard-port", str(free_port()),
            )
        )  # fmt: skip
        for index in range(workers):
            nodes.append(
                ray_start(f"worker{index}", root, env, "--address", f"{HOST}:{gcs}", "--num-cpus", str(cpus_per_worker))
            )
        yield Cluster(f"{HOST}:{gcs}", env, token, nodes, root)
    finally:
        for node in nodes:
            kill_node(node)
        for process in psutil.process_iter(["cmdline"]):  # anything that left its group but runs from our folders
            with contextlib.suppress(psutil.Error):
                if str(root) in " ".join(process.info["cmdline"] or []):
                    process.kill()
        shutil.rmtree(root, ignore_errors=True)


def rows_by_path(output: Path) -> dict[str, dict]:
    rows = read_rows(output)
    counts = collections.Counter(row["path"] for row in rows)
    assert not rows or max(counts.values()) == 1, f"paths with more than one row: {counts.most_common(3)}"
    return {row["path"]: row for row in rows}


def scoring_nodes(output: Path) -> dict[str, int]:
    """How many rows of the committed parts each node (``node`` column) scored."""
    return dict(collections.Counter(row["node"] for row in read_rows(output)))


def node_id(node: RayNode) -> str:
    """The Ray node id of a node started by :func:`ray_start` (its raylet's ``--node_id``)."""
    for process in node_processes(node):
        with contextlib.suppress(psutil.Error):
            for argument in process.cmdline():
                if argument.startswith("--node_id="):
                    return argument.removeprefix("--node_id=")
    return ""


def nodes_of(stderr: str) -> dict[str, int]:
    """The summary's ``records per node: 127.0.0.1/3f2a9c1b: 10, ...``."""
    line = re.search(r"records per node: (.*)", stderr)
    assert line, stderr[-3000:]
    return {node: int(count) for node, count in re.findall(r"(\S+/[0-9a-f]{8}): (\d+)", line.group(1))}


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cluster_archive")
    names = ("A0689.json", "JS01048.json", "E05526.json")
    for index in range(N_RECORDS):
        name = names[index % len(names)]
        (folder / f"r{index:02d}_{name}").write_text((DATA_DIR / name).read_text())
    return folder


def test_a_cluster_job_that_loses_a_worker_node_ends_and_resume_completes_it(archive, tmp_path):
    output = tmp_path / "out"
    args = [sys.executable, "-m", "ecgfm", "batch", "--finetuned", str(FINETUNED_CKPT), "--only", "clinical"]
    args += ["--actors", "2", "--cpus-per-actor", "1.6", "--threads", "1", "--records-per-batch", "1"]
    args += ["--part-size", "1", "--stall-timeout", str(STALL_TIMEOUT_S), "--no-progress", "-o", str(output)]
    with ray_cluster() as cluster:
        args += ["--address", cluster.address, str(archive)]
        # Ray Data starts once both model actors are up (default: as soon as one is), so that both nodes score
        first_env = {**cluster.env, "RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": str(RUN_TIMEOUT_S)}
        log = tmp_path / "first.log"
        with open(log, "w") as stderr:
            job = subprocess.Popen(args, cwd=REPO_DIR, env=first_env, stderr=stderr, text=True)
        try:
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while len(committed_parts(output)) < N_RECORDS // 6 and job.poll() is None:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            assert job.poll() is None, f"the job ended before the node was killed:\n{log.read_text()[-3000:]}"
            # the node that scored most so far: its work must move to the other one
            busiest = collections.Counter(row["node"] for row in read_rows(output)).most_common(1)[0][0]
            victim = next(node for node in cluster.nodes if node_id(node).startswith(busiest.split("/")[1]))
            assert any("ray::" in " ".join(p.cmdline()) for p in node_processes(victim))  # it runs Ray workers
            kill_node(victim)  # a worker node: its raylet, its workers (a model actor), its agents
            assert node_processes(victim) == []
            committed_at_kill = len(committed_parts(output))
            first = job.wait(timeout=RUN_TIMEOUT_S)
        finally:
            job.kill()
            job.wait(timeout=30)
        first_log = log.read_text()
        assert first in (0, 1), first_log[-3000:]
        assert "Ray authentication: token" in first_log and "RAY_AUTH_MODE=token" in first_log
        assert cluster.token not in first_log
        first_nodes = nodes_of(first_log)
        print(f"first run: exit {first}, {committed_at_kill} parts at the kill; {first_log.splitlines()[-1][:300]}")
        assert committed_at_kill < N_RECORDS  # the kill came with records left to score
        assert busiest in first_nodes and first_nodes == scoring_nodes(output)  # the summary counts the rows
        if first == 1:  # stopped with a message that names what is stuck; the committed parts stay
            assert "no record came out of the pipeline" in first_log or "batch failed" in first_log, first_log
            assert "rerun with --resume" in first_log
            resumed = subprocess.run(
                [*args, "--resume"],
                cwd=REPO_DIR,
                env=cluster.env,
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT_S,
            )
            assert resumed.returncode == 0, resumed.stderr[-3000:]
            assert busiest not in nodes_of(resumed.stderr)  # the surviving worker node only
    rows = rows_by_path(output)
    assert set(rows) == {str(path) for path in archive.iterdir()}
    assert len({row["node"] for row in rows.values()}) == 2  # the job spread over both worker nodes
    assert all(row["error"] is None and len(row["probabilities"]) == 17 for row in rows.values())
