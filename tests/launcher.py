"""The one way tests and benchmarks start a server on loopback, wait until it is ready, and stop it.

    with ServerProcess(bentoml_command(port), env, log_path, port) as server:
        httpx.get(server.url + "/info")

A server runs in its own session (process group), so that stopping it ends its workers too: SIGTERM first (the
server drains), SIGKILL after ``stop_timeout_s``. Output goes to ``log_path``; the log's tail is in every error.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

REPO_DIR = Path(__file__).resolve().parents[1]
BENTOML = str(Path(sys.executable).with_name("bentoml"))
HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def bentoml_command(port: int, *extra_args: str) -> list[str]:
    """``bentoml serve service:ECGFMService`` on ``127.0.0.1:port``."""
    return [BENTOML, "serve", "service:ECGFMService", "--host", HOST, "--port", str(port), *extra_args]


def uvicorn_command(app: str, port: int) -> list[str]:
    """``uvicorn <module:app>`` on ``127.0.0.1:port`` (the plain FastAPI baseline of the benchmarks)."""
    return [sys.executable, "-m", "uvicorn", app, "--host", HOST, "--port", str(port)]


def server_env(env: dict[str, str], bentoml_home: Path | None = None, inherit_settings: bool = False) -> dict[str, str]:
    """This process's environment plus ``env``, without its own ``ECGFM_*`` settings unless ``inherit_settings``
    (benchmarks pass the caller's, e.g. ``ECGFM_PRECISION``); BentoML's telemetry off and, with ``bentoml_home``, a
    BentoML home of its own (servers sharing one wipe each other's Prometheus files at start)."""
    inherited = {key: value for key, value in os.environ.items() if inherit_settings or not key.startswith("ECGFM_")}
    result = inherited | env
    result["BENTOML_DO_NOT_TRACK"] = "true"
    if bentoml_home is not None:
        result["BENTOML_HOME"] = str(bentoml_home)
    return result


@dataclass(frozen=True)
class EndedStart:
    """What a ``bentoml serve`` that ended during start-up left: its exit status, output and run time."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def serve_until_it_ends(env: dict[str, str], bentoml_home: Path, timeout_s: float) -> EndedStart:
    """``bentoml serve`` with ``env`` (through :func:`server_env`), run to its end: for a start-up that must fail."""
    started = time.monotonic()
    result = subprocess.run(
        bentoml_command(free_port()),
        cwd=REPO_DIR,
        env=server_env(env, bentoml_home=bentoml_home),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    return EndedStart(result.returncode, result.stdout, result.stderr, time.monotonic() - started)


class ServerProcess:
    """A server started from ``command``, ready once ``GET ready_path`` answers 200 (a public path when an API key
    is set), stopped with its whole process group."""

    def __init__(
        self,
        command: list[str],
        env: dict[str, str],
        log_path: Path,
        port: int,
        ready_path: str = "/readyz",
        start_timeout_s: float = 120,
        stop_timeout_s: float = 20,
    ) -> None:
        self.command, self.env, self.log_path = command, env, log_path
        self.url = f"http://{HOST}:{port}"
        self.ready_path, self.start_timeout_s, self.stop_timeout_s = ready_path, start_timeout_s, stop_timeout_s
        self.process: subprocess.Popen | None = None
        self.startup_s: float | None = None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def start(self) -> ServerProcess:
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command, cwd=REPO_DIR, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.command[0]} exited with {self.process.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                        break
                if time.monotonic() - started > self.start_timeout_s:
                    raise RuntimeError(f"not ready after {self.start_timeout_s} s:\n{self.log_tail()}")
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise
        self.startup_s = round(time.monotonic() - started, 1)
        return self

    def stop(self) -> None:
        """SIGTERM to the server's process group, then SIGKILL after ``stop_timeout_s``."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
