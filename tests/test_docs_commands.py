"""Every shell and Python block of README.md and docs/*.md runs as written, against a demo server on loopback.

Blocks run in document order, each doc in its own scratch checkout (links to this one's files, ``../shared``
beside it), with ``.venv/bin`` first on ``PATH`` (an activated venv) and no ``ECGFM_*`` setting but the demo
weights' size and folder (small, for speed: they matter only where a block turns demo weights on itself, with
``ECGFM_DEMO=1``, as a reader in a fresh shell must); ``localhost:3000`` / ``127.0.0.1:3000`` point at the test's
demo server. A block that starts the server (``./run.sh serve``) is started with ``ECGFM_DEMO=1`` (the test has
no Hugging Face Hub to take the published weights from), must become ready, and is stopped. A block that cannot
run here says so in the line just above it, visibly: ``*Not run by the docs test: <why>.*``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_DIR, SHARED_DIR
from tests.launcher import ServerProcess, bentoml_command, free_port, server_env

DOCS = [REPO_DIR / "README.md", *sorted((REPO_DIR / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(?P<lang>bash|sh|shell|python)[ \t]*\n(?P<code>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
NOT_RUN = re.compile(r"^\*Not run by the docs test: (?P<why>.+)\*$")
SERVES = re.compile(r"(^|[\s;&|(])\./run\.sh serve\b|(^|\s)bentoml serve\b", re.MULTILINE)
DEFAULT_PORT = re.compile(r"\b(localhost|127\.0\.0\.1):3000\b")
BLOCK_TIMEOUT_S = 300
RUN_SH_INPUTS = ("requirements.txt", "requirements-dev.txt", "pyproject.toml")  # what run.sh's venv stamp hashes
MOST_NOT_RUN = 13  # "visibly and few" (the Hub, image builds, BentoCloud, the suite, a bucket, a FHIR server, a probe)


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int
    lang: str
    code: str
    not_run: str | None  # why, when the block is marked as not run

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO_DIR)}:{self.line}"


def blocks_of(doc: Path) -> list[Block]:
    text = doc.read_text()
    found = []
    for match in FENCE.finditer(text):
        before = [line for line in text[: match.start()].splitlines() if line.strip()]
        marker = NOT_RUN.match(before[-1].strip()) if before else None
        line = text[: match.start()].count("\n") + 1
        found.append(Block(doc, line, match["lang"], match["code"], marker["why"] if marker else None))
    return found


ALL_BLOCKS = [block for doc in DOCS for block in blocks_of(doc)]


def scratch_checkout(root: Path) -> Path:
    """``root/checkout``: a copy of this checkout's files (tracked, and untracked ones git does not ignore), as a
    fresh clone would have them, with this venv linked in and ``root/shared`` beside it as in CI. Commands write
    their files there, not here."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO_DIR, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    checkout = root / "checkout"
    for name in filter(None, listed):
        source = REPO_DIR / name
        if source.is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, checkout / name)
    (checkout / ".venv").symlink_to(REPO_DIR / ".venv")
    (root / "shared").symlink_to(SHARED_DIR.resolve())
    return checkout


def venv_is_current() -> bool:
    """Whether ``./run.sh`` would leave the venv as it is (else a block's ``./run.sh`` would reinstall it from the
    scratch copy, repointing the editable install there)."""
    wanted = hashlib.sha256(b"".join((REPO_DIR / n).read_bytes() for n in RUN_SH_INPUTS)).hexdigest()
    stamp = REPO_DIR / ".venv" / ".requirements.sha256"
    return stamp.is_file() and stamp.read_text().strip() == wanted


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A demo server (small random weights) and the environment the blocks run in."""
    root = tmp_path_factory.mktemp("docs")
    settings = {"ECGFM_DEMO": "1", "ECGFM_DEMO_SIZE": "small", "ECGFM_DEMO_DIR": str(root / "demo-weights")}
    port = free_port()
    environ = server_env(settings, bentoml_home=root / "bentoml_home")
    with ServerProcess(bentoml_command(port), environ, root / "server.log", port) as server:
        env = environ | {"PATH": f"{REPO_DIR / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
        env.pop("VIRTUAL_ENV", None)
        env.pop("ECGFM_DEMO")  # a block that needs demo weights says so, as a reader's fresh shell needs it
        yield {"url": server.url, "port": port, "env": env, "root": root}


def run_block(block: Block, cwd: Path, demo: dict) -> subprocess.CompletedProcess:
    code = DEFAULT_PORT.sub(lambda m: f"{m[1]}:{demo['port']}", block.code)
    shell = ["bash", "-e", "-o", "pipefail", "-c", code]
    command = [sys.executable, "-c", code] if block.lang == "python" else shell
    return subprocess.run(
        command, cwd=cwd, env=demo["env"], capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S, check=False
    )


def serve_block(block: Block, cwd: Path, demo: dict) -> None:
    """Start a block that serves; it must answer /readyz, then it is stopped with its process group."""
    port = free_port()
    log = cwd / f"serve_{block.line}.log"
    env = demo["env"] | {"PORT": str(port), "ECGFM_DEMO": "1"}  # in place of the Hub's weights
    code = block.code.replace("--port 3000", f"--port {port}")
    with open(log, "wb") as out:
        process = subprocess.Popen(
            ["bash", "-e", "-c", code], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert process.poll() is None, f"{block.where} exited with {process.returncode}:\n{log.read_text()[-2000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"{block.where} not ready after 180 s:\n{log.read_text()[-2000:]}")
        assert httpx.get(f"http://127.0.0.1:{port}/info", timeout=10).json()["demo"] is True
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_the_docs_have_blocks_and_few_of_them_are_not_run() -> None:
    assert len(ALL_BLOCKS) >= 15
    not_run = [block.where for block in ALL_BLOCKS if block.not_run]
    assert len(not_run) <= MOST_NOT_RUN, not_run


def test_no_example_sends_a_body_as_a_command_line_argument() -> None:
    """Linux caps one argument at 128 KB and a 10 s record is a 448 KB JSON: bodies go from a file or a pipe."""
    offenders = [
        block.where for block in ALL_BLOCKS if re.search(r"""(-d|--data(-binary|-raw)?)\s+["']?\$\(""", block.code)
    ]
    assert offenders == []


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize("doc", DOCS, ids=[str(doc.relative_to(REPO_DIR)) for doc in DOCS])
def test_every_block_of_the_doc_runs_as_written(doc: Path, demo: dict, tmp_path: Path) -> None:
    assert venv_is_current(), "the requirements changed since .venv was set up: run ./run.sh test (it updates .venv)"
    cwd = scratch_checkout(tmp_path)
    failures = []
    for block in blocks_of(doc):
        if block.not_run:
            continue
        if block.lang != "python" and SERVES.search(block.code):
            serve_block(block, cwd, demo)
            continue
        result = run_block(block, cwd, demo)
        if result.returncode != 0:
            failures.append(f"{block.where} exited {result.returncode}:\n{block.code}\n{result.stdout[-1500:]}"
                            f"{result.stderr[-1500:]}")  # fmt: skip
    assert not failures, "\n\n".join(failures)
